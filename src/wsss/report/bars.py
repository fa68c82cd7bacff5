"""mIoU bars: one panel per split, variants as groups, pipeline stages as bars."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from wsss.report.style import (
    legend_cols,
    ordered_unique,
    pyplot,
    require,
    save,
    split_key,
    stage_parts,
    stage_sort_key,
    stage_styles,
)


def miou_bars(evals: list[dict], out_png: str | Path, title: str = "") -> None:
    """Grouped bars of mIoU (%): one panel per split, variants as groups, stages as bars.

    `evals` are evaluation dicts (keys variant, stage, split, miou as a fraction). Variants
    keep their order of first appearance (the caller's config order); stages follow the
    pipeline; a stage has the same colour in every panel. A later evaluation of the same
    (variant, stage, split) replaces an earlier one. Panels sit side by side while the figure
    stays under ~14 in wide, else they are stacked.
    """
    require(evals, ("variant", "stage", "split", "miou"))
    plt = pyplot()

    value: dict[tuple[str, str, str], float] = {}
    for e in evals:
        miou = e["miou"]
        value[(e["split"], e["variant"], e["stage"])] = np.nan if miou is None else 100 * miou
    splits = sorted({e["split"] for e in evals}, key=split_key)
    all_stages = sorted({e["stage"] for e in evals}, key=stage_sort_key)
    styles = stage_styles(all_stages)
    panels = []
    for split in splits:
        variants = ordered_unique(e["variant"] for e in evals if e["split"] == split)
        stages = sorted({e["stage"] for e in evals if e["split"] == split}, key=stage_sort_key)
        panels.append((split, variants, stages))

    # x is in inches, so bars are equally wide in every panel whatever their count
    gap, max_w = 0.45, 14.0

    def panel_w(bar: float, variants: list[str], stages: list[str]) -> float:
        return len(variants) * (len(stages) * bar + gap)

    bar_in = 0.3
    stacked = sum(panel_w(bar_in, v, s) + 0.8 for _, v, s in panels) > max_w
    if stacked:
        widest = max(panels, key=lambda p: panel_w(bar_in, p[1], p[2]))
        n_bars = len(widest[1]) * len(widest[2])
        bar_in = min(bar_in, max(0.14, (max_w - 0.8 - gap * len(widest[1])) / n_bars))
    widths = [panel_w(bar_in, v, s) for _, v, s in panels]
    if stacked:
        fig_w = max(4.5, max(widths) + 0.9)
        room = [max(widths)] * len(panels)
    else:
        fig_w = max(4.5, sum(widths) + 0.8 * len(panels) + 0.1)
        room = [w * (fig_w - 0.8 * len(panels) - 0.1) / sum(widths) for w in widths]
    handles, n_legend_cols = _stage_legend(all_stages, styles, fig_w)
    if 1.45 * n_legend_cols > fig_w:  # one column per source must fit: widen the figure
        grow = 1.45 * n_legend_cols / fig_w
        fig_w, room = fig_w * grow, [r * grow for r in room]
    # an axis wider than its bars need gets empty x range instead of bars wider than 0.45 in
    xlims = [max(w, bar_in * r / 0.45) for w, r in zip(widths, room, strict=True)]
    shown_bar = [bar_in * r / x for r, x in zip(room, xlims, strict=True)]
    vertical = [b < 0.3 for b in shown_bar]  # a horizontal "61.8" at 7 pt needs ~0.25 in
    finite = [v for v in value.values() if np.isfinite(v)]
    peak = max(finite, default=0.0)
    top = min(100.0, 10 * math.ceil((peak + (14 if any(vertical) else 8)) / 10))

    if stacked:
        fig, axes = plt.subplots(len(panels), 1, figsize=(fig_w, 3.0 * len(panels) + 1.0),
                                 squeeze=False, layout="constrained")
        axes = axes[:, 0]
    else:
        fig, row = plt.subplots(1, len(panels), figsize=(fig_w, 3.9), sharey=True,
                                squeeze=False, gridspec_kw={"width_ratios": widths},
                                layout="constrained")
        axes = row[0]
    try:
        for i, (ax, (split, variants, stages)) in enumerate(zip(axes, panels, strict=True)):
            group_w = len(stages) * bar_in + gap
            centres = gap / 2 + group_w * np.arange(len(variants)) + len(stages) * bar_in / 2
            for k, stage in enumerate(stages):
                vals = [value.get((split, v, stage), np.nan) for v in variants]
                offset = (k - (len(stages) - 1) / 2) * bar_in
                bars = ax.bar(centres + offset, vals, bar_in * 0.92,
                              color=styles[stage]["color"], hatch=styles[stage]["hatch"],
                              edgecolor="white", linewidth=0.0)
                ax.bar_label(bars, labels=["" if np.isnan(v) else f"{v:.1f}" for v in vals],
                             fontsize=7, padding=2, rotation=90 if vertical[i] else 0)
            ax.set_xticks(centres, variants, fontsize=9)
            ax.set_xlim(0, xlims[i])
            ax.set_ylim(0, top + (6 if top >= 100 else 0))
            ax.set_title(f"split: {split}", fontsize=10)
            ax.set_ylabel("mIoU (%)" if stacked or ax is axes[0] else "")
            ax.spines[["top", "right"]].set_visible(False)
            ax.grid(axis="y", linewidth=0.4, alpha=0.5)
            ax.set_axisbelow(True)
        fig.legend(handles=handles, loc="outside lower center", ncols=n_legend_cols,
                   frameon=False, fontsize=8, handlelength=1.6, columnspacing=1.2)
        fig.suptitle(title or "mIoU per variant and stage", fontsize=11)
    except BaseException:
        plt.close(fig)
        raise
    save(fig, out_png)


def _stage_legend(
    stages: Sequence[str], styles: dict[str, dict[str, Any]], fig_w: float
) -> tuple[list, int]:
    """Legend handles and column count: one column per pseudo-label source.

    A column reads top-down: the refiner's labels, DeepLab trained on them, DeepLab + CRF, so
    each colour family is explained in one place. Blank handles pad the columns, because
    matplotlib fills a legend column by column. With one stage per source there is nothing
    to line up, and the entries simply wrap to the figure's width.
    """
    from matplotlib.patches import Patch

    columns: dict[str, list[str]] = {}
    for stage in sorted(stages, key=stage_sort_key):
        columns.setdefault(stage_parts(stage)[1], []).append(stage)
    depth = max(len(c) for c in columns.values())
    handles = []
    for column in columns.values():
        for stage in column:
            handles.append(Patch(facecolor=styles[stage]["color"], hatch=styles[stage]["hatch"],
                                 edgecolor="white", label=stage))
        handles += [Patch(visible=False, label=" ")] * (depth - len(column))
    if depth == 1:
        return handles, legend_cols([h.get_label() for h in handles], fig_w)
    return handles, len(columns)
