"""mIoU bars: a readable PNG of a plausible size, and bad input leaves none."""

from __future__ import annotations

import pytest

from wsss.report.bars import miou_bars
from wsss.report.style import FigureError


def test_miou_bars_writes_a_png(tmp_path, evals, make_eval, png_size):
    out = tmp_path / "bars.png"
    miou_bars(evals, out, title="tiny")
    width, height = png_size(out)
    assert 600 < width < 2200 and 350 < height < 700  # two panels side by side
    one = tmp_path / "one.png"
    miou_bars([make_eval("first", "seeds", "train", 0.4)], one)
    assert png_size(one)[0] < width


def test_miou_bars_names_the_evaluation_lacking_a_key(tmp_path, evals, only_files):
    del evals[3]["miou"]
    with pytest.raises(FigureError, match=r"results/first/mu/labels/train.h5.*'miou'"):
        miou_bars(evals, tmp_path / "bars.png")
    evals[3] = {"variant": "x", "stage": "y", "split": "train", "miou": 0.1,
                "_path": "x/y.eval.json"}
    del evals[3]["variant"]
    with pytest.raises(FigureError, match=r"x/y.eval.json.*'variant'"):
        miou_bars(evals, tmp_path / "bars.png")
    with pytest.raises(FigureError, match="no evaluations"):
        miou_bars([], tmp_path / "bars.png")
    assert only_files(tmp_path) == []
