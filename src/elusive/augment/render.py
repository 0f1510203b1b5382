"""Figure 4: a text with each token coloured by its keep probability under a dropout policy
(`elusive.augment.dropout.token_views` gives the pieces), as HTML and as a PNG."""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from elusive.io import atomic_path

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
