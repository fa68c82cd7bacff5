"""Evaluation stages: score CAM seeds over a threshold sweep, and score pseudo-label files.

Both stages return plain JSON-ready dicts; the CLI adds the config and library versions and
writes them with store.write_json.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import numpy as np

from wsss.metrics import confusion, mean_iou, scores, seed_confusions
from wsss.ops.pool import thread_map
from wsss.store import CamReader, LabelReader, StoreError

if TYPE_CHECKING:
    from wsss.data.voc import VocDataset



def _label_names(ds: VocDataset) -> list[str]:
    return ["background", *ds.classes]


def _float_or_none(x: float) -> float | None:
    return None if np.isnan(x) else float(x)


def seed_confusion(cam_path: str | os.PathLike, ds: VocDataset, split: str,
                   sweep: np.ndarray, threads: int = 1) -> tuple[np.ndarray, int]:
    """Confusions of argmax([t, CAMs]) seeds for every t of `sweep`, summed over the split's
    ids (one shard's, for a sharded dataset), and the number of images. Each CAM is read once;
    all thresholds are scored in one pass per image (metrics.seed_confusions)."""
    ids = ds.ids(split)
    ds.eval_fallbacks(ids, split)
    num_classes = ds.num_classes
    total = np.zeros((sweep.size, num_classes + 1, num_classes + 1), dtype=np.int64)
    with CamReader(cam_path) as reader:
        reader.check(ids, list(ds.classes))

        def items() -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
            for image_id in ids:
                cams, keys = reader.get(image_id)
                # The store holds float16, so this cast is exact and unlocks the fast path
                # of seed_confusions.
                yield image_id, cams.astype(np.float16), keys

        def one(item: tuple[str, np.ndarray, np.ndarray]) -> np.ndarray:
            image_id, cams, keys = item
            gt = ds.load_eval_mask(image_id)
            if cams.shape[1:] != gt.shape:
                raise StoreError(
                    f"{cam_path}: CAM of '{image_id}' is {cams.shape[1:]}, "
                    f"ground truth is {gt.shape}"
                )
            return seed_confusions(cams, keys, gt, sweep, num_classes)

        for conf in thread_map(one, items(), threads):
            total += conf
    return total, len(ids)


def seed_sweep(thresholds: np.ndarray, default_threshold: float) -> np.ndarray:
    """The thresholds scored: the sweep, then the default threshold as one extra point."""
    thresholds = np.asarray(thresholds, dtype=np.float64).reshape(-1)
    if thresholds.size == 0:
        raise ValueError("evaluate_seeds needs at least one threshold")
    return np.append(thresholds, float(default_threshold))


def seeds_result(total: np.ndarray, sweep: np.ndarray, ds: VocDataset, split: str,
                 num_images: int, cam_path: str | os.PathLike) -> dict[str, Any]:
    """The seed evaluation from the summed confusions of `seed_confusion` (over one or many
    shards: integer sums, so the result does not depend on how the split was cut)."""
    if num_images == 0:
        raise ValueError(f"split '{split}' has no images")
    thresholds = sweep[:-1]
    curve = np.asarray(mean_iou(total[:-1]), dtype=np.float64)
    if np.isnan(curve).all():
        raise ValueError(f"split '{split}': ground truth has no labelled pixels")
    best = int(np.nanargmax(curve))
    return {
        "split": split,
        "num_images": int(num_images),
        "cam_file": str(cam_path),
        "best_threshold": float(thresholds[best]),
        # scores at the best threshold sit at the top level, as in evaluate_labels, so that
        # summaries read every stage the same way
        **scores(total[best], _label_names(ds)),
        "default_threshold": float(sweep[-1]),
        "miou_at_default": _float_or_none(mean_iou(total[-1])),
        "curve": {
            "threshold": [float(t) for t in thresholds],
            "miou": [_float_or_none(m) for m in curve],
        },
    }


def evaluate_seeds(
    cam_path: str | os.PathLike,
    ds: VocDataset,
    split: str,
    thresholds: np.ndarray,
    default_threshold: float,
    threads: int = 1,
) -> dict[str, Any]:
    """Score argmax([t, CAMs]) seeds against ground truth for every background threshold t.

    Reports the threshold with the best mIoU and the scores there (miou, iou, precision,
    recall, fg_precision, fg_recall, pixel_accuracy at the top level), the mIoU at
    `default_threshold` (miou_at_default) and the whole curve {"threshold": [...],
    "miou": [...]}.
    """
    sweep = seed_sweep(thresholds, default_threshold)
    if not ds.ids(split):
        raise ValueError(f"split '{split}' has no images")
    total, n = seed_confusion(cam_path, ds, split, sweep, threads)
    return seeds_result(total, sweep, ds, split, n, cam_path)


def label_confusion(label_path: str | os.PathLike, ds: VocDataset, split: str,
                    threads: int = 1) -> tuple[np.ndarray, int, int]:
    """(confusion summed over the split's ids (one shard's, when sharded), labelled pixels
    the labels marked 255, number of images)."""
    ids = ds.ids(split)
    ds.eval_fallbacks(ids, split)
    n = ds.num_classes + 1
    total = np.zeros((n, n), dtype=np.int64)
    ignored = 0

    with LabelReader(label_path) as reader:
        reader.check(ids, list(ds.classes) if reader.classes else None)

        def items() -> Iterator[tuple[str, np.ndarray]]:
            for image_id in ids:
                yield image_id, reader.get(image_id)

        def one(item: tuple[str, np.ndarray]) -> tuple[np.ndarray, int]:
            image_id, label = item
            gt = ds.load_eval_mask(image_id)
            if label.shape != gt.shape:
                raise StoreError(
                    f"{label_path}: label of '{image_id}' is {label.shape}, "
                    f"ground truth is {gt.shape}"
                )
            return confusion(label, gt, n), int(np.count_nonzero((label == 255) & (gt != 255)))

        for conf, skipped in thread_map(one, items(), threads):
            total += conf
            ignored += skipped
    return total, ignored, len(ids)


def labels_result(total: np.ndarray, ignored: int, ds: VocDataset, split: str,
                  num_images: int, label_path: str | os.PathLike) -> dict[str, Any]:
    """The label evaluation from summed confusions (see seeds_result)."""
    if num_images == 0:
        raise ValueError(f"split '{split}' has no images")
    labelled = int(total.sum())
    return {
        "split": split,
        "num_images": int(num_images),
        "label_file": str(label_path),
        **scores(total, _label_names(ds)),
        "ignored_fraction": ignored / labelled if labelled else None,
    }


def evaluate_labels(
    label_path: str | os.PathLike, ds: VocDataset, split: str, threads: int = 1
) -> dict[str, Any]:
    """Score a pseudo-label file against ground truth over a split.

    Pseudo-label pixels marked 255 (an ignore band) count as background predictions;
    `ignored_fraction` reports how many of the scored pixels they were.
    """
    if not ds.ids(split):
        raise ValueError(f"split '{split}' has no images")
    total, ignored, n = label_confusion(label_path, ds, split, threads)
    return labels_result(total, ignored, ds, split, n, label_path)


def threshold_grid(evaluation: dict[str, Any]) -> np.ndarray:
    """The sweep's thresholds from an `evaluation` block ({thresholds: {start, stop, step}})."""
    t = evaluation["thresholds"]
    return np.round(np.arange(t["start"], t["stop"] + 1e-9, t["step"]), 6)


def seeds_report(cam_path: str | os.PathLike, ds: VocDataset, split: str, variant: str,
                 evaluation: dict[str, Any], threads: int = 1) -> dict[str, Any]:
    """`evaluate_seeds` over the evaluation block's sweep, with what produced the CAMs."""
    from wsss.store import versions

    result = evaluate_seeds(cam_path, ds, split, threshold_grid(evaluation),
                            evaluation["default_threshold"], threads=threads)
    with CamReader(cam_path) as cams:
        method_config = cams.attr("config")
    result.update(stage="seeds", variant=variant, evaluation=evaluation, config=method_config,
                  versions=versions())
    return result


def labels_report(label_path: str | os.PathLike, ds: VocDataset, split: str, variant: str,
                  stage: str, threads: int = 1) -> dict[str, Any]:
    """`evaluate_labels` with the stage's name and the config that made the labels."""
    from wsss.store import versions

    result = evaluate_labels(label_path, ds, split, threads=threads)
    with LabelReader(label_path) as labels:
        refiner_config = labels.attr("refiner")
    result.update(stage=stage, variant=variant, config=refiner_config, versions=versions())
    return result
