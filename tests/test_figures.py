"""Report figures: each writes a readable PNG of a plausible size, and bad input leaves none."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from wsss import figures
from wsss.data.voc import VocDataset
from wsss.figures import ExampleColumn, FigureError
from wsss.store import CamWriter, LabelWriter, StoreError


def _png_size(path: Path) -> tuple[int, int]:
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        assert im.format == "PNG"
        return im.size


def _only_files(folder: Path) -> list[str]:
    """Everything in `folder`, temp files included: a failed figure must leave nothing."""
    return sorted(p.name for p in folder.iterdir())


def _eval(variant: str, stage: str, split: str, miou: float) -> dict:
    iou = {"background": 0.8, "cat": miou, "dog": None if stage == "seeds" else miou / 2}
    return {"variant": variant, "stage": stage, "split": split, "miou": miou, "iou": iou,
            "label_file": f"results/{variant}/{stage}/labels/{split}.h5"}


def _evals() -> list[dict]:
    out = []
    for variant in ("baseline", "seam"):
        for stage in ("seeds", "crf", "psa", "irn"):
            out.append(_eval(variant, stage, "train", 0.5))
        for stage in ("deeplab_psa", "deeplab_psa_crf"):
            out.append(_eval(variant, stage, "val", 0.6))
    return out


def test_stage_order_follows_the_pipeline():
    stages = ["deeplab_psa_crf", "irn_bg10", "psa", "deeplab_crf", "seeds", "irn", "crf",
              "deeplab_psa", "deeplab_crf_crf", "other"]
    assert sorted(stages, key=figures.stage_sort_key) == [
        "seeds", "crf", "psa", "irn", "irn_bg10", "other",
        "deeplab_crf", "deeplab_crf_crf", "deeplab_psa", "deeplab_psa_crf",
    ]


def test_miou_bars_writes_a_png(tmp_path):
    out = tmp_path / "bars.png"
    figures.miou_bars(_evals(), out, title="tiny")
    width, height = _png_size(out)
    assert 600 < width < 2200 and 350 < height < 700  # two panels side by side
    one = tmp_path / "one.png"
    figures.miou_bars([_eval("baseline", "seeds", "train", 0.4)], one)
    assert _png_size(one)[0] < width


def test_miou_bars_names_the_evaluation_lacking_a_key(tmp_path):
    evals = _evals()
    del evals[3]["miou"]
    with pytest.raises(FigureError, match=r"results/baseline/irn/labels/train.h5.*'miou'"):
        figures.miou_bars(evals, tmp_path / "bars.png")
    evals[3] = {"variant": "x", "stage": "y", "split": "train", "miou": 0.1,
                "_path": "x/y.eval.json"}
    del evals[3]["variant"]
    with pytest.raises(FigureError, match=r"x/y.eval.json.*'variant'"):
        figures.miou_bars(evals, tmp_path / "bars.png")
    with pytest.raises(FigureError, match="no evaluations"):
        figures.miou_bars([], tmp_path / "bars.png")
    assert _only_files(tmp_path) == []


def test_class_iou_heatmap_grows_with_rows_and_columns(tmp_path):
    small, large = tmp_path / "small.png", tmp_path / "large.png"
    figures.class_iou_heatmap(_evals()[:2], small)
    many = []
    for e in _evals() * 2:
        e = dict(e, iou={**e["iou"], **{f"class{k}": 0.3 for k in range(18)}})
        many.append(e)
    figures.class_iou_heatmap(many, large)
    (w1, h1), (w2, h2) = _png_size(small), _png_size(large)
    assert w2 > w1 + 18 * 30 and h2 > h1 + 10 * 25
    assert w2 < 3000 and h2 < 2500


def test_class_iou_heatmap_rejects_missing_iou(tmp_path):
    evals = _evals()
    del evals[1]["iou"]
    with pytest.raises(FigureError, match=r"results/baseline/crf/labels/train.h5.*'iou'"):
        figures.class_iou_heatmap(evals, tmp_path / "heat.png")
    evals[1]["iou"] = {}
    with pytest.raises(FigureError, match="'iou' is not"):
        figures.class_iou_heatmap(evals, tmp_path / "heat.png")
    assert _only_files(tmp_path) == []


def test_pick_examples_covers_classes_greedily(tiny_voc_config):
    ds = VocDataset.from_config(tiny_voc_config)
    # train: 032 cat, 039 dog, 123 cat+dog, 276 dog. 123 shows both classes; then a new round
    # starts (032 is the first with a class), then 039 adds dog before 276 (list order).
    assert figures.pick_examples(ds, "train", 1) == ["2008_000123"]
    assert figures.pick_examples(ds, "train", 3) == ["2008_000123", "2007_000032", "2007_000039"]
    assert figures.pick_examples(ds, "train", 10) == [
        "2008_000123", "2007_000032", "2007_000039", "2011_003276"]
    assert figures.pick_examples(ds, "val", 2) == ["2007_000042", "2010_000001"]
    # labels from a dataset index give the same picks without reading masks
    labels = {"2007_000032": [0], "2007_000039": [1], "2008_000123": [0, 1],
              "2011_003276": [1]}
    assert figures.pick_examples(ds, "train", 4, labels) == figures.pick_examples(ds, "train", 4)
    # without the two-class image: cat first (032), then dog (039), then the next round
    labels["2008_000123"] = []
    assert figures.pick_examples(ds, "train", 4, labels) == [
        "2007_000032", "2007_000039", "2011_003276", "2008_000123"]
    del labels["2011_003276"]
    with pytest.raises(FigureError, match="'2011_003276'"):
        figures.pick_examples(ds, "train", 2, labels)
    with pytest.raises(FigureError, match="at least 1"):
        figures.pick_examples(ds, "train", 0)


def test_seeds_map_cam_planes_through_their_keys():
    cams = np.array([[[0.9, 0.1], [0.05, 0.3]], [[0.2, 0.6], [0.1, 0.2]]], dtype=np.float32)
    seeds = figures._seeds(cams, np.array([0, 4]), threshold=0.25)
    assert seeds.tolist() == [[1, 5], [0, 1]]
    assert figures._seeds(np.zeros((0, 2, 3), np.float32), np.array([]), 0.1).tolist() == [
        [0, 0, 0], [0, 0, 0]]


@pytest.fixture
def stores(tmp_path, tiny_voc_config):
    """CAM and label stores for the tiny train split, plus a seeds evaluation JSON."""
    ds = VocDataset.from_config(tiny_voc_config)
    ids = ds.ids("train")
    rng = np.random.default_rng(0)
    cams, labels, partial = (tmp_path / "cams.h5", tmp_path / "labels.h5",
                             tmp_path / "partial.h5")
    with CamWriter(cams, {"classes": list(ds.classes)}) as w:
        for image_id in ids:
            gt = ds.load_mask(image_id)
            keys = ds.image_labels(image_id)
            planes = np.stack([(gt == k + 1) * 0.8 + 0.2 * rng.random(gt.shape) for k in keys])
            w.add(image_id, planes, keys)
    with LabelWriter(labels, {"classes": list(ds.classes)}) as w:
        for image_id in ids:
            w.add(image_id, ds.load_mask(image_id))
    with LabelWriter(partial, {"classes": list(ds.classes)}) as w:
        w.add(ids[0], ds.load_mask(ids[0]))
    seeds_eval = tmp_path / "seeds.eval.json"
    seeds_eval.write_text(json.dumps({"best_threshold": 0.3, "miou": 0.5}))
    return ds, ids, cams, labels, partial, seeds_eval


def test_example_grid_writes_a_png(tmp_path, stores):
    ds, ids, cams, labels, _, seeds_eval = stores
    out = tmp_path / "figs" / "examples.png"
    columns = [
        ExampleColumn("CAM", "cam", cams),
        ExampleColumn("seeds", "seeds", cams, seeds_eval),
        {"title": "pseudo-labels (a long title that wraps)", "kind": "labels", "path": labels},
    ]
    figures.example_grid(ds, ids, columns, out)
    width, height = _png_size(out)
    # 5 panels of ~1.45 in at 120 dpi; 4 rows of roughly square panels plus the legend
    assert 750 < width < 1050 and 600 < height < 1200
    two = tmp_path / "figs" / "two.png"
    figures.example_grid(ds, ids[:2], columns[:1], two)
    assert _png_size(two)[0] < width and _png_size(two)[1] < height


def test_example_grid_bad_inputs_name_file_and_id(tmp_path, stores):
    ds, ids, cams, labels, partial, seeds_eval = stores
    out = tmp_path / "figs" / "examples.png"
    with pytest.raises(StoreError, match=rf"partial.h5: image id '{ids[1]}' is missing"):
        figures.example_grid(ds, ids, [ExampleColumn("x", "labels", partial)], out)
    with pytest.raises(StoreError, match="no such"):
        figures.example_grid(ds, ids, [ExampleColumn("x", "cam", tmp_path / "nope.h5")], out)
    with pytest.raises(StoreError, match="expected a 'cams' store"):
        figures.example_grid(ds, ids, [ExampleColumn("x", "cam", labels)], out)
    no_threshold = tmp_path / "bad.eval.json"
    no_threshold.write_text(json.dumps({"miou": 0.5}))
    with pytest.raises(FigureError, match=r"bad.eval.json: .*'best_threshold'"):
        figures.example_grid(ds, ids, [ExampleColumn("s", "seeds", cams, no_threshold)], out)
    with pytest.raises(FigureError, match="kind must be one of"):
        figures.example_grid(ds, ids, [ExampleColumn("s", "heat", cams)], out)
    with pytest.raises(FigureError, match=r"lacks \['path'\]"):
        figures.example_grid(ds, ids, [{"title": "s", "kind": "cam"}], out)
    with pytest.raises(FigureError, match="seeds need"):
        figures.example_grid(ds, ids, [{"title": "s", "kind": "seeds", "path": cams}], out)
    assert not out.parent.exists() or _only_files(out.parent) == []


def _write_log(path: Path, rows: int, extra: str = "") -> Path:
    lines = ["step,epoch,lr,loss,bg_pos,seconds" + extra]
    for step in range(1, rows + 1):
        lines.append(f"{step},{step // 10},{0.05 * (1 - step / rows)},{1 / step},"
                     f"{0.5 + 0.1 * np.sin(step)},{0.1 * step}")
    path.write_text("\n".join(lines) + "\n")
    return path


def test_training_curves_writes_a_png(tmp_path):
    logs = [("classifier", _write_log(tmp_path / "a.csv", 60)),
            ("psa", _write_log(tmp_path / "b.csv", 8))]
    out = tmp_path / "curves.png"
    figures.training_curves(logs, out)
    width, height = _png_size(out)
    assert 800 < width < 1000 and 300 < height < 400  # two 3.9 x 2.9 in panels
    four = tmp_path / "four.png"
    figures.training_curves(logs * 2, four)
    assert _png_size(four)[1] > 1.8 * height  # a second row of panels


def test_training_curves_bad_logs_name_file_and_column(tmp_path):
    out = tmp_path / "out" / "curves.png"
    good = _write_log(tmp_path / "good.csv", 5)
    no_step = tmp_path / "no_step.csv"
    no_step.write_text("epoch,loss\n0,1.0\n")
    with pytest.raises(FigureError, match=r"no_step.csv: .*'step'"):
        figures.training_curves([("a", good), ("b", no_step)], out)
    bad = tmp_path / "bad.csv"
    bad.write_text("step,loss\n1,0.5\n2,oops\n")
    with pytest.raises(FigureError, match=r"bad.csv: line 3, column 'loss': 'oops'"):
        figures.training_curves([("b", bad)], out)
    empty = tmp_path / "empty.csv"
    empty.write_text("step,loss\n")
    with pytest.raises(FigureError, match="empty.csv: training log has no rows"):
        figures.training_curves([("e", empty)], out)
    only_lr = tmp_path / "only_lr.csv"
    only_lr.write_text("step,lr\n1,0.1\n")
    with pytest.raises(FigureError, match="only_lr.csv: training log has no loss column"):
        figures.training_curves([("e", only_lr)], out)
    with pytest.raises(FigureError, match="missing.csv: training log does not exist"):
        figures.training_curves([("m", tmp_path / "missing.csv")], out)
    assert not out.parent.exists()
