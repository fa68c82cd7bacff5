"""The classifier stage: train a method variant on the training split (resumable)."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch

from wsss import registry
from wsss.data.index import read_index
from wsss.data.transforms import ClassificationSet
from wsss.errors import ConfigError
from wsss.methods.base import build_method
from wsss.train import fit, seed_everything
from wsss.train.resume import backbone_modules, pretrained_inputs, resume_key

log = logging.getLogger(__name__)


def train_classifier(ds, index_path: str | os.PathLike, split: str, variant: str,
                     cfg: dict[str, Any], out_dir: str | os.PathLike, device: torch.device,
                     init_from: str | os.PathLike | None = None,
                     stop_after: int | None = None) -> Path:
    """Train `cfg`'s method on the labelled images of `split`; returns classifier.pt.

    `init_from`: the classifier.pt of another variant, whose matching weights the method starts
    from (`Method.init_from`); a checkpoint of this run, when there is one, still wins.
    A checkpoint is resumed only when it was trained from the same config, code (the
    `train_classifier` rule's code inputs: `wsss.cli.train`, the method chain and backbone
    modules) and files (the index, `init_from`, pretrained weights): `wsss.train.resume`.
    """
    index = read_index(index_path)
    info = index["splits"][split]
    ids = [i for i in info["ids"] if info["labels"][i]]
    skipped = len(info["ids"]) - len(ids)
    log.info("training on %d images of split '%s'; skipped %d without foreground labels",
             len(ids), split, skipped)
    seed_everything(cfg["training"]["seed"])  # the initial weights are part of the experiment
    method = build_method(cfg, ds.num_classes)
    if init_from is not None:
        method.init_from(_trained_weights(init_from), source=str(init_from))
    trainset = ClassificationSet(ds, ids, info["labels"], cfg["training"],
                                 seed=cfg["training"]["seed"])
    meta = {"config": cfg, "variant": variant, "classes": list(ds.classes),
            "skipped_no_foreground": skipped}
    if init_from is not None:
        meta["init_from"] = str(init_from)
    code = ["wsss.cli.train", *(c.module for c in registry.method_chain(cfg)),
            *backbone_modules(cfg)]
    inputs = {"index": index_path, "init_from": init_from, **pretrained_inputs(cfg)}
    meta["resume_key"] = resume_key(method, trainset, code, inputs)
    return fit(method, trainset, cfg["training"], out_dir, meta, device, stop_after=stop_after)


def _trained_weights(path: str | os.PathLike) -> dict[str, Any]:
    if not Path(path).is_file():
        raise ConfigError(f"init_from {path}: no such classifier file")
    state = torch.load(path, map_location="cpu", weights_only=False)
    if not isinstance(state, dict) or "method" not in state:
        raise ConfigError(f"init_from {path}: not a classifier file (no 'method' weights)")
    return state["method"]
