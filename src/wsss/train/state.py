"""Method state beyond the trained parameters that must live in the checkpoint.

Both are `nn.Module`s meant to be submodules of a method: their contents are then in the
method's `state_dict()`, hence in every checkpoint and in the final `<name>.pt`, and a resumed
run continues with exactly the teacher and the bank the killed run had.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn


class EMA(nn.Module):
    """A teacher that is an exponential moving average of a student network (mean teacher).

    A deep copy of the student at construction, without gradients and always in eval mode
    (also while its owner trains: the teacher's BatchNorm and dropout act as at inference).
    `update` moves its parameters towards the student's and copies the student's buffers
    (BatchNorm statistics), so the teacher normalises as the student does now.
    """

    def __init__(self, student: nn.Module):
        super().__init__()
        self.module = copy.deepcopy(student)
        self.module.requires_grad_(False)
        self.module.eval()

    def train(self, mode: bool = True) -> EMA:
        self.training = mode  # the owner's mode is recorded, the teacher stays in eval
        self.module.eval()
        return self

    @torch.no_grad()
    def update(self, student: nn.Module, decay: float) -> None:
        """teacher ← decay · teacher + (1 − decay) · student, parameter by parameter; `decay`
        0 makes the teacher a copy of the student (after `Method.init_from`, say)."""
        for t, s in zip(self.module.parameters(), student.parameters(), strict=True):
            t.mul_(decay).add_(s.detach(), alpha=1.0 - decay)
        for t, s in zip(self.module.buffers(), student.buffers(), strict=True):
            t.copy_(s)

    @torch.no_grad()
    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.module(*args, **kwargs)


class FIFO(nn.Module):
    """A first-in-first-out bank of the last `maxlen` tensors pushed (features, keys, ...).

    A Python list is no buffer, so the bank saves itself as the module's extra state
    (`get_extra_state`, a `state_dict` entry `<name>._extra_state`), and follows `.to()`.
    This is the pattern for any non-tensor state of a method.
    """

    def __init__(self, maxlen: int):
        super().__init__()
        if maxlen < 1:
            raise ValueError(f"FIFO maxlen must be at least 1, not {maxlen}")
        self.maxlen = maxlen
        self.items: list[torch.Tensor] = []

    def push(self, x: torch.Tensor) -> None:
        """Append a detached copy of `x`, dropping the oldest beyond `maxlen`."""
        self.items.append(x.detach().clone())
        del self.items[: -self.maxlen]

    def cat(self, dim: int = 0) -> torch.Tensor:
        """The bank's tensors concatenated along `dim`, oldest first."""
        return torch.cat(self.items, dim=dim)

    def get_extra_state(self) -> dict[str, Any]:
        return {"maxlen": self.maxlen, "items": list(self.items)}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        if state["maxlen"] != self.maxlen:
            raise ValueError(f"FIFO of {self.maxlen} loaded with a bank of {state['maxlen']}")
        self.items = [t.clone() for t in state["items"]]  # not shared with the loaded dict

    def _apply(self, fn, *args, **kwargs):
        # .to(device) / .double() reach parameters and buffers only; move the bank with them
        super()._apply(fn, *args, **kwargs)
        self.items = [fn(t) for t in self.items]
        return self


class ClassBanks(nn.Module):
    """One first-in-first-out bank of feature rows per class, each holding at most its
    `sizes[c]` newest rows (U2PL's memory bank of negative keys: pushing n rows into a full
    bank drops its n oldest). Saved as extra state, like `FIFO`, and moved by `.to()`."""

    def __init__(self, sizes: list[int], dim: int):
        super().__init__()
        if any(int(s) < 1 for s in sizes):
            raise ValueError(f"ClassBanks sizes must be at least 1, got {sizes}")
        self.sizes = [int(s) for s in sizes]
        self.dim = int(dim)
        self.banks: list[torch.Tensor] = [torch.zeros(0, self.dim) for _ in self.sizes]

    def push(self, cls: int, rows: torch.Tensor) -> None:
        """Append the (n, dim) `rows` (detached) to class `cls`'s bank, oldest rows dropped."""
        rows = rows.detach().to(self.banks[cls])
        self.banks[cls] = torch.cat([self.banks[cls], rows])[-self.sizes[cls]:].clone()

    def __getitem__(self, cls: int) -> torch.Tensor:
        return self.banks[cls]

    def get_extra_state(self) -> dict[str, Any]:
        return {"sizes": list(self.sizes), "dim": self.dim, "banks": list(self.banks)}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        if list(state["sizes"]) != self.sizes or int(state["dim"]) != self.dim:
            raise ValueError(f"ClassBanks of sizes {self.sizes} × {self.dim} loaded with banks "
                             f"of {state['sizes']} × {state['dim']}")
        self.banks = [t.clone() for t in state["banks"]]

    def _apply(self, fn, *args, **kwargs):
        super()._apply(fn, *args, **kwargs)
        self.banks = [fn(t) for t in self.banks]
        return self
