"""The plug-in mechanism (wsss.methods.plugin) with a toy plug-in that joins through the registry
(WSSS_PLUGINS), as a researcher's own method would: losses added to the base's, one optimizer
over base and head, the base chosen by declaration, the second view, the trunk."""

import os
import textwrap

import pytest
import torch

from wsss import registry
from wsss.errors import MethodError
from wsss.methods.base import build_method, second_view_size
from wsss.train import set_lr

# The toy's head scores the mean of the base's first-view features; its term is logged under
# `term` so that a clash with the base's names can be provoked from the config.
TOY = textwrap.dedent('''
    import torch
    from torch import nn

    from wsss.methods.base import register
    from wsss.methods.plugin import PluginMethod

    REGISTER = {
        "kind": "method", "name": "toyplug", "block": "toy", "plugin": True,
        "schema": {"type": "object", "properties": {
            "base": {"default": "baseline"},
            "weight": {"type": "number", "default": 0.5},
            "term": {"type": "string", "default": "extra"},
            "view_scale": {"type": ["number", "null"], "default": None},
            "nested": {"type": "object", "properties": {
                "a": {"default": 1}, "b": {"default": 2}}},
        }},
    }


    @register("toyplug")
    class Toy(PluginMethod):
        def __init__(self, cfg, num_classes):
            super().__init__(cfg, num_classes)
            self.head = nn.Conv2d(self.feat_dim, 1, 1)
            self.seen = []

        def heads(self):
            return [self.head]

        def plugin_losses(self, views, labels, step):
            self.seen = [tuple(v.image.shape[-2:]) for v in views]
            term = self.head(views[0].feat).mean() ** 2
            return {"loss": self.settings["weight"] * term, self.settings["term"]: term}
''')
# A base that no list in the package names: being declared `base` is what makes it one.
TOY_BASE = textwrap.dedent('''
    from wsss.methods.base import BaselineCAM, register

    REGISTER = {"kind": "method", "name": "toybase", "base": True}


    @register("toybase")
    class ToyBase(BaselineCAM):
        pass
''')
TRAINING = {"lr": 0.01, "momentum": 0.9, "weight_decay": 0.0, "new_layer_lr_mult": 10}


@pytest.fixture(scope="module")
def toy_files(tmp_path_factory):
    # written once per session: the registry imports a plug-in file once, by its stem
    root = tmp_path_factory.mktemp("plugins")
    (root / "toyplug.py").write_text(TOY)
    (root / "toybase.py").write_text(TOY_BASE)
    return [root / "toyplug.py", root / "toybase.py"]


@pytest.fixture
def toy(toy_files, monkeypatch):
    """build(base=..., **toy settings) -> the toy plug-in method on 3 classes."""
    monkeypatch.setenv(registry.PLUGINS_ENV, os.pathsep.join(map(str, toy_files)))

    def build(base="baseline", **settings):
        torch.manual_seed(0)
        cfg = {
            "method": "toyplug",
            "backbone": {"name": "tiny", "output_stride": 8, "pretrained": "none"},
            "training": TRAINING,
            "seam": {"dropout": 0.0, "min_cells": 2},
            "toy": {"base": base, **settings},
        }
        return build_method(cfg, 3)

    return build


def _batch():
    g = torch.Generator().manual_seed(0)
    return {"image": torch.randn(2, 3, 96, 96, generator=g),
            "label": torch.tensor([[1.0, 0, 1], [0, 1, 0]])}


def test_settings_are_the_declared_defaults_merged_with_the_block(toy):
    method = toy(weight=2.0, nested={"b": 5})
    assert method.block == "toy"
    assert method.settings == {"base": "baseline", "weight": 2.0, "term": "extra",
                               "view_scale": None, "nested": {"a": 1, "b": 5}}


def test_plugin_terms_add_to_the_base_terms(toy):
    method = toy()
    batch = _batch()
    out = method.losses(batch["image"], batch["label"])
    assert set(out) == {"loss", "base", "toy", "cls", "extra"}
    own, _ = method.base.view_losses(batch["image"], batch["label"], method.view_scale())
    assert torch.allclose(out["base"], own["loss"]) and torch.allclose(out["cls"], own["cls"])
    assert torch.allclose(out["toy"], 0.5 * out["extra"])
    assert torch.allclose(out["loss"], out["base"] + out["toy"])
    assert out["extra"] > 0


