"""What a trained network offers the loop (`Trainable`), its optimizers and the lr schedule.

Optimizers come from the training block: `optimizer: sgd` (the default: momentum, weight decay,
optional Nesterov) or `adamw` (`betas`, `weight_decay`). Each param group's `initial_lr` is
`lr` × its `lr_mult`; the schedule multiplies it by a factor per step: `schedule: poly`
(the default, (1 − t)^poly_power) or `cosine` (½(1 + cos πt)), after an optional linear warm-up
over the first `warmup` fraction of the steps (from the factor `warmup_start`, 0 by
default), t running from 0 to 1 over the steps after it.
`grad_clip` (null by default) caps the global gradient norm in `Trainable.optimize`.

A param group may carry its own `weight_decay` (the optimizer's per-group setting), which
overrides the training block's; `bias_groups` splits groups into the weights-and-biases pattern
of PSA, SEAM and HSC (biases at 2 × the group's lr multiplier and without weight decay).
"""

from __future__ import annotations

import contextlib
import math
from abc import ABCMeta, abstractmethod
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from wsss.errors import ConfigError

# Training-block keys the loop reads with these defaults when a block leaves them out (blocks
# of learned refiners and tests do); the config schema gives the same defaults, chosen so
# that a run without them is exactly the run before they existed.
TRAINING_DEFAULTS: dict[str, Any] = {
    "optimizer": "sgd",
    "betas": [0.9, 0.999],
    "schedule": "poly",
    "warmup": 0.0,
    "warmup_start": 0.0,
    "grad_clip": None,
    "unaugmented_batch": False,
}
OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("poly", "cosine")


BIAS_LR_MULT = 2.0  # PSA's, SEAM's and HSC's biases: twice their layers' weights' rate


def bias_groups(name: str, modules: Iterable[nn.Module], lr_mult: float) -> list[dict[str, Any]]:
    """The parameters of `modules` as two param groups, as the reference `get_parameter_groups`
    (PSA, SEAM, HSC) make them: `name` with the weights at `lr_mult` and the training block's
    weight decay, `<name>_bias` with the biases (parameters named `bias`, of any layer) at
    `BIAS_LR_MULT` × `lr_mult` and weight decay 0.

    Normalisation scales (`weight` of a GroupNorm or BatchNorm) are weights, as the references
    group GroupNorm's. Each parameter is listed once even when modules overlap or share it.
    """
    weights: list[nn.Parameter] = []
    biases: list[nn.Parameter] = []
    seen: set[int] = set()
    for module in modules:
        for pname, param in module.named_parameters():
            if id(param) in seen:
                continue
            seen.add(id(param))
            (biases if pname.rsplit(".", 1)[-1] == "bias" else weights).append(param)
    return [
        {"params": weights, "lr_mult": lr_mult, "name": name},
        {"params": biases, "lr_mult": BIAS_LR_MULT * lr_mult, "weight_decay": 0.0,
         "name": f"{name}_bias"},
    ]


def _opt(training: dict[str, Any], key: str) -> Any:
    return training.get(key, TRAINING_DEFAULTS[key])


