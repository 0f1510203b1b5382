"""The run's summary: everything its report shows, gathered from the run folder into one typed
object (`gather`), which `elusive.experiment.report` renders without loading a model.

- The selection (`summarize`): per trained model and policy, the setting picked on validation
  questions, its test scores (mean ± std over seeds) and the study statistics against the
  baselines (`elusive.stats`).
- The training loss of each chosen run (its log.json).
- For a corpus of biographies: each field's token distance from the name (Figure 1), the
  top-rank token categories of the analysis (Figures 2-3, `elusive.experiment.analysis`) and where
  each chosen policy drops tokens.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from elusive.corpus.bios import FIELDS, SPANS
from elusive.corpus.records import Record
from elusive.errors import ElusiveError
from elusive.experiment import layout
from elusive.experiment.analysis import CATEGORIES, span_categories
from elusive.experiment.runs import Cell, Run, eval_dirs, scores_run, unscored_rows, untrained_dirs
from elusive.io import read_json
from elusive.metrics import METRICS
from elusive.options import UNTRAINED
from elusive.scoring.scores import TextScores, read_scores

if TYPE_CHECKING:
    from elusive.augment.dropout import AugmentConfig

UNITS = {"bios": ("person", "people"), "texts": ("text", "texts")}
"""What a run's questions are about (singular, plural): the units its statistics resample."""


@dataclass(frozen=True)
class Row:
    """One row of Table 2: a trained role's policy at its chosen setting, or its base model
    untrained (policy ``untrained``: no setting, epochs 0, no seeds)."""

    role: str
    model: str
    policy: str
    alpha: float | None
    beta: float | None
    lr: float | None
    epochs: int
    seeds: list[int]
    validation_score: float
    """The selection score of the setting (`summarize`)."""
    test: dict[str, dict[str, Any]]
    """Per field and ``overall``: ``n`` and every measured metric's mean over seeds with its
    standard deviation as ``METRIC_std`` (None without seeds)."""
    settings: int = 1
    """How many settings (alpha, beta, lr, epochs) the chosen one was picked from."""


@dataclass(frozen=True)
class Selection:
    """The settings chosen on validation, their test scores and the study statistics."""

    unit: tuple[str, str]
    """What the questions are about (singular, plural): the units the statistics resample."""
    select_on: list[str]
    select_metric: str
    """The metric the settings were chosen by (a cloze metric for probes without questions)."""
    rows: list[Row]
    """Per trained role, its untrained row, then one per policy."""
    study: dict[str, dict]
    """Per trained role, `elusive.stats.summarize_study` against the first baseline that ran."""
    other_baselines: dict[str, dict[str, dict]]
    """Per trained role and each further baseline, its study."""

    def to_json(self) -> dict[str, Any]:
        """As report.json holds it (JSON values: lists for tuples)."""
        return {**dataclasses.asdict(self), "unit": list(self.unit)}


@dataclass(frozen=True)
class BiosFigures:
    """What a corpus of biographies adds to the report: Figures 1-3 and the drops table."""

    distances: dict[str, list[int]]
    """Per field, each training biography's token distance of the value from the name."""
    top_rank_categories: dict[str, list[dict[str, int]]] | None
    """Per model and ``large - small``, for rank 1..10, how often each token category holds it;
    None for a run without ``models.large`` (no analysis: Figures 2-3 need both models)."""
    analysis_texts: int
    drops: dict[str, dict[str, float]]
    """Per "ROLE POLICY" at its chosen setting, the mean drop probability of each span."""


@dataclass(frozen=True)
class RunSummary:
    """Everything a run's report shows (`gather`)."""

    root: Path
    models: dict[str, str]
    """Each model role's spec (large, small)."""
    protect: list[str]
    """``augment.protect``: the spans no policy drops."""
    selection: Selection
    loss: dict[str, dict[str, list[tuple[int, float]]]]
    """Per trained role and "POLICY seed SEED" of the chosen settings: (step, loss) points."""
    bios: BiosFigures | None
    """None for a corpus of no biographies."""

    def to_json(self) -> dict[str, Any]:
        """report.json: the selection, then for biographies the figures' numbers and drops."""
        out = self.selection.to_json()
        if self.bios is not None:
            distances = self.bios.distances
            out["figures"] = {
                "distance_from_name": {f: sum(d) / len(d) for f, d in distances.items() if d},
                "top_rank_categories": self.bios.top_rank_categories,
                "analysis_texts": self.bios.analysis_texts,
            }
            out["drops"] = self.bios.drops
        return out


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


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    mean = sum(values) / len(values)
    var = sum((v - mean) ** 2 for v in values) / (len(values) - 1) if len(values) > 1 else 0.0
    return mean, var**0.5


