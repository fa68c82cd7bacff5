"""Synthetic benchmark generator: determinism, layout, and the statistics it promises."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from wsss.data import synthetic
from wsss.data.voc import VOID, VocDataset

SMALL = {"num_train": 12, "num_val": 4, "min_side": 48, "max_side": 64}


def _files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


@pytest.fixture(scope="module")
def small_set(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("syn") / "data"
    synthetic.generate(root, SMALL)
    return root


def test_deterministic_and_independent_of_threads(small_set, tmp_path):
    synthetic.generate(tmp_path / "again", SMALL)
    synthetic.generate(tmp_path / "threads", SMALL, threads=2)
    reference = _files(small_set)
    assert len(reference) == 3 * 16 + 4
    assert _files(tmp_path / "again") == reference
    assert _files(tmp_path / "threads") == reference
    synthetic.generate(tmp_path / "other", {**SMALL, "seed": 1})
    assert _files(tmp_path / "other") != reference


def test_readable_through_voc_reader(small_set):
    ds = VocDataset.from_config(synthetic.dataset_config(small_set))
    assert ds.classes == tuple(s.name for s in synthetic.CLASS_SPECS[:6])
    assert ds.ids("train") == [f"syn_train_{i:04d}" for i in range(12)]
    assert len(ds.ids("val")) == 4
    meta = json.loads((small_set / "generator.json").read_text())
    assert meta["cooccurring"] == {"water": ["wedge", "ring"]}
    assert meta["config"]["num_train"] == 12
    shapes = set()
    for image_id in ds.ids("train") + ds.ids("val"):
        image, mask = ds.load_pair(image_id)
        shapes.add(image.shape)
        assert 48 <= image.shape[0] <= 64 and 48 <= image.shape[1] <= 64
        assert 1 <= len(ds.image_labels(image_id)) <= 3
        assert (mask == VOID).any()
        assert meta["image_backgrounds"][image_id] in synthetic.BACKGROUNDS
    assert len(shapes) > 1


def test_void_band_is_thin():
    cfg = synthetic.resolve_config({})
    mask = synthetic.render_image(cfg, "train", 0).mask
    void = mask == VOID
    assert 0 < void.mean() < 0.2
    # every void pixel touches a labelled pixel of some class, i.e. the band is at most ~2 px wide
    padded = np.pad(mask, 1, mode="edge")
    h, w = mask.shape
    neighbours = [
        padded[1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w]
        for dy, dx in ((-1, 0), (1, 0), (0, -1), (0, 1), (-1, -1), (-1, 1), (1, -1), (1, 1))
    ]
    touches = np.any([n != VOID for n in neighbours], axis=0)
    assert touches[void].all()
    no_void = synthetic.render_image({**cfg, "void_width": 0}, "train", 0).mask
    assert not (no_void == VOID).any()


def test_cooccurrence_statistics():
    cfg = synthetic.resolve_config({"min_side": 40, "max_side": 48})
    water_with, with_count, water_without, without_count = 0, 0, 0, 0
    for i in range(240):
        _, mask, _, background = synthetic.render_image(cfg, "train", i)
        present = {synthetic.CLASS_SPECS[v - 1].name for v in np.unique(mask) if 1 <= v <= 6}
        if present & {"wedge", "ring"}:
            with_count += 1
            water_with += background == "water"
        else:
            without_count += 1
            water_without += background == "water"
    assert with_count > 60 and without_count > 60
    assert abs(water_with / with_count - 0.85) < 0.12
    assert water_without / without_count < 0.12
    # the extremes are exact
    strict = synthetic.resolve_config({"cooccur_prob": 1.0, "rare_prob": 0.0})
    for i in range(30):
        _, mask, _, background = synthetic.render_image(strict, "val", i)
        present = {synthetic.CLASS_SPECS[v - 1].name for v in np.unique(mask) if 1 <= v <= 6}
        assert (background == "water") == bool(present & {"wedge", "ring"})


def test_config_errors(tmp_path):
    with pytest.raises(ValueError, match="'colour'"):
        synthetic.generate(tmp_path / "x", {"colour": 3})
    with pytest.raises(ValueError, match="cooccur"):
        synthetic.resolve_config({"cooccur": {"water": ["hexagon"]}})  # not among 6 classes
    with pytest.raises(ValueError, match="num_classes"):
        synthetic.resolve_config({"num_classes": 99})
    assert not (tmp_path / "x").exists()


def test_refuses_to_replace_foreign_directory(tmp_path):
    (tmp_path / "precious").mkdir()
    (tmp_path / "precious" / "thesis.tex").write_text("x")
    with pytest.raises(FileExistsError, match="precious"):
        synthetic.generate(tmp_path / "precious", {**SMALL, "num_train": 1, "num_val": 1})
    # a stale temp dir from a killed run is cleared, an earlier dataset is replaced
    stale = tmp_path / ".data.tmp"
    stale.mkdir()
    (stale / "junk").write_text("x")
    synthetic.generate(tmp_path / "data", {**SMALL, "num_train": 2, "num_val": 1})
    synthetic.generate(tmp_path / "data", {**SMALL, "num_train": 1, "num_val": 1})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "precious"]
    assert len(list((tmp_path / "data" / "JPEGImages").iterdir())) == 2


def test_cli_writes_dataset_and_preview(tmp_path, capsys):
    rc = synthetic.main(
        [
            str(tmp_path / "d"),
            "--set",
            "num_train=4",
            "--set",
            "num_val=1",
            "--preview",
            str(tmp_path / "p.png"),
        ]
    )
    assert rc == 0
    assert (tmp_path / "p.png").is_file()
    assert json.loads(capsys.readouterr().out)["train"]["images"] == 4


def test_parts_are_small_and_inside_their_object():
    cfg = synthetic.resolve_config({"min_side": 64, "max_side": 80})
    fractions = []
    for i in range(20):
        sample = synthetic.render_image(cfg, "train", i)
        mask, parts = sample.mask, sample.parts
        on = parts > 0
        assert np.all((mask[on] == parts[on]) | (mask[on] == VOID))
        for v in np.unique(parts[on]):
            fractions.append((parts == v).sum() / ((mask == v) | (parts == v)).sum())
    assert 0.04 < np.median(fractions) < 0.14
