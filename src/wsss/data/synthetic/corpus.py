"""The pretraining corpus: single-label classification images from the benchmark's generator
family, in no WSSS split (the `pretrain` stage's stand-in for ImageNet).

Classes. A class is a SHAPE and a TEXTURE FAMILY: the benchmark's eight shapes (ellipse,
rectangle, triangle, ring, star, cross, diamond, hexagon; `classes.shape_polygons`) times its
four body textures (stripes, dots, smooth noise, gradient; `textures.paint_body`), 32 classes,
named `<shape>/<texture>`. Class k has shape k mod 8 and texture k div 8, so the first N classes
(`classes: N`) cover as many shapes as they can before a second texture. The benchmark has 6-8
classes told apart by a part, a body hue and a shape; the corpus has more classes, told apart
by shape and texture only, and no parts: the class-specific parts are the benchmark's own cue
(the partial-activation failure mode it is built to show), which pretraining should neither
teach nor unlearn.

Images. One object on one of the four backgrounds (`textures.paint_background`: grass, sand,
water, sky, uniformly: no co-occurrence), placed by the benchmark's own placement
(`render.place_objects`: random size, aspect, position and rotation, not mostly outside the
frame), its body painted by the benchmark's `paint_body` with the class's texture every time
and a hue drawn uniformly from the benchmark's body band (so hue, saturation, value, texture
phase and scale are nuisances), plus the benchmark's pixel noise. Images are square,
`size` px a side; the object's radius is `OBJECT_SCALE` of the side.

Parts and balance. `train` and `held_out` are drawn from disjoint streams; image i of a part
has label i mod `classes`, so every class has exactly `<part>_per_class` images.

Determinism. Image i of part p draws from its own generator, seeded by
SeedSequence((seed, p, i), spawn_key=(CORPUS_STREAM,)). The benchmark seeds its images by
(seed, split, i) without a spawn key; numpy mixes a spawn key in after padding the entropy, so
no corpus stream is a benchmark stream whatever the two seeds are, and the output is identical
whatever the number of worker processes.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from wsss.data.synthetic.classes import CLASS_SPECS
from wsss.data.synthetic.config import BACKGROUNDS
from wsss.data.synthetic.render import place_objects
from wsss.data.synthetic.textures import BODY_HUES, TEXTURES, paint_background, paint_body
from wsss.errors import ConfigError
from wsss.ops.pool import ordered_map

PARTS = ("train", "held_out")
SHAPES = tuple(spec.shape for spec in CLASS_SPECS)
NUM_CLASSES = len(SHAPES) * len(TEXTURES)
CORPUS_STREAM = 0x70726574  # "pret": the spawn key that keeps corpus streams apart
OBJECT_SCALE = [0.25, 0.45]  # object radius / image side (the benchmark: 0.24-0.40)
NOISE_STD = 3.0  # the benchmark's default pixel noise
_PLACEMENT = {"object_scale": OBJECT_SCALE, "min_visible": 0.5}  # one object: nothing occludes
_BODY = {"hue_spread": 0.0, "texture_pref": 1.0}  # the hue is drawn here; the texture is fixed


def class_names(n: int = NUM_CLASSES) -> list[str]:
    """Names of the first `n` corpus classes, `<shape>/<texture>`."""
    return [f"{SHAPES[k % len(SHAPES)]}/{TEXTURES[k // len(SHAPES)]}" for k in range(n)]


def image_rng(seed: int, part: str, index: int) -> np.random.Generator:
    """The generator image `index` of `part` draws from (see the module docstring)."""
    seq = np.random.SeedSequence((seed, PARTS.index(part), index), spawn_key=(CORPUS_STREAM,))
    return np.random.default_rng(seq)


def check_config(cfg: dict[str, Any]) -> None:
    """ConfigError naming the `pretrain.corpus` key that cannot make a corpus (the schema
    checks the same; this guards direct calls)."""
    for key in ("seed", "classes", "train_per_class", "held_out_per_class", "size"):
        if key not in cfg:
            raise ConfigError(f"config key pretrain.corpus.{key}: missing")
    if not 2 <= cfg["classes"] <= NUM_CLASSES:
        raise ConfigError(f"config key pretrain.corpus.classes: {cfg['classes']} is not in "
                          f"2..{NUM_CLASSES} (shapes x textures)")
    if cfg["size"] < 32:
        raise ConfigError(f"config key pretrain.corpus.size: {cfg['size']} is below 32")


def render_corpus_image(cfg: dict[str, Any], part: str, index: int) -> np.ndarray:
    """Image `index` of `part`: size×size×3 uint8, of class index mod cfg['classes']."""
    rng = image_rng(cfg["seed"], part, index)
    size = int(cfg["size"])
    k = index % cfg["classes"]
    shape, texture = k % len(SHAPES), k // len(SHAPES)
    placed: list = []
    while not placed:  # one object fails its 25 tries only rarely; the stream just continues
        placed = place_objects(_PLACEMENT, rng, size, size, [shape])
    _, pl, alpha = placed[0]
    background = BACKGROUNDS[rng.integers(len(BACKGROUNDS))]
    image = paint_background(background, rng, size, size)
    spec = dataclasses.replace(CLASS_SPECS[shape], hue=float(rng.uniform(*BODY_HUES)),
                               texture=TEXTURES[texture])
    body = paint_body(spec, _BODY, rng, pl, size, size)
    image = image * (1 - alpha[..., None]) + body * alpha[..., None]
    image = image + rng.normal(0, NOISE_STD, size=image.shape)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def _render(args: tuple[dict[str, Any], str, int]) -> np.ndarray:
    return render_corpus_image(*args)


def corpus(cfg: dict[str, Any], part: str, threads: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Part `part` of the corpus `cfg` (the `pretrain.corpus` block) generated in memory:
    (images N×S×S×3 uint8, labels N int64), N = classes × <part>_per_class; identical for any
    `threads` (worker processes)."""
    if part not in PARTS:
        raise ValueError(f"corpus part '{part}': expected one of {PARTS}")
    check_config(cfg)
    n = int(cfg["classes"]) * int(cfg[f"{part}_per_class"])
    size = int(cfg["size"])
    images = np.empty((n, size, size, 3), dtype=np.uint8)
    jobs = [(cfg, part, i) for i in range(n)]
    threads = max(1, int(threads)) if n > 1 else 1
    chunk = max(1, n // (threads * 8))
    for i, image in enumerate(ordered_map(_render, jobs, threads, chunksize=chunk)):
        images[i] = image
    labels = np.arange(n, dtype=np.int64) % int(cfg["classes"])
    return images, labels
