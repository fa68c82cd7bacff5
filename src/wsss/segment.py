"""DeepLab retrained on pseudo-labels: the segmentation network a WSSS paper finally reports.

`train` fits a DeepLab (`wsss.models.deeplab`) to a label store with the generic trainer
(`wsss.train.fit`: poly lr, checkpoints, resume), using DeepLab's recipe: SGD with the head's
weights at `head_lr_mult` and its biases at `head_bias_lr_mult` times the base rate (no weight
decay on biases), cross-entropy that ignores 255, optional multi-scale inputs (DeepLab-v2's MSC:
logits of every scale and their max-fusion each get a loss) and optionally frozen backbone BN.

`predict` labels a split by multi-scale + flip inference (softmax probabilities averaged at
full resolution) and writes the argmax, and optionally the argmax after DeepLab's dense CRF, to
label stores. The CRFs run in worker processes while this process runs the network.
"""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import math
import multiprocessing
import os
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm import tqdm

from wsss.data.transforms import SegmentationSet, pad_batch, scaled_views, upsample
from wsss.methods.base import Method, freeze_batchnorm
from wsss.models.deeplab import build_deeplab
from wsss.refine.crf import crf_params, dense_crf
from wsss.store import LabelMap, LabelReader, LabelWriter, StoreError
from wsss.train import fit, pick_device, seed_everything

if TYPE_CHECKING:
    from wsss.data.voc import VocDataset

log = logging.getLogger(__name__)

IGNORE = 255


def segmentation_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over the non-ignored pixels of (B, H, W) `labels`, with (B, C+1, h, w)
    `logits` upsampled bilinearly to H×W. A batch without labelled pixels gives 0, not NaN
    (a crop can fall entirely into 255 padding or an unsure region)."""
    if logits.shape[-2:] != labels.shape[-2:]:
        logits = upsample(logits, tuple(labels.shape[-2:]))
    total = F.cross_entropy(logits.float(), labels, ignore_index=IGNORE, reduction="sum")
    return total / (labels != IGNORE).sum().clamp_min(1)


class DeepLab(Method):
    """A DeepLab driven by `wsss.train.fit` (not a registered WSSS method).

    `cfg` is the `deeplab` block; only `model` and `training` are used here.
    """

    def __init__(self, cfg: dict[str, Any], num_classes: int):
        super().__init__(cfg, num_classes)
        self.net = build_deeplab(cfg["model"], num_classes)
        self.freeze_bn = bool(cfg["model"]["backbone"].get("freeze_bn", False))
        self.msc_scales = [float(s) for s in cfg["training"].get("msc_scales") or []]
        if self.freeze_bn:
            freeze_batchnorm(self.net.backbone)
        # NHWC convolutions: about 30% faster inference and 20% faster training on CPU (tiny
        # backbone, 2 threads), and the layout tensor cores want on CUDA
        self.net.to(memory_format=torch.channels_last)

    def train(self, mode: bool = True):
        super().train(mode)
        if mode and self.freeze_bn:  # nn.Module.train would switch the frozen BN back
            freeze_batchnorm(self.net.backbone)
        return self

    def param_groups(self) -> list[dict[str, Any]]:
        t = self.cfg["training"]
        weights, biases = self.net.head_parameters()
        return [
            {"params": list(self.net.backbone.parameters()), "lr_mult": 1.0, "name": "backbone"},
            {"params": weights, "lr_mult": float(t["head_lr_mult"]), "name": "head"},
            {"params": biases, "lr_mult": float(t["head_bias_lr_mult"]), "weight_decay": 0.0,
             "name": "head_bias"},
        ]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images.contiguous(memory_format=torch.channels_last))

    def msc_logits(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Logits of DeepLab-v2's multi-scale training: [full scale] without `msc_scales`, else
        [full scale, each extra scale (at its own size), max-fusion (at the full scale's
        size)]."""
        full = self(images)
        if not self.msc_scales:
            return [full]
        h, w = images.shape[-2:]
        outs = [full]
        for s in self.msc_scales:
            size = (max(1, round(h * s)), max(1, round(w * s)))
            outs.append(self(F.interpolate(images, size=size, mode="bilinear",
                                           align_corners=False)))
        grid = tuple(full.shape[-2:])
        fused = torch.stack([o if o.shape[-2:] == grid else upsample(o, grid) for o in outs])
        return [*outs, fused.amax(dim=0)]

    def training_step(self, batch: dict[str, torch.Tensor], step: int) -> dict[str, float]:
        (opt,) = self.optimizers
        with self.autocast():
            outputs = self.msc_logits(batch["image"])
        loss = sum(segmentation_loss(o.float(), batch["label"]) for o in outputs)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return {"loss": loss.item()}

    @torch.no_grad()
    def seg_probs(self, images: torch.Tensor) -> torch.Tensor:
        with self.autocast():
            return self(images).float().softmax(dim=1)


