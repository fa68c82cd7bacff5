"""Failure-mode measurements on the synthetic benchmark.

The generator records each image's background type and which classes co-occur with which
background (generator.json). At the seeds' background threshold this module measures
  * partial activation: recall of object pixels per class, and separately on the pixels of each
    object's small discriminative part (SegmentationPart/) and on the rest of its body; plain
    CAMs fire on the part, so part recall is high and body recall low;
  * co-occurrence leakage: the share of background pixels predicted as foreground, per
    background type; a co-occurring background that attracts far more false positives than the
    others is the leakage WSSS methods try to remove.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from wsss.store import CamReader


def seed_prediction(cam: np.ndarray, keys: np.ndarray, threshold: float) -> np.ndarray:
    """argmax over [threshold, cams] mapped to label values (0 background, k+1 class k)."""
    if len(keys) == 0:
        return np.zeros(cam.shape[1:], dtype=np.uint8)
    lut = np.concatenate([[0], np.asarray(keys) + 1]).astype(np.uint8)
    return lut[np.argmax(np.concatenate([np.full((1, *cam.shape[1:]), threshold), cam]), axis=0)]


def failure_modes(cam_path: str | Path, ds, split: str, generator: dict[str, Any],
                  threshold: float) -> dict[str, Any]:
    backgrounds: dict[str, str] = generator["image_backgrounds"]
    names = list(ds.classes)
    bg_pixels = {b: 0 for b in generator["backgrounds"]}
    bg_false_fg = dict.fromkeys(bg_pixels, 0)
    obj_pixels = np.zeros(len(names), dtype=np.int64)
    obj_hits = np.zeros(len(names), dtype=np.int64)
    part_pixels = part_hits = body_pixels = body_hits = 0
    part_cam = body_cam = 0.0
    with CamReader(cam_path) as cams:
        ids = ds.ids(split)
        cams.check(ids, ds.classes)
        for image_id in ids:
            cam, keys = cams.get(image_id)
            pred = seed_prediction(cam, keys, threshold)
            gt = ds.load_mask(image_id)
            kind = backgrounds[image_id]
            is_bg = gt == 0
            bg_pixels[kind] += int(is_bg.sum())
            bg_false_fg[kind] += int((is_bg & (pred > 0)).sum())
            valid = (gt > 0) & (gt != 255)
            obj_pixels += np.bincount(gt[valid] - 1, minlength=len(names))[: len(names)]
            hit = valid & (pred == gt)
            obj_hits += np.bincount(gt[hit] - 1, minlength=len(names))[: len(names)]
            part_path = Path(ds.root) / "SegmentationPart" / f"{image_id}.png"
            if part_path.is_file():
                part = np.asarray(Image.open(part_path)) > 0
                part_pixels += int((valid & part).sum())
                part_hits += int((hit & part).sum())
                body_pixels += int((valid & ~part).sum())
                body_hits += int((hit & ~part).sum())
                # the CAM of each pixel's own class, where that class has a plane
                plane = {int(k) + 1: i for i, k in enumerate(keys)}
                own = np.zeros(gt.shape, dtype=np.float32)
                for value, i in plane.items():
                    own[gt == value] = cam[i][gt == value]
                part_cam += float(own[valid & part].sum())
                body_cam += float(own[valid & ~part].sum())
    fp_rate = {b: bg_false_fg[b] / bg_pixels[b] for b in bg_pixels if bg_pixels[b]}
    out: dict[str, Any] = {
        "split": split,
        "threshold": threshold,
        "object_recall": {n: float(obj_hits[i] / max(obj_pixels[i], 1))
                          for i, n in enumerate(names)},
        "mean_object_recall": float(np.mean(obj_hits / np.maximum(obj_pixels, 1))),
        "part_recall": part_hits / part_pixels if part_pixels else None,
        "body_recall": body_hits / body_pixels if body_pixels else None,
        "part_body_cam_ratio": (part_cam / part_pixels) / (body_cam / body_pixels)
        if part_pixels and body_cam else None,
        "background_false_positive_rate": fp_rate,
        "cooccurring": generator["cooccurring"],
    }
    leak = {}
    for bg in generator["cooccurring"]:
        others = [r for b, r in fp_rate.items() if b != bg]
        if bg in fp_rate and others and np.mean(others) > 0:
            leak[bg] = fp_rate[bg] / float(np.mean(others))
    out["leakage_ratio"] = leak
    return out


def read_generator(root: str | Path) -> dict[str, Any]:
    path = Path(root) / "generator.json"
    if not path.is_file():
        raise ValueError(f"{path}: not found; failure modes need the synthetic benchmark")
    return json.loads(path.read_text())
