"""Figures drawn from computed statistics (the numbers come from `elusive.stats`)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from .io import atomic_path


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
        ax.set_title(metric)
        ax.set_xlabel(f"{metric}: policy minus {baseline}")
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
