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

from wsss.store import CamReader, LabelReader


def seed_prediction(cam: np.ndarray, keys: np.ndarray, threshold: float) -> np.ndarray:
    """argmax over [threshold, cams] mapped to label values (0 background, k+1 class k)."""
    if len(keys) == 0:
        return np.zeros(cam.shape[1:], dtype=np.uint8)
    lut = np.concatenate([[0], np.asarray(keys) + 1]).astype(np.uint8)
    return lut[np.argmax(np.concatenate([np.full((1, *cam.shape[1:]), threshold), cam]), axis=0)]


class _Tally:
    """Pixel counts behind the failure-mode figures, accumulated image by image."""

    def __init__(self, names: list[str], backgrounds: list[str]):
        self.names = names
        self.bg_pixels = dict.fromkeys(backgrounds, 0)
        self.bg_false_fg = dict.fromkeys(backgrounds, 0)
        self.obj_pixels = np.zeros(len(names), dtype=np.int64)
        self.obj_hits = np.zeros(len(names), dtype=np.int64)
        self.part_pixels = self.part_hits = self.body_pixels = self.body_hits = 0
        self.part_cam = self.body_cam = 0.0

    def add(self, pred: np.ndarray, gt: np.ndarray, background: str, part: np.ndarray | None,
            own_cam: np.ndarray | None) -> None:
        n = len(self.names)
        is_bg = gt == 0
        self.bg_pixels[background] += int(is_bg.sum())
        self.bg_false_fg[background] += int((is_bg & (pred > 0) & (pred != 255)).sum())
        valid = (gt > 0) & (gt != 255)
        self.obj_pixels += np.bincount(gt[valid] - 1, minlength=n)[:n]
        hit = valid & (pred == gt)
        self.obj_hits += np.bincount(gt[hit] - 1, minlength=n)[:n]
        if part is None:
            return
        self.part_pixels += int((valid & part).sum())
        self.part_hits += int((hit & part).sum())
        self.body_pixels += int((valid & ~part).sum())
        self.body_hits += int((hit & ~part).sum())
        if own_cam is not None:
            self.part_cam += float(own_cam[valid & part].sum())
            self.body_cam += float(own_cam[valid & ~part].sum())

    def result(self, cooccurring: dict[str, list[str]]) -> dict[str, Any]:
        fp_rate = {b: self.bg_false_fg[b] / n for b, n in self.bg_pixels.items() if n}
        leak = {}
        for bg in cooccurring:
            others = [r for b, r in fp_rate.items() if b != bg]
            if bg in fp_rate and others and np.mean(others) > 0:
                leak[bg] = fp_rate[bg] / float(np.mean(others))
        recall = self.obj_hits / np.maximum(self.obj_pixels, 1)
        ratio = None
        if self.part_pixels and self.body_cam:
            ratio = (self.part_cam / self.part_pixels) / (self.body_cam / self.body_pixels)
        return {
            "object_recall": {n: float(r) for n, r in zip(self.names, recall, strict=True)},
            "mean_object_recall": float(np.mean(recall)),
            "part_recall": self.part_hits / self.part_pixels if self.part_pixels else None,
            "body_recall": self.body_hits / self.body_pixels if self.body_pixels else None,
            "part_body_cam_ratio": ratio,
            "background_false_positive_rate": fp_rate,
            "leakage_ratio": leak,
            "cooccurring": cooccurring,
        }


def _part_mask(ds, image_id: str) -> np.ndarray | None:
    path = Path(ds.root) / "SegmentationPart" / f"{image_id}.png"
    return np.asarray(Image.open(path)) > 0 if path.is_file() else None


def failure_modes(cam_path: str | Path, ds, split: str, generator: dict[str, Any],
                  threshold: float) -> dict[str, Any]:
    """Failure modes of CAM seeds at a background threshold (with the part/body CAM ratio)."""
    tally = _Tally(list(ds.classes), list(generator["backgrounds"]))
    with CamReader(cam_path) as cams:
        ids = ds.ids(split)
        cams.check(ids, ds.classes)
        for image_id in ids:
            cam, keys = cams.get(image_id)
            gt = ds.load_mask(image_id)
            own = np.zeros(gt.shape, dtype=np.float32)  # the CAM of each pixel's own class
            for i, k in enumerate(keys):
                own[gt == k + 1] = cam[i][gt == k + 1]
            tally.add(seed_prediction(cam, keys, threshold), gt,
                      generator["image_backgrounds"][image_id], _part_mask(ds, image_id), own)
    return {"split": split, "threshold": threshold, **tally.result(generator["cooccurring"])}


def label_failure_modes(label_path: str | Path, ds, split: str,
                        generator: dict[str, Any]) -> dict[str, Any]:
    """The same figures for pseudo-labels (255 counts as not foreground)."""
    tally = _Tally(list(ds.classes), list(generator["backgrounds"]))
    with LabelReader(label_path) as labels:
        ids = ds.ids(split)
        labels.check(ids, ds.classes)
        for image_id in ids:
            tally.add(labels.get(image_id), ds.load_mask(image_id),
                      generator["image_backgrounds"][image_id], _part_mask(ds, image_id), None)
    return {"split": split, "threshold": None, **tally.result(generator["cooccurring"])}


def read_generator(root: str | Path) -> dict[str, Any]:
    path = Path(root) / "generator.json"
    if not path.is_file():
        raise ValueError(f"{path}: not found; failure modes need the synthetic benchmark")
    return json.loads(path.read_text())


def diagnose(ds, split: str, variant: str, stage: str, cams: str | None = None,
             seeds_eval: str | None = None, labels: str | None = None) -> dict[str, Any]:
    """Failure modes of a label store, or of a CAM store's seeds at its evaluation's best
    threshold, with the variant, stage and versions recorded."""
    from wsss.store import versions

    generator = read_generator(ds.root)
    if labels:
        result = label_failure_modes(labels, ds, split, generator)
    else:
        if not (cams and seeds_eval):
            raise ValueError("failure-modes needs --labels, or --cams with --seeds-eval")
        threshold = json.loads(Path(seeds_eval).read_text())["best_threshold"]
        result = failure_modes(cams, ds, split, generator, threshold)
    result.update(variant=variant, stage=stage, versions=versions())
    return result
