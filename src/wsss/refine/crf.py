"""Dense CRF refinement of CAMs into pseudo-labels (fully connected CRF, Krähenbühl & Koltun).

CAM planes are turned into label scores with a background plane in front, the CRF smooths
them along image edges, and the argmax becomes a uint8 label map (0 bg, k + 1 = class k).
"""

from __future__ import annotations

import copy
import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from wsss.refine.pool import write_labels

if TYPE_CHECKING:
    from wsss.data.voc import VocDataset

DEFAULT_CRF: dict[str, Any] = {
    "iterations": 10,
    "gaussian": {"sxy": 3, "compat": 3},
    "bilateral": {"sxy": 80, "srgb": 13, "compat": 10},
}

# -log(1e-5) ~ 11.5 caps the unary so that a zero probability is a strong, not infinite, vote.
log = logging.getLogger(__name__)
PROB_FLOOR = 1e-5


def crf_params(params: dict[str, Any] | None) -> dict[str, Any]:
    """`params` completed with DEFAULT_CRF values for every key it leaves out."""
    params = params or {}
    out = copy.deepcopy(DEFAULT_CRF)
    out["iterations"] = int(params.get("iterations", out["iterations"]))
    for kernel in ("gaussian", "bilateral"):
        out[kernel].update(params.get(kernel) or {})
    return out


def dense_crf(image: np.ndarray, probs: np.ndarray, params: dict[str, Any]) -> np.ndarray:
    """Mean-field marginals (L×H×W float32) of a dense CRF on `image` with unary -log(probs).

    `probs` need not sum to one per pixel: scaling a pixel's scores by a constant shifts all its
    unaries equally, which the mean-field update (a softmax) ignores.
    """
    import pydensecrf.densecrf as dcrf

    image = np.ascontiguousarray(image, dtype=np.uint8)
    if not image.flags.writeable:  # pydensecrf's Cython signature rejects read-only buffers
        image = image.copy()
    probs = np.asarray(probs, dtype=np.float32)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must be H×W×3, got {image.shape}")
    if probs.ndim != 3 or probs.shape[1:] != image.shape[:2]:
        raise ValueError(f"probabilities {probs.shape} do not match image {image.shape}")
    p = crf_params(params)
    n, h, w = probs.shape
    unary = -np.log(np.clip(probs, PROB_FLOOR, 1.0)).reshape(n, -1)
    crf = dcrf.DenseCRF2D(w, h, n)
    crf.setUnaryEnergy(np.ascontiguousarray(unary, dtype=np.float32))
    g, b = p["gaussian"], p["bilateral"]
    crf.addPairwiseGaussian(sxy=g["sxy"], compat=g["compat"])
    crf.addPairwiseBilateral(sxy=b["sxy"], srgb=b["srgb"], rgbim=image, compat=b["compat"])
    q = crf.inference(p["iterations"])
    return np.asarray(q, dtype=np.float32).reshape(n, h, w)


def cam_probs(cams: np.ndarray, bg: dict[str, Any]) -> np.ndarray:
    """(K+1)×H×W scores: a background plane followed by the K CAM planes.

    bg = {"mode": "constant", "threshold": t}: background scores t everywhere.
    bg = {"mode": "power", "alpha": a}: background is (1 - max_k cam)^a, as in PSA, so a
    larger a shrinks the background where CAMs are weak.
    """
    cams = np.asarray(cams, dtype=np.float32)
    if cams.ndim != 3:
        raise ValueError(f"cams must be K×H×W, got {cams.shape}")
    mode = bg.get("mode")
    if mode == "constant":
        back = np.full(cams.shape[1:], float(bg["threshold"]), dtype=np.float32)
    elif mode == "power":
        peak = cams.max(axis=0) if cams.shape[0] else np.zeros(cams.shape[1:], np.float32)
        back = np.power(np.clip(1.0 - peak, 0.0, 1.0), float(bg["alpha"]), dtype=np.float32)
    else:
        raise ValueError(f"unknown background mode {mode!r} (expected 'constant' or 'power')")
    return np.concatenate([back[None], cams], axis=0)


