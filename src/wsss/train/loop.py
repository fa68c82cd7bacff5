"""The loop (`fit`), the sample order, checkpoints and resume."""

from __future__ import annotations

import csv
import logging
import math
import random
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from wsss.errors import CheckpointError, TrainingDiverged
from wsss.store import atomic_path, versions
from wsss.train.resume import architecture_differences, resume_key, stale_reasons
from wsss.train.trainable import TRAINING_DEFAULTS, schedule_lr

log = logging.getLogger(__name__)
# spawn key of the second ("u") batch's order: a child of the (seed, epoch) sequence, so it is
# independent of the first batch's order and collides with no (seed, epoch, index) stream
U_STREAM = ord("u")


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
    """Batches of (index, epoch) for steps `start`..`stop`, the same whatever `start` is. An
    epoch is the first `per_epoch` batches of its permutation (all of them by default).

    With `unaugmented`, each key is (index, epoch, index_u): `index_u` is the image of the
    second, unaugmented batch at that position, taken from its own permutation of the epoch.
    """

    def __init__(self, n: int, batch_size: int, seed: int, start: int, stop: int,
                 unaugmented: bool = False, per_epoch: int | None = None):
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.start, self.stop = start, stop
        self.per_epoch = n // batch_size if per_epoch is None else min(per_epoch, n // batch_size)
        self.unaugmented = unaugmented

    def __len__(self) -> int:
        return self.stop - self.start

    def __iter__(self) -> Iterator[list[tuple[int, ...]]]:
        for step in range(self.start, self.stop):
            epoch, pos = divmod(step, self.per_epoch)
            window = slice(pos * self.batch_size, (pos + 1) * self.batch_size)
            order = np.random.default_rng([self.seed, epoch]).permutation(self.n)
            batch = order[window]
            if not self.unaugmented:
                yield [(int(i), epoch) for i in batch]
                continue
            seq = np.random.SeedSequence([self.seed, epoch], spawn_key=(U_STREAM,))
            second = np.random.default_rng(seq).permutation(self.n)[window]
            yield [(int(i), epoch, int(j)) for i, j in zip(batch, second, strict=True)]


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

    `<name>.pt` holds `method` (the state dict), `steps`, `versions` and `meta`, plus
    `backbone` (the trunk's state dict) when the trained object has a `trunk`.
    `stop_after` ends the run early after that many steps (with a checkpoint), as a kill would.
    Returns the path of the final weights (only written when all steps are done).

    The checkpoint is resumed only when its `config` and `resume_key` (`wsss.train.resume`)
    equal `meta`'s (a caller records its inputs there; without one, the key of `method`'s
    code, no inputs); otherwise a warning says what differs and the run starts from step 0,
    leaving the old file until its first checkpoint replaces it. A matching checkpoint of
    another architecture is a `CheckpointError`. A non-finite loss term, or a non-finite
    weight at a checkpoint, stops the run with `TrainingDiverged`: the last checkpoint
    written before it stays, no checkpoint or final weights are written after it.
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
    if training.get("steps_per_epoch"):  # short epochs (CSRM's 46 steps of train_aug)
        per_epoch = min(per_epoch, int(training["steps_per_epoch"]))
    max_steps = training["epochs"] * per_epoch
    seed = training["seed"]
    seed_everything(seed)
    method.to(device)
    method.build_optimizers(training)

    meta = {**meta, "resume_key": meta.get("resume_key") or resume_key(method, trainset)}
    start, rng, saved = 0, None, None
    if ckpt_path.exists():
        state = torch.load(ckpt_path, map_location=device, weights_only=False)
        stale = stale_reasons(state, meta)
        if stale:
            log.warning("not resuming %s (step %s of another run): %s; training from step 0, "
                        "the file is replaced at the first checkpoint", ckpt_path,
                        state.get("step"), "; ".join(stale))
        else:
            _restore(ckpt_path, state, method)
            start, rng = state["step"], state["rng"]
            saved = start
            log.info("resuming from step %d of %d (%s)", start, max_steps, ckpt_path)
        del state
    _truncate_log(log_path, start)
    method.begin(max_steps, per_epoch, start)

    unaugmented = bool(training.get("unaugmented_batch", TRAINING_DEFAULTS["unaugmented_batch"]))
    sampler = StepSampler(len(trainset), batch_size, seed, start, max_steps, unaugmented,
                          per_epoch)
    workers = training.get("num_workers", 0)
    loader = torch.utils.data.DataLoader(
        trainset, batch_sampler=sampler, num_workers=workers,
        persistent_workers=workers > 0, pin_memory=device.type == "cuda",
    )
    every = training["checkpoint_every"]
    method.train()
    batches = iter(loader)
    if rng is not None:
        # after iter(): starting the loader draws its base seed from the global torch RNG, in
        # an uninterrupted run once before step 0, so the saved state must come after it
        _set_rng_state(rng)
    t0 = time.time()
    new_log = not log_path.exists()
    what = _run_name(meta, name, out_dir)
    with open(log_path, "a", newline="") as fh, tqdm(
            total=max_steps, initial=start, desc="train", file=sys.stderr, mininterval=5.0,
            disable=None) as bar:
        writer = None
        for step, batch in enumerate(batches, start=start):
            lr_factor = schedule_lr(method.optimizers, training, step, max_steps)
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
            done = step + 1
            bad = [k for k, v in losses.items() if not math.isfinite(float(v))]
            if bad:
                fh.flush()
                raise TrainingDiverged(
                    f"{what}: training diverged at step {done} of {max_steps}: non-finite loss "
                    f"({', '.join(bad)}) in {_terms(losses)}; "
                    f"{_kept(ckpt_path, saved, final_path)}")
            bar.update(1)
            bar.set_postfix({k: f"{v:.4f}" for k, v in losses.items()}, refresh=False)
            if done % every == 0 or done == max_steps or done == stop_after:
                fh.flush()
                weights = _nonfinite(method)
                if weights:
                    raise TrainingDiverged(
                        f"{what}: training diverged at step {done} of {max_steps}: non-finite "
                        f"weights ({', '.join(weights[:3])}{', ...' if len(weights) > 3 else ''})"
                        f" after the finite loss {_terms(losses)}; "
                        f"{_kept(ckpt_path, saved, final_path)}")
                save_checkpoint(ckpt_path, method, done, meta)
                saved = done
            if done == stop_after:
                return final_path
    method.eval()
    final = {"method": method.state_dict(), "steps": max_steps, "versions": versions(), **meta}
    trunk = getattr(method, "trunk", None)
    if trunk is not None:  # the refiners read the trunk here, whatever its prefix in "method"
        final["backbone"] = trunk.state_dict()
    with atomic_path(final_path) as tmp:
        torch.save(final, tmp)
    return final_path


