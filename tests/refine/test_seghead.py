"""The single-stage path: a method's segmentation head -> the CAM store's `seg` -> the `seghead`
refiner's labels. Hand-made fusion and restriction cases, then the real CLI end to end with a
method defined in the tests (tests/plugins/tiny_head.py, joined through WSSS_PLUGINS)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from fakes import FixedMethod as _Head

from wsss.cams import multiscale_maps
from wsss.cli import main
from wsss.data.voc import VocDataset
from wsss.errors import ConfigError
from wsss.refine import seghead
from wsss.store import CamReader, CamWriter, LabelReader, StoreError

PLUGIN = Path(__file__).resolve().parents[1] / "plugins" / "tiny_head.py"


def _seg(method, images, scales, flip, fusion="mean"):
    """The fused segmentation of `multiscale_maps` (no CAM planes asked for)."""
    keys = [np.zeros(0, np.int64)] * len(images)
    return multiscale_maps(method, images, keys, scales, flip, fusion)[1]


def _by_scale(images: torch.Tensor) -> torch.Tensor:
    """Stride 4, constant logits: (0, 2, 0) on the full-size view, (0, 0, 4) on the half one."""
    b, _, h, w = images.shape
    value = [0.0, 2.0, 0.0] if w >= 20 else [0.0, 0.0, 4.0]
    return torch.tensor(value).view(1, 3, 1, 1).expand(b, 3, -(-h // 4), -(-w // 4)).clone()


@pytest.mark.parametrize("flip", [False, True])
def test_mean_fuses_probabilities_and_max_fuses_logits(flip):
    image = np.full((16, 24, 3), 100, np.uint8)
    scales = [1.0, 0.5]
    (mean,) = _seg(_Head(_by_scale), [image], scales, flip, "mean")
    (peak,) = _seg(_Head(_by_scale), [image], scales, flip, "max")
    full, half = torch.tensor([0.0, 2.0, 0.0]), torch.tensor([0.0, 0.0, 4.0])
    expected_mean = (full.softmax(0) + half.softmax(0)) / 2
    expected_max = torch.maximum(full, half).softmax(0)
    torch.testing.assert_close(mean, expected_mean[:, None, None].expand(3, 16, 24))
    torch.testing.assert_close(peak, expected_max[:, None, None].expand(3, 16, 24))
    # the two differ in kind: the mean prefers class 2 less than the max of logits does
    assert mean.argmax(0).unique().tolist() == [2] and peak[2, 0, 0] > mean[2, 0, 0] + 0.2
    with pytest.raises(ConfigError, match="seg_fusion.*'median'"):
        _seg(_Head(_by_scale), [image], scales, flip, "median")


def _colours(images: torch.Tensor) -> torch.Tensor:
    """Stride 4: background = green, class 1 = red, class 2 = blue, averaged over 4×4 cells."""
    return 10 * F.avg_pool2d(images[:, [1, 0, 2]], 4, ceil_mode=True)


def _two_colour(h: int, w: int, split: int) -> np.ndarray:
    image = np.zeros((h, w, 3), np.uint8)
    image[:, :split, 0] = 255
    image[:, split:, 2] = 255
    return image


def test_seg_probabilities_land_on_the_right_pixels_whatever_the_batch():
    images = [(_two_colour(44, 60, 27), 27), (_two_colour(37, 30, 13), 13)]
    scales = [1.0, 0.5, 1.5]
    probs = _seg(_Head(_colours), [im for im, _ in images], scales, True)
    alone = _seg(_Head(_colours), [images[1][0]], scales, True)
    for (image, split), p in zip(images, probs, strict=True):
        assert p.shape == (3, *image.shape[:2])
        torch.testing.assert_close(p.sum(0), torch.ones(image.shape[:2]))
        label = p.argmax(0)
        assert set(label.unique().tolist()) == {1, 2}
        edge = (label == 1).sum(dim=1).float()
        assert (edge - split).abs().max() <= 2, edge
    # rows whose cells see no bottom padding: the same cell grid as alone, the same answer
    torch.testing.assert_close(probs[1][:, :24], alone[0][:, :24])


def test_restriction_keeps_only_background_and_the_image_classes():
    seg = np.zeros((3, 2, 3), np.float32)
    seg[:, 0] = [[0.2], [0.3], [0.5]]  # row 0: dog wins, cat second
    seg[:, 1] = [[0.5], [0.1], [0.4]]  # row 1: background wins, dog second
    cfg = seghead.settings({})
    image = np.zeros((2, 3, 3), np.uint8)
    np.testing.assert_array_equal(seghead.seg_label(image, seg, None, cfg), [[2] * 3, [0] * 3])
    np.testing.assert_array_equal(seghead.seg_label(image, seg, np.array([0]), cfg),
                                  [[1] * 3, [0] * 3])
    np.testing.assert_array_equal(seghead.seg_label(image, seg, np.array([1]), cfg),
                                  [[2] * 3, [0] * 3])
    assert not seghead.seg_label(image, seg, np.array([], np.int64), cfg).any()


def test_the_crf_option_runs_a_dense_crf_before_the_argmax():
    seg = np.zeros((2, 12, 12), np.float32)
    seg[0], seg[1] = 0.9, 0.1
    seg[:, 6, 6] = [0.45, 0.55]  # one weakly foreground pixel on a uniform image
    image = np.full((12, 12, 3), 120, np.uint8)
    plain = seghead.seg_label(image, seg, None, seghead.settings({}))
    smooth = seghead.seg_label(image, seg, None, seghead.settings({"crf": {}}))
    assert plain[6, 6] == 1 and plain.sum() == 1 and not smooth.any()


def test_settings_complete_the_crf_block_and_reject_what_does_not_apply():
    cfg = seghead.settings({"refiner": "seghead", "crf": {"bilateral": {"srgb": 5}}})
    assert cfg["restrict"] == ["train", "train_aug"]
    assert cfg["crf"] == {"iterations": 10, "gaussian": {"sxy": 3, "compat": 3},
                          "bilateral": {"sxy": 80, "srgb": 5, "compat": 10}}
    assert seghead.settings(None)["crf"] is False
    with pytest.raises(ConfigError, match="gt_prob"):
        seghead.settings({"crf": {"gt_prob": 0.7}})
    with pytest.raises(ConfigError, match="seghead.crf"):
        seghead.settings({"crf": True})


def _seg_store(ds: VocDataset, split: str, path: Path, dog_everywhere: bool) -> Path:
    """CAMs whose `seg` is the ground truth, plus (optionally) dog beating it at every pixel."""
    with CamWriter(path, {"classes": list(ds.classes), "method": "hand"}) as writer:
        for image_id in ds.ids(split):
            mask = ds.load_mask(image_id)
            mask = np.where(mask == 255, 0, mask)
            seg = np.eye(3, dtype=np.float32)[mask].transpose(2, 0, 1) * 0.5
            if dog_everywhere:
                seg[2] += 0.6
            keys = [k - 1 for k in np.unique(mask).tolist() if k > 0]
            writer.add(image_id, np.zeros((len(keys), *mask.shape)), keys, seg=seg)
    return path


def test_refine_restricts_the_training_splits_only(tmp_path, tiny_voc_config):
    ds = VocDataset.from_config(tiny_voc_config)
    for split in ("train", "val"):
        cams = _seg_store(ds, split, tmp_path / f"{split}.h5", dog_everywhere=True)
        outs = []
        for threads in (1, 2):
            out = tmp_path / f"labels_{split}_{threads}.h5"
            seghead.refine(cams, ds, split, {"refiner": "seghead", "crf": {"iterations": 3}},
                           None, out, "cpu", threads)
            outs.append(out)
        with LabelReader(outs[0]) as a, LabelReader(outs[1]) as b:
            assert a.ids == ds.ids(split) and a.attr("refiner")["restrict"] == ["train",
                                                                              "train_aug"]
            for image_id in a.ids:
                label, gt = a.get(image_id), ds.load_mask(image_id)
                np.testing.assert_array_equal(label, b.get(image_id))  # pool = inline
                if split == "val":  # unrestricted: dog wins everywhere
                    assert np.all(label == 2)
                else:  # restricted: dog only where the image has dogs
                    assert set(np.unique(label)) <= {0} | set(np.unique(gt[gt < 255]))


def test_a_store_without_seg_is_refused_naming_the_file(tmp_path, tiny_voc_config):
    ds = VocDataset.from_config(tiny_voc_config)
    cams = tmp_path / "plain.h5"
    with CamWriter(cams, {"classes": list(ds.classes), "method": "baseline"}) as writer:
        for image_id in ds.ids("val"):
            writer.add(image_id, np.zeros((0, 4, 4)), [])
    out = tmp_path / "labels.h5"
    with pytest.raises(StoreError, match=r"plain\.h5.*'baseline' has no segmentation head"):
        seghead.refine(cams, ds, "val", {}, None, out, "cpu", 1)
    with CamReader(cams) as reader, pytest.raises(StoreError, match=r"plain\.h5.*no 'seg'"):
        reader.get_seg(ds.ids("val")[0])
    assert not out.exists()


# -- end to end through the CLI ----------------------------------------------------------------

METHOD = {
    "backbone": {"name": "tiny", "output_stride": 8, "pretrained": "none", "freeze_bn": False},
    "training": {"seed": 0, "epochs": 2, "batch_size": 2, "lr": 0.05, "momentum": 0.9,
                 "nesterov": False, "weight_decay": 1e-4, "poly_power": 0.9,
                 "new_layer_lr_mult": 10, "crop_size": 48, "resize_long": [40, 56],
                 "hflip": True, "color_jitter": 0.0, "num_workers": 0, "checkpoint_every": 50,
                 "cache_max_images": 100},
    "inference": {"scales": [1.0, 0.5], "flip": True, "batch_size": 3, "seg_fusion": "mean"},
}


def _run(*args: str) -> None:
    assert main(list(args)) == 0, args


def test_single_stage_method_end_to_end(tmp_path, tiny_voc_config, monkeypatch, capsys):
    monkeypatch.setenv("WSSS_PLUGINS", str(PLUGIN))
    ds = VocDataset.from_config(tiny_voc_config)
    dataset, index = json.dumps(tiny_voc_config), str(tmp_path / "index.json")
    _run("index", "--dataset", dataset, "--splits", "train", "val", "--out", index)
    labels = json.loads(Path(index).read_text())["splits"]

    def stage(variant: str, cfg: dict, checkpoint: Path | None = None) -> Path:
        out = tmp_path / variant
        common = ["--dataset", dataset, "--index", index, "--variant", variant,
                  "--config", json.dumps(cfg)]
        if checkpoint is None:
            _run("train", *common, "--split", "train", "--out", str(out))
            checkpoint = out / "classifier.pt"
        for split in ("train", "val"):
            _run("cams", *common, "--split", split, "--checkpoint", str(checkpoint),
                 "--out", str(out / "cams" / f"{split}.h5"))
        return out

    def refine(variant: Path, split: str, block: dict) -> Path:
        out = variant / "seghead" / "labels" / f"{split}.h5"
        _run("refine", "--dataset", dataset, "--cams", str(variant / "cams" / f"{split}.h5"),
             "--split", split, "--config", json.dumps(block), "--out", str(out),
             "--device", "cpu", "--threads", "2")
        return out

    cfg = {"method": "tiny_head", **METHOD, "tiny_head": {"head_weight": 0.5}}
    trained = stage("tiny_head", cfg)
    with CamReader(trained / "cams" / "train.h5") as cams:
        assert cams.attr("seg_fusion") == "mean"
        for image_id in cams.ids:
            seg = cams.get_seg(image_id)
            assert seg.shape == (3, *ds.load_image(image_id).shape[:2])
            assert seg.min() >= 0 and np.abs(seg.sum(0) - 1).max() < 1e-2
    block = {"refiner": "seghead", "crf": {"iterations": 5}}
    out = refine(trained, "train", block)
    with LabelReader(out) as reader:
        assert reader.ids == ds.ids("train") and reader.classes == list(ds.classes)
        assert reader.attr("split") == "train" and reader.attr("refiner")["crf"]["iterations"] == 5
        for image_id in reader.ids:
            label = reader.get(image_id)
            assert label.dtype == np.uint8 and label.shape == ds.load_mask(image_id).shape
            allowed = {0} | {k + 1 for k in labels["train"]["labels"][image_id]}
            assert set(np.unique(label).tolist()) <= allowed
    result = tmp_path / "eval.json"
    _run("eval-labels", "--dataset", dataset, "--labels", str(out), "--split", "train",
         "--variant", "tiny_head", "--stage", "seghead", "--out", str(result))
    report = json.loads(result.read_text())
    assert report["stage"] == "seghead" and 0 <= report["miou"] <= 1

    # the same network with a head that says "dog" everywhere (weights 0, dog's bias highest):
    # restricted, an image without dogs must not get any; unrestricted (val), every pixel does
    state = torch.load(trained / "classifier.pt", weights_only=False)
    state["method"]["head.weight"].zero_()
    state["method"]["head.bias"].copy_(torch.tensor([0.0, 0.5, 3.0]))
    torch.save(state, tmp_path / "dog.pt")
    dog = stage("dog", cfg, tmp_path / "dog.pt")
    for split in ("train", "val"):
        with LabelReader(refine(dog, split, {"refiner": "seghead"})) as reader:
            for image_id in reader.ids:
                label, keys = reader.get(image_id), labels[split]["labels"][image_id]
                if split == "val":
                    assert np.all(label == 2), image_id
                else:  # the highest allowed plane: dog if labelled, else cat (bias 0.5 > 0)
                    assert np.all(label == (2 if 1 in keys else 1)), image_id
    assert any(1 not in labels["val"]["labels"][i] for i in ds.ids("val"))  # a changed case
    assert any(1 not in labels["train"]["labels"][i] for i in ds.ids("train"))

    # a method without a head leaves no `seg`: the refiner names the file and says why
    base = stage("base", {"method": "baseline", **METHOD})
    with CamReader(base / "cams" / "val.h5") as cams:
        assert cams.attr("seg_fusion") is None and not cams.has_seg(ds.ids("val")[0])
    capsys.readouterr()
    args = ["refine", "--dataset", dataset, "--cams", str(base / "cams" / "val.h5"), "--split",
            "val", "--config", json.dumps({"refiner": "seghead"}), "--out",
            str(tmp_path / "no.h5")]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "base/cams/val.h5" in err and "no segmentation head" in err
    assert not (tmp_path / "no.h5").exists()
