"""Figures of the workflow's report: mIoU bars, per-class IoU heatmap, example grid, curves.

Every figure is built completely in memory and only then saved through `store.atomic_path`, so
bad input (which raises before anything is written) never leaves a PNG behind, and a killed job
never leaves a truncated one. matplotlib is imported inside the functions: the CLI imports this
module for every command, and pyplot alone costs a noticeable part of a second.

Sizes are set from the number of panels, rows and columns, never from pixel sizes, so that the
synthetic benchmark (~100 px images) and VOC (~500 px) give figures of the same legibility.
"""

from __future__ import annotations

import csv
import json
import math
import textwrap
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from wsss.store import CamReader, LabelReader, atomic_path

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from wsss.data.voc import VocDataset

DPI = 120
# Known pipeline names, in the order a reader follows the pipeline; others sort after them.
_REFINER_ORDER = ("crf", "psa", "irn")
_SPLIT_ORDER = ("train", "train_aug", "val", "test")
_LOG_SKIP = {"step", "epoch", "lr", "seconds"}
_SEEDS_COLOUR = "#7f7f7f"
_IGNORE = 255


class FigureError(ValueError):
    """An input of a figure is missing or malformed; the message names the file and key or id."""


# --------------------------------------------------------------------------------------------
# shared helpers


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Figure, out_png: str | Path) -> None:
    """Save atomically, and close the figure even when saving fails (figures are global state)."""
    plt = _pyplot()
    try:
        with atomic_path(out_png, suffix=".png") as tmp:
            fig.savefig(tmp, format="png", dpi=DPI)
    finally:
        plt.close(fig)


def _describe(e: Mapping[str, Any]) -> str:
    """Name an evaluation for an error message: its file where known, else what it evaluated.

    Evaluations arrive as dicts; a loader that records the JSON's path under "_path" (or
    "path") gets it named here, otherwise the scored store file and the identifying keys are.
    """
    source = e.get("_path") or e.get("path") or e.get("label_file") or e.get("cam_file")
    ident = ", ".join(f"{k}={e[k]}" for k in ("variant", "stage", "split") if k in e)
    return f"{source} ({ident})" if source else f"evaluation ({ident or 'no variant/stage/split'})"


def _require(evals: Sequence[Mapping[str, Any]], keys: Iterable[str]) -> None:
    keys = list(keys)
    if not evals:
        raise FigureError("no evaluations to plot")
    for e in evals:
        for key in keys:
            if key not in e:
                raise FigureError(f"{_describe(e)}: evaluation lacks '{key}'")


def _split_key(split: str) -> tuple[int, str]:
    return (_SPLIT_ORDER.index(split) if split in _SPLIT_ORDER else len(_SPLIT_ORDER), split)


def _stage_parts(stage: str) -> tuple[int, str, bool]:
    """(group, pseudo-label source, CRF post-processed) of a stage name.

    group 0: seeds, 1: refiner pseudo-labels, 2: DeepLab trained on a refiner's labels
    ("deeplab_<refiner>", "deeplab_<refiner>_crf" with its CRF post-processing).
    """
    if stage == "seeds":
        return 0, "seeds", False
    if stage.startswith("deeplab_"):
        source = stage.removeprefix("deeplab_")
        crf = source.endswith("_crf") and source != "crf"
        return 2, source.removesuffix("_crf") if crf else source, crf
    return 1, stage, False


def _source_rank(source: str) -> tuple[int, str]:
    # "irn_bg10" is a setting of irn: keep it beside irn, after the plain one
    for rank, name in enumerate(_REFINER_ORDER):
        if source == name or source.startswith(name + "_"):
            return rank, source
    return len(_REFINER_ORDER), source


def stage_sort_key(stage: str) -> tuple:
    """Pipeline order: seeds, refiners (crf, psa, irn, others), DeepLab per refiner (±CRF)."""
    group, source, crf = _stage_parts(stage)
    return (group, _source_rank(source), crf)


