"""DeepLab retraining: the networks, the training recipe, inference and the CLI stages."""

from __future__ import annotations

import copy
import json
import math
import pickle

import numpy as np
import pytest
import torch

from wsss import cli, segment
from wsss.data.voc import DatasetError, VocDataset
from wsss.errors import ConfigError
from wsss.models.deeplab import ARCHS, build_deeplab
from wsss.store import LabelMap, LabelReader, LabelWriter, StoreError

CFG = {
    "model": {"arch": "deeplabv2",
              "backbone": {"name": "tiny", "output_stride": 8, "pretrained": "none",
                           "freeze_bn": False},
              "rates": [6, 12, 18, 24]},
    "training": {"seed": 0, "epochs": 2, "batch_size": 2, "lr": 0.01, "momentum": 0.9,
                 "nesterov": False, "weight_decay": 5e-4, "poly_power": 0.9, "head_lr_mult": 10,
                 "head_bias_lr_mult": 20, "crop_size": 32, "resize_long": [40, 56],
                 "hflip": True, "color_jitter": 0.0, "msc_scales": [], "checkpoint_every": 50,
                 "num_workers": 0, "cache_max_images": 100},
    "inference": {"scales": [1.0, 0.5], "flip": True, "batch_size": 3,
                  "crf": {"iterations": 5, "gaussian": {"sxy": 1, "compat": 3},
                          "bilateral": {"sxy": 67, "srgb": 3, "compat": 4}}},
}


def _cfg(arch: str = "deeplabv2", freeze_bn: bool = False, **training) -> dict:
    cfg = copy.deepcopy(CFG)
    cfg["model"]["arch"] = arch
    cfg["model"]["backbone"]["freeze_bn"] = freeze_bn
    cfg["training"].update(training)
    return cfg


