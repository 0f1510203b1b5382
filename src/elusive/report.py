"""The run report: the paper's tables and figures from a run folder (`elusive.pipeline`).

- Table 2: per trained model and policy, the setting picked on validation questions and its
  test EM/F1 (mean ± std over seeds); a second table with every field.
- Figure 1: QA accuracy per field against the field's token distance from the person's name
  in the training text (accuracy falls as the distance grows).
- Figures 2 and 3: for the token just before the company value, which kind of token (name,
  date, city, ..., relation word, other) holds each of the top-10 attention ranks, for each
  model (Figure 2) and for the large - small difference (Figure 3).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .bios import FIELDS, SPANS
from .config import UNTRAINED
from .corpus import Record
from .errors import ElusiveError
from .figures import (
    plot_accuracy_vs_distance,
    plot_loss_curves,
    plot_paired_differences,
    plot_rank_categories,
)
from .io import read_json
from .metrics import LABELS, METRICS, FieldScore
from .scores import TextScores, read_scores
from .stats import study_markdown

if TYPE_CHECKING:
    from .attention import AttentionConfig
    from .augment import AugmentConfig


def _token_at(offsets: Sequence[tuple[int, int]], char: int) -> int:
    """Index of the first token whose character span ends after `char` (the token holding it)."""
    for index, (start, end) in enumerate(offsets):
        if end > char and end > start:
            return index
    raise ValueError(f"character {char} lies past the last token")


def field_token_distances(
    records: Sequence[Record], tokenizer, fields: Sequence[str] = FIELDS
) -> dict[str, list[int]]:
    """Per field, for every record with spans: the token index of the value's first token minus
    the token index of the name's last token ("Liam Thompson was born on January" -> 4)."""
    out: dict[str, list[int]] = {f: [] for f in fields}
    for record in records:
        if "name" not in record.spans:
            raise ElusiveError(f"record {record.id!r} has no 'name' span")
        offsets = tokenizer(record.text, return_offsets_mapping=True, add_special_tokens=False)[
            "offset_mapping"
        ]
        name_end = _token_at(offsets, record.spans["name"][1] - 1)
        for f in fields:
            if f in record.spans:
                out[f].append(_token_at(offsets, record.spans[f][0]) - name_end)
    return out


PROBE_COLUMNS = ("cloze_em", "cloze_choice", "choice", "logprob")
"""The probes the report's probe table shows (every probe is in report.json)."""
CLOZE_COLUMNS = ("cloze_em", "cloze_f1", "cloze_choice", "cloze_logprob")
"""The tables of a run of probes without questions, one per metric with a column per span
kind."""
UNITS = {"bios": ("person", "people"), "texts": ("text", "texts")}
"""What a run's questions are about (singular, plural): the units its statistics resample."""


# --------------------------------------------------------------------------- the run report


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    mean = sum(values) / len(values)
    var = sum((v - mean) ** 2 for v in values) / (len(values) - 1) if len(values) > 1 else 0.0
    return mean, var**0.5


