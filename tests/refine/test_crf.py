import json

import numpy as np
import pytest
from fakes import two_regions as _two_regions
from PIL import Image

from wsss.data.voc import VocDataset, save_mask
from wsss.errors import ConfigError
from wsss.ops.densecrf import DEFAULT_CRF
from wsss.refine import refiner_module
from wsss.refine.crf import (
    cam_probs,
    crf_labels,
    label_crf_labels,
    run_crf,
    score_crf_labels,
)
from wsss.refine.pool import plane_labels
from wsss.store import CamWriter, LabelReader, StoreError

RED, BLUE, GREEN = (200, 40, 40), (40, 40, 200), (40, 200, 40)



def test_cam_probs_background_modes():
    cams = np.array([[[0.2, 1.0]], [[0.6, 0.1]]], np.float32)
    const = cam_probs(cams, {"mode": "constant", "threshold": 0.3})
    np.testing.assert_allclose(const[0], [[0.3, 0.3]])
    np.testing.assert_array_equal(const[1:], cams)
    power = cam_probs(cams, {"mode": "power", "alpha": 2})
    np.testing.assert_allclose(power[0], [[0.4**2, 0.0]], atol=1e-7)
    np.testing.assert_allclose(
        cam_probs(cams[:0], {"mode": "power", "alpha": 4}), np.ones((1, 1, 2))
    )
    with pytest.raises(ValueError, match="mode"):
        cam_probs(cams, {"mode": "softmax"})


def test_crf_labels_maps_planes_through_keys():
    image = np.zeros((24, 36, 3), np.uint8)
    image[:, :12], image[:, 12:24], image[:, 24:] = RED, GREEN, BLUE
    cams = np.zeros((2, 24, 36), np.float32)
    cams[0, :, 12:24] = 0.9  # plane 0 -> class 4 -> label 5
    cams[1, :, 24:] = 0.8  # plane 1 -> class 7 -> label 8
    label = crf_labels(image, cams, np.array([4, 7]), {"mode": "constant", "threshold": 0.3}, {})
    expected = np.zeros((24, 36), np.uint8)
    expected[:, 12:24], expected[:, 24:] = 5, 8
    assert label.dtype == np.uint8
    np.testing.assert_array_equal(label, expected)
    empty = crf_labels(image, cams[:0], np.array([], np.int64), {"mode": "power", "alpha": 1}, {})
    np.testing.assert_array_equal(empty, np.zeros((24, 36), np.uint8))


# --- run_crf over a small dataset in VOC layout ------------------------------------------

CLASSES = ("cat", "dog")
CFG = {"bg": {"mode": "constant", "threshold": 0.25}, "iterations": 5}


@pytest.fixture
def cam_dataset(tmp_path):
    """Five images of two colour halves, CAMs that roughly cover the right half."""
    root = tmp_path / "voc"
    (root / "JPEGImages").mkdir(parents=True)
    rng = np.random.default_rng(1)
    ids = [f"img{i}" for i in range(5)]
    cams = {}
    for i, image_id in enumerate(ids):
        image, truth = _two_regions(20 + 2 * i, 30)
        Image.fromarray(image).save(root / "JPEGImages" / f"{image_id}.png")
        save_mask(
            root / "SegmentationClass" / f"{image_id}.png", (truth * (1 + i % 2)).astype(np.uint8)
        )
        cam = np.clip(truth + rng.normal(0, 0.3, truth.shape), 0, 1)[None]
        cams[image_id] = (cam, [i % 2])
    (root / "train.txt").write_text("\n".join(ids) + "\n")
    ds = VocDataset(root=root, classes=CLASSES, splits={"train": "train.txt"})
    return ds, cams


def _write_cams(path, cams):
    with CamWriter(path, {"classes": list(CLASSES)}) as w:
        for image_id, (cam, keys) in cams.items():
            w.add(image_id, cam, keys)


def test_run_crf_round_trip(tmp_path, cam_dataset):
    ds, cams = cam_dataset
    _write_cams(tmp_path / "cams.h5", cams)
    run_crf(tmp_path / "cams.h5", ds, "train", CFG, tmp_path / "one.h5", threads=1, threshold=0.4)
    run_crf(tmp_path / "cams.h5", ds, "train", CFG, tmp_path / "two.h5", threads=2, threshold=0.4)
    with LabelReader(tmp_path / "one.h5") as one, LabelReader(tmp_path / "two.h5") as two:
        assert one.ids == two.ids == ds.ids("train")
        assert one.classes == list(CLASSES) and one.attr("split") == "train"
        refiner = one.attr("refiner")
        # the given threshold replaces the block's; the rest of bg is the REGISTER default
        assert refiner["bg"] == {"mode": "constant", "threshold": 0.4, "alpha": 16}
        assert refiner["iterations"] == 5 and refiner["bilateral"] == DEFAULT_CRF["bilateral"]
        for image_id in one.ids:
            label = one.get(image_id)
            np.testing.assert_array_equal(label, two.get(image_id))
            # the CRF recovers the clean mask from the noisy CAMs
            np.testing.assert_array_equal(label, ds.load_mask(image_id))
    json.loads(json.dumps(refiner))


def test_run_crf_missing_id_writes_nothing(tmp_path, cam_dataset):
    ds, cams = cam_dataset
    del cams["img3"]
    _write_cams(tmp_path / "cams.h5", cams)
    out = tmp_path / "out" / "labels.h5"
    with pytest.raises(StoreError, match=r"cams\.h5.*'img3'"):
        run_crf(tmp_path / "cams.h5", ds, "train", CFG, out, threads=2)
    assert not out.exists()
    assert not out.parent.exists() or not any(out.parent.iterdir())


