"""Dense CRF primitives (fully connected CRF, Krähenbühl & Koltun) shared by every stage that
smooths scores along image edges: the CRF refiner, PSA's and IRN's labels, HSC's in-training
labels and DeepLab's post-processing.

pydensecrf holds the GIL, so callers spread these over processes (`wsss.ops.pool`); it is
imported lazily, so that importing this module stays cheap.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np

DEFAULT_CRF: dict[str, Any] = {
    "iterations": 10,
    "gaussian": {"sxy": 3, "compat": 3},
    "bilateral": {"sxy": 80, "srgb": 13, "compat": 10},
}

# -log(1e-5) ~ 11.5 caps the unary so that a zero probability is a strong, not infinite, vote.
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


def label_crf(image: np.ndarray, planes: np.ndarray, n: int, crf: dict[str, Any]) -> np.ndarray:
    """CRF argmax (H×W plane indices) of hard labels `planes` in 0..n-1: the unary gives the
    labelled plane probability `crf["gt_prob"]` and every other plane an equal share of the rest
    (IRN's two-threshold relation labels, HSC's in-training labels)."""
    gt = float(crf["gt_prob"])
    probs = np.full((n, *planes.shape), (1.0 - gt) / (n - 1), dtype=np.float32)
    np.put_along_axis(probs, planes[None].astype(np.int64), gt, axis=0)
    return dense_crf(image, probs, crf_params(crf)).argmax(axis=0)