# -- training ---------------------------------------------------------------------------------

class _CheckedLabels(Mapping[str, np.ndarray]):
    """A LabelMap whose labels are checked on reading: values outside 0..C and 255 would
    otherwise surface as an index error deep inside the loss, without the file or the id."""

    def __init__(self, labels: LabelMap, num_classes: int):
        self.labels, self.num_classes = labels, num_classes

    def __getitem__(self, image_id: str) -> np.ndarray:
        label = self.labels[image_id]
        if label.max(initial=0) > self.num_classes:
            values = np.unique(label)
            bad = values[(values > self.num_classes) & (values != IGNORE)]
            if bad.size:
                raise StoreError(f"{self.labels.path}: label of '{image_id}' has values "
                                 f"{bad.tolist()} outside 0..{self.num_classes} and {IGNORE}")
        return label

    def __iter__(self) -> Iterator[str]:
        return iter(self.labels)

    def __len__(self) -> int:
        return len(self.labels)


def _check_label_sizes(reader: LabelReader, ds: VocDataset, ids: Sequence[str]) -> None:
    """Fail with the file and the id if a label's size is not its image's. SegmentationSet would
    silently resize it; reading the sizes from the HDF5 and image headers costs next to
    nothing, so a wrong store fails before training, not after an epoch."""
    for image_id in ids:
        shape = reader.file[image_id].shape
        path = ds.image_path(image_id)
        try:
            with Image.open(path) as im:
                width, height = im.size
        except (OSError, SyntaxError, ValueError):
            ds.load_image(image_id)  # raises the dataset's error naming the image
            raise
        if tuple(shape) != (height, width):
            raise StoreError(f"{reader.path}: label of '{image_id}' is {list(shape)}, "
                             f"its image ({path}) is {[height, width]}")


def _as_device(device: torch.device | str) -> torch.device:
    return pick_device(device) if isinstance(device, str) else device


def train(ds: VocDataset, split: str, label_path: str | os.PathLike, cfg: dict[str, Any],
          out_dir: str | os.PathLike, device: torch.device | str) -> Path:
    """Train a DeepLab on the `split` labels of `label_path`; returns out_dir/deeplab.pt.

    The label file must cover the split's ids with the dataset's classes and image sizes.
    Checkpoints, the log and resume are `wsss.train.fit`'s (deeplab.checkpoint.pt,
    deeplab.log.csv); deeplab.pt is only written when training is complete.
    """
    training = cfg["training"]
    ids = ds.ids(split)
    with LabelReader(label_path) as reader:
        reader.check(ids, list(ds.classes))
        _check_label_sizes(reader, ds, ids)
    seed_everything(training["seed"])  # the initial weights are part of the run
    method = DeepLab(cfg, ds.num_classes)
    labels = LabelMap(label_path, ids)
    trainset = SegmentationSet(ds, ids, _CheckedLabels(labels, ds.num_classes), training,
                               seed=training["seed"])
    meta = {"config": cfg, "classes": list(ds.classes), "labels": str(label_path)}
    try:
        return fit(method, trainset, training, out_dir, meta, _as_device(device), name="deeplab")
    finally:
        labels.close()