def _stage_styles(stages: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Bar colour and hatch per stage, fixed for the whole figure.

    A refiner's pseudo-labels and the DeepLab models trained on them share a hue (light: the
    labels, dark: DeepLab, hatched: DeepLab + CRF), so the eye links each model to its
    training labels across panels; seeds are grey.
    """
    import matplotlib

    tab20 = matplotlib.colormaps["tab20"].colors
    sources: list[str] = []
    for stage in sorted(stages, key=stage_sort_key):
        group, source, _ = _stage_parts(stage)
        if group and source not in sources:
            sources.append(source)
    styles: dict[str, dict[str, Any]] = {}
    for stage in stages:
        group, source, crf = _stage_parts(stage)
        if group == 0:
            styles[stage] = {"color": _SEEDS_COLOUR, "hatch": None}
            continue
        hue = sources.index(source) % 10
        # tab20 holds (dark, light) pairs; grey (index 7) is the seeds' colour, skip it
        hue = hue + 1 if hue >= 7 else hue
        colour = tab20[2 * (hue % 10) + (1 if group == 1 else 0)]
        styles[stage] = {"color": colour, "hatch": "///" if crf else None}
    return styles


def _ordered_unique(values: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(values))


def _legend_cols(labels: Sequence[str], width_in: float) -> int:
    """Columns for a legend of `labels` at 8 pt in `width_in` inches, rows evenly filled."""
    entry = 0.4 + 0.06 * max((len(s) for s in labels), default=1)
    per_row = max(1, int(width_in * 0.95 / entry))
    rows = math.ceil(len(labels) / per_row)
    return max(1, math.ceil(len(labels) / rows))


# --------------------------------------------------------------------------------------------
# 1. mIoU bars


def miou_bars(evals: list[dict], out_png: str | Path, title: str = "") -> None:
    """Grouped bars of mIoU (%): one panel per split, variants as groups, stages as bars.

    `evals` are evaluation dicts (keys variant, stage, split, miou as a fraction). Variants
    keep their order of first appearance (the caller's config order); stages follow the
    pipeline; a stage has the same colour in every panel. A later evaluation of the same
    (variant, stage, split) replaces an earlier one. Panels sit side by side while the figure
    stays under ~14 in wide, else they are stacked.
    """
    _require(evals, ("variant", "stage", "split", "miou"))
    plt = _pyplot()

    value: dict[tuple[str, str, str], float] = {}
    for e in evals:
        miou = e["miou"]
        value[(e["split"], e["variant"], e["stage"])] = np.nan if miou is None else 100 * miou
    splits = sorted({e["split"] for e in evals}, key=_split_key)
    all_stages = sorted({e["stage"] for e in evals}, key=stage_sort_key)
    styles = _stage_styles(all_stages)
    panels = []
    for split in splits:
        variants = _ordered_unique(e["variant"] for e in evals if e["split"] == split)
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
    handles, legend_cols = _stage_legend(all_stages, styles, fig_w)
    if 1.45 * legend_cols > fig_w:  # one column per source must fit: widen the figure
        grow = 1.45 * legend_cols / fig_w
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
        fig.legend(handles=handles, loc="outside lower center", ncols=legend_cols,
                   frameon=False, fontsize=8, handlelength=1.6, columnspacing=1.2)
        fig.suptitle(title or "mIoU per variant and stage", fontsize=11)
    except BaseException:
        plt.close(fig)
        raise
    _save(fig, out_png)


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
        columns.setdefault(_stage_parts(stage)[1], []).append(stage)
    depth = max(len(c) for c in columns.values())
    handles = []
    for column in columns.values():
        for stage in column:
            handles.append(Patch(facecolor=styles[stage]["color"], hatch=styles[stage]["hatch"],
                                 edgecolor="white", label=stage))
        handles += [Patch(visible=False, label=" ")] * (depth - len(column))
    if depth == 1:
        return handles, _legend_cols([h.get_label() for h in handles], fig_w)
    return handles, len(columns)




# --------------------------------------------------------------------------------------------
# 2. per-class IoU heatmap


def class_iou_heatmap(evals: list[dict], out_png: str | Path) -> None:
    """Per-class IoU (%) of every evaluation: rows "variant · stage (split)", classes as columns.

    Rows are grouped by split, then variant (thin rules between variants), then pipeline
    stage; the last column repeats the mIoU. Classes come from the `iou` dicts in their
    stored order (background first); a class without an IoU (absent from ground truth and
    prediction) is a grey cell.
    """
    _require(evals, ("variant", "stage", "split", "miou", "iou"))
    for e in evals:
        if not isinstance(e["iou"], Mapping) or not e["iou"]:
            raise FigureError(f"{_describe(e)}: 'iou' is not a non-empty {{class: IoU}} mapping")
    plt = _pyplot()

    classes = _ordered_unique(c for e in evals for c in e["iou"])
    if "background" in classes:
        classes.remove("background")
        classes.insert(0, "background")
    variant_order = _ordered_unique(e["variant"] for e in evals)
    rows = sorted(
        evals,
        key=lambda e: (_split_key(e["split"]), variant_order.index(e["variant"]),
                       stage_sort_key(e["stage"])),
    )
    columns = [*classes, "mIoU"]

    def pct(e: Mapping[str, Any], key: str, v: Any) -> float:
        try:
            return np.nan if v is None else 100 * float(v)
        except (TypeError, ValueError):
            raise FigureError(f"{_describe(e)}: {key} is {v!r}, not a number") from None

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
    _save(fig, out_png)


# --------------------------------------------------------------------------------------------
# 3. example selection


def pick_examples(
    ds: VocDataset, split: str, n: int, labels: Mapping[str, Sequence[int]] | None = None
) -> list[str]:
    """n image ids of `split` that together show as many classes as possible, in pick order.

    Greedy: each pick adds the most classes not yet shown, ties going to the earlier id in the
    split's list. Once every class is shown (no id adds one) coverage starts over, so further
    picks show every class a second time rather than repeating the first images' classes;
    ids without foreground come last. Fixed by the dataset alone, so every report and every
    variant shows the same images. `labels` (id -> 0-based classes, such as the dataset
    index's) spares reading every mask.
    """
    if n < 1:
        raise FigureError(f"pick_examples: n must be at least 1, got {n}")
    ids = ds.ids(split)
    present: list[frozenset[int]] = []
    for image_id in ids:
        if labels is None:
            present.append(frozenset(int(c) for c in ds.image_labels(image_id)))
        elif image_id in labels:
            present.append(frozenset(int(c) for c in labels[image_id]))
        else:
            raise FigureError(f"pick_examples: image id '{image_id}' of split '{split}' "
                              "has no entry in the given labels")
    free = list(range(len(ids)))  # kept in list order: max() below returns the first best
    picked: list[int] = []
    covered: set[int] = set()
    while free and len(picked) < n:
        best = max(free, key=lambda i: len(present[i] - covered))
        if covered and not present[best] - covered:
            covered = set()  # a round is complete: start the next one
            best = max(free, key=lambda i: len(present[i]))
        picked.append(best)
        free.remove(best)
        covered |= present[best]
    return [ids[i] for i in picked]


# --------------------------------------------------------------------------------------------
# 4. example grid


@dataclass(frozen=True)
class ExampleColumn:
    """One column of the example grid.

    kind "cam": `path` is a CAM store, shown as the max over the image's class planes laid
    over the image. kind "seeds": `path` is a CAM store, shown as argmax([threshold, CAMs]);
    `extra` is the seeds evaluation JSON whose best_threshold is used (or the threshold
    itself, as a number). kind "labels": `path` is a label store (pseudo-labels, predictions).
    """

    title: str
    kind: str
    path: str | Path
    extra: str | Path | float | None = None


_KINDS = ("cam", "seeds", "labels")


def _column(spec: ExampleColumn | Mapping[str, Any]) -> ExampleColumn:
    if isinstance(spec, ExampleColumn):
        col = spec
    else:
        missing = [k for k in ("title", "kind", "path") if k not in spec]
        if missing:
            raise FigureError(f"example column {dict(spec)} lacks {missing}")
        unknown = sorted(set(spec) - {"title", "kind", "path", "extra"})
        if unknown:
            raise FigureError(f"example column '{spec['title']}': unknown key(s) {unknown}")
        col = ExampleColumn(spec["title"], spec["kind"], spec["path"], spec.get("extra"))
    if col.kind not in _KINDS:
        raise FigureError(f"example column '{col.title}': kind must be one of {_KINDS}, "
                          f"got {col.kind!r}")
    if col.kind == "seeds" and col.extra is None:
        raise FigureError(f"example column '{col.title}': seeds need the seeds evaluation "
                          "JSON (or a threshold) as extra")
    return col


def _seed_threshold(extra: str | Path | float) -> float:
    if isinstance(extra, int | float):
        return float(extra)
    path = Path(extra)
    if not path.is_file():
        raise FigureError(f"{path}: seeds evaluation does not exist")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise FigureError(f"{path}: seeds evaluation is not valid JSON ({err})") from err
    if not isinstance(data, dict) or "best_threshold" not in data:
        raise FigureError(f"{path}: seeds evaluation lacks 'best_threshold'")
    return float(data["best_threshold"])


def _palette() -> np.ndarray:
    from wsss.data.voc import VOC_PALETTE

    colours = np.array(VOC_PALETTE, dtype=np.uint8).reshape(-1, 3).copy()
    colours[_IGNORE] = 255  # ignore as white: reads as "no label", unlike VOC's beige
    return colours


def _cam_overlay(image: np.ndarray, cams: np.ndarray) -> np.ndarray:
    import matplotlib

    heat = cams.max(axis=0) if cams.shape[0] else np.zeros(image.shape[:2], np.float32)
    rgb = matplotlib.colormaps["jet"](np.clip(heat, 0.0, 1.0))[..., :3]
    return 0.5 * image.astype(np.float32) / 255.0 + 0.5 * rgb


def _seeds(cams: np.ndarray, keys: np.ndarray, threshold: float) -> np.ndarray:
    if cams.shape[0] == 0:
        return np.zeros(cams.shape[1:], dtype=np.uint8)
    stack = np.concatenate([np.full((1, *cams.shape[1:]), threshold, np.float32), cams])
    lookup = np.concatenate([[0], np.asarray(keys, dtype=np.int64) + 1]).astype(np.uint8)
    return lookup[np.argmax(stack, axis=0)]


def example_grid(
    ds: VocDataset,
    ids: list[str],
    rows_spec: Sequence[ExampleColumn | Mapping[str, Any]],
    out_png: str | Path,
) -> None:
    """One row per image id: image, ground truth, then one panel per column spec.

    Column specs are ExampleColumn or dicts with the same keys (title, kind, path, extra).
    Every store is checked for every id before drawing, so a missing id raises a StoreError
    naming the file and the id. Label maps use the VOC palette (255 in white); a legend of
    the labels shown sits under the grid.
    """
    if not ids:
        raise FigureError("example_grid: no image ids")
    columns = [_column(s) for s in rows_spec]
    thresholds = {i: _seed_threshold(c.extra) for i, c in enumerate(columns) if c.kind == "seeds"}
    palette = _palette()
    readers: list[CamReader | LabelReader] = []
    try:
        for col in columns:
            reader = LabelReader(col.path) if col.kind == "labels" else CamReader(col.path)
            readers.append(reader)
            reader.check(ids)
        rows: list[list[np.ndarray]] = []
        shown: set[int] = set()
        for image_id in ids:
            image, gt = ds.load_pair(image_id)
            panels = [image, palette[gt]]
            shown.update(np.unique(gt).tolist())
            for k, (col, reader) in enumerate(zip(columns, readers, strict=True)):
                if col.kind == "labels":
                    label = reader.get(image_id)
                    _check_size(reader.path, image_id, label.shape, gt.shape)
                    shown.update(np.unique(label).tolist())
                    panels.append(palette[label])
                    continue
                cams, keys = reader.get(image_id)
                _check_size(reader.path, image_id, cams.shape[1:], gt.shape)
                if col.kind == "cam":
                    panels.append(_cam_overlay(image, cams))
                else:
                    seeds = _seeds(cams, keys, thresholds[k])
                    shown.update(np.unique(seeds).tolist())
                    panels.append(palette[seeds])
            rows.append(panels)
    finally:
        for reader in readers:
            reader.close()
    titles = ["image", "ground truth", *(c.title for c in columns)]
    _draw_grid(ids, titles, rows, shown, ds.classes, palette, out_png)


def _check_size(path: Path, image_id: str, got: tuple, want: tuple) -> None:
    if tuple(got) != tuple(want):
        raise FigureError(f"{path}: '{image_id}' is {tuple(got)}, its image is {tuple(want)}")


def _draw_grid(ids: Sequence[str], titles: Sequence[str], rows: list[list[np.ndarray]],
               shown: set[int], classes: Sequence[str], palette: np.ndarray,
               out_png: str | Path) -> None:
    plt = _pyplot()
    from matplotlib.patches import Patch

    panel_w = 1.45
    n_cols = len(titles)
    # each row as tall as its image's aspect asks, within bounds so odd shapes stay readable
    heights = [float(np.clip(r[0].shape[0] / r[0].shape[1], 0.5, 1.5)) * panel_w for r in rows]
    fig_h = sum(heights) + 0.35 + 0.25 * math.ceil(len(shown) / 6) + 0.3
    fig, axes = plt.subplots(
        len(rows), n_cols, figsize=(n_cols * panel_w + 0.3, fig_h), squeeze=False,
        gridspec_kw={"height_ratios": heights}, layout="constrained",
    )
    try:
        fig.get_layout_engine().set(w_pad=0.02, h_pad=0.02, wspace=0.01, hspace=0.01)
        for r, (image_id, panels) in enumerate(zip(ids, rows, strict=True)):
            for c, panel in enumerate(panels):
                ax = axes[r][c]
                ax.imshow(panel, interpolation="nearest")
                ax.set_xticks([])
                ax.set_yticks([])
                for side in ax.spines.values():
                    side.set_linewidth(0.4)
                    side.set_color("#999999")
                if r == 0:
                    ax.set_title(textwrap.fill(titles[c], 18), fontsize=8)
            axes[r][0].set_ylabel(image_id, fontsize=7)
        names = ["background", *classes]
        handles = []
        for v in sorted(shown):
            if v == _IGNORE:
                name = "ignore"
            elif v < len(names):
                name = names[v]
            else:
                name = f"label {v}"
            handles.append(Patch(facecolor=palette[v] / 255.0, edgecolor="#999999",
                                 linewidth=0.5, label=name))
        fig.legend(handles=handles, loc="outside lower center", frameon=False, fontsize=8,
                   ncols=_legend_cols([h.get_label() for h in handles], n_cols * panel_w),
                   handlelength=1.2, columnspacing=1.0)
    except BaseException:
        plt.close(fig)
        raise
    _save(fig, out_png)


# --------------------------------------------------------------------------------------------
# 5. training curves


def _read_log(path: Path) -> dict[str, np.ndarray]:
    if not path.is_file():
        raise FigureError(f"{path}: training log does not exist")
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        fields = list(reader.fieldnames or [])
        rows = list(reader)
    if "step" not in fields:
        raise FigureError(f"{path}: training log lacks the 'step' column (has {fields})")
    if not rows:
        raise FigureError(f"{path}: training log has no rows")
    columns: dict[str, np.ndarray] = {}
    for name in fields:
        values = []
        for line, row in enumerate(rows, start=2):
            cell = (row.get(name) or "").strip()
            try:
                values.append(float(cell) if cell else np.nan)
            except ValueError:
                raise FigureError(f"{path}: line {line}, column '{name}': "
                                  f"{cell!r} is not a number") from None
        columns[name] = np.array(values)
    if np.isnan(columns["step"]).any():
        raise FigureError(f"{path}: column 'step' has empty cells")
    if not [n for n in fields if n not in _LOG_SKIP]:
        raise FigureError(f"{path}: training log has no loss column (has {fields})")
    return columns


def _smooth(values: np.ndarray, window: int) -> np.ndarray:
    """Centred moving average that skips NaN and narrows at the ends instead of padding."""
    if window <= 1:
        return values
    kernel = np.ones(window)
    ok = np.isfinite(values)
    sums = np.convolve(np.where(ok, values, 0.0), kernel, mode="same")
    counts = np.convolve(ok.astype(float), kernel, mode="same")
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, sums / counts, np.nan)


def training_curves(logs: list[tuple[str, str | Path]], out_png: str | Path) -> None:
    """One panel per (label, CSV log): loss terms against step, and the lr schedule.

    Every numeric column except step, epoch, lr and seconds is a loss term; `loss` (the
    total, drawn thick) comes first. Raw values are drawn faint under a short centred moving
    average, because per-step losses of small batches are too noisy to compare by eye. The
    y range follows the smoothed curves, so early spikes do not flatten the rest.
    """
    if not logs:
        raise FigureError("training_curves: no logs")
    data = [(label, Path(path), _read_log(Path(path))) for label, path in logs]
    plt = _pyplot()

    n = len(data)
    n_cols = min(3, n)
    n_rows = math.ceil(n / n_cols)
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(3.9 * n_cols, 2.9 * n_rows),
                             squeeze=False, layout="constrained")
    try:
        for ax in axes.flat[n:]:
            ax.set_visible(False)
        for ax, (label, _, cols) in zip(axes.flat, data, strict=False):
            step = cols["step"]
            terms = [c for c in cols if c not in _LOG_SKIP]
            terms.sort(key=lambda c: c != "loss")
            window = int(np.clip(round(len(step) / 15), 1, 101)) | 1
            lows, highs = [], []
            for k, term in enumerate(terms):
                raw = cols[term]
                smooth = _smooth(raw, window)
                total = term == "loss"
                colour = "black" if total else f"C{k}"
                ax.plot(step, raw, color=colour, alpha=0.15, linewidth=0.6)
                ax.plot(step, smooth, color=colour, linewidth=1.8 if total else 1.0,
                        label=term, zorder=3 if total else 2)
                if np.isfinite(smooth).any():
                    lows.append(np.nanmin(smooth))
                    highs.append(np.nanmax(smooth))
            if highs:
                lo, hi = min(lows), max(highs)
                pad = 0.08 * (hi - lo or abs(hi) or 1.0)
                ax.set_ylim(min(0.0, lo - pad) if lo >= 0 else lo - pad, hi + pad)
            ax.set_title(label, fontsize=9)
            ax.set_xlabel("step", fontsize=8)
            ax.set_ylabel("loss", fontsize=8)
            ax.tick_params(labelsize=7)
            ax.spines[["top"]].set_visible(False)
            ax.grid(linewidth=0.4, alpha=0.5)
            handles, names = ax.get_legend_handles_labels()
            if "lr" in cols and np.isfinite(cols["lr"]).any():
                twin = ax.twinx()
                (lr_line,) = twin.plot(step, cols["lr"], color="#999999", linestyle="--",
                                       linewidth=0.9, label="lr (right)")
                twin.set_ylim(0, np.nanmax(cols["lr"]) * 1.05 or 1.0)
                twin.tick_params(labelsize=7, colors="#777777")
                twin.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
                twin.yaxis.get_offset_text().set_fontsize(7)
                twin.spines[["top"]].set_visible(False)
                handles.append(lr_line)
                names.append("lr (right)")
            ax.legend(handles, names, fontsize=7, frameon=False, loc="upper center",
                      bbox_to_anchor=(0.5, -0.22), ncols=_legend_cols(names, 3.9),
                      handlelength=1.5, columnspacing=1.0)
    except BaseException:
        plt.close(fig)
        raise
    _save(fig, out_png)
