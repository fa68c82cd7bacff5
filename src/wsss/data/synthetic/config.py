"""Generator settings: the defaults and their validation."""

from __future__ import annotations

import copy
from typing import Any

from wsss.data.synthetic.classes import CLASS_SPECS

SPLITS = ("train", "val")
BACKGROUNDS = ("grass", "sand", "water", "sky")

DEFAULTS: dict[str, Any] = {
    "seed": 0,
    "num_train": 300,
    "num_val": 100,
    "num_classes": 6,  # the first N of CLASS_SPECS
    "min_side": 72,  # image height and width are drawn independently from [min_side, max_side]
    "max_side": 112,
    "objects_p": [0.5, 0.3, 0.2],  # probability of 1, 2, 3, ... objects per image
    "object_scale": [0.24, 0.40],  # object radius as a fraction of the shorter image side
    "min_visible": 0.5,  # an occluded object keeps at least this fraction of its pixels
    "part_frac": 0.08,  # part area / object area
    "texture_pref": 0.5,  # probability that a body uses its class-preferred texture
    "hue_spread": 15.0,  # std (degrees) of body hue around the class centre
    "cooccur": {"water": ["wedge", "ring"]},
    "cooccur_prob": 0.85,
    "rare_prob": 0.05,
    "void_width": 1,  # 1: one pixel on each side of a boundary; 0: no void band
    "noise_std": 3.0,
    "jpeg_quality": 95,
}

COOCCURRING: dict[str, list[str]] = DEFAULTS["cooccur"]


def resolve_config(cfg: dict[str, Any] | None) -> dict[str, Any]:
    """DEFAULTS updated by `cfg`, validated; ValueError names the offending key."""
    cfg = dict(cfg or {})
    unknown = sorted(set(cfg) - set(DEFAULTS))
    if unknown:
        raise ValueError(
            f"synthetic config: unknown key '{unknown[0]}' (known: {sorted(DEFAULTS)})"
        )
    out = copy.deepcopy(DEFAULTS)
    out.update(copy.deepcopy(cfg))

    def need(ok: bool, key: str, what: str) -> None:
        if not ok:
            raise ValueError(f"synthetic config: '{key}' must be {what}, got {out[key]!r}")

    for key in ("seed", "num_train", "num_val", "min_side", "max_side", "void_width"):
        need(isinstance(out[key], int) and out[key] >= 0, key, "a non-negative integer")
    need(1 <= out["num_classes"] <= len(CLASS_SPECS), "num_classes", f"in 1..{len(CLASS_SPECS)}")
    need(16 <= out["min_side"] <= out["max_side"], "min_side", "in 16..max_side")
    p = out["objects_p"]
    need(
        isinstance(p, list) and len(p) >= 1 and min(p) >= 0 and sum(p) > 0,
        "objects_p",
        "a list of non-negative weights",
    )
    lo_hi = out["object_scale"]
    need(
        isinstance(lo_hi, list) and len(lo_hi) == 2 and 0.05 <= lo_hi[0] <= lo_hi[1] <= 0.6,
        "object_scale",
        "[low, high] with 0.05 <= low <= high <= 0.6",
    )
    for key in ("min_visible", "texture_pref", "cooccur_prob", "rare_prob"):
        need(0.0 <= out[key] <= 1.0, key, "in [0, 1]")
    need(0.0 < out["part_frac"] <= 0.3, "part_frac", "in (0, 0.3]")
    need(out["hue_spread"] >= 0, "hue_spread", ">= 0")
    need(out["noise_std"] >= 0, "noise_std", ">= 0")
    need(1 <= out["jpeg_quality"] <= 100, "jpeg_quality", "in 1..100")
    names = [spec.name for spec in CLASS_SPECS[: out["num_classes"]]]
    need(isinstance(out["cooccur"], dict), "cooccur", "a mapping background -> class names")
    claimed: set[str] = set()
    for background, classes in out["cooccur"].items():
        need(background in BACKGROUNDS, "cooccur", f"keyed by backgrounds {BACKGROUNDS}")
        for name in classes:
            need(name in names, "cooccur", f"made of active classes {names}")
            need(name not in claimed, "cooccur", "a mapping where each class appears once")
            claimed.add(name)
    need(len(out["cooccur"]) < len(BACKGROUNDS), "cooccur", "leaving a free background")
    return out

