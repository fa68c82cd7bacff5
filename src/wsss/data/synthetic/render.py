"""One image of the benchmark: objects placed back to front, background, bodies and parts
painted, noise and the void band added."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from wsss.data.synthetic.classes import (
    CLASS_SPECS,
    Placement,
    coverage,
    regular_polygon,
    shape_area,
    shape_polygons,
)
from wsss.data.synthetic.config import BACKGROUNDS, SPLITS
from wsss.data.synthetic.textures import paint_background, paint_body, paint_part
from wsss.data.voc import VOID


def void_band(label: np.ndarray, width: int) -> np.ndarray:
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


def place_objects(
    cfg: dict, rng: np.random.Generator, h: int, w: int, classes: list[int]
) -> list[tuple[int, Placement, np.ndarray]]:
    """Place objects back to front, rejecting placements that hide too much of earlier ones."""
    placed: list[tuple[int, Placement, np.ndarray]] = []
    visible: list[np.ndarray] = []  # pixels of each placed object not covered by later ones
    full: list[int] = []
    lo, hi = cfg["object_scale"]
    for k in classes:
        spec = CLASS_SPECS[k]
        outer, holes = shape_polygons(spec.shape)
        for _ in range(25):
            radius = rng.uniform(lo, hi) * min(h, w)
            aspect = rng.uniform(0.65, 1.0)
            sx, sy = (radius, radius * aspect) if rng.random() < 0.5 else (radius * aspect, radius)
            pl = Placement(
                rng.uniform(0.2, 0.8) * w,
                rng.uniform(0.2, 0.8) * h,
                sx,
                sy,
                rng.uniform(0, 2 * np.pi),
            )
            alpha = coverage(h, w, pl.to_image(outer), [pl.to_image(p) for p in holes])
            mine = alpha >= 0.5
            area = int(mine.sum())
            if area < max(0.75 * shape_area(spec.shape) * sx * sy, 40):
                continue  # mostly outside the frame
            remaining = [vis & ~mine for vis in visible]
            if all(r.sum() >= cfg["min_visible"] * f for r, f in zip(remaining, full, strict=True)):
                placed.append((k, pl, alpha))
                visible = [*remaining, mine]
                full.append(area)
                break
    return placed


def choose_background(cfg: dict, rng: np.random.Generator, present: set[str]) -> str:
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
    placed = place_objects(cfg, rng, h, w, classes)

    label = np.zeros((h, w), dtype=np.uint8)
    for k, _, alpha in placed:
        label[alpha >= 0.5] = k + 1
    present = {CLASS_SPECS[k].name for k in np.unique(label)[1:] - 1}
    background = choose_background(cfg, rng, present)

    image = paint_background(background, rng, h, w)
    parts = np.zeros((h, w), dtype=np.uint8)
    for k, pl, alpha in placed:
        spec = CLASS_SPECS[k]
        body = paint_body(spec, cfg, rng, pl, h, w)
        part_r = np.sqrt(cfg["part_frac"] * shape_area(spec.shape) / np.pi)
        center = pl.to_image(np.array([spec.part_pos]))[0]
        part_alpha = coverage(
            h, w, pl.to_image(regular_polygon(24, part_r) + np.array(spec.part_pos)), []
        )
        pattern = paint_part(spec, pl, center, part_r * np.sqrt(pl.sx * pl.sy), h, w)
        body = body * (1 - part_alpha[..., None]) + pattern * part_alpha[..., None]
        image = image * (1 - alpha[..., None]) + body * alpha[..., None]
        inside = alpha >= 0.5
        parts[inside] = 0  # this object hides earlier parts
        parts[inside & (part_alpha >= 0.5)] = k + 1
    if cfg["noise_std"] > 0:
        image = image + rng.normal(0, cfg["noise_std"], size=image.shape)
    if cfg["void_width"] > 0:
        label[void_band(label, cfg["void_width"])] = VOID
    return Sample(np.clip(np.rint(image), 0, 255).astype(np.uint8), label, parts, background)

