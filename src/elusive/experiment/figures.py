"""Drawing the report's figures; the numbers come from the modules that compute them.

- Figure 1 (`plot_accuracy_vs_distance`), Figures 2 and 3 (`plot_rank_categories`): from the
  run report (`elusive.experiment.report`). Figure 4, one text's keep probabilities, is drawn
  by `elusive.augment.render`.
- The paired differences of the study statistics (`plot_paired_differences`, `elusive.stats`).
- The training loss curves of a run (`plot_loss_curves`), from each training run's log.json.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from elusive.io import atomic_path
from elusive.metrics import LABELS, FieldScore


def save_png(fig, path: str | Path) -> Path:
    """Save a figure atomically (temp file beside `path`, then rename)."""
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=150, bbox_inches="tight")
    return Path(path)


def plot_paired_differences(
    summary: dict,
    out_png: str | Path,
    fields: Sequence[str] | None = None,
    metrics: Sequence[str] | None = None,
) -> Path:
    """The paired differences of `elusive.stats.summarize_study`: one panel per metric, the
    fields down the y axis, per policy a marker at the mean difference from the baseline with
    its CI as a bar, and a dashed line at 0 (right of it: the policy scored higher)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    differences, baseline = summary["differences"], summary["baseline"]
    fields = list(fields or summary["fields"])
    metrics = [  # only metrics some policy has a difference for
        m
        for m in (metrics or summary["metrics"])
        if any(m in cells.get(f, {}) for cells in differences.values() for f in fields)
    ]
    if not metrics:
        raise ValueError(f"the summary has no paired differences against {baseline!r} to plot")
    policies = list(differences)
    height = 1.2 + 0.3 * len(fields) * max(2, len(policies))  # room for every policy's marker
    fig, axes = plt.subplots(
        1, len(metrics), figsize=(3.6 * len(metrics), height), sharey=True, squeeze=False
    )
    band = 0.7  # share of a field's row the policies' markers spread over
    for ax, metric in zip(axes[0], metrics, strict=True):
        for number, policy in enumerate(policies):
            offset = (number - (len(policies) - 1) / 2) * band / max(1, len(policies))
            ys, means, below, above = [], [], [], []
            for row, field in enumerate(fields):
                cell = differences[policy].get(field, {}).get(metric)
                if cell is not None:
                    ys.append(row + offset)
                    means.append(cell["mean"])
                    below.append(cell["mean"] - cell["low"])
                    above.append(cell["high"] - cell["mean"])
            ax.errorbar(
                means,
                ys,
                xerr=[below, above],
                fmt="o",
                capsize=3,
                color=f"C{number}",
                label=f"{policy} - {baseline}",
            )
        ax.axvline(0, color="0.4", linestyle="--", linewidth=1)
        ax.set_title(LABELS.get(metric, metric))
        ax.set_xlabel(f"{LABELS.get(metric, metric)}: policy minus {baseline}")
        ax.grid(axis="x", alpha=0.3)
    axes[0][0].set_yticks(range(len(fields)), fields)
    axes[0][0].set_ylim(len(fields) - 0.5, -0.5)  # first field on top
    axes[0][0].set_ylabel("field")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.suptitle(
        f"Paired difference from {baseline!r} per test person and seed: mean and "
        f"{summary['level']:.0%} bootstrap CI (right of the dashed line: above {baseline})"
    )
    fig.tight_layout()
    try:
        return save_png(fig, out_png)
    finally:
        plt.close(fig)


# --------------------------------------------------------------------------- Figure 1


def plot_accuracy_vs_distance(
    distances: Mapping[str, Sequence[int]],
    results: Mapping[str, Mapping[str, FieldScore]],
    out_png: str | Path,
    metrics: Sequence[str] = ("em", "cloze_em"),
) -> Path:
    """Figure 1: a panel per metric of `metrics` that the results hold (QA EM, cloze EM, ...);
    one line per run in `results` (label -> scores per field), the field's mean token distance
    from the name on x, the metric on y; fields named at the first run's points."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    mean = {f: sum(d) / len(d) for f, d in distances.items() if d}
    first = next(iter(results.values()))
    shown = [m for m in metrics if any(s.present().get(m) is not None for s in first.values())]
    fig, axes = plt.subplots(1, len(shown), figsize=(6 * len(shown), 4), squeeze=False)
    for ax, metric in zip(axes[0], shown, strict=True):
        for number, (label, scores) in enumerate(results.items()):
            fields = sorted((f for f in mean if f in scores), key=mean.get)
            xs = [mean[f] for f in fields]
            ys = [getattr(scores[f], metric) for f in fields]
            ax.plot(xs, ys, marker="o", label=label)
            for f, x, y in zip(fields, xs, ys, strict=True):
                if number == 0:  # name the fields once, at the first run's points
                    ax.annotate(f, (x, y), textcoords="offset points", xytext=(4, 6), fontsize=8)
        name = LABELS.get(metric, metric)
        name = name if metric.startswith("cloze") else f"QA {name}"
        ax.set_xlabel("mean token distance between the name and the field value")
        ax.set_ylabel(name)
        ax.set_ylim(-0.05, 1.05)
        ax.grid(alpha=0.3)
        ax.legend()
        ax.set_title(f"{name} vs distance from the name")
    path = save_png(fig, out_png)
    plt.close(fig)
    return path


def plot_loss_curves(
    curves: Mapping[str, Sequence[tuple[int, float]]], title: str, out_png: str | Path
) -> Path:
    """Training loss over optimizer steps: one line per run in `curves` (label -> (step, loss)
    points), on a log scale where every loss is positive (training drives it toward 0)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for label, points in curves.items():
        ax.plot([s for s, _ in points], [loss for _, loss in points], label=label, linewidth=1)
    if all(loss > 0 for points in curves.values() for _, loss in points):
        ax.set_yscale("log")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("training loss (mean next-token cross-entropy)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    path = save_png(fig, out_png)
    plt.close(fig)
    return path


# --------------------------------------------------------------------------- Figures 2 and 3

COLOURS = {
    "name": "#d62728",
    "date": "#1f77b4",
    "city": "#aec7e8",
    "university": "#2ca02c",
    "major": "#98df8a",
    "company": "#9467bd",
    "relation": "#ff7f0e",
    "other": "#c7c7c7",
}


def plot_rank_categories(panels: Mapping[str, list[dict[str, int]]], out_png: str | Path) -> Path:
    """Figures 2 and 3: one stacked bar chart per panel; bar k shows which categories of token
    hold attention rank k (1 = most attended) and how often, as a share of the texts."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.8), squeeze=False)
    for ax, (title, counts) in zip(axes[0], panels.items(), strict=True):
        ranks = list(range(1, len(counts) + 1))
        bottom = [0.0] * len(counts)
        for category in COLOURS:  # the categories of elusive.experiment.report, in its order
            share = [c[category] / max(1, sum(c.values())) for c in counts]
            if any(share):
                ax.bar(ranks, share, bottom=bottom, color=COLOURS[category], label=category)
                bottom = [b + x for b, x in zip(bottom, share, strict=True)]
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("attention rank")
        ax.set_xticks(ranks)
        ax.set_ylim(0, 1)
    axes[0][0].set_ylabel("share of biographies")
    legend = {}  # every category drawn in any panel, in COLOURS order
    for ax in axes[0]:
        handles, labels = ax.get_legend_handles_labels()
        legend.update(zip(labels, handles, strict=True))
    shown = [c for c in COLOURS if c in legend]
    fig.legend([legend[c] for c in shown], shown, loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.tight_layout()
    path = save_png(fig, out_png)
    plt.close(fig)
    return path
