"""Time and held-out accuracy of the pretrain stage's recipe (a script, not a test).

Runs `wsss.pretrain.pretrain` with the schema's default `pretrain` block (or overrides) at a
given torch thread count and prints the stage's summary: seconds (corpus, training, total),
held-out top-1 accuracy at init and after training, and the per-epoch curve.

OMP_NUM_THREADS=2 python tests/benchmarks/bench_pretrain.py [--backbone tiny] [--threads 2]
    [--set training.epochs=6 --set corpus.train_per_class=120 ...] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

import torch
import yaml

from wsss.pretrain import pretrain, side_paths


def _overrides(items: list[str]) -> dict[str, Any]:
    block: dict[str, Any] = {}
    for item in items:
        key, _, value = item.partition("=")
        *parents, leaf = key.split(".")
        node = block
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = yaml.safe_load(value)
    return block


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backbone", default="tiny")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--set", action="append", default=[], help="dotted key=YAML value")
    p.add_argument("--out", default=None, help="folder for the files (default: a temp dir)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(args.out or tmp) / f"{args.backbone}.pt"
        pretrain(args.backbone, _overrides(args.set), out, torch.device("cpu"), args.threads)
        summary = json.loads(side_paths(out)["json"].read_text())
    for row in summary["curve"]:
        print(f"epoch {row['epoch']:3d}  loss {row['loss']:.3f}  train "
              f"{row['train_accuracy']:.3f}  held-out {row['held_out_accuracy']:.3f}")
    print(json.dumps({k: summary[k] for k in ("backbone", "held_out_accuracy",
                                              "initial_held_out_accuracy", "chance",
                                              "train_images", "held_out_images", "steps",
                                              "seconds")}, indent=2))


if __name__ == "__main__":
    main()
