"""Example images: which ones to show (`pick_examples`) and their grid of CAMs and labels."""

from __future__ import annotations

import json
import math
import textwrap
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from wsss.report.style import FigureError, legend_cols, pyplot, save
from wsss.store import CamReader, LabelReader

if TYPE_CHECKING:
    from wsss.data.voc import VocDataset

_IGNORE = 255


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
    plt = pyplot()
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
                   ncols=legend_cols([h.get_label() for h in handles], n_cols * panel_w),
                   handlelength=1.2, columnspacing=1.0)
    except BaseException:
        plt.close(fig)
        raise
    save(fig, out_png)
