"""Segmentation metrics: confusion matrices, IoU scores and threshold sweeps over CAM seeds.

Label conventions (shared with the stores): 0 = background, k + 1 = foreground class k,
255 = ignore. Confusion matrices are L×L with rows = ground truth and columns = prediction,
where L = number of labels including background.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import numpy as np

IGNORE = 255


def _as_labels(arr: np.ndarray, what: str) -> np.ndarray:
    """Flat uint8 view of a label map; other integer dtypes are range-checked before casting."""
    arr = np.asarray(arr)
    if arr.dtype != np.uint8:
        if arr.size and (arr.min() < 0 or arr.max() > IGNORE):
            raise ValueError(f"{what} holds values outside 0..255")
        arr = arr.astype(np.uint8)
    return arr.reshape(-1)


def _luts(num_labels: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Lookup tables turning (gt, pred) bytes into bincount bins.

    Bins 0..L*L-1 are the confusion cells, L*L..L*L+L-1 collect ignored ground truth, and
    every bin from L*L+L on can only be reached through an out-of-range value, so invalid
    input is detected from the counts instead of by a separate pass over the pixels.
    """
    n = num_labels
    bad = n * n + n
    dtype = np.uint16 if 2 * bad < 2**16 else np.uint32
    lut_gt = np.full(256, bad, dtype=dtype)
    lut_gt[:n] = np.arange(n) * n
    lut_gt[IGNORE] = n * n
    lut_pred = np.full(256, bad, dtype=dtype)
    lut_pred[:n] = np.arange(n)
    # IRN's convention: the ignore band of a pseudo-label counts as a background prediction.
    lut_pred[IGNORE] = 0
    return lut_gt, lut_pred, bad


def confusion(pred: np.ndarray, gt: np.ndarray, num_labels: int) -> np.ndarray:
    """L×L int64 confusion matrix (rows = ground truth, columns = prediction).

    Pixels whose ground truth is 255 are skipped. A prediction of 255 (the ignore band of a
    pseudo-label) is counted as background, as IRN does when it scores pseudo-labels.
    Any other value >= `num_labels` raises ValueError.
    """
    if not 1 <= num_labels <= IGNORE:
        raise ValueError(f"num_labels must be in 1..255, got {num_labels}")
    pred = np.asarray(pred)
    gt = np.asarray(gt)
    if pred.shape != gt.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from ground truth {gt.shape}")
    lut_gt, lut_pred, bad = _luts(num_labels)
    idx = np.take(lut_gt, _as_labels(gt, "ground truth"))
    idx += np.take(lut_pred, _as_labels(pred, "prediction"))
    counts = np.bincount(idx, minlength=bad)
    if counts.size > bad:
        raise ValueError(f"labels must be < {num_labels} or 255")
    n = num_labels
    return counts[: n * n].reshape(n, n).astype(np.int64, copy=False)


def class_iou(conf: np.ndarray) -> np.ndarray:
    """Per-class IoU TP / (TP + FP + FN) of one or a stack (..., L, L) of confusions; nan if 0/0."""
    conf = np.asarray(conf, dtype=np.float64)
    tp = np.diagonal(conf, axis1=-2, axis2=-1)
    union = conf.sum(axis=-1) + conf.sum(axis=-2) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        return tp / union


def mean_iou(conf: np.ndarray) -> np.ndarray | float:
    """mIoU over classes that occur in ground truth or prediction; works on (..., L, L) stacks."""
    iou = class_iou(conf)
    present = ~np.isnan(iou)
    count = present.sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.where(present, iou, 0.0).sum(axis=-1) / count
    return float(out) if np.ndim(out) == 0 else out


def _num(x: float) -> float | None:
    """JSON-safe float: undefined ratios (nan) become None, i.e. null in the output files."""
    x = float(x)
    return None if np.isnan(x) else x


def _ratio(num: float, den: float) -> float | None:
    return None if den == 0 else float(num) / float(den)


def scores(conf: np.ndarray, names: Sequence[str]) -> dict[str, Any]:
    """Scores of one confusion matrix; `names` are the L label names, "background" first.

    Classes absent from both ground truth and prediction have no IoU (None) and are left out
    of the mean. Foreground precision/recall treat every non-background label as one class.
    All values are plain floats (or None where undefined), ready for JSON.
    """
    conf = np.asarray(conf, dtype=np.int64)
    if conf.ndim != 2 or conf.shape[0] != conf.shape[1] or conf.shape[0] != len(names):
        raise ValueError(f"confusion of shape {conf.shape} does not match {len(names)} names")
    tp = np.diagonal(conf)
    gt_total = conf.sum(axis=1)
    pred_total = conf.sum(axis=0)
    iou = class_iou(conf)
    fg_tp = conf[1:, 1:].sum()
    return {
        "miou": _num(mean_iou(conf)),
        "pixel_accuracy": _ratio(tp.sum(), conf.sum()),
        "fg_precision": _ratio(fg_tp, conf[:, 1:].sum()),
        "fg_recall": _ratio(fg_tp, conf[1:, :].sum()),
        "iou": {name: _num(v) for name, v in zip(names, iou, strict=True)},
        "precision": {name: _ratio(t, p) for name, t, p in zip(names, tp, pred_total, strict=True)},
        "recall": {name: _ratio(t, g) for name, t, g in zip(names, tp, gt_total, strict=True)},
    }


