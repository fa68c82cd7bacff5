"""The classifier stage: train a method variant on the training split (resumable)."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch

from wsss.data.index import read_index
from wsss.data.transforms import ClassificationSet
from wsss.methods.base import build_method
from wsss.train import fit, seed_everything

log = logging.getLogger(__name__)


def train_classifier(ds, index_path: str | os.PathLike, split: str, variant: str,
                     cfg: dict[str, Any], out_dir: str | os.PathLike, device: torch.device,
                     init_from: str | os.PathLike | None = None,
                     stop_after: int | None = None) -> Path:
    """Train `cfg`'s method on the labelled images of `split`; returns classifier.pt."""
    index = read_index(index_path)
    info = index["splits"][split]
    ids = [i for i in info["ids"] if info["labels"][i]]
    skipped = len(info["ids"]) - len(ids)
    log.info("training on %d images of split '%s'; skipped %d without foreground labels",
             len(ids), split, skipped)
    seed_everything(cfg["training"]["seed"])  # the initial weights are part of the experiment
    method = build_method(cfg, ds.num_classes)
    if init_from is not None:
        raise NotImplementedError("init_from")
    trainset = ClassificationSet(ds, ids, info["labels"], cfg["training"],
                                 seed=cfg["training"]["seed"])
    meta = {"config": cfg, "variant": variant, "classes": list(ds.classes),
            "skipped_no_foreground": skipped}
    return fit(method, trainset, cfg["training"], out_dir, meta, device, stop_after=stop_after)
