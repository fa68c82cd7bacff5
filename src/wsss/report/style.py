"""What the report's figures share: errors, pipeline order of stages, colours, legends, saving.

Every figure is built completely in memory and only then saved through `save` (an atomic
write), so bad input (which raises before anything is written) never leaves a PNG behind, and a
killed job never leaves a truncated one. matplotlib is imported inside the functions: pyplot
alone costs a noticeable part of a second, and the summary's table needs none of it.

Sizes are set from the number of panels, rows and columns, never from pixel sizes, so that the
synthetic benchmark (~100 px images) and VOC (~500 px) give figures of the same legibility.

Stage names are the workflow's: "seeds", a refiner's name (or "<refiner>_<setting>"), and
"deeplab_<refiner>" / "deeplab_<refiner>_crf" (with DeepLab's CRF post-processing). Refiners
come in the registry's declaration order, so a new refiner kind sorts where it declares itself.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from wsss import registry
from wsss.store import atomic_path

if TYPE_CHECKING:
    from matplotlib.figure import Figure

DPI = 120
_SPLIT_ORDER = ("train", "train_aug", "val", "test")
_SEEDS_COLOUR = "#7f7f7f"


class FigureError(ValueError):
    """An input of a figure is missing or malformed; the message names the file and key or id."""


def pyplot() -> Any:
    """matplotlib.pyplot on the Agg backend (no display on cluster nodes)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save(fig: Figure, out_png: str | Path) -> None:
    """Save atomically, and close the figure even when saving fails (figures are global state)."""
    plt = pyplot()
    try:
        with atomic_path(out_png, suffix=".png") as tmp:
            fig.savefig(tmp, format="png", dpi=DPI)
    finally:
        plt.close(fig)


def describe(e: Mapping[str, Any]) -> str:
    """Name an evaluation for an error message: its file where known, else what it evaluated.

    Evaluations arrive as dicts; a loader that records the JSON's path under "_path" (or
    "path") gets it named here, otherwise the scored store file and the identifying keys are.
    """
    source = e.get("_path") or e.get("path") or e.get("label_file") or e.get("cam_file")
    ident = ", ".join(f"{k}={e[k]}" for k in ("variant", "stage", "split") if k in e)
    return f"{source} ({ident})" if source else f"evaluation ({ident or 'no variant/stage/split'})"


def require(evals: Sequence[Mapping[str, Any]], keys: Iterable[str]) -> None:
    """Raise a FigureError naming the evaluation that lacks one of `keys` (or if none given)."""
    keys = list(keys)
    if not evals:
        raise FigureError("no evaluations to plot")
    for e in evals:
        for key in keys:
            if key not in e:
                raise FigureError(f"{describe(e)}: evaluation lacks '{key}'")


def split_key(split: str) -> tuple[int, str]:
    """Known splits in data order (train before val), others after them by name."""
    return (_SPLIT_ORDER.index(split) if split in _SPLIT_ORDER else len(_SPLIT_ORDER), split)


def stage_parts(stage: str) -> tuple[int, str, bool]:
    """(group, pseudo-label source, CRF post-processed) of a stage name.

    group 0: seeds, 1: refiner pseudo-labels, 2: DeepLab trained on a refiner's labels
    ("deeplab_<refiner>", "deeplab_<refiner>_crf" with its CRF post-processing).
    """
    if stage == "seeds":
        return 0, "seeds", False
    if stage.startswith("deeplab_"):
        source = stage.removeprefix("deeplab_")
        with_crf = source.endswith("_crf")
        return 2, source.removesuffix("_crf") if with_crf else source, with_crf
    return 1, stage, False


def _source_rank(source: str, order: Sequence[str]) -> tuple[int, str]:
    # "<refiner>_bg10" is a setting of that refiner: keep it beside it, after the plain one
    for rank, name in enumerate(order):
        if source == name or source.startswith(name + "_"):
            return rank, source
    return len(order), source


def stage_sort_key(stage: str) -> tuple:
    """Pipeline order: seeds, refiners (registry order, then others), DeepLab per refiner (±CRF)."""
    group, source, with_crf = stage_parts(stage)
    return (group, _source_rank(source, registry.names("refiner")), with_crf)


def stage_styles(stages: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Bar colour and hatch per stage, fixed for the whole figure.

    A refiner's pseudo-labels and the DeepLab models trained on them share a hue (light: the
    labels, dark: DeepLab, hatched: DeepLab + CRF), so the eye links each model to its
    training labels across panels; seeds are grey.
    """
    import matplotlib

    tab20 = matplotlib.colormaps["tab20"].colors
    sources: list[str] = []
    for stage in sorted(stages, key=stage_sort_key):
        group, source, _ = stage_parts(stage)
        if group and source not in sources:
            sources.append(source)
    styles: dict[str, dict[str, Any]] = {}
    for stage in stages:
        group, source, with_crf = stage_parts(stage)
        if group == 0:
            styles[stage] = {"color": _SEEDS_COLOUR, "hatch": None}
            continue
        hue = sources.index(source) % 10
        # tab20 holds (dark, light) pairs; grey (index 7) is the seeds' colour, skip it
        hue = hue + 1 if hue >= 7 else hue
        colour = tab20[2 * (hue % 10) + (1 if group == 1 else 0)]
        styles[stage] = {"color": colour, "hatch": "///" if with_crf else None}
    return styles


def ordered_unique(values: Iterable[str]) -> list[str]:
    """`values` without repeats, in order of first appearance."""
    return list(dict.fromkeys(values))


def legend_cols(labels: Sequence[str], width_in: float) -> int:
    """Columns for a legend of `labels` at 8 pt in `width_in` inches, rows evenly filled."""
    entry = 0.4 + 0.06 * max((len(s) for s in labels), default=1)
    per_row = max(1, int(width_in * 0.95 / entry))
    rows = math.ceil(len(labels) / per_row)
    return max(1, math.ceil(len(labels) / rows))
