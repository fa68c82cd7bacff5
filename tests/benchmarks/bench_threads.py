"""Seconds per training step at 1 and at 2 torch threads, for every method variant of a config
(a script, not a test): tells which training jobs gain from a second thread.

    OMP_NUM_THREADS=2 .venv/bin/python tests/benchmarks/bench_threads.py \
        [--configfile config.yaml] [--workdir .] [--steps 10 40] [--variants baseline seam]

Needs the dataset (and, for `pretrained: synthetic`, the pretrain stage's weights) of that
config under <workdir>/results, e.g. after `snakemake --cores all <RESULTS>/data/index.json
results/pretrained/tiny.pt`. Each variant trains twice per thread count, for the two step
counts of --steps, in a fresh temporary folder; the difference of the two wall times over the
difference of the steps is the time of one step without start-up (data, model building). The
speed-up is 1-thread time over 2-thread time: at 2 cores, a job whose speed-up is under 2 runs
two at a time faster with one thread each (total throughput = 2 / speed-up).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch
import yaml

from wsss.classifier import train_classifier
from wsss.cli.common import dataset
from wsss.schema import validate_config


def _time_steps(ds, index: Path, split: str, variant: str, block: dict, steps: int) -> float:
    with tempfile.TemporaryDirectory() as out:
        t0 = time.perf_counter()
        train_classifier(ds, index, split, variant, block, out, torch.device("cpu"),
                         stop_after=steps)
        return time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--configfile", default="config.yaml")
    p.add_argument("--workdir", default=".", help="folder whose results/ holds the dataset")
    p.add_argument("--steps", type=int, nargs=2, default=[10, 40])
    p.add_argument("--variants", nargs="*", default=None, help="default: run.variants")
    args = p.parse_args()
    os.chdir(args.workdir)  # `pretrained: synthetic` resolves under results/pretrained
    cfg = validate_config(yaml.safe_load(Path(args.configfile).read_text()))
    d = cfg["dataset"]
    name = d["name"]
    root = f"results/{name}/data/voc" if d["kind"] == "synthetic" else d["root"]
    block = {"root": root, **{k: d[k] for k in ("splits", "mask_dir", "label_source",
                                                   "classes")}}
    ds = dataset(block)
    index = Path(f"results/{name}/data/index.json")
    variants = args.variants or cfg["run"]["variants"]
    n0, n1 = args.steps
    print(f"{'variant':12s} {'1 thread s/step':>16s} {'2 threads s/step':>17s} {'speed-up':>9s}")
    for variant in variants:
        per_step = {}
        for threads in (1, 2):
            torch.set_num_threads(threads)
            t0 = _time_steps(ds, index, d["train_split"], variant, cfg["methods"][variant], n0)
            t1 = _time_steps(ds, index, d["train_split"], variant, cfg["methods"][variant], n1)
            per_step[threads] = (t1 - t0) / (n1 - n0)
        print(f"{variant:12s} {per_step[1]:16.3f} {per_step[2]:17.3f} "
              f"{per_step[1] / per_step[2]:9.2f}", flush=True)


if __name__ == "__main__":
    main()
