"""ACR's reconstructor decoder: seconds per forward + backward pass in the two memory layouts,
and an ACR training step (a script, not a test).

    OMP_NUM_THREADS=1 .venv/bin/python tests/benchmarks/bench_acr.py [--configfile config.yaml]
        [--variant acr] [--batch 16] [--repeats 10]

Builds the variant's U-Net (`acr.unet`, `acr.projections`) at its crop size and batch size and
times `repeats` forward + backward passes in contiguous (NCHW) and channels-last layout, one
after the other in one process at one thread, then the whole training step (RU + CU: five
decoder passes, four backbone passes) on random images. Run it on an idle machine. Per-step
times of real training, baseline against ACR: tests/benchmarks/bench_threads.py --variants
baseline acr.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
import yaml

from wsss.methods.acr import acr_settings
from wsss.methods.base import build_method, without_pretrained
from wsss.models.unet import UNetDecoder
from wsss.schema import validate_config


def _decoder_seconds(settings: dict, batch: int, size: int, channels_last: bool,
                     repeats: int) -> float:
    UNetDecoder.channels_last = channels_last
    unet = settings["unet"]
    dec = UNetDecoder(sum(settings["projections"]), 3, unet["depth"], unet["width"],
                      unet["max_width"], unet["dropout"])
    x = torch.randn(batch, sum(settings["projections"]), size, size, requires_grad=True)
    dec(x).sum().backward()  # warm-up
    t0 = time.perf_counter()
    for _ in range(repeats):
        dec(x).sum().backward()
    return (time.perf_counter() - t0) / repeats


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--configfile", default="config.yaml")
    p.add_argument("--variant", default="acr")
    p.add_argument("--batch", type=int, default=None, help="default: the variant's batch_size")
    p.add_argument("--repeats", type=int, default=10)
    args = p.parse_args()
    torch.set_num_threads(1)
    cfg = validate_config(yaml.safe_load(Path(args.configfile).read_text()))
    block = cfg["methods"][args.variant]
    settings = acr_settings(block)
    size = int(block["training"]["crop_size"])
    batch = args.batch or int(block["training"]["batch_size"])
    times = {}
    for layout in (False, True):
        times[layout] = _decoder_seconds(settings, batch, size, layout, args.repeats)
    print(f"decoder fwd+bwd, batch {batch} at {size} px: contiguous {times[False]:.4f} s, "
          f"channels-last {times[True]:.4f} s, ratio {times[False] / times[True]:.2f}")
    UNetDecoder.channels_last = True
    method = build_method(without_pretrained(block), 2)
    method.build_optimizers(block["training"])
    method.begin(args.repeats + 1, 1, 0)
    method.train()
    b = {"image": torch.randn(batch, 3, size, size),
         "label": torch.eye(2)[torch.arange(batch) % 2]}
    method.training_step(b, 0)
    t0 = time.perf_counter()
    for step in range(args.repeats):
        method.training_step(b, step + 1)
    step_s = (time.perf_counter() - t0) / args.repeats
    print(f"training step (RU + CU, channels-last): {step_s:.3f} s")


if __name__ == "__main__":
    main()
