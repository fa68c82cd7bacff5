"""HSC's in-training label CRF (Table 4's CRF† and CRF columns): the pseudo labels of both views
refined by the label CRF of IRN/PSA (`wsss.ops.densecrf.label_crf`) on the second view's image.

pydensecrf holds the GIL, so the CRFs of a step run in a persistent fork pool
(`wsss.ops.pool.persistent_pool`) of `torch.get_num_threads()` processes, one chunk of images
per worker and step: a pool per step would cost more than the step's CRFs. The workers run
numpy and pydensecrf only, never torch, so forking a process whose CUDA or OpenMP state is
initialised is safe.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from wsss.data.transforms import MEAN, STD
from wsss.ops.densecrf import label_crf
from wsss.ops.pool import persistent_pool


def _crf_chunk(chunk: tuple[int, dict[str, Any], list[tuple[np.ndarray, np.ndarray]]]
               ) -> list[np.ndarray]:
    n, crf, items = chunk
    return [np.asarray(label_crf(image, planes, n, crf), dtype=np.int64)
            for image, planes in items]


def crf_workers() -> int:
    """Processes for the CRF: one per intra-op thread torch was given (`--threads`)."""
    return max(1, torch.get_num_threads())


def crf_refine(images: list[np.ndarray], planes: list[np.ndarray], n: int,
               crf: dict[str, Any], workers: int) -> list[np.ndarray]:
    """Label CRF of each (uint8 H×W×3 image, int H×W label planes 0..n-1) pair, in order.

    With several workers and items, one contiguous chunk per worker goes to the persistent
    fork pool (a task per worker keeps the IPC to one round trip per step)."""
    items = list(zip(images, planes, strict=True))
    if workers <= 1 or len(items) <= 1:
        return _crf_chunk((n, crf, items))
    bounds = np.linspace(0, len(items), min(workers, len(items)) + 1).round().astype(int)
    chunks = [(n, crf, items[a:b]) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
    results = persistent_pool(workers).map(_crf_chunk, chunks, chunksize=1)
    return [label for part in results for label in part]


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """(B, 3, H, W) ImageNet-normalised -> (B, H, W, 3) uint8, rounded and clipped."""
    mean = torch.as_tensor(MEAN, device=images.device)[:, None, None]
    std = torch.as_tensor(STD, device=images.device)[:, None, None]
    pixels = ((images.detach().float() * std + mean) * 255.0).round().clamp(0, 255)
    return pixels.to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