def test_run_crf_worker_error_leaves_no_file(tmp_path, cam_dataset):
    ds, cams = cam_dataset
    cams["img2"] = (np.zeros((1, 5, 5)), [0])  # CAM size differs from the image
    _write_cams(tmp_path / "cams.h5", cams)
    out = tmp_path / "labels.h5"
    with pytest.raises(StoreError, match="img2"):
        run_crf(tmp_path / "cams.h5", ds, "train", CFG, out, threads=2)
    assert list(tmp_path.glob("*labels.h5*")) == []


def test_run_crf_on_tiny_voc_scores_well(tmp_path, tiny_voc_config):
    from wsss.evaluate import evaluate_labels, evaluate_seeds

    ds = VocDataset.from_config(tiny_voc_config)
    rng = np.random.default_rng(2)
    with CamWriter(tmp_path / "cams.h5", {"classes": list(ds.classes)}) as w:
        for image_id in ds.ids("train"):
            mask, keys = ds.load_mask(image_id), ds.image_labels(image_id)
            # blurry CAMs: the true object plus noise, max-normalised per plane
            cams = [(mask == k + 1) + rng.normal(0, 0.35, mask.shape) for k in keys]
            cams = np.clip(np.array(cams), 0, None)
            w.add(image_id, cams / cams.max(axis=(1, 2), keepdims=True), keys)
    seeds = evaluate_seeds(tmp_path / "cams.h5", ds, "train", np.arange(0.05, 1, 0.05), 0.3)
    run_crf(tmp_path / "cams.h5", ds, "train", CFG, tmp_path / "crf.h5", 2, seeds["best_threshold"])
    labels = evaluate_labels(tmp_path / "crf.h5", ds, "train")
    assert labels["miou"] > 0.9 and labels["miou"] > seeds["miou"] + 0.08


def test_score_crf_labels_snaps_a_blurred_walk_to_the_colour_edge():
    image, truth = _two_regions()
    # walk-like scores: the class spills 6 pixels past the colour edge, and score rows sum to
    # anything (the function normalises them); the background plane comes first
    scores = np.zeros((2, *truth.shape), np.float32)
    scores[0] = 0.3
    scores[1, :, 24 - 6 :] = 0.5
    label = score_crf_labels(image, scores * 7.0, np.array([2]), DEFAULT_CRF)
    assert label.dtype == np.uint8
    np.testing.assert_array_equal(label, np.where(truth == 1, 3, 0))
    plain = np.where(scores.argmax(axis=0) == 1, 3, 0)
    assert (plain != np.where(truth == 1, 3, 0)).sum() == 6 * truth.shape[0]


def test_label_crf_labels_cleans_the_argmax_of_walked_scores():
    image, truth = _two_regions()
    scores = np.zeros((2, *truth.shape), np.float32)
    scores[0] = 0.3
    scores[1, :, 24 - 6 :] = 0.5  # the class spills 6 pixels past the colour edge
    crf = {"gt_prob": 0.7, "iterations": 10, "gaussian": {"sxy": 3, "compat": 3},
           "bilateral": {"sxy": 50, "srgb": 5, "compat": 10}}
    label = label_crf_labels(image, scores, np.array([6]), crf)
    np.testing.assert_array_equal(label, np.where(truth == 1, 7, 0))


def test_plane_labels_map_background_and_keys():
    planes = np.array([[0, 1, 2], [2, 0, 1]])
    np.testing.assert_array_equal(plane_labels(np.array([4, 0]), planes),
                                  [[0, 5, 1], [1, 0, 5]])


def test_refiner_module_finds_the_crf_kind_and_names_the_key():
    module = refiner_module("crf")
    assert module.run_crf is run_crf and callable(module.refine)
    with pytest.raises(ConfigError, match=r"refiner: .*'nope'.*'crf'"):
        refiner_module("nope")


def test_refine_entry_point_and_best_threshold(tmp_path, cam_dataset):
    ds, cams = cam_dataset
    _write_cams(tmp_path / "cams.h5", cams)
    # no bg block: the REGISTER default, a constant plane at the sweep's best threshold, which
    # needs the sweep
    with pytest.raises(ConfigError, match="best"):
        refiner_module("crf").refine(tmp_path / "cams.h5", ds, "train", {}, None,
                                     tmp_path / "x.h5", "cpu", 1)
    assert not (tmp_path / "x.h5").exists()
    seeds = tmp_path / "seeds.json"
    seeds.write_text(json.dumps({"best_threshold": 0.4, "split": "train"}))
    refiner_module("crf").refine(tmp_path / "cams.h5", ds, "train", {"iterations": 5}, None,
                                 tmp_path / "best.h5", "cpu", 1, seeds_eval=seeds)
    run_crf(tmp_path / "cams.h5", ds, "train", CFG, tmp_path / "direct.h5", 1, threshold=0.4)
    with LabelReader(tmp_path / "best.h5") as a, LabelReader(tmp_path / "direct.h5") as b:
        assert a.attr("refiner")["bg"]["threshold"] == 0.4
        assert a.attr("refiner")["bg"]["chosen_on"] == "train"  # the summary names it
        for image_id in a.ids:
            np.testing.assert_array_equal(a.get(image_id), b.get(image_id))
