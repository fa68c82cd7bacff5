import json

import numpy as np
from PIL import Image

from wsss.data.voc import VocDataset, save_mask
from wsss.diagnostics import failure_modes, seed_prediction
from wsss.store import CamWriter


def test_seed_prediction_maps_keys_and_gives_ties_to_background():
    cam = np.array([[[0.2, 0.5, 0.9]], [[0.1, 0.6, 0.3]]], dtype=np.float32)
    pred = seed_prediction(cam, np.array([2, 4]), threshold=0.5)
    assert pred.tolist() == [[0, 5, 3]]
    assert seed_prediction(np.zeros((0, 1, 2)), np.array([]), 0.1).tolist() == [[0, 0]]


def _dataset(tmp_path):
    """Two 4×4 images, one class ('a'); image x on water, image y on grass."""
    root = tmp_path / "voc"
    for d in ("JPEGImages", "SegmentationClass", "SegmentationPart", "ImageSets/Segmentation"):
        (root / d).mkdir(parents=True)
    gt = np.zeros((4, 4), np.uint8)
    gt[:, 2:] = 1  # object: right half, 8 pixels
    part = np.zeros((4, 4), np.uint8)
    part[0, 3] = 1  # its part: one pixel
    for image_id in ("x", "y"):
        Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(root / "JPEGImages" / f"{image_id}.png")
        save_mask(root / "SegmentationClass" / f"{image_id}.png", gt)
        save_mask(root / "SegmentationPart" / f"{image_id}.png", part)
    (root / "ImageSets/Segmentation/train.txt").write_text("x\ny\n")
    (root / "classes.txt").write_text("a\n")
    generator = {"backgrounds": ["water", "grass"], "cooccurring": {"water": ["a"]},
                 "image_backgrounds": {"x": "water", "y": "grass"}}
    (root / "generator.json").write_text(json.dumps(generator))
    return VocDataset.from_config({"root": str(root),
                                   "splits": {"train": "ImageSets/Segmentation/train.txt"}})


def test_failure_modes_by_hand(tmp_path):
    ds = _dataset(tmp_path)
    cam_x = np.zeros((1, 4, 4), np.float32)
    cam_x[0, 0, 3] = 1.0        # the part
    cam_x[0, 1:, 3] = 0.2       # a weak body
    cam_x[0, :2, :2] = 0.8      # 4 background pixels of the water image
    cam_y = np.zeros((1, 4, 4), np.float32)
    cam_y[0, :, 2:] = 1.0       # the whole object, nothing on grass
    with CamWriter(tmp_path / "cams.h5", {"classes": ["a"]}) as w:
        w.add("x", cam_x, [0])
        w.add("y", cam_y, [0])
    gen = json.loads((ds.root / "generator.json").read_text())
    out = failure_modes(tmp_path / "cams.h5", ds, "train", gen, threshold=0.5)
    assert out["background_false_positive_rate"] == {"water": 4 / 8, "grass": 0.0}
    assert out["object_recall"] == {"a": (1 + 8) / 16}
    assert out["part_recall"] == 2 / 2 and out["body_recall"] == 7 / 14
    # part CAM mean (1 + 1) / 2 = 1; body (3 × 0.2 + 4 × 0 + 7 × 1) / 14
    assert np.isclose(out["part_body_cam_ratio"], 1.0 / ((3 * 0.2 + 7) / 14), rtol=1e-3)  # fp16
    assert out["leakage_ratio"] == {}  # the other backgrounds have no false positives


def test_label_failure_modes_by_hand(tmp_path):
    from wsss.diagnostics import label_failure_modes
    from wsss.store import LabelWriter

    ds = _dataset(tmp_path)
    lab_x = np.zeros((4, 4), np.uint8)
    lab_x[:, 3] = 1           # part + 3 body pixels
    lab_x[0, 0] = 1           # one false positive on water
    lab_x[1, 0] = 255         # ignore: not counted as foreground
    lab_y = np.zeros((4, 4), np.uint8)
    with LabelWriter(tmp_path / "labels.h5", {"classes": ["a"]}) as w:
        w.add("x", lab_x)
        w.add("y", lab_y)
    gen = json.loads((ds.root / "generator.json").read_text())
    out = label_failure_modes(tmp_path / "labels.h5", ds, "train", gen)
    assert out["background_false_positive_rate"] == {"water": 1 / 8, "grass": 0.0}
    assert out["part_recall"] == 1 / 2 and out["body_recall"] == 3 / 14
    assert out["part_body_cam_ratio"] is None and out["threshold"] is None
