"""Training DeepLab on pseudo-labels.

`train` fits a DeepLab (`wsss.models.deeplab`) to a label store with the generic trainer
(`wsss.train.fit`: poly lr, checkpoints, resume), using DeepLab's recipe: SGD with the head's
weights at `head_lr_mult` and its biases at `head_bias_lr_mult` times the base rate (no weight
decay on biases), cross-entropy that ignores 255, optional multi-scale inputs (DeepLab-v2's MSC:
logits of every scale and their max-fusion each get a loss) and optionally frozen backbone BN.
`load_deeplab` reads the weights back for `wsss.deeplab.predict`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from wsss.data.transforms import SegmentationSet, upsample
from wsss.models.backbones import freeze_batchnorm, without_pretrained
from wsss.models.deeplab import build_deeplab
from wsss.store import LabelMap, LabelReader, StoreError
from wsss.train import Trainable, fit, pick_device, seed_everything
from wsss.train.resume import backbone_modules, pretrained_inputs, resume_key

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


class DeepLab(Trainable):
    """A DeepLab driven by `wsss.train.fit` (a trainable network, not a WSSS method).

    `cfg` is the `deeplab` block; only `model` and `training` are used here.
    """

    def __init__(self, cfg: dict[str, Any], num_classes: int):
        super().__init__()
        self.cfg = cfg
        self.num_classes = num_classes
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
        with self.autocast():
            outputs = self.msc_logits(batch["image"])
        loss = sum(segmentation_loss(o.float(), batch["label"]) for o in outputs)
        self.optimize(loss)
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
        shape = reader.shape(image_id)
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


def as_device(device: torch.device | str) -> torch.device:
    """`device` as a torch device (a name goes through `pick_device`, so "auto" works)."""
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
    # resumed only from the same code (wsss.cli.deeplab_train's, the backbone's) and files
    code = ["wsss.cli.deeplab_train", *backbone_modules(cfg)]
    reads = {"labels": label_path, **pretrained_inputs(cfg["model"])}
    try:  # the label map is closed whatever fails, hashing the files included
        meta["resume_key"] = resume_key(method, trainset, code, reads)
        return fit(method, trainset, training, out_dir, meta, as_device(device), name="deeplab")
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
    method = DeepLab({**state["config"], "model": without_pretrained(state["config"]["model"])},
                     len(classes))
    method.load_state_dict(state["method"])
    return method.to(device).eval()