def summarize(run) -> dict:
    """Pick the best setting per (trained role, policy) on the validation questions and give
    its test scores per field (QA EM/F1 and every probe) as mean and standard deviation over
    seeds; then, per trained role, the study statistics of `elusive.stats` over the test people
    and seeds of those settings: ``study`` pairs every policy with the first of
    ``report.baselines`` that ran (``none`` by default), ``other_baselines`` with each other.

    Each role's rows begin with ``untrained``: its base model evaluated without training
    (`elusive.runs.untrained_dirs`), one evaluation that no seed changes, so it has no seeds
    and no standard deviation (``None``). Its scores stand for every seed in the study, so its
    means have CIs over the test people like every policy's, and ``report.baselines`` may name
    it: each policy is then paired with it, unit by unit. It is paired with no other baseline
    (its distance from a trained policy would dwarf the policies' differences in the figure).

    The selection score is the mean validation ``report.select_metric`` (F1 by default) over
    the ``report.select_on`` fields (the paper's university and company), or over all questions
    for corpora without those fields. A run whose items are probes without questions (a user
    corpus without ``corpus.qa``: `elusive.cloze`) has no QA EM or F1: there ``em``/``f1``
    select by their cloze counterpart (``cloze_em``/``cloze_f1``) over all probes, and the
    summary's ``select_metric`` says so.
    """
    from .io import iter_jsonl
    from .metrics import aggregate
    from .runs import eval_dirs, untrained_dirs
    from .stats import policy_means, summarize_study, unit_scores

    config = run.config
    metric = config.report.select_metric
    split = read_json(run.path("corpus", "split.json"))
    subsets = {name: set(split[name]) for name in ("validation", "test")}
    # (role, policy) -> (alpha, beta, lr, epoch) -> seed -> subset -> field -> FieldScore
    table: dict[tuple, dict[tuple, dict[int, dict]]] = {}
    # the same keys -> seed -> the test people's prediction rows
    test_rows: dict[tuple, dict[tuple, dict[int, list[dict]]]] = {}
    for cell, epoch, folder in eval_dirs(run):
        rows = [row for _, row in iter_jsonl(folder / "predictions.jsonl")]
        scores = {
            name: aggregate(r for r in rows if r["source_id"] in ids)
            for name, ids in subsets.items()
        }
        key, setting = (cell.role, cell.policy), (cell.alpha, cell.beta, cell.lr, epoch)
        table.setdefault(key, {}).setdefault(setting, {})[cell.seed] = scores
        test = [r for r in rows if r["source_id"] in subsets["test"]]
        test_rows.setdefault(key, {}).setdefault(setting, {})[cell.seed] = test

    if metric in ("em", "f1") and table:  # probes without questions: their cloze EM/F1
        by_seed = next(iter(next(iter(table.values())).values()))
        overall = next(iter(by_seed.values()))["validation"].get("overall")
        if overall is not None and metric not in overall.present():
            metric = f"cloze_{metric}"

    def selection_score(by_seed: dict[int, dict]) -> float:
        per_seed = []
        for scores in by_seed.values():
            val = scores["validation"]
            fields = [f for f in config.report.select_on if f in val] or ["overall"]
            values = [val[f].present().get(metric) for f in fields]
            if None in values:
                raise ElusiveError(f"report.select_metric: {metric!r} was not measured")
            per_seed.append(sum(values) / len(values))
        return sum(per_seed) / len(per_seed)

    by_role: dict[str, list[dict]] = {}  # role -> its rows, untrained first
    study_tables: dict[str, dict] = {}  # role -> policy -> score table
    untrained_tables = {}  # role -> the untrained base model's score table
    for role, folder in untrained_dirs(run):
        answers = [row for _, row in iter_jsonl(folder / "predictions.jsonl")]
        scores = {
            name: aggregate(r for r in answers if r["source_id"] in ids)
            for name, ids in subsets.items()
        }
        tested = [r for r in answers if r["source_id"] in subsets["test"]]
        # the same answers under every seed: a policy's (seed, person, field) units pair with it
        untrained_tables[role] = unit_scores({seed: tested for seed in config.seeds}, METRICS)
        test = {}
        for f, score in scores["test"].items():
            test[f] = {"n": score.n}
            for name, value in score.present().items():
                test[f].update({name: value, f"{name}_std": None})  # no seeds: no spread
        row = {"role": role, "model": getattr(config.models, role), "policy": UNTRAINED}
        row |= {"alpha": None, "beta": None, "lr": None, "epochs": 0, "seeds": []}
        row |= {"validation_score": selection_score({0: scores}), "test": test}
        by_role[role] = [row]
    for (role, policy), settings in table.items():
        best = max(settings, key=lambda k: selection_score(settings[k]))
        by_seed = settings[best]
        study_tables.setdefault(role, {})[policy] = unit_scores(
            test_rows[(role, policy)][best], METRICS
        )
        fields = list(next(iter(by_seed.values()))["test"])
        test = {}
        for f in fields:
            per_seed = [s["test"][f] for s in by_seed.values()]
            test[f] = {"n": per_seed[0].n}
            for name in per_seed[0].present():
                mean, std = _mean_std([score.present()[name] for score in per_seed])
                test[f].update({name: mean, f"{name}_std": std})
        alpha, beta, lr, epoch = best
        by_role[role].append(
            {
                "role": role,
                "model": getattr(config.models, role),
                "policy": policy,
                "alpha": alpha,
                "beta": beta,
                "lr": lr,
                "epochs": epoch,
                "seeds": sorted(by_seed),
                "validation_score": selection_score(by_seed),
                "test": test,
            }
        )
    # a run of probes without questions has no QA metric anywhere: its study shows the cloze
    # metrics alone rather than columns of "-"
    scored = {
        m
        for tables in study_tables.values()
        for t in tables.values()
        for u in t.values()
        for m in u
    }
    study_metrics = METRICS if "em" in scored else tuple(m for m in METRICS if m in scored)
    # per role, the study against the first baseline run, then against each other one
    studies: dict[str, list[dict]] = {}
    for role, tables in study_tables.items():
        untrained = untrained_tables[role]
        studies[role] = []
        for baseline in config.report.baselines:
            if baseline == UNTRAINED:
                tables_ = {UNTRAINED: untrained, **tables}
                studies[role].append(summarize_study(tables_, UNTRAINED, metrics=study_metrics))
            elif baseline in tables:
                study = summarize_study(tables, baseline=baseline, metrics=study_metrics)
                options = {k: study[k] for k in ("fields", "metrics", "level", "n_boot")}
                means = policy_means(untrained, seed=study["bootstrap_seed"], **options)
                study["policies"] = [UNTRAINED, *study["policies"]]
                study["means"] = {UNTRAINED: means, **study["means"]}
                studies[role].append(study)
    return {
        "unit": list(UNITS["bios" if config.corpus.bios is not None else "texts"]),
        "select_on": config.report.select_on,
        "select_metric": metric,
        "rows": [row for role_rows in by_role.values() for row in role_rows],
        "study": {role: found[0] for role, found in studies.items() if found},
        "other_baselines": {
            role: {study["baseline"]: study for study in found[1:]}
            for role, found in studies.items()
            if found[1:]
        },
    }


