"""Per-class IoU heatmap: its size follows rows and classes, and bad input leaves no PNG."""

from __future__ import annotations

import pytest

from wsss.report.heatmap import class_iou_heatmap
from wsss.report.style import FigureError


def test_class_iou_heatmap_grows_with_rows_and_columns(tmp_path, evals, png_size):
    small, large = tmp_path / "small.png", tmp_path / "large.png"
    class_iou_heatmap(evals[:2], small)
    many = [dict(e, iou={**e["iou"], **{f"class{k}": 0.3 for k in range(18)}})
            for e in evals * 2]
    class_iou_heatmap(many, large)
    (w1, h1), (w2, h2) = png_size(small), png_size(large)
    assert w2 > w1 + 18 * 30 and h2 > h1 + 10 * 25
    assert w2 < 3000 and h2 < 2500


def test_class_iou_heatmap_rejects_missing_iou(tmp_path, evals, only_files):
    del evals[1]["iou"]
    with pytest.raises(FigureError, match=r"results/first/zeta/labels/train.h5.*'iou'"):
        class_iou_heatmap(evals, tmp_path / "heat.png")
    evals[1]["iou"] = {}
    with pytest.raises(FigureError, match="'iou' is not"):
        class_iou_heatmap(evals, tmp_path / "heat.png")
    evals[1]["iou"] = {"cat": "high"}
    with pytest.raises(FigureError, match=r"zeta.*iou\['cat'\] is 'high', not a number"):
        class_iou_heatmap(evals, tmp_path / "heat.png")
    assert only_files(tmp_path) == []
