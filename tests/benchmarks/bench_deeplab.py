"""DeepLab retraining speed and quality on a finished synthetic run (a script, not a test).

speed: training throughput (images/s over `--steps` steps after one warm-up step, data loading
included) and prediction throughput on the val split without and with the dense CRF.
run: a full DeepLab `train` on the pseudo-labels, `predict` of val and train with and without
CRF, the mIoU of each and the wall times. `--set key=value` overrides the deeplab block
(dotted keys, YAML values), e.g. --set training.lr=0.05 --set model.rates=[2,4,6,8].

python tests/benchmarks/bench_deeplab.py speed [--threads 2]
python tests/benchmarks/bench_deeplab.py run [--labels LABELS.h5 | --labels gt] [--out DIR]
    [--config config.yaml] [--set training.epochs=30 ...]
(labels default: the baseline run's PSA labels; block default: config.yaml's deeplab block)
"""

from __future__ import annotations

import argparse
import copy
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import yaml

from wsss.data.transforms import SegmentationSet
from wsss.data.voc import VocDataset
from wsss.deeplab.predict import predict
from wsss.deeplab.training import DeepLab, train
from wsss.evaluate import evaluate_labels
from wsss.store import LabelMap, LabelWriter
from wsss.train import StepSampler, seed_everything

REPO = Path(__file__).resolve().parents[2]


def _default_block(config: Path) -> dict[str, Any]:
    """The deeplab block of a config file, completed with the schema's defaults."""
    from wsss.schema import validate_config

    return validate_config(yaml.safe_load(config.read_text()))["deeplab"]


def _gt_labels(ds: VocDataset, path: Path) -> Path:
    """The train split's ground-truth masks as a label store: the labels' upper bound."""
    with LabelWriter(path, {"classes": list(ds.classes), "split": "train"}) as writer:
        for image_id in ds.ids("train"):
            writer.add(image_id, ds.load_mask(image_id))
    return path


def _dataset(results: Path) -> VocDataset:
    index = json.loads((results / "data" / "index.json").read_text())
    splits = {name: f"ImageSets/Segmentation/{name}.txt" for name in index["splits"]}
    return VocDataset.from_config({"root": index["root"], "splits": splits,
                                   "mask_dir": index["mask_dir"], "classes": index["classes"]})


def _block(config: Path, overrides: list[str]) -> dict[str, Any]:
    block = copy.deepcopy(_default_block(config))
    for item in overrides:
        key, value = item.split("=", 1)
        *path, last = key.split(".")
        node = block
        for part in path:
            node = node[part]
        node[last] = yaml.safe_load(value)
    return block


def speed(ds: VocDataset, labels: Path, block: dict[str, Any], threads: int, steps: int) -> None:
    torch.set_num_threads(threads)
    training = block["training"]
    ids = ds.ids("train")
    seed_everything(0)
    method = DeepLab(block, ds.num_classes)
    method.build_optimizers(training)
    method.train()
    trainset = SegmentationSet(ds, ids, LabelMap(labels, ids), training, seed=0)
    bs = training["batch_size"]
    sampler = StepSampler(len(ids), bs, 0, 0, steps + 1)
    loader = torch.utils.data.DataLoader(trainset, batch_sampler=sampler)
    load = step = 0.0
    t = time.perf_counter()
    for i, batch in enumerate(loader):
        t1 = time.perf_counter()
        method.training_step(batch, i)
        t2 = time.perf_counter()
        if i:  # the first step pays for decoding the images and warming up kernels
            load, step = load + t1 - t, step + t2 - t1
        t = time.perf_counter()
    print(f"training: {steps * bs / (load + step):.1f} images/s "
          f"(data {1000 * load / steps:.0f} ms + step {1000 * step / steps:.0f} ms per batch "
          f"of {bs}, crop {training['crop_size']}, {threads} threads)")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        weights = tmp / "deeplab.pt"
        torch.save({"method": method.state_dict(), "config": block,
                    "classes": list(ds.classes)}, weights)
        for crf in (False, True):
            out_crf = tmp / "crf.h5" if crf else None
            s = predict(weights, ds, "val", block, tmp / "val.h5", out_crf, "cpu",
                                threads)
            print(f"predict{' + CRF' if crf else ''}: {s['images_per_second']:.1f} images/s "
                  f"({s['images']} images, scales {block['inference']['scales']}, "
                  f"flip {block['inference']['flip']}, {threads} threads)")


def run(ds: VocDataset, labels: Path, block: dict[str, Any], threads: int, out: Path) -> None:
    torch.set_num_threads(threads)
    t0 = time.time()
    weights = train(ds, "train", labels, block, out, "cpu")
    train_s = time.time() - t0
    print(f"train: {train_s:.1f} s ({json.dumps(block['model'])}; "
          f"{json.dumps(block['training'])})")
    for split in ("val", "train"):
        plain, refined = out / f"{split}.h5", out / f"{split}_crf.h5"
        t0 = time.time()
        predict(weights, ds, split, block, plain, refined, "cpu", threads)
        pred_s = time.time() - t0
        mious = [100 * evaluate_labels(p, ds, split, threads)["miou"] for p in (plain, refined)]
        print(f"{split}: mIoU {mious[0]:.2f}, with CRF {mious[1]:.2f} "
              f"(predict + CRF {pred_s:.1f} s)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("mode", choices=["speed", "run"])
    ap.add_argument("--results", default="results/synthetic")
    ap.add_argument("--labels", default="results/synthetic/baseline/psa/labels/train.h5",
                    help="pseudo-label store of the train split, or `gt` for the true masks")
    ap.add_argument("--config", default=str(REPO / "config.yaml"),
                    help="config file whose deeplab block is run (before --set)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--out", default=None, help="run: output folder (default: a temp folder)")
    ap.add_argument("--set", action="append", default=[], help="key=value of the deeplab block")
    args = ap.parse_args()
    ds = _dataset(Path(args.results))
    block = _block(Path(args.config), args.set)
    with tempfile.TemporaryDirectory() as tmp:
        labels = Path(args.labels)
        if args.labels == "gt":
            labels = _gt_labels(ds, Path(tmp) / "gt_train.h5")
        if args.mode == "speed":
            speed(ds, labels, block, args.threads, args.steps)
        else:
            run(ds, labels, block, args.threads, Path(args.out) if args.out else Path(tmp))


if __name__ == "__main__":
    main()
