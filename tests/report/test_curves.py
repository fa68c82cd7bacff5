"""Training curves: one panel per log, and a bad log names its file and column."""

from __future__ import annotations

import numpy as np
import pytest

from wsss.report.curves import _smooth, training_curves
from wsss.report.style import FigureError


def test_training_curves_writes_a_png(tmp_path, write_log, png_size):
    logs = [("classifier", write_log(tmp_path / "a.csv", 60)),
            ("refiner", write_log(tmp_path / "b.csv", 8))]
    out = tmp_path / "curves.png"
    training_curves(logs, out)
    width, height = png_size(out)
    assert 800 < width < 1000 and 300 < height < 400  # two 3.9 x 2.9 in panels
    four = tmp_path / "four.png"
    training_curves(logs * 2, four)
    assert png_size(four)[1] > 1.8 * height  # a second row of panels


def test_smoothing_skips_gaps_and_narrows_at_the_ends():
    values = np.array([1.0, np.nan, 3.0, 5.0])
    # window 3: [mean(1), mean(1, 3), mean(3, 5), mean(3, 5)] -- NaN neither counts nor spreads
    assert _smooth(values, 3).tolist() == [1.0, 2.0, 4.0, 4.0]
    assert _smooth(values, 1) is values


def test_training_curves_bad_logs_name_file_and_column(tmp_path, write_log):
    out = tmp_path / "out" / "curves.png"
    good = write_log(tmp_path / "good.csv", 5)
    no_step = tmp_path / "no_step.csv"
    no_step.write_text("epoch,loss\n0,1.0\n")
    with pytest.raises(FigureError, match=r"no_step.csv: .*'step'"):
        training_curves([("a", good), ("b", no_step)], out)
    bad = tmp_path / "bad.csv"
    bad.write_text("step,loss\n1,0.5\n2,oops\n")
    with pytest.raises(FigureError, match=r"bad.csv: line 3, column 'loss': 'oops'"):
        training_curves([("b", bad)], out)
    empty = tmp_path / "empty.csv"
    empty.write_text("step,loss\n")
    with pytest.raises(FigureError, match="empty.csv: training log has no rows"):
        training_curves([("e", empty)], out)
    only_lr = tmp_path / "only_lr.csv"
    only_lr.write_text("step,lr\n1,0.1\n")
    with pytest.raises(FigureError, match="only_lr.csv: training log has no loss column"):
        training_curves([("e", only_lr)], out)
    with pytest.raises(FigureError, match="missing.csv: training log does not exist"):
        training_curves([("m", tmp_path / "missing.csv")], out)
    assert not out.parent.exists()
