"""Embedded synthetic benchmark in PASCAL VOC layout, built to show the two WSSS failure modes.

Scene: one textured background (grass, sand, water or sky) with 1-3 objects drawn over it; later
objects occlude earlier ones and the mask holds only visible pixels, with a thin void (255) band
along every label boundary as in VOC. Image sides vary (default 72-112 px, mostly non-square).

Partial activation. Every class (disc, box, wedge, ring, star, cross, diamond, hexagon) has:
  * a PART: a small disc (`part_frac` of the object area, default 8 %) at a fixed, class-specific
    place in the object's own frame (disc: upper right, box: top-left corner, wedge: near the
    apex, ring: lower-right band, star: base of the upper arm, cross: end of the right arm,
    diamond: lower half, hexagon: lower left). It carries a saturated colour pair and pattern
    unique to the class (checker / bullseye / stripes; e.g. disc = yellow-black checker, wedge =
    white-red stripes). No body or background uses these colours, so the part alone identifies
    the class.
  * a BODY whose statistics are class-specific but overlap: hue drawn around a class centre in
    one shared purple-red-orange band (centres 280-378 degrees, 13-15 apart, std 15), a class-
    preferred texture (stripes, dots, smooth noise, gradient) used only half of the time, random
    size, aspect and rotation. The part is a far cheaper cue than the body, so plain CAMs peak on
    the part and miss most of the body.
  Body hues are clipped to 265-395 degrees with saturation >= 0.35, clear of every background
  (green grass, pale tan sand, blue water, light-blue sky), so a method that expands from the
  part CAN recover the whole object from low-level cues. SegmentationPart/<id>.png marks the
  visible part pixels (value k+1 for class k) so the part/body split of a CAM can be measured.

Co-occurrence leakage. `cooccur` maps a background to classes (default water -> wedge, ring).
An image containing any of those classes gets that background with probability `cooccur_prob`
(default 0.85); every other image gets it with probability `rare_prob` (default 0.05). Water
thus becomes evidence for wedge and ring, and their plain CAMs leak onto the waves.
generator.json records the mapping ("cooccurring"), each image's background
("image_backgrounds") and the realised statistics, so leakage can be measured per background.

Determinism: each image draws from np.random.default_rng((seed, split, index)), so the output is
byte-identical for the same config whatever the number of worker processes. The dataset is
written into a hidden sibling directory and renamed onto `root` only when complete.
"""

from __future__ import annotations

import argparse
import colorsys
import copy
import json
import multiprocessing
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from PIL import Image, ImageDraw

from wsss.data.voc import VOC_PALETTE, VOID, save_mask

SPLITS = ("train", "val")
BACKGROUNDS = ("grass", "sand", "water", "sky")
TEXTURES = ("stripes", "dots", "noise", "gradient")

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

# RGB colours of the parts: saturated, and never used by bodies or backgrounds
_YELLOW, _BLACK, _CYAN, _WHITE = (255, 220, 0), (20, 20, 20), (0, 220, 255), (250, 250, 250)
_RED, _LIME, _BLUE, _ORANGE = (230, 0, 0), (140, 255, 0), (0, 40, 220), (255, 130, 0)


@dataclass(frozen=True)
class ClassSpec:
    name: str
    shape: str
    part_pos: tuple[float, float]  # (u, v) in the object frame, object spans about [-1, 1]
    part_pattern: str  # checker | bullseye | stripes
    part_colors: tuple[tuple[int, int, int], tuple[int, int, int]]
    hue: float  # body hue centre in degrees (values above 360 wrap to red/orange)
    texture: str  # preferred body texture


