"""The baseline CAM method and what every backbone method shares (wsss.methods.base)."""

import pytest
import torch

from wsss.errors import ConfigError
from wsss.methods.base import METHODS, build_method
from wsss.models.backbones import BACKBONES


def _cfg(**backbone):
    return {
        "method": "baseline",
        "backbone": {"name": "tiny", "output_stride": 8, "pretrained": "none", **backbone},
        "training": {"lr": 0.1, "momentum": 0.9, "weight_decay": 1e-4, "new_layer_lr_mult": 10},
    }


def test_registry_and_unknown_method():
    assert "baseline" in METHODS and {"tiny", "resnet50", "resnet101"} <= set(BACKBONES)
    # the registry refuses the name, naming the key and the choices
    with pytest.raises(ConfigError, match=r"method: unknown method 'nope'.*baseline"):
        build_method({"method": "nope"}, 3)


def test_baseline_cams_shape_and_param_groups():
    method = build_method(_cfg(), 5)
    cams = method.cams(torch.zeros(2, 3, 48, 64))
    assert cams.shape == (2, 5, 6, 8)
    (opt,) = method.build_optimizers(_cfg()["training"])
    mults = {g["name"]: g["lr_mult"] for g in opt.param_groups}
    assert mults == {"backbone": 1.0, "new": 10}
    assert all(g["momentum"] == 0.9 and g["weight_decay"] == 1e-4 for g in opt.param_groups)


def test_momentum_is_really_momentum():
    """Two steps with the same gradient: with momentum 0.9 the second update is 1.9× the first."""
    method = build_method(_cfg(), 2)
    training = {**_cfg()["training"], "weight_decay": 0.0}
    (opt,) = method.build_optimizers(training)
    w = method.classifier.weight
    deltas = []
    for _ in range(2):
        before = w.detach().clone()
        opt.zero_grad()
        w.grad = torch.ones_like(w)
        opt.step()
        deltas.append((before - w.detach()).mean().item())
    assert deltas[1] == pytest.approx(1.9 * deltas[0], rel=1e-5)


def test_frozen_batchnorm_stays_fixed():
    method = build_method(_cfg(freeze_bn=True), 2).train()
    bn = method.backbone.stem[1]
    mean = bn.running_mean.clone()
    method(torch.randn(2, 3, 32, 32))
    assert not bn.training and torch.equal(bn.running_mean, mean)
    assert not bn.weight.requires_grad


def test_a_trained_method_loads_without_its_pretrained_weights(tmp_path, monkeypatch):
    """classifier.pt holds every weight: loading it must not need the pretrain stage's file
    (nor an ImageNet download) that training started from."""
    from wsss.methods.base import load_method

    monkeypatch.chdir(tmp_path)  # no results/pretrained/tiny.pt here
    torch.manual_seed(5)
    trained = build_method(_cfg(), 3)
    path = tmp_path / "classifier.pt"
    cfg = _cfg(pretrained="synthetic")
    torch.save({"method": trained.state_dict(), "config": cfg}, path)
    loaded = load_method(path, cfg, 3)
    for (k, a), b in zip(trained.state_dict().items(), loaded.state_dict().values(), strict=True):
        assert torch.equal(a, b), k
