"""Mode guards: SEAM keeps frozen BatchNorm frozen, prototype banks learn only in training."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from wsss.methods.base import build_method
from wsss.methods.contrast import PrototypeBank

LABELS = torch.tensor([[1.0, 0, 0, 0, 1], [0, 1, 0, 0, 0], [0, 0, 1, 1, 0]])
NO_CRF = {"psc": False, "rsc_csc": False}


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def _cfg(method: str, freeze_bn: bool = False) -> dict:
    cfg = {"method": method,
           "backbone": {"name": "tiny", "output_stride": 8, "pretrained": "none",
                        "freeze_bn": freeze_bn},
           "training": {"lr": 0.05, "momentum": 0.9, "weight_decay": 1e-4,
                        "new_layer_lr_mult": 10},
           "seam": {"dropout": 0.0}}
    if method == "hsc":
        cfg["hsc"] = {"base": "seam", "crf": NO_CRF}
    return cfg


def _images(seed: int = 0) -> torch.Tensor:
    return torch.randn(3, 3, 96, 96, generator=torch.Generator().manual_seed(seed))


def _batchnorms(module: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def _bn_state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in module.state_dict().items()
            if "running_" in k or "num_batches_tracked" in k}


@pytest.mark.parametrize("method", ["seam", "hsc"])
def test_frozen_batchnorm_stays_frozen_after_building(method):
    torch.manual_seed(0)
    net = build_method(_cfg(method, freeze_bn=True), 5)
    backbone = net.backbone if method == "seam" else net.base.backbone
    bns = _batchnorms(backbone)
    assert bns, "the tiny backbone must have BatchNorm for this test to mean anything"
    # straight after building (no .train() call that would re-freeze): eval mode
    assert net.training and not any(bn.training for bn in bns)
    assert not any(p.requires_grad for bn in bns for p in bn.parameters())
    before = _bn_state(backbone)
    net.losses(_images(), LABELS)  # a forward in train mode
    after = _bn_state(backbone)
    assert before.keys() == after.keys() and before
    for key, value in before.items():
        assert torch.equal(value, after[key]), key


def test_unfrozen_batchnorm_keeps_training_mode_and_learns_statistics():
    # the guard must restore modes, not force eval: the default (freeze_bn false) trains BN
    torch.manual_seed(0)
    net = build_method(_cfg("seam", freeze_bn=False), 5)
    assert all(bn.training for bn in _batchnorms(net.backbone))
    before = _bn_state(net.backbone)
    net.losses(_images(), LABELS)
    after = _bn_state(net.backbone)
    assert any(not torch.equal(before[k], after[k]) for k in before)


def _banks(net) -> list[PrototypeBank]:
    return [*net.class_banks, *net.pixel_banks]


def _snapshot(net) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(b.prototypes.clone(), b.filled.clone()) for b in _banks(net)]


def test_prototype_banks_do_not_change_when_the_losses_run_in_eval_mode():
    torch.manual_seed(0)
    net = build_method(_cfg("hsc"), 5).train()
    net.losses(_images(0), LABELS)  # training fills the banks
    filled = _snapshot(net)
    assert all(f.any() for _, f in filled)
    net.eval()
    with torch.no_grad():
        net.losses(_images(1), LABELS)
    for (p0, f0), (p1, f1) in zip(filled, _snapshot(net), strict=True):
        assert torch.equal(p0, p1) and torch.equal(f0, f1)
    net.train()
    net.losses(_images(1), LABELS)
    moved = [not torch.equal(p0, p1) for (p0, _), (p1, _) in zip(filled, _snapshot(net),
                                                                  strict=True)]
    assert all(moved)


def test_a_bank_in_eval_mode_ignores_updates_and_learns_again_in_train_mode():
    bank = PrototypeBank(3, 2, momentum=0.5)
    reps = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    bank.eval()
    bank.update(torch.tensor([0, 2]), reps)
    assert not bank.filled.any() and not bank.prototypes.any()
    bank.train()
    bank.update(torch.tensor([0, 2]), reps)
    assert bank.filled.tolist() == [True, False, True]
    assert torch.allclose(bank.prototypes[2], torch.tensor([0.0, 1.0]))
