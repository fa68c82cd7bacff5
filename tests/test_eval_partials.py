import numpy as np
import pytest

from wsss.data.shards import sharded
from wsss.data.voc import VocDataset, save_mask
from wsss.eval_partials import (
    combine_partials,
    labels_partial,
    seeds_partial,
    write_partial,
)
from wsss.evaluate import labels_report, seeds_report
from wsss.store import CamWriter, LabelWriter, StoreError

EVALUATION = {"thresholds": {"start": 0.0, "stop": 0.95, "step": 0.05}, "default_threshold": 0.3}


@pytest.fixture
def five_images(tmp_path):
    """Five random masks of 2 classes with void pixels, CAMs and labels that are partly
    right: a split whose shards each change the sums."""
    rng = np.random.default_rng(0)
    root = tmp_path / "voc"
    ids = [f"im{k}" for k in range(5)]
    cams, labels = {}, {}
    for image_id in ids:
        h, w = rng.integers(4, 9, size=2)
        mask = rng.choice([0, 1, 2, 255], size=(h, w), p=[0.4, 0.25, 0.25, 0.1]).astype(np.uint8)
        save_mask(root / "SegmentationClass" / f"{image_id}.png", mask)
        cams[image_id] = (rng.random((2, h, w)), [0, 1])
        noisy = np.where(rng.random((h, w)) < 0.3, rng.integers(0, 3, (h, w)), mask)
        labels[image_id] = np.where(mask == 255, 0, noisy).astype(np.uint8)
    (root / "val.txt").write_text("".join(f"{i}\n" for i in ids))
    ds = VocDataset(root=root, classes=("cat", "dog"), splits={"val": "val.txt"})
    with CamWriter(tmp_path / "cams.h5", {"classes": ["cat", "dog"], "config": {"m": 1}}) as w:
        for image_id, (cam, keys) in cams.items():
            w.add(image_id, cam, keys)
    with LabelWriter(tmp_path / "labels.h5", {"classes": ["cat", "dog"], "refiner": {"r": 2}}) as w:
        for image_id, lab in labels.items():
            w.add(image_id, lab)
    return ds


def _partials(tmp_path, ds, n, make):
    paths = []
    for i in range(1, n + 1):
        meta, arrays = make(sharded(ds, f"{i}-of-{n}"))
        paths.append(tmp_path / "parts" / f"{i}-of-{n}.npz")
        write_partial(paths[-1], meta, arrays)
    return paths


def _without_run_info(report):
    return {k: v for k, v in report.items() if k not in ("versions", "shards")}


@pytest.mark.parametrize("n", [1, 2, 4, 7])
def test_sharded_seed_evaluation_equals_the_whole_one(tmp_path, five_images, n):
    ds = five_images
    whole = seeds_report(tmp_path / "cams.h5", ds, "val", "v", EVALUATION)
    paths = _partials(tmp_path, ds, n, lambda part: seeds_partial(
        tmp_path / "cams.h5", part, "val", "v", EVALUATION))
    combined = combine_partials(paths[::-1], ds)  # the order of the parts does not matter
    assert _without_run_info(combined) == _without_run_info(whole)
    assert combined["shards"] == n and combined["num_images"] == 5
    assert 0 < combined["miou"] < 1  # a real sum, not a degenerate case


@pytest.mark.parametrize("n", [1, 3])
def test_sharded_label_evaluation_equals_the_whole_one(tmp_path, five_images, n):
    ds = five_images
    whole = labels_report(tmp_path / "labels.h5", ds, "val", "v", "crf")
    paths = _partials(tmp_path, ds, n, lambda part: labels_partial(
        tmp_path / "labels.h5", part, "val", "v", "crf"))
    combined = combine_partials(paths, ds)
    assert _without_run_info(combined) == _without_run_info(whole)
    assert 0 < combined["miou"] < 1 and combined["ignored_fraction"] == whole["ignored_fraction"]


def test_combining_refuses_missing_or_foreign_shards(tmp_path, five_images):
    ds = five_images
    paths = _partials(tmp_path, ds, 3, lambda part: labels_partial(
        tmp_path / "labels.h5", part, "val", "v", "crf"))
    with pytest.raises(StoreError, match=r"shards \['1-of-3', '3-of-3'\], not 1..3"):
        combine_partials([paths[0], paths[2]], ds)
    meta, arrays = labels_partial(tmp_path / "labels.h5", sharded(ds, "2-of-3"), "val", "v",
                                  "psa")
    write_partial(tmp_path / "psa.npz", meta, arrays)
    with pytest.raises(StoreError, match=r"psa\.npz: \['stage'\] differ"):
        combine_partials([paths[0], tmp_path / "psa.npz", paths[2]], ds)
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(StoreError, match="junk.npz: not a readable partial"):
        combine_partials([tmp_path / "junk.npz"], ds)
