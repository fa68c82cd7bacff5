"""Multi-scale + flip CAM inference, written to a CAM HDF5 store.

Per scale, every image of a batch and its mirror go through the network together (zero-padded
to a common size). Only the planes of each image's labelled classes are kept; each map is ReLU'd,
cropped to the feature cells that see the image, the mirror's map flipped back and added, and the
sum resized to the image size and to the stride-4 size. Maps are summed over scales and each
class plane divided by its maximum.

A method with a segmentation head (`seg_head` in its REGISTER) also gets its masks stored:
`seg`, (C+1)×H×W class probabilities at image resolution from the same scales and mirrors,
fused by the variant's `inference.seg_fusion`: "mean" (the softmax probabilities averaged over
views, as DeepLab's inference does) or "max" (the softmax of the per-pixel maximum logit).
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
from wsss.data.transforms import pad_batch, scaled_views, upsample, view_maps
from wsss.errors import ConfigError
from wsss.store import CamWriter

log = logging.getLogger(__name__)
SEG_FUSIONS = ("mean", "max")
DEFAULT_SEG_FUSION = "mean"  # the schema's default of inference.seg_fusion


@torch.no_grad()
def multiscale_maps(
    method,
    images: Sequence[np.ndarray],
    keys: Sequence[np.ndarray],
    scales: Sequence[float],
    flip: bool,
    fusion: str | None = None,
) -> tuple[list[tuple[torch.Tensor, torch.Tensor]], list[torch.Tensor] | None]:
    """One pass over the scaled (and mirrored) views of `images`, batched per scale.

    CAMs: per image the planes of its `keys`, summed over scales and flips, as (K×H×W full
    resolution, K×⌈H/4⌉×⌈W/4⌉ stride 4), ReLU'd and not yet normalised. With a `fusion`
    (methods with a segmentation head) also per image (C+1)×H×W class probabilities from the
    same views, fused by "mean" (of the softmax probabilities) or "max" (softmax of the max
    logit); the method's `cams_and_seg` gives both maps of a batch from one forward pass.
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
    labels = torch.zeros(len(images) * per, method.num_classes, device=device)
    for i, k in enumerate(keys):
        labels[i * per : (i + 1) * per, torch.as_tensor(k, dtype=torch.long)] = 1.0
    for s in range(len(scales)):
        arrays = [v for per_image in views for v in per_image[s]]
        batch = pad_batch(arrays).to(device)
        if fusion is None:
            raw, logits = method.cams(batch, labels), None
        else:
            raw, logits = method.cams_and_seg(batch, labels)
        maps = F.relu(raw)
        # below the true stride unless the padded height is a multiple of it (`grid_stride` is
        # exact); kept, because the default run's numbers depend on it
        stride = batch.shape[2] / maps.shape[2]
        for i, ((h, w), k) in enumerate(zip(sizes, keys, strict=True)):
            if len(k) == 0:
                continue
            vh, vw = arrays[i * per].shape[1:]
            # feature cells that see the image (not the padding); they cover slightly more
            # than the image, so resize to the covered extent and crop (IRN's "strided-up" size)
            ch, cw = math.ceil(vh / stride), math.ceil(vw / stride)
            kk = torch.as_tensor(k, dtype=torch.long, device=device)
            m = maps[i * per, kk, :ch, :cw]
            if flip:
                m = m + maps[i * per + 1, kk, :ch, :cw].flip(-1)
            for out, (oh, ow) in ((full[i], (h, w)), (low[i], lows[i])):
                eh = max(oh, math.ceil(ch * stride * oh / vh))
                ew = max(ow, math.ceil(cw * stride * ow / vw))
                out += upsample(m[None], (eh, ew))[0, :, :oh, :ow]
        if logits is not None:
            _add_seg(fused, logits.float(), arrays, sizes, per, fusion,
                     grid_stride(batch.shape[2], logits.shape[2]))
    cams = list(zip(full, low, strict=True))
    if fusion is None:
        return cams, None
    if fusion == "mean":
        return cams, [f / (len(scales) * per) for f in fused]
    return cams, [f.softmax(dim=0) for f in fused]


def _add_seg(fused: list[torch.Tensor | None], logits: torch.Tensor, arrays: list[np.ndarray],
             sizes: list[tuple[int, int]], per: int, fusion: str, stride: int) -> None:
    """Fold one scale's segmentation logits into each image's running fusion."""
    for i, up in enumerate(view_maps(logits, arrays, sizes, per, stride)):
        if fusion == "mean":
            part = up.softmax(dim=1).sum(dim=0)
            fused[i] = part if fused[i] is None else fused[i] + part
        else:
            part = up.amax(dim=0)
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


def check_seg_fusion(fusion: Any) -> None:
    if fusion not in SEG_FUSIONS:
        raise ConfigError(f"inference.seg_fusion: unknown fusion {fusion!r}; "
                          f"choose one of {list(SEG_FUSIONS)}")


def has_seg_head(method) -> bool:
    """Whether the method's registry entry declares a segmentation head (`seg_head`)."""
    name = (getattr(method, "cfg", None) or {}).get("method")
    return name is not None and bool(registry.component("method", name).get("seg_head"))


def normalise(cam: torch.Tensor) -> np.ndarray:
    """Divide each plane by its maximum (+1e-5, so empty maps stay zero)."""
    peak = cam.flatten(1).amax(dim=1).clamp_min(0) + 1e-5
    return (cam / peak[:, None, None]).cpu().numpy()


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
    `inference["seg_fusion"]`, recorded as the file attr `seg_fusion`)."""
    method.eval()
    scales, flip, bs = inference["scales"], inference["flip"], inference["batch_size"]
    attrs = {**attrs, "scales": list(scales), "flip": bool(flip)}
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
                writer.add(image_id, normalise(full), k, cam_lowres=normalise(low), seg=seg)
            bar.update(len(chunk))
        bar.close()
    seconds = time.time() - t0
    return {"images": len(ids), "seconds": seconds, "images_per_second": len(ids) / seconds}