def _restore(path: Path, state: dict[str, Any], method) -> None:
    """Load a checkpoint of this run into `method` and its optimizers; a network of another
    architecture (or a file that does not load) is a `CheckpointError` naming the file."""
    diff = architecture_differences(state.get("method", {}), method.state_dict())
    count = len(state.get("optimizers", []))
    if count != len(method.optimizers):
        diff.append(f"{count} optimizers in the file, {len(method.optimizers)} here")
    if diff:
        more = f" (and {len(diff) - 3} more)" if len(diff) > 3 else ""
        raise CheckpointError(
            f"{path}: written with this run's config, code and data by a network of another "
            f"architecture: {'; '.join(diff[:3])}{more}; delete it to train afresh")
    try:
        method.load_state_dict(state["method"])
        for opt, sd in zip(method.optimizers, state["optimizers"], strict=True):
            opt.load_state_dict(sd)
    except (KeyError, RuntimeError, ValueError) as err:
        message = " ".join(str(err).split())[:300]
        raise CheckpointError(f"{path}: cannot be resumed ({message}); delete it to train "
                              "afresh") from err


def _run_name(meta: dict[str, Any], name: str, out_dir: Path) -> str:
    """The run in messages: the classifier's variant, a refiner's kind, else `name`."""
    if "variant" in meta:
        return f"variant '{meta['variant']}' ({out_dir})"
    if "refiner" in meta:
        return f"refiner '{meta['refiner']}' network ({out_dir})"
    return f"{name} ({out_dir})"


def _terms(losses: dict[str, Any]) -> str:
    return ", ".join(f"{k}={float(v):.6g}" for k, v in losses.items())


def _kept(ckpt_path: Path, saved: int | None, final_path: Path) -> str:
    if saved is None:
        return f"no checkpoint of this run was written, nor {final_path.name}"
    return f"kept the checkpoint of step {saved} ({ckpt_path}), wrote no {final_path.name}"


def _nonfinite(method) -> list[str]:
    """The floating-point state (parameters, buffers) of `method` holding a NaN or an inf."""
    return [k for k, v in method.state_dict().items()
            if torch.is_tensor(v) and v.is_floating_point() and not bool(torch.isfinite(v).all())]


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
