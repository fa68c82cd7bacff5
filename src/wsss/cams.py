"""Multi-scale + flip CAM inference, written to a CAM HDF5 store.

Per scale, every image of a batch and its mirror go through the network together (zero-padded
to a common size). Only the planes of each image's labelled classes are kept; each map is ReLU'd,
cropped to the feature cells that see the image, the mirror's map flipped back and added, and the
sum resized to the image size and to the stride-4 size. Maps are summed over scales and each
class plane divided by its maximum.
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

from wsss.data.transforms import pad_batch, scaled_views, upsample
from wsss.store import CamWriter

log = logging.getLogger(__name__)


@torch.no_grad()
def multiscale_cams(
    method,
    images: Sequence[np.ndarray],
    keys: Sequence[np.ndarray],
    scales: Sequence[float],
    flip: bool,
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per image: the planes of its `keys`, summed over scales and flips, as
    (K×H×W full resolution, K×⌈H/4⌉×⌈W/4⌉ stride 4), ReLU'd and not yet normalised."""
    device = method.device
    sizes = [img.shape[:2] for img in images]
    lows = [(math.ceil(h / 4), math.ceil(w / 4)) for h, w in sizes]
    full = [torch.zeros(len(k), h, w, device=device) for k, (h, w) in zip(keys, sizes, strict=True)]
    low = [torch.zeros(len(k), *hw, device=device) for k, hw in zip(keys, lows, strict=True)]
    views = [scaled_views(img, scales, flip) for img in images]
    per = 2 if flip else 1
    labels = torch.zeros(len(images) * per, method.num_classes, device=device)
    for i, k in enumerate(keys):
        labels[i * per : (i + 1) * per, torch.as_tensor(k, dtype=torch.long)] = 1.0
    for s in range(len(scales)):
        arrays = [v for per_image in views for v in per_image[s]]
        batch = pad_batch(arrays).to(device)
        maps = F.relu(method.cams(batch, labels))
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
    return list(zip(full, low, strict=True))


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
    """Write CAMs of `ids` to `out_path` (atomically); return timing figures."""
    method.eval()
    scales, flip, bs = inference["scales"], inference["flip"], inference["batch_size"]
    t0 = time.time()
    with CamWriter(out_path, {**attrs, "scales": list(scales), "flip": bool(flip)}) as writer:
        bar = tqdm(total=len(ids), desc="cams", file=sys.stderr, mininterval=5.0, disable=None)
        for start in range(0, len(ids), bs):
            chunk = list(ids[start : start + bs])
            images = [dataset.load_image(i) for i in chunk]
            keys = [np.asarray(labels[i], dtype=np.int64) for i in chunk]
            cams = multiscale_cams(method, images, keys, scales, flip)
            for image_id, k, (full, low) in zip(chunk, keys, cams, strict=True):
                writer.add(image_id, normalise(full), k, cam_lowres=normalise(low))
            bar.update(len(chunk))
        bar.close()
    seconds = time.time() - t0
    return {"images": len(ids), "seconds": seconds, "images_per_second": len(ids) / seconds}
