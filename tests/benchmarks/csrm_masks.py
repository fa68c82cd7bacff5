"""What a trained CSRM's teacher would give its head as C2S targets (a script, not a test).

    OMP_NUM_THREADS=1 .venv/bin/python tests/benchmarks/csrm_masks.py VARIANT [VARIANT ...]
        [--workdir .] [--configfile config.yaml] [--images 128]

For each variant's final `classifier.pt` (its teacher predicts), the C2S pseudo-masks of the
first `--images` training images (centre crops at the training crop size, batches of 32): the
shares of pixels that are confident background, confident foreground and unsure (255). A
method whose CAMs shrink (CSRM with S2C, README "CSRM on the benchmark") shows it here as less
confident foreground and more confident background.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
import yaml
from bench_csrm import _batch, bench_dataset

from wsss.methods.base import load_method
from wsss.methods.csrm_targets import IGNORE, c2s_masks, normalised_cams
from wsss.schema import validate_config


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("variants", nargs="+")
    p.add_argument("--workdir", default=".")
    p.add_argument("--configfile", default="config.yaml")
    p.add_argument("--images", type=int, default=128)
    args = p.parse_args()
    torch.set_num_threads(1)
    cfg = validate_config(yaml.safe_load(Path(args.configfile).read_text()))
    d = cfg["dataset"]
    results = Path(args.workdir) / "results" / d["name"]
    ds = bench_dataset(cfg, args.workdir)
    print(f"{'variant':16s} {'background':>10s} {'foreground':>10s} {'unsure':>8s}")
    for variant in args.variants:
        path = results / variant / "classifier.pt"
        block = torch.load(path, map_location="cpu", weights_only=False)["config"]
        method = load_method(path, block, ds.num_classes)
        size = int(block["training"]["crop_size"])
        counts = np.zeros(3)
        for offset in range(0, args.images, 32):
            images, labels = _batch(ds, d["train_split"], 32, size, offset)
            with torch.no_grad():
                cams = normalised_cams(method.cams(images), labels, (size, size))
            masks = c2s_masks(images, cams, labels, method.csrm["c2s"], 1)
            counts += [(masks == 0).sum().item(),
                       ((masks != 0) & (masks != IGNORE)).sum().item(),
                       (masks == IGNORE).sum().item()]
        share = 100 * counts / counts.sum()
        print(f"{variant:16s} {share[0]:9.1f}% {share[1]:9.1f}% {share[2]:7.1f}%")


if __name__ == "__main__":
    main()