def summarize(run: Run) -> Selection:
    """Pick the best setting per (trained role, policy) on the validation questions and give
    its test scores per field (QA EM/F1 and every probe) as mean and standard deviation over
    seeds; then, per trained role, the study statistics of `elusive.stats` over the test people
    and seeds of those settings: ``study`` pairs every policy with the first of
    ``report.baselines`` that ran (``none`` by default), ``other_baselines`` with each other.

    Each role's rows begin with ``untrained``: its base model evaluated without training
    (`elusive.experiment.runs.untrained_dirs`), one evaluation that no seed changes, so it has no
    seeds and no standard deviation (``None``). Its scores stand for every seed in the study, so its
    means have CIs over the test people like every policy's, and ``report.baselines`` may name
    it: each policy is then paired with it, unit by unit. It is paired with no other baseline
    (its distance from a trained policy would dwarf the policies' differences in the figure).

    The selection score is the mean validation ``report.select_metric`` (F1 by default) over
    the ``report.select_on`` fields (the paper's university and company), or over all questions
    for corpora without those fields. A run whose items are probes without questions (a user
    corpus without ``corpus.qa``: `elusive.corpus.cloze`) has no QA EM or F1: there ``em``/``f1``
    select by their cloze counterpart (``cloze_em``/``cloze_f1``) over all probes, and the
    summary's ``select_metric`` says so.
    """
    from elusive.io import iter_jsonl
    from elusive.metrics import aggregate
    from elusive.stats import policy_means, summarize_study, unit_scores

    config = run.config
    metric = config.report.select_metric
    split = read_json(run.path(layout.SPLIT_FILE))
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

    by_role: dict[str, list[Row]] = {}  # role -> its rows, untrained first
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
        model = getattr(config.models, role)
        by_role[role] = [
            Row(role, model, UNTRAINED, None, None, None, 0, [], selection_score({0: scores}), test)
        ]
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
            Row(
                role=role,
                model=getattr(config.models, role),
                policy=policy,
                alpha=alpha,
                beta=beta,
                lr=lr,
                epochs=epoch,
                seeds=sorted(by_seed),
                validation_score=selection_score(by_seed),
                test=test,
                settings=len(settings),
            )
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
    return Selection(
        unit=UNITS["bios" if config.corpus.bios is not None else "texts"],
        select_on=list(config.report.select_on),
        select_metric=metric,
        rows=[row for role_rows in by_role.values() for row in role_rows],
        study={role: found[0] for role, found in studies.items() if found},
        other_baselines={
            role: {study["baseline"]: study for study in found[1:]}
            for role, found in studies.items()
            if found[1:]
        },
    )


def drop_by_span(
    records: Sequence[Record], rows: Sequence[TextScores], configs: Sequence[AugmentConfig]
) -> dict[str, float]:
    """Mean drop probability of the word tokens (those the scores mark eligible: no punctuation
    or special token, protected ones included) of each biography span (name, each field) and of
    the other words, averaged over `configs` (one policy's seeds: only the shuffled ranking
    depends on the seed)."""
    from elusive.augment.dropout import drop_probabilities

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


def policy_drops(
    run: Run, records: Sequence[Record], rows: Sequence[Row]
) -> dict[str, dict[str, float]]:
    """`drop_by_span` of every (trained role, policy) of the summary at its chosen setting."""
    from elusive.augment.dropout import AugmentConfig

    out = {}
    unscored = None if scores_run(run.config) else unscored_rows(run.config, records)
    for r in rows:
        if r.policy == UNTRAINED:  # trained on nothing: drops nothing
            continue
        found = read_scores(run.path(layout.scores_of(r.policy))) if unscored is None else unscored
        scores = {row.id: row for row in found}
        texts = [scores[record.id] for record in records]
        configs = [
            AugmentConfig(
                r.policy,
                r.alpha or 0.0,
                r.beta or 0.0,
                seed=seed,
                score_of=r.role,
                protect=run.config.augment.protect,
            )
            for seed in r.seeds
        ]
        out[f"{r.role} {r.policy}"] = drop_by_span(records, texts, configs)
    return out


def loss_points(run: Run, rows: Sequence[Row]) -> dict[str, dict[str, list[tuple[int, float]]]]:
    """Per trained role, the training loss per optimizer step of each (policy, seed) of `rows`
    (each policy at its chosen setting), from the training run's log.json; rows without a
    training run (the untrained reference) are left out."""
    curves: dict[str, dict[str, list[tuple[int, float]]]] = {}  # role -> label -> points
    for r in rows:
        for seed in r.seeds if r.policy != UNTRAINED else []:
            cell = Cell(r.role, r.policy, r.alpha, r.beta, r.lr, seed)
            log = run.path(layout.training_log(cell))
            if log.is_file():
                points = [(s["step"], s["loss"]) for s in read_json(log)["steps"]]
                curves.setdefault(r.role, {})[f"{r.policy} seed {seed}"] = points
    return curves


def gather(run: Run) -> RunSummary:
    """The summary of a run folder whose stages have run (the analysis file included, for a
    corpus of biographies). It loads the first trained model's tokenizer (Figure 1's token
    distances), no model."""
    from elusive.corpus.records import read_corpus
    from elusive.experiment.analysis import read_analysis
    from elusive.models import load_tokenizer

    config = run.config
    selection = summarize(run)
    bios = None
    if config.corpus.bios is not None:  # the figures need biography fields
        records = read_corpus(run.path(layout.CORPUS_FILE))
        tokenizer = load_tokenizer(getattr(config.models, config.models.trained[0]))
        counts, analysed = None, 0
        if config.models.large is not None:  # Figures 2-3 need both models
            analysis = read_analysis(run)
            top = 10
            counts = {role: _counts(analysis[role], top) for role in ("large", "small")}
            pairs = contrast_rows(analysis["large"], analysis["small"])
            counts["large - small"] = _counts(pairs, top)
            analysed = len(analysis["large"])
        bios = BiosFigures(
            distances=field_token_distances(records, tokenizer),
            top_rank_categories=counts,
            analysis_texts=analysed,
            drops=policy_drops(run, records, selection.rows),
        )
    return RunSummary(
        root=run.root,
        models={role: getattr(config.models, role) for role in ("large", "small")},
        protect=list(config.augment.protect),
        selection=selection,
        loss=loss_points(run, selection.rows),
        bios=bios,
    )
