import json

import numpy as np
import pytest

from wsss.data.voc import VocDataset, save_mask
from wsss.evaluate import evaluate_labels, evaluate_seeds
from wsss.metrics import confusion, mean_iou, scores, seed_confusions
from wsss.store import CamWriter, LabelWriter, StoreError

# 3×3 example; the 255 prediction at (2, 1) counts as background, the 255 gt pixel is skipped.
GT = np.array([[0, 0, 1], [1, 1, 2], [2, 2, 255]], dtype=np.uint8)
PRED = np.array([[0, 1, 1], [1, 0, 2], [2, 255, 0]], dtype=np.uint8)
NAMES = ["background", "cat", "dog"]


def test_confusion_hand_example():
    expected = np.array([[1, 1, 0], [1, 2, 0], [1, 0, 2]])
    conf = confusion(PRED, GT, 3)
    assert conf.dtype == np.int64
    np.testing.assert_array_equal(conf, expected)
    # other integer dtypes give the same answer
    np.testing.assert_array_equal(confusion(PRED.astype(np.int64), GT.astype(np.int32), 3), conf)


def test_scores_hand_example():
    s = scores(confusion(PRED, GT, 3), NAMES)
    # IoU: bg 1/(1+2+1), cat 2/(2+1+1), dog 2/(2+0+1)
    assert s["iou"] == pytest.approx({"background": 0.25, "cat": 0.5, "dog": 2 / 3})
    assert s["miou"] == pytest.approx((0.25 + 0.5 + 2 / 3) / 3)
    assert s["precision"] == pytest.approx({"background": 1 / 3, "cat": 2 / 3, "dog": 1.0})
    assert s["recall"] == pytest.approx({"background": 0.5, "cat": 2 / 3, "dog": 2 / 3})
    assert s["pixel_accuracy"] == pytest.approx(5 / 8)
    # 5 pixels predicted fg, 4 of them fg in gt; 6 fg gt pixels
    assert s["fg_precision"] == pytest.approx(4 / 5)
    assert s["fg_recall"] == pytest.approx(4 / 6)
    json.dumps(s, allow_nan=False)


def test_ignore_everywhere_gives_empty_confusion():
    gt = np.full((2, 2), 255, np.uint8)
    assert confusion(np.zeros((2, 2), np.uint8), gt, 3).sum() == 0


def test_invalid_labels_raise():
    with pytest.raises(ValueError, match="labels"):
        confusion(np.array([3], np.uint8), np.array([0], np.uint8), 3)
    with pytest.raises(ValueError, match="labels"):
        confusion(np.array([0], np.uint8), np.array([7], np.uint8), 3)
    with pytest.raises(ValueError, match="outside"):
        confusion(np.array([-1]), np.array([0]), 3)
    with pytest.raises(ValueError, match="shape"):
        confusion(np.zeros(3, np.uint8), np.zeros(4, np.uint8), 3)


def test_scores_nan_handling():
    # class 2 absent from gt and prediction; class 3 only predicted (IoU 0, counted)
    conf = np.array([[3, 0, 0, 1], [0, 2, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]])
    s = scores(conf, ["background", "a", "b", "c"])
    assert s["iou"]["b"] is None and s["precision"]["b"] is None and s["recall"]["b"] is None
    assert s["iou"]["c"] == 0.0 and s["recall"]["c"] is None and s["precision"]["c"] == 0.0
    assert s["miou"] == pytest.approx((0.75 + 1.0 + 0.0) / 3)
    assert s["fg_precision"] == pytest.approx(2 / 3)
    json.dumps(s, allow_nan=False)
    empty = scores(np.zeros((2, 2), np.int64), ["background", "a"])
    assert empty["miou"] is None and empty["pixel_accuracy"] is None
    assert empty["fg_precision"] is None and empty["fg_recall"] is None


def test_mean_iou_batched():
    conf = confusion(PRED, GT, 3)
    stack = np.stack([conf, np.eye(3, dtype=np.int64)])
    np.testing.assert_allclose(mean_iou(stack), [scores(conf, NAMES)["miou"], 1.0])


def _brute_force(cams, keys, gt, thresholds, num_classes):
    planes = np.concatenate([[0], np.asarray(keys) + 1])
    out = []
    for t in np.asarray(thresholds, np.float32):
        stack = np.concatenate([np.full((1, *gt.shape), t, np.float32), cams.astype(np.float32)])
        out.append(confusion(planes[stack.argmax(axis=0)], gt, num_classes + 1))
    return np.stack(out)


@pytest.mark.parametrize("dtype", [np.float16, np.float32])
@pytest.mark.parametrize("num_planes", [0, 1, 2, 4])
def test_seed_confusions_match_brute_force(num_planes, dtype):
    rng = np.random.default_rng(num_planes)
    num_classes, shape = 5, (13, 17)
    # unsorted, with a duplicate, and values on the CAM grid so that ties t == cam occur
    thresholds = np.array([0.5, 0.1, 0.0, 0.3, 0.3, 0.9, 1.0, 0.25])
    for _ in range(5):
        keys = np.sort(rng.choice(num_classes, num_planes, replace=False))
        cams = (rng.integers(0, 11, (num_planes, *shape)) / 10).astype(dtype)
        if dtype == np.float32:  # off the float16 grid as well
            cams[..., ::3] += rng.random((num_planes, shape[0], len(range(0, shape[1], 3))))
        gt = rng.integers(0, num_classes + 1, shape).astype(np.uint8)
        gt[rng.random(shape) < 0.15] = 255
        got = seed_confusions(cams, keys, gt, thresholds, num_classes)
        assert got.shape == (thresholds.size, num_classes + 1, num_classes + 1)
        np.testing.assert_array_equal(got, _brute_force(cams, keys, gt, thresholds, num_classes))