def _cell(score: dict, metric: str) -> str:
    """`metric`'s mean (± std over seeds, where there are seeds) in one field's scores; "-"
    where the field has none (a choice probe where no question of the field got a
    distractor)."""
    if metric not in score:
        return "-"
    mean, std = score[metric], score[f"{metric}_std"]
    return f"{mean:.2f} ± {std:.2f}" if std else f"{mean:.2f}"


def markdown_tables(summary: dict) -> str:
    """Table 2's layout (policy x model on the selected fields), the knowledge probes on those
    fields, then every field."""
    rows = summary["rows"]
    if not rows:
        return "No results.\n"
    fields = [f for f in rows[0]["test"] if f != "overall"] + ["overall"]
    chosen = [f for f in summary["select_on"] if f in rows[0]["test"]] or ["overall"]
    measured = rows[0]["test"]["overall"]
    probes = [m for m in PROBE_COLUMNS if m in measured]

    def table(columns: list[str], metrics: Sequence[str]) -> list[str]:
        head = ["model", "policy", "α", "β", "lr", "epochs"]
        head += [f"{f} {LABELS.get(m, m)}" for f in columns for m in metrics]
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for r in rows:
            cells = [
                r["model"],
                r["policy"],
                "-" if r["alpha"] is None else f"{r['alpha']:g}",
                "-" if r["beta"] is None else f"{r['beta']:g}",
                "-" if r["lr"] is None else f"{r['lr']:g}",
                str(r["epochs"]),
            ]
            cells += [_cell(r["test"][f], m) for f in columns for m in metrics]
            lines.append("| " + " | ".join(cells) + " |")
        return lines

    seeds = next((r["seeds"] for r in rows if r["seeds"]), [])
    n_test = rows[0]["test"]["overall"]["n"]
    note = (
        f"{n_test} test questions; settings chosen per policy on validation "
        f"{LABELS.get(summary['select_metric'], summary['select_metric'])} of "
        f"{', '.join(chosen)}; mean ± std over seeds {seeds}."
    )
    if any(r["policy"] == UNTRAINED for r in rows):
        note += (
            f" {UNTRAINED}: the base model before any training, evaluated once on the same "
            "questions; no seed changes it, so it has no ± std."
        )
    models = {r["role"]: r["model"] for r in rows}
    one, many = summary.get("unit", UNITS["bios"])
    studies = []
    for role, study in summary["study"].items():
        studies += [f"Trained model: {models[role]} ({role}), each policy at its chosen setting."]
        studies += [""]
        if UNTRAINED in study["means"]:
            studies += [
                f"{UNTRAINED}: one evaluation of the base model, standing for every seed; "
                f"its CI is over the test {many} alone.",
                "",
            ]
        studies += [study_markdown(study, unit=(one, many))]
        for other in summary["other_baselines"].get(role, {}).values():
            studies += [study_markdown(other, means=False, unit=(one, many))]
    if "em" not in measured:  # probes without questions: their cloze metrics per span kind
        out = ["## Span-cloze probes", "", note.replace("questions", "probes", 1), ""]
        out += [
            "Each span of the texts (a date, a number with its unit, a name, ...) as a cloze: "
            "its sentence after the text's title, cut right before the span; columns are the "
            "span kinds. EM/F1: the greedy continuation; choice: the span out-scores every "
            "distractor (spans of the same kind from other texts) by log-probability; logprob: "
            "mean log-probability per token of the span.",
            "",
        ]
        for metric in (m for m in CLOZE_COLUMNS if m in measured):
            out += [f"### {LABELS.get(metric, metric)}", "", *table(fields, [metric]), ""]
        return "\n".join([*out, *studies])
    out = ["## Table 2: QA after continual pretraining", "", note, "", *table(chosen, ["em", "f1"])]
    if probes:
        out += [
            "",
            "## Knowledge probes",
            "",
            "cloze: the field's sentence with the full name, cut before the value, answered "
            "greedily (EM); choice: the gold answer out-scores every distractor by "
            "log-probability (after the cloze prompt, or the QA prompt); logprob: mean "
            "log-probability per token of the gold answer after the QA prompt.",
            "",
            *table(chosen, probes),
        ]
    out += ["", "## All fields", "", *table(fields, ["em", "f1"]), ""]
    return "\n".join([*out, *studies])