CLASS_SPECS: tuple[ClassSpec, ...] = (
    ClassSpec("disc", "ellipse", (0.45, -0.35), "checker", (_YELLOW, _BLACK), 295.0, "noise"),
    ClassSpec("box", "rectangle", (-0.6, -0.4), "bullseye", (_CYAN, _BLACK), 325.0, "stripes"),
    ClassSpec("wedge", "triangle", (0.0, -0.4), "stripes", (_WHITE, _RED), 352.0, "gradient"),
    ClassSpec("ring", "ring", (0.55, 0.55), "checker", (_LIME, _BLUE), 366.0, "dots"),
    ClassSpec("star", "star", (0.0, -0.4), "bullseye", (_ORANGE, _WHITE), 280.0, "stripes"),
    ClassSpec("cross", "cross", (0.7, 0.0), "stripes", (_YELLOW, _BLUE), 338.0, "dots"),
    ClassSpec("diamond", "diamond", (0.0, 0.45), "checker", (_WHITE, _BLACK), 310.0, "noise"),
    ClassSpec("hexagon", "hexagon", (-0.4, 0.3), "bullseye", (_CYAN, _RED), 378.0, "gradient"),
)

COOCCURRING: dict[str, list[str]] = DEFAULTS["cooccur"]

# body hues stay inside purple..orange, away from the green, tan and blue backgrounds
_BODY_HUES = (265.0, 395.0)
_SS = 4  # supersampling factor for anti-aliased object edges


# ---------------------------------------------------------------- configuration


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


# ---------------------------------------------------------------- geometry


def _regular(n: int, radius: float = 1.0, phase: float = -np.pi / 2) -> np.ndarray:
    t = phase + 2 * np.pi * np.arange(n) / n
    return np.stack([radius * np.cos(t), radius * np.sin(t)], axis=1)


def _shape_polygons(shape: str) -> tuple[np.ndarray, list[np.ndarray]]:
    """(outer polygon, holes) in the object frame; image y points down, so v < 0 is 'up'."""
    if shape == "ellipse":
        return _regular(48), []
    if shape == "rectangle":
        return np.array([[-1, -0.7], [1, -0.7], [1, 0.7], [-1, 0.7]], float), []
    if shape == "triangle":
        return np.array([[0, -1], [0.9, 0.8], [-0.9, 0.8]], float), []
    if shape == "ring":
        return _regular(48), [_regular(48, 0.55)]
    if shape == "star":
        outer, inner = _regular(5), _regular(5, 0.45, -np.pi / 2 + np.pi / 5)
        return np.stack([outer, inner], axis=1).reshape(-1, 2), []
    if shape == "cross":
        a = 0.33
        pts = [
            (a, -1),
            (a, -a),
            (1, -a),
            (1, a),
            (a, a),
            (a, 1),
            (-a, 1),
            (-a, a),
            (-1, a),
            (-1, -a),
            (-a, -a),
            (-a, -1),
        ]
        return np.array(pts, float), []
    if shape == "diamond":
        return np.array([[0, -1], [0.75, 0], [0, 1], [-0.75, 0]], float), []
    if shape == "hexagon":
        return _regular(6, phase=0.0), []
    raise ValueError(f"unknown shape '{shape}'")


