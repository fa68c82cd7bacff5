"""DeepLab inference: multi-scale + flip probabilities, the argmax and DeepLab's dense CRF.

`predict` labels a split (softmax probabilities averaged at full resolution over scales and
mirrors) and writes the argmax, and optionally the argmax after the dense CRF, to label stores.
The CRFs run in worker processes (`wsss.ops.pool`) while this process runs the network.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import json
import logging
import os
import sys
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import yaml
from tqdm import tqdm

from wsss import registry
from wsss.data.transforms import scaled_views, view_maps
from wsss.deeplab.training import DeepLab, as_device, load_deeplab
from wsss.models.backbones import without_pretrained
from wsss.ops.densecrf import crf_params, dense_crf
from wsss.ops.pool import background_pool
from wsss.schema import BASE_SCHEMA
from wsss.store import LabelWriter

if TYPE_CHECKING:
    from wsss.data.voc import VocDataset

log = logging.getLogger(__name__)


@torch.no_grad()
def multiscale_probs(method: DeepLab, images: Sequence[np.ndarray], scales: Sequence[float],
                     flip: bool) -> list[torch.Tensor]:
    """Per H×W×3 image, (C+1)×H×W class probabilities on the method's device: the softmax of
    the logits upsampled to full resolution, averaged over scales and (with `flip`) mirrors.

    Per scale, the views are grouped by their exact size (an image and its mirror always share
    one) and each group goes through the network unpadded, so an image's prediction does not
    depend on the images it is batched with; each view's logits are resized to the extent its
    cells cover, then cropped.
    """
    device, stride = method.device, method.net.output_stride
    sizes = [img.shape[:2] for img in images]
    n = method.num_classes + 1
    probs = [torch.zeros(n, h, w, device=device) for h, w in sizes]
    views = [scaled_views(img, scales, flip) for img in images]
    per = 2 if flip else 1
    for s in range(len(scales)):
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, per_image in enumerate(views):
            groups.setdefault(per_image[s][0].shape, []).append(i)
        for members in groups.values():
            arrays = [v for i in members for v in views[i][s]]
            batch = torch.from_numpy(np.stack(arrays)).to(device, non_blocking=True)
            with method.autocast():
                logits = method(batch)
            part = view_maps(logits, arrays, [sizes[i] for i in members], per, stride)
            for i, up in zip(members, part, strict=True):
                probs[i] += up.softmax(dim=1).sum(dim=0)
    return [p / (len(scales) * per) for p in probs]


@functools.cache
def _schema_crf_defaults() -> dict[str, Any]:
    # the schema's deeplab.inference.crf block is the one place DeepLab's CRF defaults live;
    # the shared `crf_params` defaults are PSA's kernels, which DeepLab must not inherit
    schema = yaml.safe_load(BASE_SCHEMA.read_text())
    inference = schema["properties"]["deeplab"]["properties"]["inference"]["properties"]
    return registry.defaults(inference["crf"])


def deeplab_crf(given: dict[str, Any] | None) -> dict[str, Any]:
    """DeepLab's CRF settings: `given` (a `deeplab.inference.crf` block, possibly partial or
    None) over the config schema's DeepLab defaults (not the shared PSA kernels)."""
    return crf_params(registry.merge_defaults(_schema_crf_defaults(), given))


def crf_label(image: np.ndarray, probs: np.ndarray, params: dict[str, Any]) -> np.ndarray:
    """uint8 argmax of DeepLab's dense CRF (unary -log probs) on one image (a pool task)."""
    return dense_crf(image, probs, params).argmax(axis=0).astype(np.uint8)


def predict(weights_path: str | os.PathLike, ds: VocDataset, split: str, cfg: dict[str, Any],
            out_path: str | os.PathLike, crf_out_path: str | os.PathLike | None = None,
            device: torch.device | str = "cpu", threads: int = 1) -> dict[str, float]:
    """Label every image of `split` with the DeepLab of `weights_path`; return timing figures.

    `cfg` is the `deeplab` block; its `inference` block (scales, flip, batch_size, crf) is used.
    The argmax goes to `out_path`, and with `crf_out_path` the argmax after the dense CRF to
    that file, both uint8 (0 bg, k = class k), in split order, attrs classes, split and refiner
    (the config). The CRFs run in `threads` forked processes (pydensecrf holds the GIL) while
    this process runs the network with torch's own threads. Either both files are written, or
    (on any error) neither.
    """
    inference = cfg["inference"]
    scales, flip = [float(s) for s in inference["scales"]], bool(inference["flip"])
    bs = int(inference["batch_size"])
    params = deeplab_crf(inference.get("crf")) if crf_out_path is not None else None
    ids = ds.ids(split)
    threads = max(1, threads)
    # forked first: before the network's threads exist and before any HDF5 file is open
    with background_pool(threads if params is not None else 1, fork=True) as pool:
        method = load_deeplab(weights_path, ds.classes, as_device(device))
        # where the trunk's weights came from is not part of the trained network (it loads
        # with pretrained: none, see load_deeplab)
        given = cfg.get("model")
        if given is not None and without_pretrained(given) != method.cfg["model"]:
            log.warning("%s was trained with another deeplab.model block than the one given; "
                        "using the trained one", weights_path)
        attrs = {"classes": list(ds.classes), "split": split, "refiner": json.dumps(cfg),
                 "weights": str(weights_path)}
        t0 = time.time()
        with contextlib.ExitStack() as stack:
            plain = stack.enter_context(LabelWriter(out_path, {**attrs, "crf": 0}))
            refined = (stack.enter_context(LabelWriter(crf_out_path, {**attrs, "crf": 1}))
                       if params is not None else None)
            bar = stack.enter_context(tqdm(total=len(ids), desc="deeplab", file=sys.stderr,
                                           mininterval=5.0, disable=None))
            pending: collections.deque = collections.deque()
            in_flight = 2 * threads + bs  # bounds the probabilities waiting for a CRF worker
            for start in range(0, len(ids), bs):
                chunk = ids[start : start + bs]
                images = [ds.load_image(i) for i in chunk]
                probs = multiscale_probs(method, images, scales, flip)
                for image_id, image, p in zip(chunk, images, probs, strict=True):
                    plain.add(image_id, p.argmax(dim=0).to(torch.uint8).cpu().numpy())
                    if refined is not None:
                        pending.append((image_id, pool.submit(crf_label, image,
                                                              p.cpu().numpy(), params)))
                while len(pending) > in_flight:
                    image_id, result = pending.popleft()
                    refined.add(image_id, result.get())
                bar.update(len(chunk))
            while pending:
                image_id, result = pending.popleft()
                refined.add(image_id, result.get())
        seconds = time.time() - t0
    return {"images": len(ids), "seconds": seconds, "images_per_second": len(ids) / seconds}