# --------------------------------------------------------------------------- Figures 2 and 3

CATEGORIES = (*SPANS, "relation", "other")
"""What a token is: part of the name or a field value, a word of the queried sentence (the
relation words, e.g. "had a professional role at"), or anything else."""


def span_categories(record: Record, offsets: Sequence[tuple[int, int]]) -> list[str | None]:
    """The span of a biography (name or a field) that each token overlaps, or None."""
    spans = {n: record.spans[n] for n in SPANS if n in record.spans}
    return [
        next((n for n, (lo, hi) in spans.items() if start < hi and end > lo), None)
        for start, end in offsets
    ]


def token_categories(record: Record, offsets: Sequence[tuple[int, int]], query: int) -> list[str]:
    """The category of each token of a biography, for a query token in the company sentence."""
    sentence_start = record.text.rfind(". ", 0, offsets[query][0]) + 1
    end_of_query = offsets[query][1]
    return [
        span or ("relation" if start >= sentence_start and end <= end_of_query else "other")
        for span, (start, end) in zip(span_categories(record, offsets), offsets, strict=True)
    ]


def drop_by_span(
    records: Sequence[Record], rows: Sequence[TextScores], configs: Sequence[AugmentConfig]
) -> dict[str, float]:
    """Mean drop probability of the word tokens (those the scores mark eligible: no punctuation
    or special token, protected ones included) of each biography span (name, each field) and of
    the other words, averaged over `configs` (one policy's seeds: only the shuffled ranking
    depends on the seed)."""
    from .augment import drop_probabilities

    categories = [
        (span or "other") if eligible else None
        for record, row in zip(records, rows, strict=True)
        for span, eligible in zip(span_categories(record, row.offsets), row.eligible, strict=True)
    ]  # [tokens]
    p = sum(drop_probabilities(rows, c, records) for c in configs) / len(configs)  # [tokens]
    out = {}
    for category in (*SPANS, "other"):
        values = [x for x, c in zip(p.tolist(), categories, strict=True) if c == category]
        if values:
            out[category] = sum(values) / len(values)
    return out


