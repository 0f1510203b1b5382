"""Drawing the figures; the numbers come from the modules that compute them.

- Figure 1 (`plot_accuracy_vs_distance`), Figures 2 and 3 (`plot_rank_categories`): from the
  run report (`elusive.report`).
- Figure 4 (`render_html`, `render_png`): a text with each token coloured by its keep
  probability, from `elusive.augment.token_views`.
- The paired differences of the study statistics (`plot_paired_differences`, `elusive.stats`).
- The training loss curves of a run (`plot_loss_curves`), from each training run's log.json.
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .io import atomic_path
from .metrics import LABELS, FieldScore


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
        for category in COLOURS:  # the categories of elusive.report, in its order
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


# --------------------------------------------------------------------------- Figure 4

_CMAP = "YlOrRd"
_NEVER = "#9a9a9a"  # text colour of tokens that are never dropped


def _colour(keep: float) -> tuple[str, str]:
    """Box and text colour (hex) of a token with keep probability `keep`."""
    from matplotlib import colormaps, colors

    rgba = colormaps[_CMAP](0.05 + 0.8 * keep)
    r, g, b = rgba[:3]
    light = 0.299 * r + 0.587 * g + 0.114 * b > 0.55
    return colors.to_hex(rgba), "#000000" if light else "#ffffff"


@dataclass
class TokenView:
    """One token of Figure 4: its text (with leading whitespace), keep probability, rank."""

    text: str
    keep: float
    rank: int
    eligible: bool


def render_html(views: Sequence[TokenView], title: str, caption: str) -> str:
    """Figure 4 as a standalone HTML page: each token on a box coloured by its keep probability,
    `caption` (how the policy drops) under the text."""
    spans = []
    for v in views:
        lead = v.text[: len(v.text) - len(v.text.lstrip())]
        body = html.escape(v.text[len(lead) :])
        if not v.eligible:
            spans.append(f'{lead}<span class="never" title="never dropped">{body}</span>')
            continue
        box, ink = _colour(v.keep)
        tip = f"keep {v.keep:.2f}" + (f", rank {v.rank}" if v.rank >= 0 else "")
        spans.append(
            f'{lead}<span class="tok" style="background:{box};color:{ink}" '
            f'title="{tip}">{body}</span>'
        )
    stops = ", ".join(_colour(k)[0] + f" {100 * k:.0f}%" for k in np.linspace(0, 1, 11))
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body {{ font-family: sans-serif; max-width: 52em; margin: 2em auto; line-height: 2.1; }}
.text {{ font-size: 1.15em; white-space: pre-wrap; }}
.tok {{ padding: 0.15em 0.1em; border-radius: 0.2em; box-shadow: inset -1px 0 0 #fff; }}
.never {{ color: {_NEVER}; }}
.bar {{ height: 1em; width: 24em; background: linear-gradient(to right, {stops}); }}
.legend {{ font-size: 0.9em; line-height: 1.4; margin-top: 1.5em; }}
</style></head><body>
<h3>{html.escape(title)}</h3>
<div class="text">{"".join(spans)}</div>
<div class="legend"><div>keep probability (colour), {html.escape(caption)}</div>
<div class="bar"></div><div style="width:24em;display:flex;justify-content:space-between">
<span>0</span><span>0.5</span><span>1</span></div>
<div><span class="never">grey</span>: punctuation and special tokens, never dropped</div>
</div></body></html>
"""


def render_png(
    views: Sequence[TokenView], title: str, caption: str, path: str | Path, width: int = 64
) -> Path:
    """Figure 4 as a PNG: the text wrapped at `width` characters, tokens on coloured boxes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib import colors
    from matplotlib.cm import ScalarMappable
    from matplotlib.patches import Rectangle

    # Lay tokens out on a grid of monospace character cells, wrapping at token boundaries.
    placed: list[tuple[int, int, str, TokenView]] = []  # (line, column, text, token)
    line, col = 0, 0
    for v in views:
        text = " ".join(v.text.split("\n")).replace("\t", " ")
        body = text.lstrip()
        if col + len(text) > width and col > 0:
            line, col = line + 1, 0
        else:
            col += len(text) - len(body)
        if body:
            placed.append((line, col, body, v))
        col += len(body)
    lines = line + 1

    font, char_w, line_h = 13, 0.602 * 13 / 72, 0.42  # inches; DejaVu Sans Mono advance
    top, bottom, side = 0.55, 0.95, 0.3
    fig = plt.figure(figsize=(width * char_w + 2 * side, lines * line_h + top + bottom), dpi=150)
    fig_w, fig_h = fig.get_size_inches()
    ax = fig.add_axes([side / fig_w, bottom / fig_h, 1 - 2 * side / fig_w, lines * line_h / fig_h])
    ax.set_xlim(0, width)
    ax.set_ylim(lines, 0)
    ax.axis("off")
    for row, column, body, v in placed:
        if v.eligible:
            box, ink = _colour(v.keep)
            ax.add_patch(
                Rectangle((column, row + 0.12), len(body), 0.76, fc=box, ec="white", lw=0.8)
            )
        else:
            ink = _NEVER
        ax.text(
            column, row + 0.5, body, family="DejaVu Sans Mono", size=font, va="center", color=ink
        )
    fig.text(side / fig_w, 1 - 0.3 / fig_h, title, size=12, va="center", weight="bold")

    cmap = colors.ListedColormap([_colour(k)[0] for k in np.linspace(0, 1, 256)])
    bar = fig.add_axes([side / fig_w, 0.38 / fig_h, 0.35, 0.16 / fig_h])
    fig.colorbar(ScalarMappable(colors.Normalize(0, 1), cmap), cax=bar, orientation="horizontal")
    bar.tick_params(labelsize=8)
    fig.text(side / fig_w, 0.75 / fig_h, f"keep probability; {caption}", size=9, va="center")
    fig.text(
        0.35 + 1.2 * side / fig_w,
        0.46 / fig_h,
        "grey text: never dropped",
        size=9,
        color=_NEVER,
        va="center",
    )
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp)
    plt.close(fig)
    return Path(path)
