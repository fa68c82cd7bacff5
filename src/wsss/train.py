"""The one training loop. It knows nothing about any method.

It owns: the step count (epochs × batches per epoch), the sample order (a permutation seeded by
(seed, epoch)), the poly learning-rate schedule applied to every optimizer's param groups
(`initial_lr` × (1 − step/max_steps)^power), checkpoints (method, optimizers, step, RNG state)
written atomically every `checkpoint_every` steps, a CSV log, and resume: started again after a
kill, it continues from the last checkpoint and ends with the same weights as an uninterrupted
run (on CPU, where kernels are deterministic).
"""

from __future__ import annotations

import contextlib
import csv
import logging
import random
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from wsss.store import atomic_path, versions

log = logging.getLogger(__name__)


class Trainable(nn.Module):
    """What the training loop needs of a network it trains (a method, AffinityNet, the IRN
    boundary network, DeepLab): parameter groups with `lr_mult`, optimizers built from the
    training block, one optimisation step, and bf16 autocast on CUDA."""

    def __init__(self) -> None:
        super().__init__()
        self.optimizers: list[torch.optim.Optimizer] = []

    def param_groups(self) -> list[dict[str, Any]]:
        """Parameter groups with `lr_mult`; the optimizer is built over these."""
        raise NotImplementedError(f"{type(self).__name__} must define param_groups")

    def build_optimizers(self, training: dict[str, Any]) -> list[torch.optim.Optimizer]:
        groups = []
        for group in self.param_groups():
            params = [p for p in group["params"] if p.requires_grad]
            if params:
                groups.append({**group, "params": params})
        opt = torch.optim.SGD(
            groups,
            lr=training["lr"],
            momentum=training["momentum"],
            weight_decay=training["weight_decay"],
            nesterov=training.get("nesterov", False),
        )
        for group in opt.param_groups:
            group["initial_lr"] = training["lr"] * group.get("lr_mult", 1.0)
        self.optimizers = [opt]
        return self.optimizers

    def training_step(self, batch: dict[str, torch.Tensor], step: int) -> dict[str, float]:
        raise NotImplementedError(f"{type(self).__name__} must define training_step")

    def optimize(self, loss: torch.Tensor) -> None:
        """One step of every optimizer on `loss`: zero the gradients, backpropagate, step."""
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=True)
        loss.backward()
        for opt in self.optimizers:
            opt.step()

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def autocast(self):
        """bfloat16 autocast on CUDA (no loss scaling needed); a no-op on CPU."""
        if self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def pick_device(name: str = "auto") -> torch.device:
    """`auto`: the GPU the job was given (CUDA_VISIBLE_DEVICES), else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


class StepSampler(torch.utils.data.Sampler):
    """Batches of (index, epoch) for steps `start`..`stop`, the same whatever `start` is."""

    def __init__(self, n: int, batch_size: int, seed: int, start: int, stop: int):
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.start, self.stop = start, stop
        self.per_epoch = n // batch_size

    def __len__(self) -> int:
        return self.stop - self.start

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for step in range(self.start, self.stop):
            epoch, pos = divmod(step, self.per_epoch)
            order = np.random.default_rng([self.seed, epoch]).permutation(self.n)
            batch = order[pos * self.batch_size : (pos + 1) * self.batch_size]
            yield [(int(i), epoch) for i in batch]


def poly_lr(optimizers: list[torch.optim.Optimizer], step: int, max_steps: int, power: float):
    factor = (1.0 - step / max_steps) ** power
    for opt in optimizers:
        for group in opt.param_groups:
            group["lr"] = group["initial_lr"] * factor
    return factor


def _rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(),
             "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: Path, method, step: int, meta: dict[str, Any]) -> None:
    state = {
        "method": method.state_dict(),
        "optimizers": [opt.state_dict() for opt in method.optimizers],
        "step": step,
        "rng": _rng_state(),
        **meta,
    }
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def fit(
    method,
    trainset: torch.utils.data.Dataset,
    training: dict[str, Any],
    out_dir: str | Path,
    meta: dict[str, Any],
    device: torch.device,
    stop_after: int | None = None,
    name: str = "classifier",
) -> Path:
    """Train `method` on `trainset`; write <name>.checkpoint.pt, <name>.log.csv and <name>.pt
    into `out_dir` (for the classifier: checkpoint.pt, train_log.csv, classifier.pt).

    `stop_after` ends the run early after that many steps (with a checkpoint), as a kill would.
    Returns the path of the final weights (only written when all steps are done).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if name == "classifier":
        ckpt_path, log_path = out_dir / "checkpoint.pt", out_dir / "train_log.csv"
    else:
        ckpt_path, log_path = out_dir / f"{name}.checkpoint.pt", out_dir / f"{name}.log.csv"
    final_path = out_dir / f"{name}.pt"
    batch_size = training["batch_size"]
    per_epoch = len(trainset) // batch_size
    if per_epoch == 0:
        raise ValueError(
            f"training.batch_size {batch_size} exceeds the {len(trainset)} training images"
        )
    max_steps = training["epochs"] * per_epoch
    seed = training["seed"]
    seed_everything(seed)
    method.to(device)
    method.build_optimizers(training)

    start = 0
    if ckpt_path.exists():
        state = torch.load(ckpt_path, map_location=device, weights_only=False)
        if state.get("config") != meta.get("config"):
            log.warning("%s was written with another config; starting afresh", ckpt_path)
        else:
            method.load_state_dict(state["method"])
            for opt, sd in zip(method.optimizers, state["optimizers"], strict=True):
                opt.load_state_dict(sd)
            _set_rng_state(state["rng"])
            start = state["step"]
            log.info("resuming from step %d of %d (%s)", start, max_steps, ckpt_path)
    _truncate_log(log_path, start)

    sampler = StepSampler(len(trainset), batch_size, seed, start, max_steps)
    workers = training.get("num_workers", 0)
    loader = torch.utils.data.DataLoader(
        trainset, batch_sampler=sampler, num_workers=workers,
        persistent_workers=workers > 0, pin_memory=device.type == "cuda",
    )
    every = training["checkpoint_every"]
    method.train()
    t0 = time.time()
    new_log = not log_path.exists()
    with open(log_path, "a", newline="") as fh:
        writer = None
        bar = tqdm(total=max_steps, initial=start, desc="train", file=sys.stderr,
                   mininterval=5.0, disable=None)
        for step, batch in enumerate(loader, start=start):
            lr_factor = poly_lr(method.optimizers, step, max_steps, training["poly_power"])
            batch = {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v
                     for k, v in batch.items()}
            losses = method.training_step(batch, step)
            row = {"step": step + 1, "epoch": step // per_epoch, "lr": training["lr"] * lr_factor,
                   **losses, "seconds": round(time.time() - t0, 3)}
            if writer is None:
                writer = csv.DictWriter(fh, fieldnames=list(row))
                if new_log:
                    writer.writeheader()
            writer.writerow(row)
            bar.update(1)
            bar.set_postfix({k: f"{v:.4f}" for k, v in losses.items()}, refresh=False)
            done = step + 1
            if done % every == 0 or done == max_steps or done == stop_after:
                fh.flush()
                save_checkpoint(ckpt_path, method, done, meta)
            if done == stop_after:
                bar.close()
                return final_path
        bar.close()
    method.eval()
    with atomic_path(final_path) as tmp:
        torch.save({"method": method.state_dict(), "steps": max_steps, "versions": versions(),
                    **meta}, tmp)
    return final_path


def _truncate_log(path: Path, start: int) -> None:
    """Drop log rows past the resume point, so a resumed log has each step once."""
    if not path.exists():
        return
    if start == 0:
        path.unlink()
        return
    with open(path, newline="") as fh:
        rows = list(csv.reader(fh))
    keep = [rows[0]] + [r for r in rows[1:] if r and int(r[0]) <= start]
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as fh:
        csv.writer(fh).writerows(keep)
