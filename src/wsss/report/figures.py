"""The report's figures of the report_figures rule: per-class IoU, example grid, training curves."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from wsss.data.index import read_index
from wsss.report.curves import training_curves
from wsss.report.examples import ExampleColumn, example_grid, pick_examples
from wsss.report.heatmap import class_iou_heatmap
from wsss.report.summary import load_evaluations

if TYPE_CHECKING:
    from wsss.data.voc import VocDataset


def write_figures(
    ds: VocDataset,
    evals: Sequence[str | Path],
    columns: Sequence[ExampleColumn | Mapping[str, Any]],
    logs: Sequence[Sequence[str | Path]],
    split: str,
    examples: int,
    index: str | Path | None,
    *,
    heatmap: str | Path,
    grid: str | Path,
    curves: str | Path,
) -> tuple[int, int, int]:
    """Draw the three figures; returns (evaluations, example images, training logs) counted.

    `evals` are evaluation JSON paths, `columns` the example grid's column specs, `logs`
    (label, CSV path) pairs. The example images are `examples` ids of `split` picked by
    `pick_examples`, from the image labels of the dataset `index` where one is given (which
    spares reading every mask).
    """
    loaded = load_evaluations(evals)
    class_iou_heatmap(loaded, heatmap)
    labels = read_index(index)["splits"][split]["labels"] if index else None
    ids = pick_examples(ds, split, examples, labels)
    example_grid(ds, ids, columns, grid)
    training_curves([(label, path) for label, path in logs], curves)
    return len(loaded), len(ids), len(logs)