def top_rank_counts(
    rows: Sequence[tuple[Sequence[float], Sequence[bool], Sequence[str], int]], top: int = 10
) -> list[dict[str, int]]:
    """For rank 1..top, how often each category holds that rank over the rows.

    Each row is (weights, eligible, categories, query): tokens up to the query are ranked by
    weight, high to low, among eligible tokens (no BOS, punctuation or spaces: footnote 2).
    """
    counts = [dict.fromkeys(CATEGORIES, 0) for _ in range(top)]
    for weights, eligible, categories, query in rows:
        order = sorted((j for j in range(query + 1) if eligible[j]), key=lambda j: -weights[j])
        for rank, j in enumerate(order[:top]):
            counts[rank][categories[j]] += 1
    return counts


def company_query_rows(
    records: Sequence[Record],
    specs: Mapping[str, str],
    config: AttentionConfig | None = None,
    device_map: Any = None,
    max_memory: dict | None = None,
) -> dict[str, list[dict]]:
    """Per model role, the attention row of the token just before the company value of each
    biography (mean over layers and heads) with each token's category; computed and cached as
    `elusive.attention.query_attentions` does (under `accelerate launch` a collective: the
    processes share the texts). `device_map` and `max_memory` dispatch each model over several
    devices (`elusive.models.load_model`).

    Returns {role: [{"weights", "eligible", "categories", "query", "tokens"}, ...]}.
    """
    from .attention import AttentionConfig, query_attentions, tokenize
    from .models import load_tokenizer

    config = config or AttentionConfig()
    out: dict[str, list[dict]] = {}
    for role, spec in specs.items():
        tokenizer = load_tokenizer(spec, cache_dir=config.cache_dir)
        queries = []
        for record in records:
            start = record.spans["company"][0]
            tok = tokenize(tokenizer, record.text, config.prefix)
            offsets = [tok.offsets[k] for k in tok.kept]
            queries.append(max(n for n, (s, e) in enumerate(offsets) if s < e <= start))
        texts = [record.text for record in records]
        rows = query_attentions(
            spec,
            texts,
            queries,
            config,
            progress=False,
            device_map=device_map,
            max_memory=max_memory,
        )
        out[role] = [
            {
                "weights": row.weights,
                "eligible": row.eligible,
                "categories": token_categories(record, row.offsets, row.query),
                "query": row.query,
                "tokens": row.tokens,
            }
            for record, row in zip(records, rows, strict=True)
        ]
    return out


def contrast_rows(large: Sequence[dict], small: Sequence[dict]) -> list[dict]:
    """Rows whose weights are large - small, for texts both models tokenize alike."""
    out = []
    for a, b in zip(large, small, strict=True):
        if a["tokens"] != b["tokens"]:
            raise ElusiveError(
                "the two models tokenize a biography differently: Figure 3 needs one tokenizer"
            )
        weights = [x - y for x, y in zip(a["weights"], b["weights"], strict=True)]
        out.append({**a, "weights": weights})
    return out


def _counts(rows: Sequence[dict], top: int) -> list[dict[str, int]]:
    return top_rank_counts(
        [(r["weights"], r["eligible"], r["categories"], r["query"]) for r in rows], top
    )


# --------------------------------------------------------------------------- write_report


