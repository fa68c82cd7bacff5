"""Example images: the greedy class-covering pick, seeds from CAMs, and the grid's PNG."""

from __future__ import annotations

import json

import numpy as np
import pytest

from wsss.data.voc import VocDataset
from wsss.report import examples
from wsss.report.examples import ExampleColumn
from wsss.report.style import FigureError
from wsss.store import StoreError


def test_pick_examples_covers_classes_greedily(tiny_voc_config):
    ds = VocDataset.from_config(tiny_voc_config)
    # train: 032 cat, 039 dog, 123 cat+dog, 276 dog. 123 shows both classes; then a new round
    # starts (032 is the first with a class), then 039 adds dog before 276 (list order).
    assert examples.pick_examples(ds, "train", 1) == ["2008_000123"]
    assert examples.pick_examples(ds, "train", 3) == ["2008_000123", "2007_000032", "2007_000039"]
    assert examples.pick_examples(ds, "train", 10) == [
        "2008_000123", "2007_000032", "2007_000039", "2011_003276"]
    assert examples.pick_examples(ds, "val", 2) == ["2007_000042", "2010_000001"]
    # labels from a dataset index give the same picks without reading masks
    labels = {"2007_000032": [0], "2007_000039": [1], "2008_000123": [0, 1],
              "2011_003276": [1]}
    assert examples.pick_examples(ds, "train", 4, labels) == examples.pick_examples(ds, "train", 4)
    # without the two-class image: cat first (032), then dog (039), then the next round
    labels["2008_000123"] = []
    assert examples.pick_examples(ds, "train", 4, labels) == [
        "2007_000032", "2007_000039", "2011_003276", "2008_000123"]
    del labels["2011_003276"]
    with pytest.raises(FigureError, match="'2011_003276'"):
        examples.pick_examples(ds, "train", 2, labels)
    with pytest.raises(FigureError, match="at least 1"):
        examples.pick_examples(ds, "train", 0)


def test_seeds_map_cam_planes_through_their_keys():
    cams = np.array([[[0.9, 0.1], [0.05, 0.3]], [[0.2, 0.6], [0.1, 0.2]]], dtype=np.float32)
    seeds = examples._seeds(cams, np.array([0, 4]), threshold=0.25)
    assert seeds.tolist() == [[1, 5], [0, 1]]
    assert examples._seeds(np.zeros((0, 2, 3), np.float32), np.array([]), 0.1).tolist() == [
        [0, 0, 0], [0, 0, 0]]


def test_example_grid_writes_a_png(tmp_path, stores, png_size):
    ds, ids, cams, labels, _, seeds_eval = stores
    out = tmp_path / "figs" / "examples.png"
    columns = [
        ExampleColumn("CAM", "cam", cams),
        ExampleColumn("seeds", "seeds", cams, seeds_eval),
        {"title": "pseudo-labels (a long title that wraps)", "kind": "labels", "path": labels},
    ]
    examples.example_grid(ds, ids, columns, out)
    width, height = png_size(out)
    # 5 panels of ~1.45 in at 120 dpi; 4 rows of roughly square panels plus the legend
    assert 750 < width < 1050 and 600 < height < 1200
    two = tmp_path / "figs" / "two.png"
    examples.example_grid(ds, ids[:2], columns[:1], two)
    assert png_size(two)[0] < width and png_size(two)[1] < height


def test_example_grid_bad_inputs_name_file_and_id(tmp_path, stores, only_files):
    ds, ids, cams, labels, partial, seeds_eval = stores
    out = tmp_path / "figs" / "examples.png"
    with pytest.raises(StoreError, match=rf"partial.h5: image id '{ids[1]}' is missing"):
        examples.example_grid(ds, ids, [ExampleColumn("x", "labels", partial)], out)
    with pytest.raises(StoreError, match="no such"):
        examples.example_grid(ds, ids, [ExampleColumn("x", "cam", tmp_path / "nope.h5")], out)
    with pytest.raises(StoreError, match="expected a 'cams' store"):
        examples.example_grid(ds, ids, [ExampleColumn("x", "cam", labels)], out)
    no_threshold = tmp_path / "bad.eval.json"
    no_threshold.write_text(json.dumps({"miou": 0.5}))
    with pytest.raises(FigureError, match=r"bad.eval.json: .*'best_threshold'"):
        examples.example_grid(ds, ids, [ExampleColumn("s", "seeds", cams, no_threshold)], out)
    with pytest.raises(FigureError, match="kind must be one of"):
        examples.example_grid(ds, ids, [ExampleColumn("s", "heat", cams)], out)
    with pytest.raises(FigureError, match=r"lacks \['path'\]"):
        examples.example_grid(ds, ids, [{"title": "s", "kind": "cam"}], out)
    with pytest.raises(FigureError, match="seeds need"):
        examples.example_grid(ds, ids, [{"title": "s", "kind": "seeds", "path": cams}], out)
    assert not out.parent.exists() or only_files(out.parent) == []
