"""Shared cases of the DeepLab tests: a tiny config and a ground-truth label store."""

from __future__ import annotations

import copy

from wsss.data.voc import VocDataset
from wsss.store import LabelWriter

CFG = {
    "model": {"arch": "deeplabv2",
              "backbone": {"name": "tiny", "output_stride": 8, "pretrained": "none",
                           "freeze_bn": False},
              "rates": [6, 12, 18, 24]},
    "training": {"seed": 0, "epochs": 2, "batch_size": 2, "lr": 0.01, "momentum": 0.9,
                 "nesterov": False, "weight_decay": 5e-4, "poly_power": 0.9, "head_lr_mult": 10,
                 "head_bias_lr_mult": 20, "crop_size": 32, "resize_long": [40, 56],
                 "hflip": True, "color_jitter": 0.0, "msc_scales": [], "checkpoint_every": 50,
                 "num_workers": 0, "cache_max_images": 100},
    "inference": {"scales": [1.0, 0.5], "flip": True, "batch_size": 3,
                  "crf": {"iterations": 5, "gaussian": {"sxy": 1, "compat": 3},
                          "bilateral": {"sxy": 67, "srgb": 3, "compat": 4}}},
}


def make_cfg(arch: str = "deeplabv2", freeze_bn: bool = False, **training) -> dict:
    cfg = copy.deepcopy(CFG)
    cfg["model"]["arch"] = arch
    cfg["model"]["backbone"]["freeze_bn"] = freeze_bn
    cfg["training"].update(training)
    return cfg


def gt_store(ds: VocDataset, split: str, path, skip=(), edit=None):
    """The ground-truth masks of `split` as a pseudo-label store (an oracle refiner)."""
    with LabelWriter(path, {"classes": list(ds.classes), "split": split}) as writer:
        for image_id in ds.ids(split):
            if image_id not in skip:
                mask = ds.load_mask(image_id)
                writer.add(image_id, edit(image_id, mask) if edit else mask)
    return path
