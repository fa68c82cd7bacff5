"""How far a learned refiner is from its ceiling on a finished run (a script, not a test).

The refiner's network is trained once more, on the ground-truth masks instead of its CAM-derived
training labels (an oracle the method never has), and walks the same CAMs. Printed next to the
run's own seeds, CRF and refiner mIoU, it separates what the training labels cost from what the
walk itself can do with these CAMs.

python tests/benchmarks/bench_refiner_oracle.py [--results results/synthetic]
    [--variant baseline] [--refiner irn] [--config config.yaml] [--threads 2]
"""

from __future__ import annotations

import argparse
import copy
import json
import tempfile
from pathlib import Path

import yaml

from wsss.data.voc import VocDataset
from wsss.evaluate import evaluate_labels
from wsss.refine import refiner_module
from wsss.store import LabelWriter


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results", default="results/synthetic")
    ap.add_argument("--variant", default="baseline")
    ap.add_argument("--refiner", default="irn")
    ap.add_argument("--config", default="config.yaml")
    ap.add_argument("--split", default="train")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    results = Path(args.results)
    index = json.loads((results / "data" / "index.json").read_text())
    splits = {name: f"ImageSets/Segmentation/{name}.txt" for name in index["splits"]}
    ds = VocDataset.from_config({"root": index["root"], "splits": splits,
                                 "mask_dir": index["mask_dir"], "classes": index["classes"]})
    block = yaml.safe_load(Path(args.config).read_text())["refiners"][args.refiner]
    module = refiner_module(block["refiner"])
    run = results / args.variant
    cams = run / "cams" / f"{args.split}.h5"

    def stored(path: Path) -> float:
        return 100 * json.loads(path.read_text())["miou"]

    rows = {"seeds": stored(run / "cams" / f"{args.split}.eval.json")}
    for name in ("crf", args.refiner):
        path = run / name / "labels" / f"{args.split}.eval.json"
        if path.is_file():
            rows[f"{name} (run)"] = stored(path)

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        with LabelWriter(tmp / "gt.h5", {"classes": list(ds.classes), "split": args.split}) as w:
            for image_id in ds.ids(args.split):
                w.add(image_id, ds.load_mask(image_id))
        weights = module.train(ds, args.split, tmp / "gt.h5", block, run / "classifier.pt",
                               tmp / "network.pt", "cpu")
        for crf in (False, True):
            cfg = copy.deepcopy(block)
            cfg.setdefault("inference", {})["crf"] = crf
            out = tmp / f"oracle_{crf}.h5"
            module.refine(cams, ds, args.split, cfg, weights, out, "cpu", args.threads)
            label = f"{args.refiner} trained on GT masks, walk{' + CRF' if crf else ''}"
            rows[label] = 100 * evaluate_labels(out, ds, args.split, args.threads)["miou"]

    width = max(map(len, rows))
    print(f"{args.variant} / {args.split}: mIoU (%)")
    for name, value in rows.items():
        print(f"  {name:<{width}}  {value:6.2f}")


if __name__ == "__main__":
    main()
