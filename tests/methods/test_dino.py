"""DINO's loss with centring (wsss.methods.dino): the loss and the centre by hand, no gradient
to the teacher, the centre in the state dict, the temperature warm-up."""

import math

import pytest
import torch

from wsss.methods.dino import DINOLoss, teacher_temperature


def test_loss_and_centre_by_hand():
    """Two logits, student temperature 1, teacher temperature 1, centre 0 at first: the target
    is softmax(t) and the loss -sum(target * log_softmax(s)); then c = (1 - m) mean(t)."""
    loss_fn = DINOLoss(2, student_temp=1.0, center_momentum=0.9)
    s = torch.tensor([[0.0, math.log(3.0)]])  # softmax (1/4, 3/4)
    t = torch.tensor([[math.log(2.0), 0.0]])  # softmax (2/3, 1/3)
    loss = loss_fn(s, t, 1.0)
    expected = -(2 / 3 * math.log(1 / 4) + 1 / 3 * math.log(3 / 4))
    assert loss.item() == pytest.approx(expected)
    assert torch.allclose(loss_fn.center, 0.1 * t)
    # the second call sees the centre: t - c = 0.9 t
    loss2 = loss_fn(s, t, 1.0)
    p = torch.softmax(0.9 * t, dim=-1)[0]
    assert loss2.item() == pytest.approx(-(p[0] * math.log(1 / 4) + p[1] * math.log(3 / 4)).item())
    assert torch.allclose(loss_fn.center, 0.9 * 0.1 * t + 0.1 * t)


def test_the_teacher_takes_no_gradient_and_the_centre_is_checkpointed():
    loss_fn = DINOLoss(4)
    s = torch.randn(3, 4, requires_grad=True)
    t = torch.randn(3, 4, requires_grad=True)
    loss_fn(s, t, 0.04).backward()
    assert s.grad is not None and t.grad is None
    other = DINOLoss(4)
    other.load_state_dict(loss_fn.state_dict())
    assert torch.equal(other.center, loss_fn.center) and loss_fn.center.abs().sum() > 0


def test_teacher_temperature_warms_up_linearly_then_stays():
    assert teacher_temperature(0, 100, 0.04, 0.07) == pytest.approx(0.04)
    assert teacher_temperature(50, 100, 0.04, 0.07) == pytest.approx(0.055)
    assert teacher_temperature(100, 100, 0.04, 0.07) == pytest.approx(0.07)
    assert teacher_temperature(5000, 100, 0.04, 0.07) == pytest.approx(0.07)
    assert teacher_temperature(0, 0, 0.04, 0.07) == pytest.approx(0.07)


def test_the_centre_can_follow_other_rows_than_the_loss_reads():
    """FSR's patch loss reads the masked rows, its centre moves with every teacher patch; with
    no masked row the loss is 0 (not NaN) and the centre still moves."""
    loss_fn = DINOLoss(2, student_temp=1.0, center_momentum=0.5)
    every = torch.tensor([[2.0, 0.0], [0.0, 4.0]])
    loss = loss_fn(torch.zeros(1, 2), every[:1], 1.0, center_rows=every)
    assert loss.item() == pytest.approx(math.log(2.0))  # uniform student: log 2 whatever t
    assert torch.allclose(loss_fn.center, 0.5 * every.mean(dim=0, keepdim=True))
    empty = loss_fn(torch.zeros(0, 2), torch.zeros(0, 2), 1.0, center_rows=every)
    assert empty.item() == 0.0
    assert torch.allclose(loss_fn.center, 0.75 * every.mean(dim=0, keepdim=True))