def test_seed_confusions_tie_goes_to_background():
    cams = np.array([[[0.5, 0.7]]], np.float32)
    gt = np.array([[1, 1]], np.uint8)
    got = seed_confusions(cams, [0], gt, [0.5], 1)
    np.testing.assert_array_equal(got[0], [[0, 0], [1, 1]])


def test_seed_confusions_checks_inputs():
    with pytest.raises(ValueError, match="keys"):
        seed_confusions(np.zeros((1, 2, 2)), [3], np.zeros((2, 2), np.uint8), [0.5], 3)
    with pytest.raises(ValueError, match="match"):
        seed_confusions(np.zeros((1, 2, 3)), [0], np.zeros((2, 2), np.uint8), [0.5], 3)
    with pytest.raises(ValueError, match="ground truth"):
        seed_confusions(np.zeros((1, 1, 1)), [0], np.full((1, 1), 9, np.uint8), [0.5], 3)


# --- evaluation stages on a two-image dataset --------------------------------------------


@pytest.fixture
def small_voc(tmp_path):
    root = tmp_path / "voc"
    masks = {
        "a": np.array([[0, 1, 1], [0, 1, 255]], np.uint8),
        "b": np.array([[2, 2, 0, 0]], np.uint8),
    }
    for image_id, mask in masks.items():
        save_mask(root / "SegmentationClass" / f"{image_id}.png", mask)
    (root / "val.txt").write_text("a\nb\n")
    return VocDataset(root=root, classes=("cat", "dog"), splits={"val": "val.txt"}), masks


def _write_cams(path, cams_by_id, classes=("cat", "dog")):
    with CamWriter(path, {"classes": list(classes)}) as w:
        for image_id, (cams, keys) in cams_by_id.items():
            w.add(image_id, cams, keys)


def test_evaluate_seeds(tmp_path, small_voc):
    ds, _ = small_voc
    cams = {
        "a": (np.array([[[0.1, 0.9, 0.6], [0.2, 0.4, 1.0]]]), [0]),
        "b": (np.array([[[0.8, 0.5, 0.3, 0.0]]]), [1]),
    }
    _write_cams(tmp_path / "cams.h5", cams)
    thresholds = np.array([0.05, 0.32, 0.35, 0.7])
    report = evaluate_seeds(tmp_path / "cams.h5", ds, "val", thresholds, 0.7, threads=2)
    # every pixel is right for 0.3 <= t < 0.4; ties go to the first such threshold
    assert report["best_threshold"] == 0.32
    assert report["miou"] == 1.0
    assert report["curve"]["threshold"] == thresholds.tolist()
    assert report["curve"]["miou"][1:3] == [1.0, 1.0]
    assert report["miou_at_default"] == report["curve"]["miou"][3] < 1.0
    assert report["num_images"] == 2 and report["split"] == "val"
    json.dumps(report, allow_nan=False)
    assert evaluate_seeds(tmp_path / "cams.h5", ds, "val", thresholds, 0.7) == report


def test_evaluate_seeds_missing_id(tmp_path, small_voc):
    ds, _ = small_voc
    _write_cams(tmp_path / "cams.h5", {"a": (np.zeros((1, 2, 3)), [0])})
    with pytest.raises(StoreError, match=r"cams\.h5.*'b'"):
        evaluate_seeds(tmp_path / "cams.h5", ds, "val", np.array([0.5]), 0.5)


def test_evaluate_labels(tmp_path, small_voc):
    ds, masks = small_voc
    with LabelWriter(tmp_path / "labels.h5", {"classes": ["cat", "dog"]}) as w:
        w.add("a", np.array([[0, 1, 255], [0, 1, 0]], np.uint8))
        w.add("b", masks["b"])
    report = evaluate_labels(tmp_path / "labels.h5", ds, "val", threads=2)
    # only error: the 255 at (0, 2) of "a" is a background prediction of a cat pixel
    assert report["iou"] == pytest.approx({"background": 4 / 5, "cat": 2 / 3, "dog": 1.0})
    assert report["ignored_fraction"] == pytest.approx(1 / 9)
    json.dumps(report, allow_nan=False)


def test_evaluate_labels_errors(tmp_path, small_voc):
    ds, masks = small_voc
    with LabelWriter(tmp_path / "short.h5", {"classes": ["cat", "dog"]}) as w:
        w.add("a", masks["a"])
    with pytest.raises(StoreError, match=r"short\.h5.*'b'"):
        evaluate_labels(tmp_path / "short.h5", ds, "val")
    with LabelWriter(tmp_path / "shape.h5", {"classes": ["cat", "dog"]}) as w:
        w.add("a", masks["a"])
        w.add("b", np.zeros((2, 2), np.uint8))
    with pytest.raises(StoreError, match="'b'"):
        evaluate_labels(tmp_path / "shape.h5", ds, "val")
