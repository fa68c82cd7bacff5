"""CSRM's training step and its share spent in the label CRFs (a script, not a test).

    OMP_NUM_THREADS=1 .venv/bin/python tests/benchmarks/bench_csrm.py [--configfile config.yaml]
        [--workdir .] [--variant csrm] [--repeats 10]

Needs the dataset of that config under <workdir>/results (e.g. after `snakemake --cores all
<RESULTS>/data/index.json`). Builds the variant at one thread on real training images (the
CRF's cost depends on the image), and times, one after the other in one process: the step with
ClassMix on every step (its CRFs on both halves and the teacher's second pass) and off (the
augmented half's CRFs only), and the C2S masks of one half alone. Run it on an idle machine.
Per-step times of real training, against the baseline: tests/benchmarks/bench_threads.py
--variants baseline csrm.
"""

from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path

import numpy as np
import torch
import yaml

from wsss.cli.common import dataset
from wsss.data.transforms import center_crop, normalize, resize_long
from wsss.methods.base import build_method, without_pretrained
from wsss.methods.csrm_targets import c2s_masks, normalised_cams
from wsss.schema import validate_config


def _batch(ds, split: str, n: int, size: int, offset: int) -> tuple[torch.Tensor, torch.Tensor]:
    ids = ds.ids(split)[offset:offset + n]
    images = [center_crop(normalize(resize_long(ds.load_image(i), size)), size) for i in ids]
    labels = torch.zeros(n, ds.num_classes)
    for j, i in enumerate(ids):
        labels[j, list(ds.image_labels(i))] = 1.0
    return torch.from_numpy(np.stack(images)), labels


def bench_dataset(cfg: dict, workdir: str | Path):
    """The config's dataset, the synthetic one read from <workdir>/results."""
    d = cfg["dataset"]
    root = (f"{workdir}/results/{d['name']}/data/voc" if d["kind"] == "synthetic"
            else d["root"])
    return dataset({"root": root, **{k: d[k] for k in ("splits", "mask_dir", "label_source",
                                                        "classes")}})


def _step_seconds(block: dict, num_classes: int, batch: dict, prob: float, repeats: int) -> float:
    block = copy.deepcopy(block)
    block.setdefault("csrm", {}).setdefault("classmix", {})["prob"] = prob
    method = build_method(without_pretrained(block), num_classes)
    method.build_optimizers(block["training"])
    method.begin(10 * (repeats + 1), repeats + 1, 0)  # past the warm-up: every loss runs
    method.train()
    step0 = repeats + 1
    method.training_step(batch, step0)
    t0 = time.perf_counter()
    for k in range(repeats):
        method.training_step(batch, step0 + 1 + k)
    return (time.perf_counter() - t0) / repeats


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--configfile", default="config.yaml")
    p.add_argument("--workdir", default=".")
    p.add_argument("--variant", default="csrm")
    p.add_argument("--repeats", type=int, default=10)
    args = p.parse_args()
    torch.set_num_threads(1)
    cfg = validate_config(yaml.safe_load(Path(args.configfile).read_text()))
    block = cfg["methods"][args.variant]
    ds = bench_dataset(cfg, args.workdir)
    split = cfg["dataset"]["train_split"]
    size, n = int(block["training"]["crop_size"]), int(block["training"]["batch_size"])
    aug, labels = _batch(ds, split, n, size, 0)
    plain, labels_u = _batch(ds, split, n, size, n)
    batch = {"image": aug, "label": labels, "image_u": plain, "label_u": labels_u}
    on = _step_seconds(block, ds.num_classes, batch, 1.0, args.repeats)
    off = _step_seconds(block, ds.num_classes, batch, 0.0, args.repeats)
    method = build_method(without_pretrained(block), ds.num_classes).eval()
    with torch.no_grad():
        cams = normalised_cams(method.cams(aug), labels, (size, size))
    settings = method.csrm["c2s"]
    c2s_masks(aug, cams, labels, settings, 1)
    t0 = time.perf_counter()
    for _ in range(args.repeats):
        c2s_masks(aug, cams, labels, settings, 1)
    crf = (time.perf_counter() - t0) / args.repeats
    print(f"{args.variant}: {n} + {n} images at {size} px, one thread")
    print(f"  step with ClassMix:    {on:.3f} s")
    print(f"  step without ClassMix: {off:.3f} s")
    print(f"  C2S masks of {n} images (2 label CRFs each): {crf:.3f} s "
          f"({crf / off:.0%} of the step without ClassMix)")


if __name__ == "__main__":
    main()