def crf_labels(
    image: np.ndarray,
    cams: np.ndarray,
    keys: np.ndarray,
    bg: dict[str, Any],
    params: dict[str, Any],
) -> np.ndarray:
    """uint8 H×W pseudo-label: CRF argmax with plane i > 0 mapped to label keys[i-1] + 1."""
    keys = np.asarray(keys, dtype=np.int64).reshape(-1)
    cams = np.asarray(cams, dtype=np.float32)
    if cams.shape[0] != keys.size:
        raise ValueError(f"{cams.shape[0]} CAM planes but {keys.size} keys")
    if keys.size == 0:
        return np.zeros(np.shape(image)[:2], dtype=np.uint8)
    q = dense_crf(image, cam_probs(cams, bg), params)
    label_of_plane = np.concatenate([[0], keys + 1]).astype(np.uint8)
    return label_of_plane[q.argmax(axis=0)]


def _effective_config(cfg: dict[str, Any], threshold: float | None) -> dict[str, Any]:
    if not cfg.get("bg"):
        raise ValueError("CRF config needs a 'bg' block ({'mode': 'constant' | 'power', ...})")
    bg = dict(cfg["bg"])
    # The sweep's best threshold only means something for a constant background score.
    if threshold is not None and bg.get("mode") == "constant":
        bg["threshold"] = float(threshold)
    return {"bg": bg, **crf_params(cfg)}


def run_crf(
    cam_path: str | os.PathLike,
    ds: VocDataset,
    split: str,
    cfg: dict[str, Any],
    out_path: str | os.PathLike,
    threads: int,
    threshold: float | None = None,
    seeds_eval: str | os.PathLike | None = None,
) -> None:
    """Refine every CAM of `split` with a dense CRF and write the labels to `out_path`.

    `cfg` is the refiner block ({"bg", "iterations", "gaussian", "bilateral"}); `threshold`
    replaces a constant background threshold and is ignored for the "power" mode. The CAM
    file must cover the split's ids with the dataset's class list; on any error no output
    file is left behind. `seeds_eval`: a seed evaluation whose best threshold is `threshold`.
    """
    if seeds_eval is not None:
        threshold = json.loads(Path(seeds_eval).read_text())["best_threshold"]
        log.info("background threshold %.2f from %s", threshold, seeds_eval)
    effective = _effective_config(cfg, threshold)
    cam_probs(np.zeros((0, 1, 1), np.float32), effective["bg"])  # fail early on a bad bg block
    write_labels(cam_path, ds, split, crf_task, effective, out_path, threads, "crf")


def crf_task(image: np.ndarray, cams: np.ndarray, keys: np.ndarray,
             cfg: dict[str, Any]) -> np.ndarray:
    """One image's CRF labels; `cfg` is a refiner block with its `bg` (a pool task)."""
    return crf_labels(image, cams, keys, cfg["bg"], cfg)


def score_crf_labels(image: np.ndarray, scores: np.ndarray, keys: np.ndarray,
                     params: dict[str, Any]) -> np.ndarray:
    """uint8 H×W label from (K+1)×H×W non-negative scores (background plane first), after a
    dense CRF whose unary is -log of the scores normalised to sum 1 per pixel.

    This is the dense-CRF post-processing that PSA's and IRN's papers report on top of the
    random walk (and that their public code leaves out).
    """
    scores = np.clip(np.asarray(scores, dtype=np.float32), 0.0, None)
    probs = scores / np.maximum(scores.sum(axis=0, keepdims=True), PROB_FLOOR)
    q = dense_crf(image, probs, params)
    label_of_plane = np.concatenate([[0], np.asarray(keys, np.int64).reshape(-1) + 1])
    return label_of_plane.astype(np.uint8)[q.argmax(axis=0)]
