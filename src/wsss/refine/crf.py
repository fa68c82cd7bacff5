"""Dense CRF refinement of CAMs into pseudo-labels (fully connected CRF, Krähenbühl & Koltun).

CAM planes are turned into label scores with a background plane in front, the CRF smooths
them along image edges, and the argmax becomes a uint8 label map (0 bg, k + 1 = class k).
The CRF itself is `wsss.ops.densecrf`; this module is the refiner stage around it, and the
CRF steps the learned refiners apply to their walks' scores.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from wsss import registry
from wsss.errors import ConfigError
from wsss.ops.densecrf import DEFAULT_CRF, PROB_FLOOR, crf_params, dense_crf, label_crf
from wsss.refine.pool import plane_labels, write_labels

if TYPE_CHECKING:
    from wsss.data.voc import VocDataset

# the primitives stay importable from here for callers of the refiner stage
__all__ = ["DEFAULT_CRF", "PROB_FLOOR", "cam_probs", "crf_labels", "crf_params", "crf_task",
           "dense_crf", "label_crf_labels", "refine", "run_crf", "score_crf_labels", "settings"]

REGISTER = {
    "kind": "refiner",
    "name": "crf",
    "learned": False,
    "walk_keys": [],
    "needs_seg_head": False,
    "order": 0,
    "schema": {
        "description": "dense CRF on the CAMs (wsss/refine/crf.py)",
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "bg": {
                "description": "background plane of the CRF unary: constant threshold (\"best\" "
                               "= the best threshold of the seed sweep) or (1 - max CAM)^alpha",
                "type": "object",
                "additionalProperties": False,
                "default": {},
                "properties": {
                    "mode": {"enum": ["constant", "power"], "default": "constant"},
                    "threshold": {
                        "oneOf": [{"const": "best"},
                                  {"type": "number", "minimum": 0, "maximum": 1}],
                        "default": "best",
                    },
                    "alpha": {"type": "number", "exclusiveMinimum": 0, "default": 16},
                },
            },
            "iterations": {"type": "integer", "minimum": 1, "default": 10},
            "gaussian": {"$ref": "#/$defs/crf_kernel_gaussian",
                         "default": {"sxy": 3, "compat": 3}},
            "bilateral": {"$ref": "#/$defs/crf_kernel_bilateral",
                          "default": {"sxy": 80, "srgb": 13, "compat": 10}},
        },
    },
}

log = logging.getLogger(__name__)


def settings(cfg: dict[str, Any] | None) -> dict[str, Any]:
    """The CRF refiner block `cfg` completed with the REGISTER schema's defaults."""
    return registry.declared_settings(REGISTER, cfg)


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
    return plane_labels(keys, q.argmax(axis=0))


def _effective_config(cfg: dict[str, Any], threshold: float | None) -> dict[str, Any]:
    cfg = settings(cfg)
    bg = dict(cfg["bg"])
    # The sweep's best threshold only means something for a constant background score.
    if threshold is not None and bg.get("mode") == "constant":
        bg["threshold"] = float(threshold)
    if bg.get("mode") == "constant" and bg.get("threshold") == "best":
        raise ConfigError("bg.threshold 'best' needs the seed sweep's best threshold "
                          "(`wsss crf --seeds-eval`, or `threshold`)")
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

    `cfg` is the refiner block ({"bg", "iterations", "gaussian", "bilateral"}, defaults from
    REGISTER); `threshold` replaces a constant background threshold and is ignored for the
    "power" mode. The CAM file must cover the split's ids with the dataset's class list; on any
    error no output file is left behind. `seeds_eval`: a seed evaluation whose best threshold is
    `threshold`.
    """
    chosen_on = None
    if seeds_eval is not None:
        seeds = json.loads(Path(seeds_eval).read_text())
        threshold, chosen_on = seeds["best_threshold"], seeds.get("split")
        log.info("background threshold %.2f from %s (chosen on split %s)", threshold, seeds_eval,
                 chosen_on)
    effective = _effective_config(cfg, threshold)
    if chosen_on is not None and effective["bg"].get("mode") == "constant":
        effective["bg"]["chosen_on"] = chosen_on  # recorded with the labels; the summary says it
    cam_probs(np.zeros((0, 1, 1), np.float32), effective["bg"])  # fail early on a bad bg block
    write_labels(cam_path, ds, split, crf_task, effective, out_path, threads, "crf")


def refine(cam_path: str | os.PathLike, ds: VocDataset, split: str, cfg: dict[str, Any],
           weights_path: str | os.PathLike | None, out_path: str | os.PathLike,
           device: Any, threads: int, seeds_eval: str | os.PathLike | None = None) -> None:
    """The refiner-kind entry point (`wsss.refine.refiner_module`): `run_crf`. The CRF has no
    network, so `weights_path` and `device` are ignored."""
    run_crf(cam_path, ds, split, cfg, out_path, threads, seeds_eval=seeds_eval)


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
    return plane_labels(keys, dense_crf(image, probs, params).argmax(axis=0))


def label_crf_labels(image: np.ndarray, scores: np.ndarray, keys: np.ndarray,
                     crf: dict[str, Any]) -> np.ndarray:
    """uint8 H×W label: the argmax of (K+1)×H×W scores (background plane first) cleaned by
    the label CRF (`wsss.ops.densecrf.label_crf`, unary `crf["gt_prob"]` on the argmax plane),
    the CRF of IRN's relation labels applied to its walk."""
    planes = label_crf(image, scores.argmax(axis=0), len(keys) + 1, crf)
    return plane_labels(keys, planes)
