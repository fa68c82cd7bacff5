"""DeepLab retraining: the networks, the training recipe, label checks and the train stage."""

from __future__ import annotations

import json
import math
import pickle

import numpy as np
import pytest
import torch
from deeplab.cases import CFG, gt_store, make_cfg

from wsss import cli
from wsss.data.transforms import upsample
from wsss.data.voc import VocDataset
from wsss.deeplab.training import DeepLab, segmentation_loss, train
from wsss.errors import ConfigError
from wsss.models.deeplab import ARCHS, build_deeplab
from wsss.store import LabelMap, LabelWriter, StoreError


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


def _method(cfg: dict, num_classes: int = 2) -> DeepLab:
    torch.manual_seed(0)
    method = DeepLab(cfg, num_classes)
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
    method = _method(make_cfg(arch))
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
    method = _method(make_cfg(arch))
    batch = _batch()
    losses = [method.training_step(batch, step)["loss"] for step in range(8)]
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < 0.8 * losses[0], losses


def test_loss_ignores_255_and_survives_an_all_ignored_batch():
    logits = torch.randn(1, 3, 4, 4, requires_grad=True)
    labels = torch.full((1, 8, 8), 255, dtype=torch.long)
    loss = segmentation_loss(logits, labels)
    loss.backward()
    assert loss.item() == 0.0 and torch.count_nonzero(logits.grad) == 0
    labels[0, :4] = 1
    expected = torch.nn.functional.cross_entropy(
        upsample(logits, (8, 8)), labels, ignore_index=255)
    torch.testing.assert_close(segmentation_loss(logits, labels), expected)


def test_multiscale_training_max_fuses_and_sums_the_losses():
    method = _method(make_cfg(msc_scales=[0.5, 0.75]))
    batch = _batch(size=48)
    with torch.no_grad():
        outputs = method.msc_logits(batch["image"])
    assert [tuple(o.shape[-2:]) for o in outputs] == [(6, 6), (3, 3), (5, 5), (6, 6)]
    grid = outputs[0].shape[-2:]
    scaled = [upsample(o, grid) for o in outputs[1:3]]
    torch.testing.assert_close(outputs[3], torch.maximum(outputs[0], torch.maximum(*scaled)))
    expected = sum(segmentation_loss(o, batch["label"]).item() for o in outputs)
    assert method.training_step(batch, 0)["loss"] == pytest.approx(expected, rel=1e-4)


def test_frozen_batchnorm_keeps_statistics_and_affine():
    method = _method(make_cfg(freeze_bn=True))
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


# -- stores, train ---------------------------------------------------------------------------

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


def test_missing_label_id_is_named_and_nothing_written(tmp_path, tiny_voc_config, capsys):
    ds = VocDataset.from_config(tiny_voc_config)
    missing = ds.ids("train")[2]
    labels = gt_store(ds, "train", tmp_path / "gt.h5", skip={missing})
    out = tmp_path / "net"
    with pytest.raises(StoreError, match=rf"gt\.h5.*'{missing}'"):
        train(ds, "train", labels, make_cfg(), out, "cpu")
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

    labels = gt_store(ds, "train", tmp_path / "values.h5", edit=corrupt)
    with pytest.raises(StoreError, match=rf"values\.h5.*'{bad_id}'.*\[7\]"):
        train(ds, "train", labels, make_cfg(), tmp_path / "a", "cpu")
    assert not (tmp_path / "a" / "deeplab.pt").exists()

    labels = gt_store(ds, "train", tmp_path / "sizes.h5",
                       edit=lambda i, m: m[:-1] if i == other_id else m)
    with pytest.raises(StoreError, match=rf"sizes\.h5.*'{other_id}'"):
        train(ds, "train", labels, make_cfg(), tmp_path / "b", "cpu")
    assert not (tmp_path / "b").exists()
