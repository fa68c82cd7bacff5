"""Colour fields of the scenes: value noise, the four backgrounds, object bodies and parts.

Each function draws from the image's generator in a fixed order; changing that order changes the
benchmark (the generated dataset is meant to stay byte-identical)."""

from __future__ import annotations

import colorsys

import numpy as np

from wsss.data.synthetic.classes import ClassSpec, Placement

TEXTURES = ("stripes", "dots", "noise", "gradient")
# body hues stay inside purple..orange, away from the green, tan and blue backgrounds
BODY_HUES = (265.0, 395.0)


def smooth_noise(rng: np.random.Generator, h: int, w: int, cell: float) -> np.ndarray:
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


def hsv_rgb(h_deg: float, s: float, v: float) -> np.ndarray:
    """RGB (0-255, float32) of a hue in degrees (wrapped) and clipped saturation and value."""
    r, g, b = colorsys.hsv_to_rgb(
        (h_deg % 360.0) / 360.0, min(max(s, 0.0), 1.0), min(max(v, 0.0), 1.0)
    )
    return np.array([r, g, b], dtype=np.float32) * 255.0


def pixel_centres(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """(y, x) coordinates of the pixel centres of an h×w image."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    return yy + 0.5, xx + 0.5


def paint_background(kind: str, rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    yy, xx = pixel_centres(h, w)
    if kind == "grass":
        base = hsv_rgb(rng.uniform(85, 120), rng.uniform(0.45, 0.7), rng.uniform(0.4, 0.6))
        # blades: noise stretched vertically, plus patches and per-pixel grain
        blades = smooth_noise(rng, h, w * 3, 1.0)[:, ::3] * 0.5 + smooth_noise(rng, h, w, 1.5)
        lum = (
            1
            + 0.12 * blades
            + 0.15 * smooth_noise(rng, h, w, 12)
            + 0.06 * rng.standard_normal((h, w))
        )
        return base * lum[..., None]
    if kind == "sand":
        base = hsv_rgb(rng.uniform(35, 48), rng.uniform(0.22, 0.38), rng.uniform(0.72, 0.88))
        phi = rng.uniform(0, np.pi)
        ripple = np.sin(
            2 * np.pi * (xx * np.cos(phi) + yy * np.sin(phi)) / rng.uniform(10, 18)
            + 1.5 * smooth_noise(rng, h, w, 14)
        )
        lum = (
            1
            + 0.05 * ripple
            + 0.05 * rng.standard_normal((h, w))
            + 0.04 * smooth_noise(rng, h, w, 3)
        )
        return base * lum[..., None]
    if kind == "water":
        base = hsv_rgb(rng.uniform(200, 225), rng.uniform(0.55, 0.8), rng.uniform(0.5, 0.7))
        p1, p2 = rng.uniform(5, 9), rng.uniform(12, 24)
        wave = np.sin(
            2 * np.pi * yy / p1
            + rng.uniform(1.0, 2.5) * np.sin(2 * np.pi * xx / p2 + rng.uniform(0, 2 * np.pi))
        )
        lum = 1 + 0.18 * wave + 0.05 * smooth_noise(rng, h, w, 10)
        out = base * lum[..., None]
        crest = np.clip((wave - 0.8) / 0.2, 0, 1)[..., None] * 0.6  # white wave crests
        return out * (1 - crest) + 235.0 * crest
    if kind == "sky":
        top = hsv_rgb(rng.uniform(195, 215), rng.uniform(0.45, 0.65), rng.uniform(0.85, 0.95))
        bottom = hsv_rgb(rng.uniform(195, 215), rng.uniform(0.05, 0.2), rng.uniform(0.95, 1.0))
        t = (yy / h)[..., None]
        out = top * (1 - t) + bottom * t
        cloud = (
            np.clip(smooth_noise(rng, h, w, 16) + 0.5 * smooth_noise(rng, h, w, 6) - 0.4, 0, 1)[
                ..., None
            ]
            * 0.8
        )
        return out * (1 - cloud) + 245.0 * cloud
    raise ValueError(f"unknown background '{kind}'")


def paint_body(
    spec: ClassSpec, cfg: dict, rng: np.random.Generator, pl: Placement, h: int, w: int
) -> np.ndarray:
    """Body colour over the whole image grid (only the object's pixels are used)."""
    hue = np.clip(spec.hue + rng.normal(0, cfg["hue_spread"]), *BODY_HUES)
    base = hsv_rgb(hue, rng.uniform(0.35, 0.65), rng.uniform(0.5, 0.85))
    texture = spec.texture if rng.random() < cfg["texture_pref"] else TEXTURES[rng.integers(4)]
    yy, xx = pixel_centres(h, w)
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
        lum = 1 + 0.22 * smooth_noise(rng, h, w, rng.uniform(2, 5))
    else:
        lum = 1 + 0.3 * np.clip(along / (2 * max(pl.sx, pl.sy)), -1, 1)
    return base * lum[..., None]


def paint_part(
    spec: ClassSpec, pl: Placement, center: np.ndarray, radius: float, h: int, w: int
) -> np.ndarray:
    """The class's two-colour pattern around the part centre, in the object's rotated frame."""
    yy, xx = pixel_centres(h, w)
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

