"""The run report: the paper's tables and figures, rendered from a run's summary
(`elusive.experiment.summary.gather`) alone; nothing here loads a model.

- Table 2: per trained model and policy, the setting picked on validation questions and its
  test EM/F1 (mean ± std over seeds); a second table with every field.
- Figure 1: QA accuracy per field against the field's token distance from the person's name
  in the training text (accuracy falls as the distance grows).
- Figures 2 and 3: for the token just before the company value, which kind of token (name,
  date, city, ..., relation word, other) holds each of the top-10 attention ranks, for each
  model (Figure 2) and for the large - small difference (Figure 3), from the `analysis`
  stage's rows (`elusive.experiment.analysis`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from elusive.experiment.figures import (
    plot_accuracy_vs_distance,
    plot_loss_curves,
    plot_paired_differences,
    plot_rank_categories,
)
from elusive.experiment.summary import RunSummary, Selection, gather
from elusive.io import atomic_write_text
from elusive.metrics import LABELS, METRICS, FieldScore
from elusive.options import UNTRAINED
from elusive.stats import study_markdown

PROBE_COLUMNS = ("cloze_em", "cloze_choice", "choice", "logprob")
"""The probes the report's probe table shows (every probe is in report.json)."""
CLOZE_COLUMNS = ("cloze_em", "cloze_f1", "cloze_choice", "cloze_logprob")
"""The tables of a run of probes without questions, one per metric with a column per span
kind."""


# --------------------------------------------------------------------------- the run report


def _cell(score: dict, metric: str) -> str:
    """`metric`'s mean (± std over seeds, where there are seeds) in one field's scores; "-"
    where the field has none (a choice probe where no question of the field got a
    distractor)."""
    if metric not in score:
        return "-"
    mean, std = score[metric], score[f"{metric}_std"]
    return f"{mean:.2f} ± {std:.2f}" if std else f"{mean:.2f}"


def markdown_tables(summary: Selection) -> str:
    """Table 2's layout (policy x model on the selected fields), the knowledge probes on those
    fields, then every field, then the study statistics."""
    rows = summary.rows
    if not rows:
        return "No results.\n"
    fields = [f for f in rows[0].test if f != "overall"] + ["overall"]
    chosen = [f for f in summary.select_on if f in rows[0].test] or ["overall"]
    measured = rows[0].test["overall"]
    probes = [m for m in PROBE_COLUMNS if m in measured]

    def table(columns: list[str], metrics: Sequence[str]) -> list[str]:
        head = ["model", "policy", "α", "β", "lr", "epochs"]
        head += [f"{f} {LABELS.get(m, m)}" for f in columns for m in metrics]
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for r in rows:
            cells = [
                r.model,
                r.policy,
                "-" if r.alpha is None else f"{r.alpha:g}",
                "-" if r.beta is None else f"{r.beta:g}",
                "-" if r.lr is None else f"{r.lr:g}",
                str(r.epochs),
            ]
            cells += [_cell(r.test[f], m) for f in columns for m in metrics]
            lines.append("| " + " | ".join(cells) + " |")
        return lines

    seeds = next((r.seeds for r in rows if r.seeds), [])
    n_test = rows[0].test["overall"]["n"]
    if all(r.settings == 1 for r in rows):
        chosen_how = "one setting per policy (nothing chosen on validation)"
    else:
        chosen_how = (
            "settings chosen per policy on validation "
            f"{LABELS.get(summary.select_metric, summary.select_metric)} of {', '.join(chosen)}"
        )
    note = f"{n_test} test questions; {chosen_how}; mean ± std over seeds {seeds}."
    if any(r.policy == UNTRAINED for r in rows):
        note += (
            f" {UNTRAINED}: the base model before any training, evaluated once on the same "
            "questions; no seed changes it, so it has no ± std."
        )
    models = {r.role: r.model for r in rows}
    one, many = summary.unit
    studies = []
    for role, study in summary.study.items():
        studies += [f"Trained model: {models[role]} ({role}), each policy at its chosen setting."]
        studies += [""]
        if UNTRAINED in study["means"]:
            studies += [
                f"{UNTRAINED}: one evaluation of the base model, standing for every seed; "
                f"its CI is over the test {many} alone.",
                "",
            ]
        studies += [study_markdown(study, unit=(one, many))]
        for other in summary.other_baselines.get(role, {}).values():
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


def loss_figures(summary: RunSummary, out: Path) -> tuple[list[Path], list[str]]:
    """Per trained role, loss-ROLE.png: the training loss per optimizer step of each (policy,
    seed) of the chosen settings (`RunSummary.loss`). Returns the figures and their lines for
    report.md's figure list, which link them."""
    written, lines = [], []
    for role, by_run in summary.loss.items():
        name, model = f"loss-{role}.png", summary.models[role]
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
    """Write report.md, report.json and the figures into the run's report/ folder, from the run
    folder alone (`elusive.experiment.summary.gather`, then `render`)."""
    return render(gather(run), run.path("report"))


def render(summary: RunSummary, out: Path) -> list[Path]:
    """Write report.md, report.json and the figures of `summary` into `out`; returns them."""
    selection = summary.selection
    lines = [f"# elusive report: {summary.root}", "", markdown_tables(selection)]
    written, figures = [], []
    for role, study in selection.study.items():
        if study["differences"]:
            name = f"paired-{role}.png"
            written.append(plot_paired_differences(study, out / name, metrics=PAIRED_METRICS))
            figures.append(
                f"- {name}: per field and metric, each policy's paired difference from "
                f"{study['baseline']} (same test {selection.unit[1]}, same seeds) with its 95% "
                "bootstrap CI."
            )
    curves, curve_lines = loss_figures(summary, out)
    written, figures = written + curves, figures + curve_lines
    if (bios := summary.bios) is not None:  # the figures need biography fields
        results = {
            f"{r.role} {r.policy}": {
                f: FieldScore(n=s["n"], **{m: s[m] for m in METRICS if m in s})
                for f, s in r.test.items()
            }
            for r in selection.rows
        }
        written.append(plot_accuracy_vs_distance(bios.distances, results, out / "fig1.png"))
        lines += [_drops_markdown(bios.drops, summary.protect)]
        figures += [
            "- fig1.png: test QA EM (and cloze EM) per field against the field's mean token "
            "distance from the name (Figure 1).",
        ]
        if (counts := bios.top_rank_categories) is None:
            figures.append(
                "- Figures 2-3 are not drawn: they compare the attention of the large and the "
                "small model, and this run has no models.large."
            )
        else:
            roles = ("large", "small")
            panels = {f"{role}: {summary.models[role]}": counts[role] for role in roles}
            written.append(plot_rank_categories(panels, out / "fig2.png"))
            written.append(
                plot_rank_categories(
                    {"large - small (contrast)": counts["large - small"]}, out / "fig3.png"
                )
            )
            figures += [
                f"- fig2.png: what kind of token holds each top-10 attention rank of the token "
                f"before the company value, over {bios.analysis_texts} biographies, per model "
                "(Figure 2).",
                "- fig3.png: the same for the large - small attention difference (Figure 3).",
            ]
    if figures:
        lines += ["## Figures", "", *figures, ""]
    report = json.dumps(summary.to_json(), indent=2) + "\n"
    written.insert(0, atomic_write_text(out / "report.json", report))
    written.insert(0, atomic_write_text(out / "report.md", "\n".join(lines)))
    return written
