"""Multi-scale + flip CAM inference, written to a CAM HDF5 store.

Per scale, the views of a chunk of images are grouped by their exact size (an image and its
mirror always share one; images of equal size share it too) and each group goes through the
network in one forward, unpadded: an image's CAM depends on that image alone, not on the batch
it was read in (zero-padding several images together would let deeper layers see non-zero
features of the padding next to the smaller images). Only the planes of each image's labelled
classes are kept; each map is ReLU'd, the mirror's map flipped back and added, and the sum
resized to the image size and to the stride-4 size. The network's stride is taken exactly
(`grid_stride`, a power of two), so when a side is not a multiple of it the cells, which cover
slightly more than the view, are resized to the covered ("strided-up", IRN's) extent and then
cropped. Maps are summed over scales.

Each class plane is then normalised to [0, 1] the way the method's paper does, as its REGISTER
declares (`cam_norm`; a plug-in such as HSC or DSCNet takes its base's, so on SEAM they get
SEAM's) and as the file attr `cam_norm` records:
- "max" (the default; CAM, PSA, IRN): divided by the plane's maximum (+1e-5).
- "minmax" (SEAM's infer_SEAM.py): (x - min - 1e-5) / (max - min + 1e-5), values below
  min + 1e-5 set to 0. SEAM zeroes those values *before* the shift, which leaves them slightly
  negative (-(min + 1e-5) / (max - min + 1e-5)) in its maps; we store 0, since CAM stores hold
  [0, 1], and either value is background at any positive background threshold.

A method with a segmentation head (`seg_head` in its REGISTER) also gets its masks stored:
`seg`, (C+1)×H×W class probabilities at image resolution from the same scales and mirrors,
fused by the variant's `inference.seg_fusion`: "mean" (the softmax probabilities averaged over
views, as DeepLab's inference does), "max" (the softmax of the per-pixel maximum logit) or
"flip_sum_max" (ToCo's and FSR's: per scale the logits of the image and its mirror summed,
then the maximum over scales, then the softmax).
Stores of methods without a head are exactly what they were before heads existed.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from wsss import registry
from wsss.data.transforms import scaled_views, upsample, view_maps
from wsss.errors import ConfigError
from wsss.store import CamWriter

log = logging.getLogger(__name__)
SEG_FUSIONS = ("mean", "max", "flip_sum_max")
DEFAULT_SEG_FUSION = "mean"  # the schema's default of inference.seg_fusion
CAM_NORMS = ("max", "minmax")
DEFAULT_CAM_NORM = "max"  # of a method whose REGISTER (and base's) declares no cam_norm
EPS = 1e-5


@torch.no_grad()
def multiscale_maps(
    method,
    images: Sequence[np.ndarray],
    keys: Sequence[np.ndarray],
    scales: Sequence[float],
    flip: bool,
    fusion: str | None = None,
) -> tuple[list[tuple[torch.Tensor, torch.Tensor]], list[torch.Tensor] | None]:
    """One pass over the scaled (and mirrored) views of `images`, one forward per view size.

    CAMs: per image the planes of its `keys`, summed over scales and flips, as (K×H×W full
    resolution, K×⌈H/4⌉×⌈W/4⌉ stride 4, cell (y, x) covering the image pixels
    [4y, 4y + 4) × [4x, 4x + 4), as IRN's refiner reads it), ReLU'd and not yet normalised.
    With a `fusion` (methods with a segmentation head) also per image (C+1)×H×W class
    probabilities from the same views, fused by "mean" (of the softmax probabilities), "max"
    (softmax of the max logit) or "flip_sum_max" (softmax of the max over scales of the
    mirror-summed logits); the method's `cams_and_seg` gives both maps of a batch from
    one forward pass.

    Per scale the views are grouped by their exact size (an image and its mirror always share
    one, images of equal size share a forward), so nothing is padded and each image's maps
    depend on that image alone.
    """
    if fusion is not None:
        check_seg_fusion(fusion)
    device = method.device
    sizes = [img.shape[:2] for img in images]
    lows = [(math.ceil(h / 4), math.ceil(w / 4)) for h, w in sizes]
    full = [torch.zeros(len(k), h, w, device=device) for k, (h, w) in zip(keys, sizes, strict=True)]
    low = [torch.zeros(len(k), *hw, device=device) for k, hw in zip(keys, lows, strict=True)]
    fused: list[torch.Tensor | None] = [None] * len(images)
    views = [scaled_views(img, scales, flip) for img in images]
    per = 2 if flip else 1
    for s in range(len(scales)):
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, per_image in enumerate(views):
            groups.setdefault(per_image[s][0].shape, []).append(i)
        for (_, vh, vw), members in groups.items():
            arrays = [v for i in members for v in views[i][s]]
            batch = torch.from_numpy(np.stack(arrays)).to(device)
            labels = torch.zeros(len(arrays), method.num_classes, device=device)
            for j, i in enumerate(members):
                labels[j * per : (j + 1) * per, torch.as_tensor(keys[i], dtype=torch.long)] = 1.0
            if fusion is None:
                raw, logits = method.cams(batch, labels), None
            else:
                raw, logits = method.cams_and_seg(batch, labels)
            maps = F.relu(raw)
            stride = view_stride((vh, vw), tuple(maps.shape[-2:]))
            # the cells cover ch * stride view rows, slightly more than the view when its side
            # is not a multiple of the stride: resize them to that extent in output pixels
            # (an image pixel, or a stride-4 cell of 4 image pixels), then crop (IRN's
            # "strided-up" size)
            ch, cw = maps.shape[-2:]
            for j, i in enumerate(members):
                if len(keys[i]) == 0:
                    continue
                kk = torch.as_tensor(keys[i], dtype=torch.long, device=device)
                m = maps[j * per, kk]
                if flip:
                    m = m + maps[j * per + 1, kk].flip(-1)
                (h, w), (lh, lw) = sizes[i], lows[i]
                for out, unit, (oh, ow) in ((full[i], 1, (h, w)), (low[i], 4, (lh, lw))):
                    eh = max(oh, -(-ch * stride * h // (vh * unit)))
                    ew = max(ow, -(-cw * stride * w // (vw * unit)))
                    out += upsample(m[None], (eh, ew))[0, :, :oh, :ow]
            if logits is not None:
                _add_seg(fused, members, logits.float(), arrays, sizes, per, fusion,
                         view_stride((vh, vw), tuple(logits.shape[-2:])))
    cams = list(zip(full, low, strict=True))
    if fusion is None:
        return cams, None
    if fusion == "mean":
        return cams, [f / (len(scales) * per) for f in fused]
    return cams, [f.softmax(dim=0) for f in fused]


def _add_seg(fused: list[torch.Tensor | None], members: list[int], logits: torch.Tensor,
             arrays: list[np.ndarray], sizes: list[tuple[int, int]], per: int, fusion: str,
             stride: int) -> None:
    """Fold one forward's segmentation logits (the views of the images `members`) into each
    image's running fusion."""
    own = [sizes[i] for i in members]
    for i, up in zip(members, view_maps(logits, arrays, own, per, stride), strict=True):
        if fusion == "mean":
            part = up.softmax(dim=1).sum(dim=0)
            fused[i] = part if fused[i] is None else fused[i] + part
        else:  # max over scales of the views' maximum, or of their sum (flip_sum_max)
            part = up.sum(dim=0) if fusion == "flip_sum_max" else up.amax(dim=0)
            fused[i] = part if fused[i] is None else torch.maximum(fused[i], part)


def multiscale_cams(method, images: Sequence[np.ndarray], keys: Sequence[np.ndarray],
                    scales: Sequence[float], flip: bool) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The CAMs of `multiscale_maps` alone."""
    return multiscale_maps(method, images, keys, scales, flip)[0]


def grid_stride(size: int, cells: int) -> int:
    """The network's stride from an input side and its output side, for power-of-two strides:
    the smallest power of two s with ceil(size / s) <= cells. (size / cells underestimates it
    whenever size is not a multiple of the stride, and with it the extent the cells cover.)"""
    s = 1
    while math.ceil(size / s) > cells:
        s *= 2
    return s


def view_stride(view: tuple[int, int], cells: tuple[int, int]) -> int:
    """The network's stride from a view's (h, w) and its map's: `grid_stride` of each side
    (each a lower bound of the true stride, exact unless that side spans a single cell or so),
    the larger one."""
    return max(grid_stride(view[0], cells[0]), grid_stride(view[1], cells[1]))


def check_seg_fusion(fusion: Any) -> None:
    if fusion not in SEG_FUSIONS:
        raise ConfigError(f"inference.seg_fusion: unknown fusion {fusion!r}; "
                          f"choose one of {list(SEG_FUSIONS)}")


def has_seg_head(method) -> bool:
    """Whether the method's registry entry declares a segmentation head (`seg_head`)."""
    name = (getattr(method, "cfg", None) or {}).get("method")
    return name is not None and bool(registry.component("method", name).get("seg_head"))


def cam_norm(method) -> str:
    """How the method's CAM planes are normalised: its REGISTER's `cam_norm`, a plug-in's
    taken from its base unless it declares its own (`registry.method_capability`); "max" for
    a method that declares none (and for a stand-in without a config)."""
    cfg = getattr(method, "cfg", None) or {}
    if cfg.get("method") is None:
        return DEFAULT_CAM_NORM
    how = registry.method_capability(cfg, "cam_norm", DEFAULT_CAM_NORM)
    if how not in CAM_NORMS:
        comp = registry.method_chain(cfg)[0]
        raise ConfigError(f"{comp.path}: method {comp.name!r} (or its base) declares cam_norm "
                          f"{how!r}; choose one of {list(CAM_NORMS)}")
    return how


def normalise(cam: torch.Tensor, how: str = DEFAULT_CAM_NORM) -> np.ndarray:
    """Each K×H×W plane to [0, 1]: "max" divides by its maximum (+1e-5, so empty maps stay
    zero); "minmax" is SEAM's (x - min - 1e-5) / (max - min + 1e-5) with values below
    min + 1e-5 set to 0 (see the module doc)."""
    flat = cam.flatten(1)
    if how == "max":
        peak = flat.amax(dim=1).clamp_min(0) + EPS
        return (cam / peak[:, None, None]).cpu().numpy()
    if how == "minmax":
        lo = flat.amin(dim=1)[:, None, None]
        hi = flat.amax(dim=1)[:, None, None]
        return ((cam - lo - EPS).clamp_min(0) / (hi - lo + EPS)).cpu().numpy()
    raise ValueError(f"unknown CAM normalisation {how!r}; choose one of {list(CAM_NORMS)}")


def extract_cams(
    method,
    dataset,
    ids: Sequence[str],
    labels: dict[str, list[int]],
    inference: dict[str, Any],
    out_path: str | Path,
    attrs: dict[str, Any],
) -> dict[str, float]:
    """Write CAMs of `ids` to `out_path` (atomically); return timing figures.

    For a method with a segmentation head, each image's `seg` probabilities too (fused by
    `inference["seg_fusion"]`, recorded as the file attr `seg_fusion`). Both CAM resolutions
    are normalised the method's way (`cam_norm`), recorded as the file attr `cam_norm`."""
    method.eval()
    scales, flip, bs = inference["scales"], inference["flip"], inference["batch_size"]
    how = cam_norm(method)  # before any file is written
    attrs = {**attrs, "scales": list(scales), "flip": bool(flip), "cam_norm": how}
    fusion = None
    if has_seg_head(method):
        fusion = inference.get("seg_fusion", DEFAULT_SEG_FUSION)
        check_seg_fusion(fusion)  # before any file is written
        attrs["seg_fusion"] = fusion
    t0 = time.time()
    with CamWriter(out_path, attrs) as writer:
        bar = tqdm(total=len(ids), desc="cams", file=sys.stderr, mininterval=5.0, disable=None)
        for start in range(0, len(ids), bs):
            chunk = list(ids[start : start + bs])
            images = [dataset.load_image(i) for i in chunk]
            keys = [np.asarray(labels[i], dtype=np.int64) for i in chunk]
            cams, seg = multiscale_maps(method, images, keys, scales, flip, fusion)
            segs = [p.cpu().numpy() for p in seg] if seg is not None else [None] * len(chunk)
            for image_id, k, (full, low), seg in zip(chunk, keys, cams, segs, strict=True):
                writer.add(image_id, normalise(full, how), k, cam_lowres=normalise(low, how),
                           seg=seg)
            bar.update(len(chunk))
        bar.close()
    seconds = time.time() - t0
    return {"images": len(ids), "seconds": seconds, "images_per_second": len(ids) / seconds}