def _analysis(run) -> dict[str, list[dict]]:
    """Company-query attention rows of both models over `report.analysis_texts` fresh
    biographies (same generator settings as the corpus), cached in report/analysis.json with
    what they were computed from (both models' fingerprints, the scoring options, the
    generator's settings) and recomputed when any of it changes. Under
    `accelerate launch` every process calls it and scores its share (`company_query_rows`)."""
    from .attention import AttentionConfig
    from .bios import generate_bios
    from .config import options
    from .io import atomic_write_text
    from .models import model_fingerprint

    config = run.config
    n = config.report.analysis_texts
    path = run.path("report", "analysis.json")
    bios = dataclasses.replace(config.corpus.bios, n=n)
    specs = {"large": config.models.large, "small": config.models.small}
    attention = AttentionConfig(**options(config.attention))
    # what the rows depend on: a change of either model, of the scoring options or of the
    # generator redoes them (the models by content, so a retrained folder at one path counts)
    key = {
        "bios": dataclasses.asdict(bios),
        "models": {role: model_fingerprint(spec) for role, spec in specs.items()},
        "attention": dataclasses.asdict(attention),
    }
    key = json.loads(json.dumps(key))  # as read back (tuples become lists)
    if path.exists():
        cached = read_json(path)
        if cached.get("key") == key:
            return cached["rows"]
    records = generate_bios(bios)[0]
    rows = company_query_rows(
        records, specs, attention, config.models.device_map, config.models.max_memory
    )
    if run.is_main:
        atomic_write_text(path, json.dumps({"n": n, "key": key, "rows": rows}) + "\n")
    return rows


def _drops(run, records: Sequence[Record], rows: Sequence[dict]) -> dict[str, dict[str, float]]:
    """`drop_by_span` of every (trained role, policy) of the summary at its chosen setting."""
    from .augment import AugmentConfig
    from .runs import scores_folder

    out = {}
    for r in rows:
        if r["policy"] == UNTRAINED:  # trained on nothing: drops nothing
            continue
        scores = {row.id: row for row in read_scores(run.path(scores_folder(r["policy"])))}
        texts = [scores[record.id] for record in records]
        configs = [
            AugmentConfig(
                r["policy"],
                r["alpha"] or 0.0,
                r["beta"] or 0.0,
                seed=seed,
                score_of=r["role"],
                protect=run.config.augment.protect,
            )
            for seed in r["seeds"]
        ]
        out[f"{r['role']} {r['policy']}"] = drop_by_span(records, texts, configs)
    return out


def _drops_markdown(drops: dict[str, dict[str, float]], protect: Sequence[str]) -> str:
    columns = list(next(iter(drops.values())))
    lines = [
        "## Where each policy drops tokens",
        "",
        "Mean drop probability of the words (tokens but punctuation) of each span of the "
        "training biographies, per policy at its chosen setting, over its seeds"
        + (f"; protected: {', '.join(protect)}" if protect else "")
        + ".",
        "",
        "| model, policy | " + " | ".join(columns) + " |",
        "|" + "---|" * (len(columns) + 1),
    ]
    for label, row in drops.items():
        lines.append(f"| {label} | " + " | ".join(f"{row[c]:.3f}" for c in columns) + " |")
    return "\n".join([*lines, ""])


def loss_curves(run, rows: Sequence[dict], out: Path) -> tuple[list[Path], list[str]]:
    """Per trained role, loss-ROLE.png: the training loss per optimizer step of each (policy,
    seed) of `rows` (the summary's, each policy at its chosen setting), from the training run's
    log.json; rows without a training run (the untrained reference) are left out. Returns the
    figures and their lines for report.md's figure list, which link them."""
    from .runs import Cell

    curves: dict[str, dict[str, list[tuple[int, float]]]] = {}  # role -> label -> points
    for r in rows:
        for seed in r["seeds"] if r["policy"] != "untrained" else []:
            cell = Cell(r["role"], r["policy"], r["alpha"], r["beta"], r["lr"], seed)
            log = run.path("train", cell.train_tag, "log.json")
            if log.is_file():
                points = [(s["step"], s["loss"]) for s in read_json(log)["steps"]]
                curves.setdefault(r["role"], {})[f"{r['policy']} seed {seed}"] = points
    written, lines = [], []
    for role, by_run in curves.items():
        name, model = f"loss-{role}.png", getattr(run.config.models, role)
        title = f"{model} ({role}): training loss, each policy at its chosen setting"
        written.append(plot_loss_curves(by_run, title, out / name))
        lines.append(
            f"- [{name}]({name}): training loss per optimizer step of {model} ({role}), one "
            "line per policy (at its chosen setting) and seed."
        )
    return written, lines