def load_deeplab(weights_path: str | os.PathLike, classes: Sequence[str],
                 device: torch.device) -> DeepLab:
    """The network `train` wrote, in eval mode on `device`; its classes must be `classes`."""
    if not Path(weights_path).is_file():
        raise StoreError(f"{weights_path}: no such DeepLab weights file")
    state = torch.load(weights_path, map_location="cpu", weights_only=False)
    if not isinstance(state, dict) or "method" not in state or "config" not in state:
        raise StoreError(f"{weights_path}: not a DeepLab weights file (deeplab.pt)")
    if list(state.get("classes", [])) != list(classes):
        raise StoreError(f"{weights_path}: trained on classes {state.get('classes')}, "
                         f"the dataset has {list(classes)}")
    method = DeepLab(state["config"], len(classes))
    method.load_state_dict(state["method"])
    return method.to(device).eval()


# -- inference --------------------------------------------------------------------------------

@torch.no_grad()
def multiscale_probs(method: DeepLab, images: Sequence[np.ndarray], scales: Sequence[float],
                     flip: bool) -> list[torch.Tensor]:
    """Per H×W×3 image, (C+1)×H×W class probabilities on the method's device: the softmax of
    the logits upsampled to full resolution, averaged over scales and (with `flip`) mirrors.

    Per scale, all views of the batch go through the network at once, zero-padded at the bottom
    and right to a common size; each view's logits are cropped to the cells that see it.
    """
    device, stride = method.device, method.net.output_stride
    sizes = [img.shape[:2] for img in images]
    n = method.num_classes + 1
    probs = [torch.zeros(n, h, w, device=device) for h, w in sizes]
    views = [scaled_views(img, scales, flip) for img in images]
    per = 2 if flip else 1
    for s in range(len(scales)):
        arrays = [v for per_image in views for v in per_image[s]]
        batch = pad_batch(arrays).to(device, non_blocking=True)
        with method.autocast():
            logits = method(batch)
        for i, (h, w) in enumerate(sizes):
            vh, vw = arrays[i * per].shape[1:]
            ch, cw = math.ceil(vh / stride), math.ceil(vw / stride)
            m = logits[i * per : (i + 1) * per, :, :ch, :cw].float()
            if flip:
                m = torch.stack([m[0], m[1].flip(-1)])
            # the cells cover slightly more than the view: resize to the covered extent, crop
            eh = max(h, math.ceil(ch * stride * h / vh))
            ew = max(w, math.ceil(cw * stride * w / vw))
            probs[i] += upsample(m, (eh, ew))[:, :, :h, :w].softmax(dim=1).sum(dim=0)
    return [p / (len(scales) * per) for p in probs]


def crf_label(image: np.ndarray, probs: np.ndarray, params: dict[str, Any]) -> np.ndarray:
    """uint8 argmax of DeepLab's dense CRF (unary -log probs) on one image (a pool task)."""
    return dense_crf(image, probs, params).argmax(axis=0).astype(np.uint8)


class _Done:
    """A finished result with the AsyncResult interface, for CRFs run in this process."""

    def __init__(self, value: np.ndarray):
        self.value = value

    def ready(self) -> bool:
        return True

    def get(self) -> np.ndarray:
        return self.value


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
    params = crf_params(inference.get("crf")) if crf_out_path is not None else None
    ids = ds.ids(split)
    threads = max(1, threads)
    # forked first: before the network's threads exist and before any HDF5 file is open
    pool = (multiprocessing.get_context("fork").Pool(threads)
            if params is not None and threads > 1 else None)
    try:
        method = load_deeplab(weights_path, ds.classes, _as_device(device))
        if cfg.get("model") is not None and cfg["model"] != method.cfg["model"]:
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
                    if refined is None:
                        continue
                    p_np = p.cpu().numpy()
                    pending.append((image_id, _Done(crf_label(image, p_np, params))
                                    if pool is None else
                                    pool.apply_async(crf_label, (image, p_np, params))))
                while pending and (len(pending) > in_flight or pending[0][1].ready()):
                    image_id, result = pending.popleft()
                    refined.add(image_id, result.get())
                bar.update(len(chunk))
            while pending:
                image_id, result = pending.popleft()
                refined.add(image_id, result.get())
        seconds = time.time() - t0
    finally:
        if pool is not None:
            pool.terminate()
            pool.join()
    return {"images": len(ids), "seconds": seconds, "images_per_second": len(ids) / seconds}
