"""Param groups with their own weight decay, and the reference weights / biases split
(`bias_groups`): every parameter in exactly one group, biases at 2× and never decayed."""

import pytest
import torch
from torch import nn

from wsss.train import Trainable, set_lr
from wsss.train.trainable import BIAS_LR_MULT, bias_groups

TRAINING = {"lr": 0.1, "momentum": 0.9, "weight_decay": 0.01}


class TrunkHead(Trainable):
    """A trunk (conv with bias, GroupNorm, conv without bias) and a head, split by
    `bias_groups`; the trunk's layers are also named one by one after the whole trunk, and
    the head twice, as overlapping module lists would."""

    def __init__(self):
        super().__init__()
        self.trunk = nn.Sequential(nn.Conv2d(3, 4, 1), nn.GroupNorm(2, 4),
                                   nn.Conv2d(4, 4, 1, bias=False))
        self.head = nn.Conv2d(4, 2, 1)

    def param_groups(self):
        return [*bias_groups("trunk", [self.trunk, self.trunk[0], self.trunk[1]], 1.0),
                *bias_groups("head", [self.head, self.head], 10.0)]

    def training_step(self, batch, step):  # never called: these tests build optimizers only
        return {}


def _ids(group):
    return [id(p) for p in group["params"]]


def test_biases_get_their_own_groups_and_every_parameter_is_listed_once():
    net = TrunkHead()
    groups = {g["name"]: g for g in net.param_groups()}
    assert set(groups) == {"trunk", "trunk_bias", "head", "head_bias"}
    t, gn, head = net.trunk[0], net.trunk[1], net.head
    # GroupNorm's scale is a weight (as in the references), its shift a bias
    assert _ids(groups["trunk"]) == [id(t.weight), id(gn.weight), id(net.trunk[2].weight)]
    assert _ids(groups["trunk_bias"]) == [id(t.bias), id(gn.bias)]
    assert _ids(groups["head"]) == [id(head.weight)]
    assert _ids(groups["head_bias"]) == [id(head.bias)]
    (opt,) = net.build_optimizers(TRAINING)
    listed = [id(p) for g in opt.param_groups for p in g["params"]]
    # nothing dropped, nothing listed twice (torch refuses a parameter in two groups)
    assert sorted(listed) == sorted(id(p) for p in net.parameters())
    mults = {g["name"]: (g["lr_mult"], g["weight_decay"]) for g in opt.param_groups}
    assert mults["trunk_bias"] == (BIAS_LR_MULT, 0.0)
    assert mults["head_bias"] == (10.0 * BIAS_LR_MULT, 0.0)
    assert mults["trunk"] == (1.0, 0.01) and mults["head"] == (10.0, 0.01)


def test_a_zero_gradient_step_decays_weights_and_leaves_biases():
    net = TrunkHead()
    opts = net.build_optimizers(TRAINING)
    set_lr(opts, 1.0)  # what the loop's schedule does before the first step
    before = {n: p.detach().clone() for n, p in net.named_parameters()}
    for p in net.parameters():
        p.grad = torch.zeros_like(p)
    opts[0].step()
    for name, p in net.named_parameters():
        if name.endswith("bias"):
            assert torch.equal(p.detach(), before[name]), name
        else:  # one SGD step on the decay term alone: w - lr × mult × wd × w
            mult = 10.0 if name.startswith("head") else 1.0
            expected = before[name] * (1 - TRAINING["lr"] * mult * TRAINING["weight_decay"])
            torch.testing.assert_close(p.detach(), expected)
            assert not torch.equal(p.detach(), before[name]), name


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_a_groups_own_weight_decay_overrides_the_blocks(optimizer):
    net = TrunkHead()
    net.param_groups = lambda: [{"params": list(net.trunk.parameters()), "lr_mult": 1.0},
                                {"params": list(net.head.parameters()), "lr_mult": 1.0,
                                 "weight_decay": 0.0}]
    (opt,) = net.build_optimizers({**TRAINING, "optimizer": optimizer})
    assert [g["weight_decay"] for g in opt.param_groups] == [0.01, 0.0]