def _area(poly: np.ndarray) -> float:
    x, y = poly[:, 0], poly[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


def _shape_area(shape: str) -> float:
    outer, holes = _shape_polygons(shape)
    return _area(outer) - sum(_area(h) for h in holes)


@dataclass(frozen=True)
class _Placement:
    cx: float
    cy: float
    sx: float  # pixels per object unit along u
    sy: float
    theta: float

    def to_image(self, pts: np.ndarray) -> np.ndarray:
        c, s = np.cos(self.theta), np.sin(self.theta)
        u, v = pts[:, 0] * self.sx, pts[:, 1] * self.sy
        return np.stack([self.cx + c * u - s * v, self.cy + s * u + c * v], axis=1)


def _coverage(h: int, w: int, outer: np.ndarray, holes: list[np.ndarray]) -> np.ndarray:
    """Fraction of each pixel covered by the polygon (image coordinates in pixels)."""
    canvas = Image.new("L", (w * _SS, h * _SS), 0)
    draw = ImageDraw.Draw(canvas)
    draw.polygon([tuple(p) for p in outer * _SS], fill=255)
    for hole in holes:
        draw.polygon([tuple(p) for p in hole * _SS], fill=0)
    return np.asarray(canvas.reduce(_SS), dtype=np.float32) / 255.0  # box filter, in C


# ---------------------------------------------------------------- textures


def _smooth_noise(rng: np.random.Generator, h: int, w: int, cell: float) -> np.ndarray:
    """Bilinearly interpolated value noise, roughly zero mean and unit amplitude."""
    gh, gw = int(h / cell) + 3, int(w / cell) + 3
    grid = rng.standard_normal((gh, gw)).astype(np.float32)
    oy, ox = rng.uniform(0, 1, size=2)
    y = np.arange(h, dtype=np.float32) / cell + oy
    x = np.arange(w, dtype=np.float32) / cell + ox
    y0, x0 = y.astype(int), x.astype(int)
    fy, fx = (y - y0)[:, None], (x - x0)[None, :]
    g00, g01 = grid[np.ix_(y0, x0)], grid[np.ix_(y0, x0 + 1)]
    g10, g11 = grid[np.ix_(y0 + 1, x0)], grid[np.ix_(y0 + 1, x0 + 1)]
    top = g00 * (1 - fx) + g01 * fx
    bottom = g10 * (1 - fx) + g11 * fx
    return top * (1 - fy) + bottom * fy


def _rgb(h_deg: float, s: float, v: float) -> np.ndarray:
    r, g, b = colorsys.hsv_to_rgb(
        (h_deg % 360.0) / 360.0, min(max(s, 0.0), 1.0), min(max(v, 0.0), 1.0)
    )
    return np.array([r, g, b], dtype=np.float32) * 255.0


def _grid(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    return yy + 0.5, xx + 0.5


def _background(kind: str, rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    yy, xx = _grid(h, w)
    if kind == "grass":
        base = _rgb(rng.uniform(85, 120), rng.uniform(0.45, 0.7), rng.uniform(0.4, 0.6))
        # blades: noise stretched vertically, plus patches and per-pixel grain
        blades = _smooth_noise(rng, h, w * 3, 1.0)[:, ::3] * 0.5 + _smooth_noise(rng, h, w, 1.5)
        lum = (
            1
            + 0.12 * blades
            + 0.15 * _smooth_noise(rng, h, w, 12)
            + 0.06 * rng.standard_normal((h, w))
        )
        return base * lum[..., None]
    if kind == "sand":
        base = _rgb(rng.uniform(35, 48), rng.uniform(0.22, 0.38), rng.uniform(0.72, 0.88))
        phi = rng.uniform(0, np.pi)
        ripple = np.sin(
            2 * np.pi * (xx * np.cos(phi) + yy * np.sin(phi)) / rng.uniform(10, 18)
            + 1.5 * _smooth_noise(rng, h, w, 14)
        )
        lum = (
            1
            + 0.05 * ripple
            + 0.05 * rng.standard_normal((h, w))
            + 0.04 * _smooth_noise(rng, h, w, 3)
        )
        return base * lum[..., None]
    if kind == "water":
        base = _rgb(rng.uniform(200, 225), rng.uniform(0.55, 0.8), rng.uniform(0.5, 0.7))
        p1, p2 = rng.uniform(5, 9), rng.uniform(12, 24)
        wave = np.sin(
            2 * np.pi * yy / p1
            + rng.uniform(1.0, 2.5) * np.sin(2 * np.pi * xx / p2 + rng.uniform(0, 2 * np.pi))
        )
        lum = 1 + 0.18 * wave + 0.05 * _smooth_noise(rng, h, w, 10)
        out = base * lum[..., None]
        crest = np.clip((wave - 0.8) / 0.2, 0, 1)[..., None] * 0.6  # white wave crests
        return out * (1 - crest) + 235.0 * crest
    if kind == "sky":
        top = _rgb(rng.uniform(195, 215), rng.uniform(0.45, 0.65), rng.uniform(0.85, 0.95))
        bottom = _rgb(rng.uniform(195, 215), rng.uniform(0.05, 0.2), rng.uniform(0.95, 1.0))
        t = (yy / h)[..., None]
        out = top * (1 - t) + bottom * t
        cloud = (
            np.clip(_smooth_noise(rng, h, w, 16) + 0.5 * _smooth_noise(rng, h, w, 6) - 0.4, 0, 1)[
                ..., None
            ]
            * 0.8
        )
        return out * (1 - cloud) + 245.0 * cloud
    raise ValueError(f"unknown background '{kind}'")


def _body(
    spec: ClassSpec, cfg: dict, rng: np.random.Generator, pl: _Placement, h: int, w: int
) -> np.ndarray:
    """Body colour over the whole image grid (only the object's pixels are used)."""
    hue = np.clip(spec.hue + rng.normal(0, cfg["hue_spread"]), *_BODY_HUES)
    base = _rgb(hue, rng.uniform(0.35, 0.65), rng.uniform(0.5, 0.85))
    texture = spec.texture if rng.random() < cfg["texture_pref"] else TEXTURES[rng.integers(4)]
    yy, xx = _grid(h, w)
    phi = rng.uniform(0, np.pi)
    along = (xx - pl.cx) * np.cos(phi) + (yy - pl.cy) * np.sin(phi)
    across = -(xx - pl.cx) * np.sin(phi) + (yy - pl.cy) * np.cos(phi)
    if texture == "stripes":
        lum = 1 + rng.uniform(0.15, 0.3) * np.sin(2 * np.pi * along / rng.uniform(4, 9))
    elif texture == "dots":
        period = rng.uniform(5, 9)
        du = (along / period) % 1 - 0.5
        dv = (across / period) % 1 - 0.5
        dots = (du**2 + dv**2) < rng.uniform(0.04, 0.09)
        lum = 1 + np.where(dots, rng.choice([-0.3, 0.3]), 0.0)
    elif texture == "noise":
        lum = 1 + 0.22 * _smooth_noise(rng, h, w, rng.uniform(2, 5))
    else:
        lum = 1 + 0.3 * np.clip(along / (2 * max(pl.sx, pl.sy)), -1, 1)
    return base * lum[..., None]


def _part_pattern(
    spec: ClassSpec, pl: _Placement, center: np.ndarray, radius: float, h: int, w: int
) -> np.ndarray:
    """The class's two-colour pattern around the part centre, in the object's rotated frame."""
    yy, xx = _grid(h, w)
    c, s = np.cos(pl.theta), np.sin(pl.theta)
    dx, dy = xx - center[0], yy - center[1]
    a, b = c * dx + s * dy, -s * dx + c * dy
    cell = max(1.6, radius / 2.2)
    if spec.part_pattern == "checker":
        sel = (np.floor(a / cell) + np.floor(b / cell)) % 2 == 0
    elif spec.part_pattern == "bullseye":
        sel = np.floor(np.hypot(a, b) / cell + 0.5) % 2 == 0
    else:
        sel = np.floor(b / cell) % 2 == 0
    first, second = (np.array(col, np.float32) for col in spec.part_colors)
    return np.where(sel[..., None], first, second)


# ---------------------------------------------------------------- one image


def _void_band(label: np.ndarray, width: int) -> np.ndarray:
    """Pixels within `width` of a label change (both sides), like the VOC boundary annotation."""
    edge = np.zeros(label.shape, dtype=bool)
    dy = label[1:, :] != label[:-1, :]
    dx = label[:, 1:] != label[:, :-1]
    edge[1:, :] |= dy
    edge[:-1, :] |= dy
    edge[:, 1:] |= dx
    edge[:, :-1] |= dx
    for _ in range(width - 1):
        grown = edge.copy()
        grown[1:, :] |= edge[:-1, :]
        grown[:-1, :] |= edge[1:, :]
        grown[:, 1:] |= edge[:, :-1]
        grown[:, :-1] |= edge[:, 1:]
        edge = grown
    return edge


def _place_objects(
    cfg: dict, rng: np.random.Generator, h: int, w: int, classes: list[int]
) -> list[tuple[int, _Placement, np.ndarray]]:
    """Place objects back to front, rejecting placements that hide too much of earlier ones."""
    placed: list[tuple[int, _Placement, np.ndarray]] = []
    visible: list[np.ndarray] = []  # pixels of each placed object not covered by later ones
    full: list[int] = []
    lo, hi = cfg["object_scale"]
    for k in classes:
        spec = CLASS_SPECS[k]
        outer, holes = _shape_polygons(spec.shape)
        for _ in range(25):
            radius = rng.uniform(lo, hi) * min(h, w)
            aspect = rng.uniform(0.65, 1.0)
            sx, sy = (radius, radius * aspect) if rng.random() < 0.5 else (radius * aspect, radius)
            pl = _Placement(
                rng.uniform(0.2, 0.8) * w,
                rng.uniform(0.2, 0.8) * h,
                sx,
                sy,
                rng.uniform(0, 2 * np.pi),
            )
            alpha = _coverage(h, w, pl.to_image(outer), [pl.to_image(p) for p in holes])
            mine = alpha >= 0.5
            area = int(mine.sum())
            if area < max(0.75 * _shape_area(spec.shape) * sx * sy, 40):
                continue  # mostly outside the frame
            remaining = [vis & ~mine for vis in visible]
            if all(r.sum() >= cfg["min_visible"] * f for r, f in zip(remaining, full, strict=True)):
                placed.append((k, pl, alpha))
                visible = [*remaining, mine]
                full.append(area)
                break
    return placed


def _choose_background(cfg: dict, rng: np.random.Generator, present: set[str]) -> str:
    reserved = list(cfg["cooccur"])
    free = [b for b in BACKGROUNDS if b not in reserved]
    wanted = [b for b in reserved if present & set(cfg["cooccur"][b])]
    if wanted:
        if rng.random() < cfg["cooccur_prob"]:
            return wanted[rng.integers(len(wanted))]
    elif reserved and rng.random() < cfg["rare_prob"]:
        return reserved[rng.integers(len(reserved))]
    return free[rng.integers(len(free))]


class Sample(NamedTuple):
    image: np.ndarray  # H×W×3 uint8 RGB
    mask: np.ndarray  # H×W uint8: 0 background, k+1 class k, 255 void band
    parts: np.ndarray  # H×W uint8: k+1 on the visible pixels of class k's part, else 0
    background: str


def render_image(cfg: dict, split: str, index: int) -> Sample:
    """One image with its masks; `cfg` must come from resolve_config."""
    rng = np.random.default_rng((cfg["seed"], SPLITS.index(split), index))
    h, w = (int(v) for v in rng.integers(cfg["min_side"], cfg["max_side"] + 1, size=2))
    p = np.asarray(cfg["objects_p"], dtype=float)
    n_objects = 1 + int(rng.choice(len(p), p=p / p.sum()))
    classes = [int(k) for k in rng.integers(cfg["num_classes"], size=n_objects)]
    placed = _place_objects(cfg, rng, h, w, classes)

    label = np.zeros((h, w), dtype=np.uint8)
    for k, _, alpha in placed:
        label[alpha >= 0.5] = k + 1
    present = {CLASS_SPECS[k].name for k in np.unique(label)[1:] - 1}
    background = _choose_background(cfg, rng, present)

    image = _background(background, rng, h, w)
    parts = np.zeros((h, w), dtype=np.uint8)
    for k, pl, alpha in placed:
        spec = CLASS_SPECS[k]
        body = _body(spec, cfg, rng, pl, h, w)
        part_r = np.sqrt(cfg["part_frac"] * _shape_area(spec.shape) / np.pi)
        center = pl.to_image(np.array([spec.part_pos]))[0]
        part_alpha = _coverage(
            h, w, pl.to_image(_regular(24, part_r) + np.array(spec.part_pos)), []
        )
        pattern = _part_pattern(spec, pl, center, part_r * np.sqrt(pl.sx * pl.sy), h, w)
        body = body * (1 - part_alpha[..., None]) + pattern * part_alpha[..., None]
        image = image * (1 - alpha[..., None]) + body * alpha[..., None]
        inside = alpha >= 0.5
        parts[inside] = 0  # this object hides earlier parts
        parts[inside & (part_alpha >= 0.5)] = k + 1
    if cfg["noise_std"] > 0:
        image = image + rng.normal(0, cfg["noise_std"], size=image.shape)
    if cfg["void_width"] > 0:
        label[_void_band(label, cfg["void_width"])] = VOID
    return Sample(np.clip(np.rint(image), 0, 255).astype(np.uint8), label, parts, background)


# ---------------------------------------------------------------- dataset


def image_id(split: str, index: int) -> str:
    return f"syn_{split}_{index:04d}"


def _write_one(args: tuple[Path, dict, str, int]) -> tuple[str, str, list[int]]:
    out, cfg, split, index = args
    image, label, parts, background = render_image(cfg, split, index)
    name = image_id(split, index)
    Image.fromarray(image).save(
        out / "JPEGImages" / f"{name}.jpg",
        format="JPEG",
        quality=cfg["jpeg_quality"],
        subsampling=0,
    )
    save_mask(out / "SegmentationClass" / f"{name}.png", label)
    save_mask(out / "SegmentationPart" / f"{name}.png", parts)
    values = np.unique(label)
    labels = [int(v) - 1 for v in values if 1 <= v <= cfg["num_classes"]]
    if not labels:  # cannot happen by construction; a silent empty image would skew benchmarks
        raise RuntimeError(f"synthetic image {name} ended up without a visible object")
    return name, background, labels


def _statistics(cfg: dict, records: list[tuple[str, str, list[int]]]) -> dict[str, Any]:
    names = [spec.name for spec in CLASS_SPECS[: cfg["num_classes"]]]
    bg_counts = {b: sum(r[1] == b for r in records) for b in BACKGROUNDS}
    class_counts = {n: sum(k in r[2] for r in records) for k, n in enumerate(names)}
    # P(background | class present): the co-occurrence a classifier can exploit
    p_bg_given_class = {
        b: {
            n: round(sum(r[1] == b and k in r[2] for r in records) / max(class_counts[n], 1), 4)
            for k, n in enumerate(names)
        }
        for b in BACKGROUNDS
    }
    objects = {str(m): sum(len(r[2]) == m for r in records) for m in range(1, 4)}
    return {
        "images": len(records),
        "background_counts": bg_counts,
        "class_counts": class_counts,
        "labels_per_image": objects,
        "p_background_given_class": p_bg_given_class,
    }


def _replace_dir(tmp: Path, root: Path) -> None:
    if not root.exists():
        os.replace(tmp, root)
        return
    old = root.parent / f".{root.name}.old"
    if old.exists():
        shutil.rmtree(old)
    os.replace(root, old)
    os.replace(tmp, root)
    shutil.rmtree(old)


def generate(root: str | os.PathLike, cfg: dict[str, Any] | None = None, threads: int = 1) -> None:
    """Write the synthetic dataset (VOC layout) under `root`, deterministically and atomically."""
    cfg = resolve_config(cfg)
    root = Path(root)
    if root.exists() and (
        not root.is_dir() or (any(root.iterdir()) and not (root / "generator.json").is_file())
    ):
        # never replace something that is not an earlier synthetic dataset
        raise FileExistsError(f"{root}: exists and is not a synthetic dataset; not replacing it")
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = root.parent / f".{root.name}.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)  # left by a killed run
    for sub in ("JPEGImages", "SegmentationClass", "SegmentationPart", "ImageSets/Segmentation"):
        (tmp / sub).mkdir(parents=True)

    names = [spec.name for spec in CLASS_SPECS[: cfg["num_classes"]]]
    jobs = [(tmp, cfg, split, i) for split in SPLITS for i in range(cfg[f"num_{split}"])]
    threads = max(1, int(threads))
    if threads > 1 and len(jobs) > 1:
        with multiprocessing.get_context().Pool(threads) as pool:
            records = pool.map(_write_one, jobs, chunksize=max(1, len(jobs) // (threads * 4)))
    else:
        records = [_write_one(job) for job in jobs]

    meta: dict[str, Any] = {
        "generator": "wsss.data.synthetic",
        "config": cfg,
        "classes": names,
        "backgrounds": list(BACKGROUNDS),
        "cooccurring": cfg["cooccur"],
        "class_design": {
            spec.name: {
                "shape": spec.shape,
                "part_position": list(spec.part_pos),
                "part_pattern": spec.part_pattern,
                "part_colors": [list(c) for c in spec.part_colors],
                "body_hue": spec.hue,
                "preferred_texture": spec.texture,
            }
            for spec in CLASS_SPECS[: cfg["num_classes"]]
        },
        "statistics": {},
        "image_backgrounds": {},
    }
    for split in SPLITS:
        split_records = [r for r, job in zip(records, jobs, strict=True) if job[2] == split]
        ids = [r[0] for r in split_records]
        (tmp / "ImageSets/Segmentation" / f"{split}.txt").write_text("".join(f"{i}\n" for i in ids))
        meta["statistics"][split] = _statistics(cfg, split_records)
        meta["image_backgrounds"].update({r[0]: r[1] for r in split_records})
    (tmp / "classes.txt").write_text("".join(f"{n}\n" for n in names))
    (tmp / "generator.json").write_text(json.dumps(meta, indent=2) + "\n")
    _replace_dir(tmp, root)


def dataset_config(root: str | os.PathLike) -> dict[str, Any]:
    """The VocDataset.from_config dict for a generated dataset."""
    return {
        "root": str(root),
        "splits": {s: f"ImageSets/Segmentation/{s}.txt" for s in SPLITS},
        "mask_dir": "SegmentationClass",
        "label_source": "masks",
        "classes": None,
    }


# ---------------------------------------------------------------- preview


def write_preview(
    root: str | os.PathLike,
    path: str | os.PathLike,
    count: int = 16,
    split: str = "train",
    zoom: int = 2,
    per_row: int = 4,
) -> None:
    """Contact sheet of (image, mask) pairs, `per_row` pairs per row, scaled by `zoom`."""
    from wsss.data.voc import VocDataset

    ds = VocDataset.from_config(dataset_config(root))
    pairs = [ds.load_pair(i) for i in ds.ids(split)[:count]]
    cell_h = max(image.shape[0] for image, _ in pairs) * zoom
    cell_w = max(image.shape[1] for image, _ in pairs) * zoom
    pad = 4 * zoom
    rows = -(-len(pairs) // per_row)
    sheet = Image.new(
        "RGB", (per_row * (2 * cell_w + 3 * pad), rows * (cell_h + pad)), (60, 60, 60)
    )
    for n, (image, mask) in enumerate(pairs):
        r, c = divmod(n, per_row)
        x0, y0 = c * (2 * cell_w + 3 * pad), r * (cell_h + pad)
        size = (image.shape[1] * zoom, image.shape[0] * zoom)
        colour_mask = Image.fromarray(mask)
        colour_mask.putpalette(VOC_PALETTE)
        sheet.paste(Image.fromarray(image).resize(size, Image.NEAREST), (x0, y0))
        sheet.paste(colour_mask.convert("RGB").resize(size, Image.NEAREST), (x0 + cell_w + pad, y0))
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m wsss.data.synthetic", description="Generate the synthetic WSSS benchmark."
    )
    parser.add_argument("out", type=Path, help="dataset root to (re)create")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=JSON",
        help="override a DEFAULTS entry, e.g. --set num_train=50",
    )
    parser.add_argument("--preview", type=Path, help="also write a contact sheet PNG here")
    args = parser.parse_args(argv)
    cfg: dict[str, Any] = {}
    for item in args.set:
        key, _, value = item.partition("=")
        try:
            cfg[key] = json.loads(value)
        except json.JSONDecodeError:
            cfg[key] = value
    try:
        generate(args.out, cfg, threads=args.threads)
    except (ValueError, FileExistsError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.preview:
        write_preview(args.out, args.preview)
    stats = json.loads((args.out / "generator.json").read_text())["statistics"]
    print(json.dumps(stats, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