def test_one_optimizer_steps_base_and_head_at_their_rates(toy):
    method = toy()
    method.build_optimizers(TRAINING)
    set_lr(method.optimizers, 1.0)  # the schedule's first step: lr × lr_mult
    (opt,) = method.optimizers
    assert {g["name"]: g["lr"] for g in opt.param_groups} == pytest.approx(
        {"backbone": 0.01, "new": 0.1, "toy": 0.1})
    watched = {"backbone": (method.base.backbone.stem[0].weight, 0.01),
               "classifier": (method.base.classifier.weight, 0.1),
               "head": (method.head.weight, 0.1)}
    batch = _batch()
    # the gradient of the summed loss, taken by hand; the step must apply exactly it
    method.losses(batch["image"], batch["label"])["loss"].backward()
    grads = {k: p.grad.detach().clone() for k, (p, _) in watched.items()}
    before = {k: p.detach().clone() for k, (p, _) in watched.items()}
    log = method.training_step(batch, 0)
    assert set(log) == {"loss", "base", "toy", "cls", "extra"}
    assert all(isinstance(v, float) for v in log.values())
    for name, (p, lr) in watched.items():
        assert grads[name].abs().sum() > 0, name
        # first SGD step with momentum: the buffer is the gradient itself
        assert torch.allclose(p.detach(), before[name] - lr * grads[name], atol=1e-6), name


def test_a_loss_name_clash_is_refused(toy):
    method = toy(term="cls")  # the baseline's classification term
    batch = _batch()
    with pytest.raises(MethodError, match="'cls' named twice"):
        method.losses(batch["image"], batch["label"])


@pytest.mark.parametrize("base", ["dscnet", "nope"])
def test_only_declared_bases_are_accepted(toy, base):
    # dscnet is a method, but declared a plug-in, not a base
    with pytest.raises(MethodError, match=r"toy\.base: .*baseline.*seam.*toybase") as err:
        toy(base)
    assert repr(base) in str(err.value)


def test_a_base_declared_outside_the_package_serves(toy):
    method = toy("toybase")
    assert type(method.base).__name__ == "ToyBase"
    assert method.view_scale() == 0.3  # a baseline: no second view of its own
    batch = _batch()
    assert method.losses(batch["image"], batch["label"])["extra"] > 0


def test_the_base_without_a_second_view_is_given_one(toy):
    batch = _batch()
    method = toy("baseline")
    assert method.view_scale() == 0.3
    method.losses(batch["image"], batch["label"])
    # 0.3 of 96 px is 28 px: raised to the baseline's 8 cells at stride 8
    assert method.seen == [(96, 96), second_view_size((96, 96), 0.3, 8, 8)] == [(96, 96), (64, 64)]
    scaled = toy("baseline", view_scale=0.75)
    scaled.losses(batch["image"], batch["label"])
    assert scaled.seen == [(96, 96), (72, 72)]
    # SEAM makes its own (seam.scale 0.3, min_cells 2 here): nothing is imposed on it
    seam = toy("seam")
    assert seam.view_scale() is None
    seam.losses(batch["image"], batch["label"])
    assert seam.seen == [(96, 96), (28, 28)]


@pytest.mark.parametrize("base", ["baseline", "seam"])
def test_trunk_is_the_base_backbone(toy, base):
    method = toy(base)
    assert method.trunk is method.base.backbone
    assert method.head.in_channels == method.base.backbone.out_channels
    images = _batch()["image"][:1]
    method.eval()
    assert torch.equal(method.cams(images), method.base.cams(images))


def test_a_plugin_starts_from_a_base_classifier_through_its_base():
    """`init_from: baseline` on a plug-in over the baseline: the baseline's tensors are named
    without the plug-in's `base.` prefix, so a name-by-name load would match nothing."""
    from wsss.errors import ConfigError

    block = {"method": "baseline", "backbone": {"name": "tiny", "output_stride": 8,
                                                "pretrained": "none"},
             "training": {"new_layer_lr_mult": 10}}
    torch.manual_seed(1)
    source = build_method(block, 3)
    plugin_name = next(c.name for c in registry.components("method").values()
                       if c.get("plugin"))
    comp = registry.component("method", plugin_name)
    torch.manual_seed(2)
    plug = build_method({**block, "method": plugin_name, comp.get("block"): {"base": "baseline"}},
                        3)
    loaded = plug.init_from(source.state_dict(), "baseline/classifier.pt")
    assert loaded == len(source.state_dict())
    for key, value in source.state_dict().items():
        assert torch.equal(plug.base.state_dict()[key], value), key
    with pytest.raises(ConfigError, match="other.pt"):
        plug.init_from({"nothing.like.this": torch.zeros(1)}, "other.pt")
