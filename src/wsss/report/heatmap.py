"""Per-class IoU heatmap: one row per evaluation, one column per class (and the mIoU)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from wsss.report.style import (
    FigureError,
    describe,
    ordered_unique,
    pyplot,
    require,
    save,
    split_key,
    stage_sort_key,
)


def class_iou_heatmap(evals: list[dict], out_png: str | Path) -> None:
    """Per-class IoU (%) of every evaluation: rows "variant · stage (split)", classes as columns.

    Rows are grouped by split, then variant (thin rules between variants), then pipeline
    stage; the last column repeats the mIoU. Classes come from the `iou` dicts in their
    stored order (background first); a class without an IoU (absent from ground truth and
    prediction) is a grey cell.
    """
    require(evals, ("variant", "stage", "split", "miou", "iou"))
    for e in evals:
        if not isinstance(e["iou"], Mapping) or not e["iou"]:
            raise FigureError(f"{describe(e)}: 'iou' is not a non-empty {{class: IoU}} mapping")
    plt = pyplot()

    classes = ordered_unique(c for e in evals for c in e["iou"])
    if "background" in classes:
        classes.remove("background")
        classes.insert(0, "background")
    variant_order = ordered_unique(e["variant"] for e in evals)
    rows = sorted(
        evals,
        key=lambda e: (split_key(e["split"]), variant_order.index(e["variant"]),
                       stage_sort_key(e["stage"])),
    )
    columns = [*classes, "mIoU"]

    def pct(e: Mapping[str, Any], key: str, v: Any) -> float:
        try:
            return np.nan if v is None else 100 * float(v)
        except (TypeError, ValueError):
            raise FigureError(f"{describe(e)}: {key} is {v!r}, not a number") from None

    data = np.array([[pct(e, f"iou['{c}']", e["iou"].get(c)) for c in classes]
                     + [pct(e, "'miou'", e["miou"])] for e in rows])
    labels = [f"{e['variant']} · {e['stage']} ({e['split']})" for e in rows]

    n_rows, n_cols = data.shape
    cell_w = 0.46 if n_cols <= 12 else 0.4
    label_w = 0.065 * max(len(s) for s in labels) + 0.3
    head_h = 0.07 * max(len(c) for c in columns) + 0.3
    fig_w = label_w + n_cols * cell_w + 1.1
    fig_h = head_h + n_rows * 0.3 + 0.5
    fig, ax = plt.subplots(figsize=(fig_w, fig_h), layout="constrained")
    try:
        cmap = plt.get_cmap("viridis").copy()
        cmap.set_bad("#d9d9d9")
        image = ax.imshow(np.ma.masked_invalid(data), cmap=cmap, vmin=0, vmax=100,
                          aspect="auto", interpolation="nearest")
        fmt = "{:.1f}" if n_cols <= 12 else "{:.0f}"
        for i in range(n_rows):
            for j in range(n_cols):
                v = data[i, j]
                text = "–" if np.isnan(v) else fmt.format(v)
                colour = "black" if np.isnan(v) or v >= 55 else "white"
                ax.text(j, i, text, ha="center", va="center", fontsize=7, color=colour)
        ax.set_xticks(range(n_cols), columns, rotation=45, ha="left", rotation_mode="anchor",
                      fontsize=8)
        ax.xaxis.tick_top()
        ax.set_yticks(range(n_rows), labels, fontsize=8)
        ax.tick_params(length=0)
        ax.axvline(n_cols - 1.5, color="white", linewidth=3)
        for i in range(1, n_rows):
            prev, cur = rows[i - 1], rows[i]
            if (prev["split"], prev["variant"]) != (cur["split"], cur["variant"]):
                ax.axhline(i - 0.5, color="white", linewidth=2.5)
        for side in ax.spines.values():
            side.set_visible(False)
        # at most ~4 in tall: a full-height bar on 30 rows would dwarf the labels
        bar = fig.colorbar(image, ax=ax, pad=0.01, aspect=18,
                           shrink=min(1.0, 4.0 / max(n_rows * 0.3, 1e-3)))
        bar.set_label("IoU (%)", fontsize=8)
        bar.ax.tick_params(labelsize=7)
    except BaseException:
        plt.close(fig)
        raise
    save(fig, out_png)
