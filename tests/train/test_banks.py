"""ClassBanks (wsss.train.ClassBanks): per-class first-in-first-out row banks with caps, their
state_dict round trip and checks, and `.to()` / `.double()`."""

import pytest
import torch
from torch import nn

from wsss.train import ClassBanks

pytestmark = pytest.mark.usefixtures("one_thread")


def _rows(start, n, dim=2):
    """n rows whose entries are start, start + 1, ...: row k is (start + k) · 1."""
    return torch.arange(start, start + n, dtype=torch.float32)[:, None].expand(n, dim).clone()


def test_each_class_keeps_its_newest_rows_in_order():
    banks = ClassBanks([4, 3], 2)
    banks.push(1, _rows(100, 2))
    banks.push(0, _rows(0, 3))
    assert torch.equal(banks[0], _rows(0, 3))
    banks.push(0, _rows(3, 3))
    assert torch.equal(banks[0], _rows(2, 4))  # rows 2, 3, 4, 5: the two oldest dropped
    assert torch.equal(banks[1], _rows(100, 2))  # the other class untouched
    banks.push(1, _rows(200, 5))  # more than the cap at once: its 3 newest
    assert torch.equal(banks[1], _rows(202, 3))
    banks.push(0, _rows(9, 0))  # nothing pushed, nothing dropped
    assert torch.equal(banks[0], _rows(2, 4))


def test_pushed_rows_are_detached_copies():
    banks = ClassBanks([4], 2)
    rows = _rows(0, 2).requires_grad_(True)
    banks.push(0, rows)
    assert not banks[0].requires_grad
    with torch.no_grad():
        rows.add_(10.0)
    assert torch.equal(banks[0], _rows(0, 2))


def test_banks_survive_a_state_dict_round_trip():
    owner = nn.Module()
    owner.banks = ClassBanks([4, 3, 2], 2)
    owner.banks.push(0, _rows(0, 5))
    owner.banks.push(2, _rows(50, 1))
    state = owner.state_dict()
    assert list(state) == ["banks._extra_state"]
    fresh = nn.Module()
    fresh.banks = ClassBanks([4, 3, 2], 2)
    fresh.load_state_dict(state)
    assert torch.equal(fresh.banks[0], _rows(1, 4))
    assert fresh.banks[1].shape == (0, 2)
    assert torch.equal(fresh.banks[2], _rows(50, 1))
    state["banks._extra_state"]["banks"][0].add_(1.0)  # not shared with the loaded dict
    assert torch.equal(fresh.banks[0], _rows(1, 4))
    fresh.banks.push(1, _rows(7, 1))  # and the loaded banks work on as banks
    assert torch.equal(fresh.banks[1], _rows(7, 1))


@pytest.mark.parametrize(("sizes", "dim"), [([4, 3], 2), ([4, 3, 2, 2], 2), ([4, 4, 2], 2),
                                            ([4, 3, 2], 3)])
def test_loading_banks_of_other_sizes_raises(sizes, dim):
    banks = ClassBanks([4, 3, 2], 2)
    with pytest.raises(ValueError, match="ClassBanks"):
        ClassBanks(sizes, dim).load_state_dict(banks.state_dict())


def test_sizes_must_be_positive():
    with pytest.raises(ValueError):
        ClassBanks([4, 0], 2)


def test_to_and_double_move_the_rows():
    banks = ClassBanks([4, 3], 2)
    banks.push(0, _rows(0, 2))
    assert banks.double() is banks
    assert banks[0].dtype == banks[1].dtype == torch.float64
    assert torch.equal(banks[0], _rows(0, 2).double())
    banks.push(0, _rows(2, 1))  # float32 rows join a float64 bank as float64
    assert banks[0].dtype == torch.float64 and torch.equal(banks[0], _rows(0, 3).double())
    banks.to(torch.float32)
    assert banks[0].dtype == torch.float32 and torch.equal(banks[0], _rows(0, 3))