def _batch(seed: int = 0, size: int = 32) -> dict[str, torch.Tensor]:
    """Two images whose left half is class 1 and right half class 2, a 255 band in between."""
    g = torch.Generator().manual_seed(seed)
    image = torch.randn(2, 3, size, size, generator=g) * 0.1
    label = torch.ones(2, size, size, dtype=torch.long)
    label[:, :, size // 2 :] = 2
    label[:, :, size // 2 - 1 : size // 2 + 1] = 255
    image[:, 0] += (label == 1).float()
    image[:, 2] += (label == 2).float()
    return {"image": image, "label": label}


def _method(cfg: dict, num_classes: int = 2) -> segment.DeepLab:
    torch.manual_seed(0)
    method = segment.DeepLab(cfg, num_classes)
    method.build_optimizers(cfg["training"])
    return method.train()


# -- networks ---------------------------------------------------------------------------------

@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("stride", [8, 16])
def test_logits_on_the_backbone_grid(arch, stride):
    model = {**CFG["model"], "arch": arch,
             "backbone": {**CFG["model"]["backbone"], "output_stride": stride}}
    net = build_deeplab(model, 4).eval()
    for h, w in ((33, 47), (64, 64), (96, 80)):
        with torch.no_grad():
            out = net(torch.randn(1, 3, h, w))
        assert out.shape == (1, 5, math.ceil(h / stride), math.ceil(w / stride))


def test_deeplabv2_head_is_a_sum_of_dilated_convs_with_deeplab_init():
    net = build_deeplab(CFG["model"], 20)
    convs = list(net.head.branches)
    assert [c.dilation[0] for c in convs] == [6, 12, 18, 24]
    assert all(c.out_channels == 21 and c.kernel_size == (3, 3) for c in convs)
    weights = torch.cat([c.weight.flatten() for c in convs])
    assert abs(weights.std().item() - 0.01) < 1e-3
    assert all(torch.count_nonzero(c.bias) == 0 for c in convs)
    x = torch.randn(1, net.backbone.out_channels, 7, 9)
    torch.testing.assert_close(net.head(x), sum(c(x) for c in convs))


def test_bad_model_config_names_the_key():
    with pytest.raises(ConfigError, match=r"deeplab\.model\.arch.*'deeplabv9'.*deeplabv2"):
        build_deeplab({**CFG["model"], "arch": "deeplabv9"}, 2)
    with pytest.raises(ConfigError, match=r"deeplab\.model\.rates"):
        build_deeplab({**CFG["model"], "rates": []}, 2)


# -- training ---------------------------------------------------------------------------------

@pytest.mark.parametrize("arch", ARCHS)
def test_param_groups_carry_deeplab_multipliers(arch):
    method = _method(_cfg(arch))
    (opt,) = method.optimizers
    groups = {g["name"]: g for g in opt.param_groups}
    assert {n: g["lr_mult"] for n, g in groups.items()} == {
        "backbone": 1.0, "head": 10.0, "head_bias": 20.0}
    assert {n: g["weight_decay"] for n, g in groups.items()} == {
        "backbone": 5e-4, "head": 5e-4, "head_bias": 0.0}
    assert {n: g["initial_lr"] for n, g in groups.items()} == pytest.approx(
        {"backbone": 0.01, "head": 0.1, "head_bias": 0.2})
    assert all(p.ndim == 1 for p in groups["head_bias"]["params"])
    in_groups = [id(p) for g in opt.param_groups for p in g["params"]]
    assert sorted(in_groups) == sorted(id(p) for p in method.parameters() if p.requires_grad)
    head = {id(p) for p in method.net.head.parameters()}
    assert not head & {id(p) for p in groups["backbone"]["params"]}


@pytest.mark.parametrize("arch", ARCHS)
def test_training_steps_lower_the_loss(arch):
    method = _method(_cfg(arch))
    batch = _batch()
    losses = [method.training_step(batch, step)["loss"] for step in range(8)]
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < 0.8 * losses[0], losses


def test_loss_ignores_255_and_survives_an_all_ignored_batch():
    logits = torch.randn(1, 3, 4, 4, requires_grad=True)
    labels = torch.full((1, 8, 8), 255, dtype=torch.long)
    loss = segment.segmentation_loss(logits, labels)
    loss.backward()
    assert loss.item() == 0.0 and torch.count_nonzero(logits.grad) == 0
    labels[0, :4] = 1
    expected = torch.nn.functional.cross_entropy(
        segment.upsample(logits, (8, 8)), labels, ignore_index=255)
    torch.testing.assert_close(segment.segmentation_loss(logits, labels), expected)


def test_multiscale_training_max_fuses_and_sums_the_losses():
    method = _method(_cfg(msc_scales=[0.5, 0.75]))
    batch = _batch(size=48)
    with torch.no_grad():
        outputs = method.msc_logits(batch["image"])
    assert [tuple(o.shape[-2:]) for o in outputs] == [(6, 6), (3, 3), (5, 5), (6, 6)]
    grid = outputs[0].shape[-2:]
    scaled = [segment.upsample(o, grid) for o in outputs[1:3]]
    torch.testing.assert_close(outputs[3], torch.maximum(outputs[0], torch.maximum(*scaled)))
    expected = sum(segment.segmentation_loss(o, batch["label"]).item() for o in outputs)
    assert method.training_step(batch, 0)["loss"] == pytest.approx(expected, rel=1e-4)


def test_frozen_batchnorm_keeps_statistics_and_affine():
    method = _method(_cfg(freeze_bn=True))
    bns = [m for m in method.net.backbone.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    before = [{k: v.clone() for k, v in bn.state_dict().items()} for bn in bns]
    head = [p.clone() for p in method.net.head.parameters()]
    method.train()
    method.training_step(_batch(), 0)
    assert bns and all(not bn.training for bn in bns)
    for bn, state in zip(bns, before, strict=True):
        for key, value in bn.state_dict().items():
            assert torch.equal(value, state[key]), key
    assert any(not torch.equal(a, b) for a, b in zip(head, method.net.head.parameters(),
                                                     strict=True))


# -- stores, train + predict ------------------------------------------------------------------

def _gt_store(ds: VocDataset, split: str, path, skip=(), edit=None):
    """The ground-truth masks of `split` as a pseudo-label store (an oracle refiner)."""
    with LabelWriter(path, {"classes": list(ds.classes), "split": split}) as writer:
        for image_id in ds.ids(split):
            if image_id not in skip:
                mask = ds.load_mask(image_id)
                writer.add(image_id, edit(image_id, mask) if edit else mask)
    return path


def test_label_map_pickles_and_serves_its_ids(tmp_path):
    path = tmp_path / "labels.h5"
    with LabelWriter(path, {"classes": ["a"]}) as writer:
        writer.add("x", np.full((3, 4), 1, np.uint8))
    labels = LabelMap(path, ["x"])
    assert labels["x"].sum() == 12 and "x" in labels and "y" not in labels
    assert list(labels) == ["x"] and len(labels) == 1
    clone = pickle.loads(pickle.dumps(labels))
    np.testing.assert_array_equal(clone["x"], labels["x"])
    labels.close()
    clone.close()


def test_train_and_predict_round_trip_through_the_cli(tmp_path, tiny_voc_config):
    ds = VocDataset.from_config(tiny_voc_config)
    labels = _gt_store(ds, "train", tmp_path / "gt.h5")
    dataset = json.dumps({"name": "tiny", **tiny_voc_config})
    train_block = {k: CFG[k] for k in ("model", "training")}  # what the workflow passes
    assert cli.main(["deeplab-train", "--dataset", dataset, "--split", "train", "--labels",
                     str(labels), "--config", json.dumps(train_block), "--device", "cpu",
                     "--threads", "2", "--out", str(tmp_path / "net")]) == 0
    weights = tmp_path / "net" / "deeplab.pt"
    assert (tmp_path / "net" / "deeplab.log.csv").is_file()
    state = torch.load(weights, weights_only=False)
    assert state["config"] == train_block and state["classes"] == list(ds.classes)
    assert state["labels"] == str(labels)

    block = {**CFG, "splits": ["val"]}
    for split, threads in (("val", "2"), ("train", "1")):
        out, out_crf = tmp_path / f"{split}.h5", tmp_path / f"{split}_crf.h5"
        assert cli.main(["deeplab-predict", "--dataset", dataset, "--split", split, "--weights",
                         str(weights), "--config", json.dumps(block), "--device", "cpu",
                         "--threads", threads, "--out", str(out), "--out-crf",
                         str(out_crf)]) == 0
        for path in (out, out_crf):
            with LabelReader(path) as reader:
                assert reader.ids == ds.ids(split) and reader.classes == list(ds.classes)
                assert reader.attr("refiner") == block and reader.attr("split") == split
                for image_id in reader.ids:
                    label = reader.get(image_id)
                    assert label.dtype == np.uint8
                    assert label.shape == ds.load_image(image_id).shape[:2]
                    assert label.max() <= ds.num_classes


def test_predict_in_processes_matches_predict_in_this_process(tmp_path, tiny_voc_config):
    ds = VocDataset.from_config(tiny_voc_config)
    cfg = _cfg(epochs=1)
    weights = segment.train(ds, "train", _gt_store(ds, "train", tmp_path / "gt.h5"), cfg,
                            tmp_path / "net", "cpu")
    for threads in (1, 2):
        segment.predict(weights, ds, "train", cfg, tmp_path / f"p{threads}.h5",
                        tmp_path / f"c{threads}.h5", "cpu", threads)
    for name in ("p", "c"):
        with LabelReader(tmp_path / f"{name}1.h5") as a, LabelReader(tmp_path / f"{name}2.h5") as b:
            assert a.ids == b.ids
            for image_id in a.ids:
                np.testing.assert_array_equal(a.get(image_id), b.get(image_id))


class _PoolNet(torch.nn.Module):
    """Logits = the normalised colour channels averaged over stride-8 cells: a network whose
    answer is known, to check where multi-scale + flip inference puts it."""

    output_stride = 8

    def __init__(self):
        super().__init__()
        self.unused = torch.nn.Parameter(torch.zeros(1))  # gives the method a device

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 10 * torch.nn.functional.avg_pool2d(x, 8, ceil_mode=True)


@pytest.mark.parametrize("flip", [False, True])
def test_multiscale_probabilities_land_on_the_right_pixels(flip):
    method = _method(_cfg()).eval()
    method.net = _PoolNet()
    images = []
    for h, w, split in ((44, 60, 27), (37, 30, 13)):  # padded together, splits off the grid
        image = np.zeros((h, w, 3), np.uint8)
        image[:, :split, 0] = 255  # red: channel 0 wins
        image[:, split:, 2] = 255  # blue: channel 2 wins
        images.append((image, split))
    probs = segment.multiscale_probs(method, [im for im, _ in images], [1.0, 0.5, 1.5], flip)
    alone = segment.multiscale_probs(method, [images[1][0]], [1.0, 0.5, 1.5], flip)
    for (image, split), p in zip(images, probs, strict=True):
        assert p.shape == (3, *image.shape[:2])
        torch.testing.assert_close(p.sum(dim=0), torch.ones(image.shape[:2]))
        label = p.argmax(dim=0)
        assert set(label.unique().tolist()) == {0, 2}
        edge = (label == 0).sum(dim=1).float()  # the first blue column of each row
        assert (edge - split).abs().max() <= 2, edge
    # the smaller image was padded in the batch; where no cell that saw padding reaches (at
    # scale 0.5, the cells' centres are 16 pixels apart) it gets the same answer as alone
    torch.testing.assert_close(probs[1][:, :24, :8], alone[0][:, :24, :8])


def test_missing_label_id_is_named_and_nothing_written(tmp_path, tiny_voc_config, capsys):
    ds = VocDataset.from_config(tiny_voc_config)
    missing = ds.ids("train")[2]
    labels = _gt_store(ds, "train", tmp_path / "gt.h5", skip={missing})
    out = tmp_path / "net"
    with pytest.raises(StoreError, match=rf"gt\.h5.*'{missing}'"):
        segment.train(ds, "train", labels, _cfg(), out, "cpu")
    assert not out.exists()
    code = cli.main(["deeplab-train", "--dataset", json.dumps(tiny_voc_config), "--split",
                     "train", "--labels", str(labels), "--config", json.dumps(CFG),
                     "--device", "cpu", "--out", str(out)])
    assert code == 1 and missing in capsys.readouterr().err and not out.exists()


def test_bad_label_values_and_sizes_are_named(tmp_path, tiny_voc_config):
    ds = VocDataset.from_config(tiny_voc_config)
    bad_id, other_id = ds.ids("train")[1], ds.ids("train")[3]

    def corrupt(image_id, mask):
        if image_id == bad_id:
            mask = mask.copy()
            mask[0, 0] = 7
        return mask

    labels = _gt_store(ds, "train", tmp_path / "values.h5", edit=corrupt)
    with pytest.raises(StoreError, match=rf"values\.h5.*'{bad_id}'.*\[7\]"):
        segment.train(ds, "train", labels, _cfg(), tmp_path / "a", "cpu")
    assert not (tmp_path / "a" / "deeplab.pt").exists()

    labels = _gt_store(ds, "train", tmp_path / "sizes.h5",
                       edit=lambda i, m: m[:-1] if i == other_id else m)
    with pytest.raises(StoreError, match=rf"sizes\.h5.*'{other_id}'"):
        segment.train(ds, "train", labels, _cfg(), tmp_path / "b", "cpu")
    assert not (tmp_path / "b").exists()


def test_predict_failure_leaves_neither_file(tmp_path, tiny_voc_config):
    ds = VocDataset.from_config(tiny_voc_config)
    cfg = _cfg(epochs=1)
    weights = segment.train(ds, "train", _gt_store(ds, "train", tmp_path / "gt.h5"), cfg,
                            tmp_path / "net", "cpu")
    out, out_crf = tmp_path / "val.h5", tmp_path / "val_crf.h5"
    with pytest.raises(StoreError, match="no_such.pt"):
        segment.predict(tmp_path / "no_such.pt", ds, "val", cfg, out, out_crf, "cpu", 2)
    last = ds.ids("val")[-1]  # fails after the first image's labels were written
    next(ds.root.glob(f"JPEGImages/{last}.*")).write_bytes(b"not an image")
    cfg["inference"]["batch_size"] = 1
    with pytest.raises(DatasetError, match=last):
        segment.predict(weights, ds, "val", cfg, out, out_crf, "cpu", 2)
    assert not out.exists() and not out_crf.exists()
    assert not list(tmp_path.glob(".val*"))
