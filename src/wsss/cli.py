"""`wsss` command line: one subcommand per workflow stage.

Each subcommand parses its arguments, calls one stage function and writes its outputs
atomically. Configuration blocks arrive as JSON strings (the workflow passes each variant's
whole block), so a stage can also be run by hand outside Snakemake.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

log = logging.getLogger("wsss")


def _json(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise argparse.ArgumentTypeError(f"not valid JSON: {err}") from err


def _dataset(cfg: dict):
    from wsss.data.voc import VocDataset

    # `name` only names the results folder
    return VocDataset.from_config({k: v for k, v in cfg.items() if k != "name"})


def _threads(args) -> int:
    return max(1, args.threads)


def _set_torch_threads(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


# -- stages ------------------------------------------------------------------------------------
def cmd_synthetic(args) -> None:
    from wsss.data.synthetic import generate

    generate(Path(args.out), args.config, threads=_threads(args))


def cmd_index(args) -> None:
    from wsss.data.index import build_index, write_index

    ds = _dataset(args.dataset)
    index = build_index(ds, args.splits, threads=_threads(args))
    for split, info in index["splits"].items():
        log.info("%s: %d images, %d without foreground labels", split, len(info["ids"]),
                 len(info["no_foreground"]))
    write_index(args.out, index)


def cmd_train(args) -> None:
    from wsss.data.index import read_index
    from wsss.data.transforms import ClassificationSet
    from wsss.methods import build_method
    from wsss.train import fit, pick_device, seed_everything

    _set_torch_threads(_threads(args))
    ds = _dataset(args.dataset)
    index = read_index(args.index)
    split = index["splits"][args.split]
    ids = [i for i in split["ids"] if split["labels"][i]]
    skipped = len(split["ids"]) - len(ids)
    log.info("training on %d images of split '%s'; skipped %d without foreground labels",
             len(ids), args.split, skipped)
    cfg = args.config
    seed_everything(cfg["training"]["seed"])  # the initial weights are part of the experiment
    method = build_method(cfg, ds.num_classes)
    trainset = ClassificationSet(ds, ids, split["labels"], cfg["training"],
                                 seed=cfg["training"]["seed"])
    meta = {"config": cfg, "variant": args.variant, "classes": list(ds.classes),
            "skipped_no_foreground": skipped}
    fit(method, trainset, cfg["training"], args.out, meta, pick_device(args.device),
        stop_after=args.stop_after)


def cmd_cams(args) -> None:
    import torch

    from wsss.cams import extract_cams
    from wsss.data.index import read_index
    from wsss.methods import build_method
    from wsss.train import pick_device

    _set_torch_threads(_threads(args))
    ds = _dataset(args.dataset)
    index = read_index(args.index)
    split = index["splits"][args.split]
    cfg = args.config
    state = torch.load(args.checkpoint, map_location="cpu", weights_only=False)
    if state.get("config") != cfg:
        log.warning("%s was trained with a different config block than the one given",
                    args.checkpoint)
    method = build_method(cfg, ds.num_classes)
    method.load_state_dict(state["method"])
    method.to(pick_device(args.device))
    attrs = {"classes": list(ds.classes), "method": cfg["method"], "variant": args.variant,
             "config": cfg, "split": args.split, "dataset": args.dataset.get("name", "")}
    speed = extract_cams(method, ds, split["ids"], split["labels"], cfg["inference"], args.out,
                         attrs)
    log.info("CAMs of %d images in %.1f s (%.1f images/s)", speed["images"], speed["seconds"],
             speed["images_per_second"])


def cmd_eval_seeds(args) -> None:
    import numpy as np

    from wsss.evaluate import evaluate_seeds
    from wsss.store import CamReader, versions, write_json

    ds = _dataset(args.dataset)
    ev = args.evaluation
    t = ev["thresholds"]
    thresholds = np.round(np.arange(t["start"], t["stop"] + 1e-9, t["step"]), 6)
    result = evaluate_seeds(args.cams, ds, args.split, thresholds, ev["default_threshold"],
                            threads=_threads(args))
    with CamReader(args.cams) as cams:
        method_config = cams.attr("config")
    result.update(stage="seeds", variant=args.variant, evaluation=ev, config=method_config,
                  versions=versions())
    write_json(args.out, result)
    log.info("seeds %s: mIoU %.4f at threshold %.2f", args.split, result["miou"],
             result["best_threshold"])


def cmd_crf(args) -> None:
    from wsss.refine.crf import run_crf

    ds = _dataset(args.dataset)
    threshold = None
    if args.seeds_eval:
        threshold = json.loads(Path(args.seeds_eval).read_text())["best_threshold"]
        log.info("background threshold %.2f from %s", threshold, args.seeds_eval)
    run_crf(args.cams, ds, args.split, args.config, args.out, threads=_threads(args),
            threshold=threshold)


def _refiner_module(cfg: dict):
    from wsss.refine import refiner_module

    return refiner_module(cfg.get("refiner", ""))


def cmd_refine_labels(args) -> None:
    ds = _dataset(args.dataset)
    _refiner_module(args.config).make_labels(args.cams, ds, args.split, args.config, args.out,
                                             threads=_threads(args))


def cmd_refine_train(args) -> None:
    from wsss.train import pick_device, seed_everything

    _set_torch_threads(_threads(args))
    ds = _dataset(args.dataset)
    seed_everything(args.config["training"]["seed"])
    out = Path(args.out)
    weights = _refiner_module(args.config).train(ds, args.split, args.labels, args.config,
                                                 args.classifier, out.parent,
                                                 pick_device(args.device))
    os.replace(weights, out)


def cmd_refine(args) -> None:
    from wsss.train import pick_device

    _set_torch_threads(_threads(args))
    ds = _dataset(args.dataset)
    _refiner_module(args.config).refine(args.cams, ds, args.split, args.config, args.weights,
                                        args.out, pick_device(args.device),
                                        threads=_threads(args))


def cmd_deeplab_train(args) -> None:
    from wsss.segment import train
    from wsss.train import pick_device

    _set_torch_threads(_threads(args))
    ds = _dataset(args.dataset)
    weights = train(ds, args.split, args.labels, args.config, args.out, pick_device(args.device))
    log.info("DeepLab weights: %s", weights)


def cmd_deeplab_predict(args) -> None:
    from wsss.segment import predict
    from wsss.train import pick_device

    _set_torch_threads(_threads(args))
    ds = _dataset(args.dataset)
    speed = predict(args.weights, ds, args.split, args.config, args.out, args.out_crf,
                    pick_device(args.device), threads=_threads(args))
    log.info("DeepLab labels of %d images in %.1f s (%.1f images/s)", speed["images"],
             speed["seconds"], speed["images_per_second"])


def cmd_eval_labels(args) -> None:
    from wsss.evaluate import evaluate_labels
    from wsss.store import LabelReader, versions, write_json

    ds = _dataset(args.dataset)
    result = evaluate_labels(args.labels, ds, args.split, threads=_threads(args))
    with LabelReader(args.labels) as labels:
        refiner_config = labels.attr("refiner")
    result.update(stage=args.stage, variant=args.variant, config=refiner_config,
                  versions=versions())
    write_json(args.out, result)
    log.info("%s %s: mIoU %.4f", args.stage, args.split, result["miou"])


def cmd_failure_modes(args) -> None:
    from wsss.diagnostics import failure_modes, label_failure_modes, read_generator
    from wsss.store import versions, write_json

    ds = _dataset(args.dataset)
    generator = read_generator(ds.root)
    if args.labels:
        result = label_failure_modes(args.labels, ds, args.split, generator)
    else:
        if not (args.cams and args.seeds_eval):
            raise ValueError("failure-modes needs --labels, or --cams with --seeds-eval")
        threshold = json.loads(Path(args.seeds_eval).read_text())["best_threshold"]
        result = failure_modes(args.cams, ds, args.split, generator, threshold)
    result.update(variant=args.variant, stage=args.stage, versions=versions())
    write_json(args.out, result)
    log.info("object recall %.3f, background false-positive rate %s", result["mean_object_recall"],
             {k: round(v, 4) for k, v in result["background_false_positive_rate"].items()})


def cmd_summary(args) -> None:
    from wsss.report import write_summary

    write_summary(args.evals, args.csv, args.md, args.png, title=args.title,
                  diagnostics=args.diagnostics)


def cmd_export_png(args) -> None:
    from wsss.data.voc import save_mask
    from wsss.store import LabelReader

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with LabelReader(args.labels) as labels:
        for image_id in labels.ids:
            save_mask(out / f"{image_id}.png", labels.get(image_id))
    log.info("wrote %d PNGs to %s", len(labels.ids), out)


def cmd_figures(args) -> None:
    from wsss.data.index import read_index
    from wsss.figures import class_iou_heatmap, example_grid, pick_examples, training_curves
    from wsss.report import load_evaluations

    ds = _dataset(args.dataset)
    evals = load_evaluations(args.evals)
    class_iou_heatmap(evals, args.heatmap)
    labels = read_index(args.index)["splits"][args.split]["labels"] if args.index else None
    ids = pick_examples(ds, args.split, args.examples, labels)
    example_grid(ds, ids, args.columns, args.grid)
    training_curves([(label, path) for label, path in args.logs], args.curves)
    log.info("figures: %d evaluations, %d example images, %d training logs", len(evals),
             len(ids), len(args.logs))


# -- parser ------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="wsss", description=__doc__.splitlines()[0])
    p.add_argument("-v", "--verbose", action="store_true")
    sub = p.add_subparsers(dest="command", required=True)

    def stage(name, fn, help_):
        sp = sub.add_parser(name, help=help_)
        sp.set_defaults(fn=fn)
        sp.add_argument("--threads", type=int, default=1, help="CPU workers for this stage")
        return sp

    def dataset_args(sp):
        sp.add_argument("--dataset", type=_json, required=True, help="dataset block as JSON")

    sp = stage("synthetic", cmd_synthetic, "generate the embedded synthetic benchmark")
    sp.add_argument("--config", type=_json, default={}, help="generator block as JSON")
    sp.add_argument("--out", required=True, help="dataset root to write (VOC layout)")

    sp = stage("index", cmd_index, "validate a dataset and write its index (ids, labels)")
    dataset_args(sp)
    sp.add_argument("--splits", nargs="+", required=True)
    sp.add_argument("--out", required=True)

    sp = stage("train", cmd_train, "train a method variant's classifier (resumable)")
    dataset_args(sp)
    sp.add_argument("--index", required=True)
    sp.add_argument("--split", default="train")
    sp.add_argument("--variant", required=True)
    sp.add_argument("--config", type=_json, required=True, help="variant block as JSON")
    sp.add_argument("--out", required=True, help="output folder (classifier.pt, train_log.csv)")
    sp.add_argument("--device", default="auto")
    sp.add_argument("--stop-after", type=int, default=None, help=argparse.SUPPRESS)

    sp = stage("cams", cmd_cams, "multi-scale + flip CAMs of a split to HDF5")
    dataset_args(sp)
    sp.add_argument("--index", required=True)
    sp.add_argument("--split", required=True)
    sp.add_argument("--variant", required=True)
    sp.add_argument("--config", type=_json, required=True, help="variant block as JSON")
    sp.add_argument("--checkpoint", required=True)
    sp.add_argument("--out", required=True)
    sp.add_argument("--device", default="auto")

    sp = stage("eval-seeds", cmd_eval_seeds, "background-threshold sweep of CAM seeds")
    dataset_args(sp)
    sp.add_argument("--cams", required=True)
    sp.add_argument("--split", required=True)
    sp.add_argument("--variant", required=True)
    sp.add_argument("--evaluation", type=_json, required=True, help="evaluation block as JSON")
    sp.add_argument("--out", required=True)

    sp = stage("crf", cmd_crf, "dense-CRF refinement of CAMs into pseudo-labels")
    dataset_args(sp)
    sp.add_argument("--cams", required=True)
    sp.add_argument("--split", required=True)
    sp.add_argument("--config", type=_json, required=True, help="refiner block as JSON")
    sp.add_argument("--seeds-eval", default=None,
                    help="seed evaluation JSON whose best threshold sets the background plane")
    sp.add_argument("--out", required=True)

    sp = stage("refine-labels", cmd_refine_labels,
               "training labels of a learned refiner (PSA, IRN) from CAMs")
    dataset_args(sp)
    sp.add_argument("--cams", required=True)
    sp.add_argument("--split", required=True)
    sp.add_argument("--config", type=_json, required=True, help="refiner block as JSON")
    sp.add_argument("--out", required=True)

    sp = stage("refine-train", cmd_refine_train, "train a learned refiner's network (resumable)")
    dataset_args(sp)
    sp.add_argument("--split", required=True, help="split of the training labels")
    sp.add_argument("--labels", required=True, help="label HDF5 from refine-labels")
    sp.add_argument("--config", type=_json, required=True, help="refiner block as JSON")
    sp.add_argument("--classifier", required=True, help="the CAM variant's classifier.pt")
    sp.add_argument("--out", required=True, help="weights file to write")
    sp.add_argument("--device", default="auto")

    sp = stage("refine", cmd_refine, "pseudo-labels from CAMs with a learned refiner")
    dataset_args(sp)
    sp.add_argument("--cams", required=True)
    sp.add_argument("--split", required=True)
    sp.add_argument("--config", type=_json, required=True, help="refiner block as JSON")
    sp.add_argument("--weights", required=True)
    sp.add_argument("--out", required=True)
    sp.add_argument("--device", default="auto")

    sp = stage("deeplab-train", cmd_deeplab_train,
               "train a DeepLab on a pseudo-label file (resumable)")
    dataset_args(sp)
    sp.add_argument("--split", required=True, help="split of the training labels")
    sp.add_argument("--labels", required=True, help="pseudo-label HDF5 of that split")
    sp.add_argument("--config", type=_json, required=True, help="deeplab block as JSON")
    sp.add_argument("--out", required=True,
                    help="output folder (deeplab.pt, deeplab.checkpoint.pt, deeplab.log.csv)")
    sp.add_argument("--device", default="auto")

    sp = stage("deeplab-predict", cmd_deeplab_predict,
               "multi-scale + flip DeepLab labels of a split, with and without its CRF")
    dataset_args(sp)
    sp.add_argument("--split", required=True)
    sp.add_argument("--weights", required=True, help="deeplab.pt from deeplab-train")
    sp.add_argument("--config", type=_json, required=True, help="deeplab block as JSON")
    sp.add_argument("--out", required=True, help="label HDF5 of the network's argmax")
    sp.add_argument("--out-crf", default=None, help="label HDF5 after the dense CRF")
    sp.add_argument("--device", default="auto")

    sp = stage("eval-labels", cmd_eval_labels, "mIoU of a pseudo-label file")
    dataset_args(sp)
    sp.add_argument("--labels", required=True)
    sp.add_argument("--split", required=True)
    sp.add_argument("--variant", required=True)
    sp.add_argument("--stage", required=True, help="name of the refiner that made the labels")
    sp.add_argument("--out", required=True)

    sp = stage("failure-modes", cmd_failure_modes,
               "partial activation and co-occurrence leakage (synthetic benchmark)")
    dataset_args(sp)
    sp.add_argument("--cams", help="CAM store: judge the seeds at the best threshold")
    sp.add_argument("--seeds-eval", help="seed evaluation JSON (its best threshold)")
    sp.add_argument("--labels", help="label store: judge pseudo-labels instead")
    sp.add_argument("--split", required=True)
    sp.add_argument("--variant", required=True)
    sp.add_argument("--stage", default="seeds", help="seeds or the refiner's name")
    sp.add_argument("--out", required=True)

    sp = stage("summary", cmd_summary, "summary table (csv, md) and bar chart of evaluations")
    sp.add_argument("--evals", nargs="+", required=True)
    sp.add_argument("--csv", required=True)
    sp.add_argument("--md", required=True)
    sp.add_argument("--png", required=True)
    sp.add_argument("--diagnostics", nargs="*", default=[], help="failure-mode JSON files")
    sp.add_argument("--title", default="")

    sp = stage("export-png", cmd_export_png, "write a label HDF5 as VOC palette PNGs")
    sp.add_argument("--labels", required=True)
    sp.add_argument("--out", required=True)
    sp = stage("figures", cmd_figures, "the report's figures: per-class IoU, examples, curves")
    dataset_args(sp)
    sp.add_argument("--evals", nargs="+", required=True, help="evaluation JSONs")
    sp.add_argument("--columns", type=_json, required=True,
                    help="example grid columns as JSON: [{title, kind, path, extra}, ...]")
    sp.add_argument("--logs", type=_json, required=True,
                    help="training logs as JSON: [[label, csv path], ...]")
    sp.add_argument("--split", required=True, help="split the example images come from")
    sp.add_argument("--examples", type=int, default=6, help="number of example images")
    sp.add_argument("--index", default=None, help="dataset index (image labels, saves reads)")
    sp.add_argument("--heatmap", required=True)
    sp.add_argument("--grid", required=True)
    sp.add_argument("--curves", required=True)

    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    os.environ.setdefault("HDF5_USE_FILE_LOCKING", "FALSE")
    from wsss.data.voc import DatasetError
    from wsss.errors import ConfigError
    from wsss.store import StoreError

    try:
        args.fn(args)
    except (DatasetError, StoreError, ConfigError, ValueError) as err:
        log.error("%s", err)
        print(f"wsss {args.command}: error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
