"""CSRM's DeepLabV3+ decoder (wsss.models.deeplabv3plus): the output grid, which stages it
reads, the optional representation head, GroupNorm's batch independence and dropout."""

import pytest
import torch
from torch import nn

from wsss.models.deeplabv3plus import DeepLabV3PlusHead

pytestmark = pytest.mark.usefixtures("one_thread")

LOW, MID, HIGH, OUTPUTS, REP = 6, 7, 12, 3, 5


def _head(dropout=0.1, seed=0):
    torch.manual_seed(seed)
    return DeepLabV3PlusHead(LOW, HIGH, OUTPUTS, rates=[1, 2], aspp_width=8, low_width=4,
                             width=8, rep_dim=REP, dropout=dropout, groups=4)


def _stages(batch=2, deep=(3, 3), seed=0):
    """Backbone-like stage outputs: stride 4 (12×10), a middle one, the deepest."""
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, LOW, 12, 10, generator=g),
            torch.randn(batch, MID, 6, 5, generator=g),
            torch.randn(batch, HIGH, *deep, generator=g)]


def _no_dropout(head):
    for m in head.modules():
        if isinstance(m, nn.Dropout):
            m.p = 0.0
    return head


@pytest.mark.parametrize("deep", [(3, 3), (6, 5), (12, 10)])
def test_outputs_are_on_the_first_stages_grid_whatever_the_deep_stages_size(deep):
    head = _head().eval()
    with torch.no_grad():
        seg, rep = head(_stages(deep=deep))
    assert seg.shape == (2, OUTPUTS, 12, 10) and rep.shape == (2, REP, 12, 10)


def test_reads_the_first_and_the_last_stage_only():
    """ASPP on the deepest stage, the low-level projection on the stride-4 one (a V3 decoder
    without the low-level path, or the wrong stage, would fail one of these)."""
    head = _head().eval()
    stages = _stages()
    with torch.no_grad():
        seg, rep = head(stages)
        for k, changes in ((0, True), (1, False), (2, True)):
            other = list(stages)
            other[k] = stages[k] + torch.randn_like(stages[k])
            seg_k, rep_k = head(other)
            assert torch.equal(seg_k, seg) != changes, k
            assert torch.equal(rep_k, rep) != changes, k


def test_without_rep_the_segmentation_is_the_same():
    head = _head().eval()
    stages = _stages()
    with torch.no_grad():
        seg, rep = head(stages)
        seg_only, none = head(stages, with_rep=False)
    assert none is None and rep is not None
    assert torch.equal(seg_only, seg)


def test_each_image_is_normalised_on_its_own_in_train_mode():
    """GroupNorm: in train mode (dropout off) an image's output does not depend on the other
    images of the batch; BatchNorm would normalise with the batch's statistics."""
    head = _no_dropout(_head()).train()
    stages = _stages(batch=3)
    with torch.no_grad():
        seg, rep = head(stages)
        for i in range(3):
            seg_i, rep_i = head([s[i : i + 1] for s in stages])
            assert torch.allclose(seg_i, seg[i : i + 1], atol=1e-5), i
            assert torch.allclose(rep_i, rep[i : i + 1], atol=1e-5), i


def _differ(head, stages):
    """Whether two forwards differ: (seg, rep)."""
    (seg_a, rep_a), (seg_b, rep_b) = head(stages), head(stages)
    return not torch.equal(seg_a, seg_b), not torch.equal(rep_a, rep_b)


def test_dropout_acts_in_train_mode_only_and_where_it_sits():
    """Dropout after the ASPP (so in both branches) and in the segmentation branch (not in
    the representation branch); none in eval mode."""
    stages = _stages()
    with torch.no_grad():
        head = _head(dropout=0.5).train()
        assert _differ(head, stages) == (True, True)
        head.eval()
        assert _differ(head, stages) == (False, False)
        head.train()
        head.aspp.dropout.p = 0.0  # the segmentation branch's own dropout only
        assert _differ(head, stages) == (True, False)
        _no_dropout(head.seg)
        assert _differ(head, stages) == (False, False)
        head.aspp.dropout.p = 0.5  # the ASPP's only
        assert _differ(head, stages) == (True, True)