class Trainable(nn.Module, metaclass=ABCMeta):
    """What the training loop needs of a network it trains (a method, AffinityNet, the IRN
    boundary network, DeepLab): parameter groups with `lr_mult`, optimizers built from the
    training block, one optimisation step, progress (`begin`), and bf16 autocast on CUDA.

    All state that must survive a kill lives in `state_dict()`, which the checkpoint holds:
    parameters, buffers (`register_buffer`, for tensors such as running centres or a bank
    of fixed size), submodules (an EMA teacher: `wsss.train.EMA`), and, for Python objects
    (lists of tensors, counters), a module's `get_extra_state`/`set_extra_state` (as
    `wsss.train.FIFO` does). State kept anywhere else is lost on resume.
    """

    def __init__(self) -> None:
        super().__init__()
        self.optimizers: list[torch.optim.Optimizer] = []
        self.grad_clip: float | None = None

    @abstractmethod
    def param_groups(self) -> list[dict[str, Any]]:
        """Parameter groups with `lr_mult`; the optimizer is built over these."""

    def optimizer_groups(self) -> list[list[dict[str, Any]]]:
        """The param groups of each optimizer: one optimizer over `param_groups()` by default;
        a network trained by several optimizers in turn (ACR's classifier and reconstructor)
        returns one list per optimizer, in the order `self.optimizers` will have them."""
        return [self.param_groups()]

    def build_optimizers(self, training: dict[str, Any]) -> list[torch.optim.Optimizer]:
        """One optimizer per list of `optimizer_groups()` (`make_optimizer`); also reads
        `grad_clip` for `optimize`."""
        clip = _opt(training, "grad_clip")
        self.grad_clip = None if clip is None else float(clip)
        self.optimizers = [make_optimizer(groups, training) for groups in self.optimizer_groups()]
        return self.optimizers

    def begin(self, total_steps: int, steps_per_epoch: int, start_step: int) -> None:
        """Called by the loop before its first step, on a fresh start (`start_step` 0) and
        after a resume (the step it resumes at), for warm-ups and ramps that depend on the
        run's length. It must not draw random numbers (a resumed run would draw them at
        another point of the stream than an uninterrupted one)."""

    @abstractmethod
    def training_step(self, batch: dict[str, torch.Tensor], step: int) -> dict[str, float]:
        """One step on a batch: forward, losses, `self.optimize(loss)`; returns the loss terms
        as floats for the log."""

    def optimize(self, loss: torch.Tensor,
                 optimizers: list[torch.optim.Optimizer] | None = None) -> None:
        """One step of `optimizers` (every optimizer by default) on `loss`: zero their
        gradients, backpropagate, clip the global gradient norm of their parameters to
        `grad_clip` (when set), step."""
        optimizers = self.optimizers if optimizers is None else optimizers
        for opt in optimizers:
            opt.zero_grad(set_to_none=True)
        loss.backward()
        if self.grad_clip is not None:
            params = [p for opt in optimizers for g in opt.param_groups for p in g["params"]]
            torch.nn.utils.clip_grad_norm_(params, self.grad_clip)
        for opt in optimizers:
            opt.step()

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def autocast(self):
        """bfloat16 autocast on CUDA (no loss scaling needed); a no-op on CPU."""
        if self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()


def make_optimizer(param_groups: list[dict[str, Any]],
                   training: dict[str, Any]) -> torch.optim.Optimizer:
    """The optimizer the training block names over `param_groups` (parameters without
    gradient left out, and groups left empty by that); a group's own `weight_decay` overrides
    the block's; each group's `initial_lr` is `lr` × its `lr_mult`."""
    groups = []
    for group in param_groups:
        params = [p for p in group["params"] if p.requires_grad]
        if params:
            groups.append({**group, "params": params})
    name = _opt(training, "optimizer")
    if name == "sgd":
        opt: torch.optim.Optimizer = torch.optim.SGD(
            groups,
            lr=training["lr"],
            momentum=training["momentum"],
            weight_decay=training["weight_decay"],
            nesterov=training.get("nesterov", False),
        )
    elif name == "adamw":
        beta1, beta2 = _opt(training, "betas")
        opt = torch.optim.AdamW(groups, lr=training["lr"], betas=(float(beta1), float(beta2)),
                                weight_decay=training["weight_decay"])
    else:
        raise ConfigError(f"training.optimizer '{name}': expected one of {OPTIMIZERS}")
    for group in opt.param_groups:
        group["initial_lr"] = training["lr"] * group.get("lr_mult", 1.0)
    return opt


def lr_factor(training: dict[str, Any], step: int, max_steps: int) -> float:
    """The factor on every group's `initial_lr` at 0-based `step` of `max_steps`."""
    schedule = _opt(training, "schedule")
    if schedule not in SCHEDULES:
        raise ConfigError(f"training.schedule '{schedule}': expected one of {SCHEDULES}")
    warm = round(_opt(training, "warmup") * max_steps)
    if step < warm:  # linear ramp from warmup_start, reaching the full rate at its last step
        start = float(_opt(training, "warmup_start"))
        return start + (1.0 - start) * (step + 1) / warm
    t = (step - warm) / (max_steps - warm)  # with no warm-up exactly step / max_steps
    if schedule == "poly":
        return (1.0 - t) ** training["poly_power"]
    return 0.5 * (1.0 + math.cos(math.pi * t))


def set_lr(optimizers: list[torch.optim.Optimizer], factor: float) -> None:
    for opt in optimizers:
        for group in opt.param_groups:
            group["lr"] = group["initial_lr"] * factor


def schedule_lr(optimizers: list[torch.optim.Optimizer], training: dict[str, Any], step: int,
                max_steps: int) -> float:
    """Set every group's lr for `step` by the training block's schedule; returns the factor."""
    factor = lr_factor(training, step, max_steps)
    set_lr(optimizers, factor)
    return factor


def poly_lr(optimizers: list[torch.optim.Optimizer], step: int, max_steps: int,
            power: float) -> float:
    """The poly schedule without warm-up (what `schedule_lr` does by default)."""
    factor = (1.0 - step / max_steps) ** power
    set_lr(optimizers, factor)
    return factor
