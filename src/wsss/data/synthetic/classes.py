"""The benchmark's classes: what tells them apart (shape, part, body statistics) and the geometry
that draws their shapes in an image."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

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

SUPERSAMPLE = 4  # supersampling factor for anti-aliased object edges


def regular_polygon(n: int, radius: float = 1.0, phase: float = -np.pi / 2) -> np.ndarray:
    """(n, 2) vertices of a regular n-gon of `radius`, the first at angle `phase` (up)."""
    t = phase + 2 * np.pi * np.arange(n) / n
    return np.stack([radius * np.cos(t), radius * np.sin(t)], axis=1)


def shape_polygons(shape: str) -> tuple[np.ndarray, list[np.ndarray]]:
    """(outer polygon, holes) in the object frame; image y points down, so v < 0 is 'up'."""
    if shape == "ellipse":
        return regular_polygon(48), []
    if shape == "rectangle":
        return np.array([[-1, -0.7], [1, -0.7], [1, 0.7], [-1, 0.7]], float), []
    if shape == "triangle":
        return np.array([[0, -1], [0.9, 0.8], [-0.9, 0.8]], float), []
    if shape == "ring":
        return regular_polygon(48), [regular_polygon(48, 0.55)]
    if shape == "star":
        outer, inner = regular_polygon(5), regular_polygon(5, 0.45, -np.pi / 2 + np.pi / 5)
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
        return regular_polygon(6, phase=0.0), []
    raise ValueError(f"unknown shape '{shape}'")


def polygon_area(poly: np.ndarray) -> float:
    """Shoelace area of a simple polygon (n, 2)."""
    x, y = poly[:, 0], poly[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


def shape_area(shape: str) -> float:
    """Area of a shape in object units (holes subtracted)."""
    outer, holes = shape_polygons(shape)
    return polygon_area(outer) - sum(polygon_area(h) for h in holes)


@dataclass(frozen=True)
class Placement:
    """Where an object lies: centre (pixels), scale per axis and rotation."""

    cx: float
    cy: float
    sx: float  # pixels per object unit along u
    sy: float
    theta: float

    def to_image(self, pts: np.ndarray) -> np.ndarray:
        c, s = np.cos(self.theta), np.sin(self.theta)
        u, v = pts[:, 0] * self.sx, pts[:, 1] * self.sy
        return np.stack([self.cx + c * u - s * v, self.cy + s * u + c * v], axis=1)


def coverage(h: int, w: int, outer: np.ndarray, holes: list[np.ndarray]) -> np.ndarray:
    """Fraction of each pixel covered by the polygon (image coordinates in pixels)."""
    canvas = Image.new("L", (w * SUPERSAMPLE, h * SUPERSAMPLE), 0)
    draw = ImageDraw.Draw(canvas)
    draw.polygon([tuple(p) for p in outer * SUPERSAMPLE], fill=255)
    for hole in holes:
        draw.polygon([tuple(p) for p in hole * SUPERSAMPLE], fill=0)
    return np.asarray(canvas.reduce(SUPERSAMPLE), dtype=np.float32) / 255.0  # box filter, in C