PAIRED_METRICS = ("em", "cloze_em", "cloze_choice", "choice", "logprob")
"""The metrics of the paired-difference figure (report.json has every metric)."""


def write_report(run) -> list[Path]:
    """Write report.md, report.json and the figures into the run's report/ folder. Under
    `accelerate launch` every process calls it: they share the attention analysis of Figures
    2-3 (`_analysis`), then the main process writes everything (the others return [])."""
    from .corpus import read_corpus
    from .io import atomic_write_text
    from .models import load_tokenizer

    config = run.config
    analysis = _analysis(run) if config.corpus.bios is not None else None
    if not run.is_main:
        return []
    out = run.path("report")
    summary = summarize(run)
    lines = [f"# elusive report: {run.root}", "", markdown_tables(summary)]
    written, figures = [], []
    for role, study in summary["study"].items():
        if study["differences"]:
            name = f"paired-{role}.png"
            written.append(plot_paired_differences(study, out / name, metrics=PAIRED_METRICS))
            figures.append(
                f"- {name}: per field and metric, each policy's paired difference from "
                f"{study['baseline']} (same test {summary['unit'][1]}, same seeds) with its 95% "
                "bootstrap CI."
            )
    curves, curve_lines = loss_curves(run, summary["rows"], out)
    written, figures = written + curves, figures + curve_lines
    if config.corpus.bios is not None:  # the figures need biography fields
        records = read_corpus(run.path("corpus", "corpus.jsonl"))
        tokenizer = load_tokenizer(getattr(config.models, config.models.trained[0]))
        distances = field_token_distances(records, tokenizer)
        results = {
            f"{r['role']} {r['policy']}": {
                f: FieldScore(n=s["n"], **{m: s[m] for m in METRICS if m in s})
                for f, s in r["test"].items()
            }
            for r in summary["rows"]
        }
        written.append(plot_accuracy_vs_distance(distances, results, out / "fig1.png"))
        top = 10
        counts = {role: _counts(analysis[role], top) for role in ("large", "small")}
        counts["large - small"] = _counts(contrast_rows(analysis["large"], analysis["small"]), top)
        summary["figures"] = {
            "distance_from_name": {f: sum(d) / len(d) for f, d in distances.items() if d},
            "top_rank_categories": counts,
            "analysis_texts": len(analysis["large"]),
        }
        panels = {
            f"{role}: {getattr(config.models, role)}": counts[role] for role in ("large", "small")
        }
        written.append(plot_rank_categories(panels, out / "fig2.png"))
        written.append(
            plot_rank_categories(
                {"large - small (contrast)": counts["large - small"]}, out / "fig3.png"
            )
        )
        summary["drops"] = _drops(run, records, summary["rows"])
        lines += [_drops_markdown(summary["drops"], config.augment.protect)]
        n = len(analysis["large"])
        figures += [
            "- fig1.png: test QA EM (and cloze EM) per field against the field's mean token "
            "distance from the name (Figure 1).",
            f"- fig2.png: what kind of token holds each top-10 attention rank of the token "
            f"before the company value, over {n} biographies, per model (Figure 2).",
            "- fig3.png: the same for the large - small attention difference (Figure 3).",
        ]
    if figures:
        lines += ["## Figures", "", *figures, ""]
    written.insert(0, atomic_write_text(out / "report.json", json.dumps(summary, indent=2) + "\n"))
    written.insert(0, atomic_write_text(out / "report.md", "\n".join(lines)))
    return written