def _max_argmax(cams: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Flat max and first argmax over the K planes (K small: a loop over planes beats
    numpy's strided reduction along axis 0)."""
    best = cams[0].reshape(-1).copy()
    plane = np.zeros(best.size, dtype=np.intp)
    for k in range(1, cams.shape[0]):
        current = cams[k].reshape(-1)
        # strict > keeps the first plane on ties, like np.argmax
        plane[current > best] = k
        np.maximum(best, current, out=best)
    return best, plane


@functools.lru_cache(maxsize=8)
def _half_float_counts(sorted_thresholds: bytes) -> np.ndarray:
    """For each float16 bit pattern, the number of thresholds strictly below its value."""
    thr = np.frombuffer(sorted_thresholds, dtype=np.float32)
    values = np.arange(2**16, dtype=np.uint16).view(np.float16)
    counts = np.searchsorted(thr, values.astype(np.float32), side="left")
    counts.setflags(write=False)
    return counts


def seed_confusions(
    cams: np.ndarray,
    keys: np.ndarray,
    gt: np.ndarray,
    thresholds: np.ndarray,
    num_classes: int,
) -> np.ndarray:
    """Confusions (T×L×L, L = num_classes + 1) of CAM seeds at every background threshold.

    The seed at threshold t is argmax over [t, cam_1, ..., cam_K] with background first, so a
    pixel is foreground exactly for the thresholds strictly below its highest CAM score m
    (a tie goes to background). Instead of thresholding T times, each pixel is binned once by
    (number of thresholds below m, gt, its best class) and a cumulative sum over that count
    yields all T matrices. CAMs and thresholds are compared in float32; float16 CAMs (the
    store's dtype) take an exact table look-up instead of a binary search, about 3x faster.

    `keys` are the 0-based foreground classes of the K CAM planes; `num_classes` is the
    number of foreground classes. An image with K = 0 predicts background everywhere.
    """
    thr = np.asarray(thresholds, dtype=np.float32).reshape(-1)
    cams = np.asarray(cams)
    half = cams.dtype == np.float16
    keys = np.asarray(keys, dtype=np.int64).reshape(-1)
    gt = np.asarray(gt)
    n = num_classes + 1
    if not 1 <= n <= IGNORE:
        raise ValueError(f"num_classes must be in 0..254, got {num_classes}")
    if cams.ndim != 3 or cams.shape[0] != keys.size or cams.shape[1:] != gt.shape:
        raise ValueError(
            f"cams {cams.shape} / keys {keys.shape} do not match ground truth {gt.shape}"
        )
    if keys.size and (keys.min() < 0 or keys.max() >= num_classes):
        raise ValueError(f"CAM keys {keys.tolist()} outside 0..{num_classes - 1}")
    t = thr.size
    order = np.argsort(thr, kind="stable")
    sorted_thr = thr[order]

    lut_gt, _, bad = _luts(n)
    gt_bin = np.take(lut_gt, _as_labels(gt, "ground truth")).astype(np.intp)
    if keys.size:
        best, plane = _max_argmax(cams.astype(np.float32, copy=False))
        best_label = np.take((keys + 1).astype(np.intp), plane)
        # Counting thresholds strictly below m leaves t == m background.
        if half:
            # Every float16 is exact in float32, so a table over all 65536 bit patterns
            # gives searchsorted's answer with one gather instead of a binary search.
            table = _half_float_counts(sorted_thr.tobytes())
            below = np.take(table, best.astype(np.float16).view(np.uint16))
        else:
            below = np.searchsorted(sorted_thr, best, side="left")
    else:
        best_label = np.zeros(gt_bin.size, dtype=np.intp)
        below = np.zeros(gt_bin.size, dtype=np.intp)
    # Ignored / invalid ground-truth bins land beyond n*n; keep them apart per count so the
    # count axis stays intact, then drop them.
    cell = gt_bin + best_label
    span = bad + n
    counts = np.bincount(below * span + cell, minlength=(t + 1) * span)
    if counts.reshape(t + 1, span)[:, bad:].any():
        raise ValueError(f"ground truth labels must be < {n} or 255")
    hist = counts.reshape(t + 1, span)[:, : n * n].reshape(t + 1, n, n)

    # At sorted threshold i, pixels with count > i keep their class, the rest turn background.
    fg = np.cumsum(hist[::-1], axis=0)[::-1][1:]  # fg[i] = sum over counts > i
    bg = np.cumsum(hist, axis=0)[:-1]  # bg[i] = sum over counts <= i
    out = fg.copy()
    out[:, :, 0] += bg.sum(axis=2)
    result = np.empty_like(out)
    result[order] = out
    return result
