"""The method protocol, the registry of methods, and the baseline CAM method.

A method owns its networks, its optimizers and its training step, because methods differ in
exactly that; the generic trainer (`wsss.train`) owns the loop, the learning-rate schedule,
checkpoints and logging. Optimizer param groups carry an `lr_mult` that the trainer multiplies
into the scheduled learning rate.
"""

from __future__ import annotations

import logging
import os
from abc import abstractmethod
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from wsss import registry
from wsss.errors import ConfigError, MethodError
from wsss.models.backbones import build_backbone, freeze_batchnorm, without_pretrained
from wsss.train import Trainable

log = logging.getLogger(__name__)
METHODS: dict[str, type[Method]] = {}
MIN_CELLS = 8  # smallest side, in feature cells, of a downscaled second view
NORM_EPS = 1e-5


def register(name: str):
    """Class decorator: make a method available as `method: <name>` in config.yaml."""

    def wrap(cls):
        METHODS[name] = cls
        cls.registry_name = name
        return cls

    return wrap


def load_method(checkpoint: str | os.PathLike, cfg: dict[str, Any], num_classes: int,
                device: torch.device | str = "cpu") -> Method:
    """The trained method of a `classifier.pt`, built from `cfg`, on `device`, in eval mode."""
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)
    if state.get("config") != cfg:
        log.warning("%s was trained with a different config block than the one given", checkpoint)
    method = build_method(without_pretrained(cfg) if "backbone" in cfg else cfg, num_classes)
    method.load_state_dict(state["method"])
    return method.to(device).eval()


def method_class(name: Any, key: str = "method") -> type[Method]:
    """The class registered as `name`, its module imported through the registry (so a method
    module is imported only where a variant uses it); a ConfigError names `key` otherwise."""
    comp = registry.component("method", name, key)
    registry.load(comp)
    if comp.name not in METHODS:
        raise MethodError(f"{comp.path} declares method '{comp.name}' but registers no class")
    return METHODS[comp.name]


def build_method(cfg: dict[str, Any], num_classes: int) -> Method:
    return method_class(cfg.get("method"))(cfg, num_classes)


class Method(Trainable):
    """Base class of every WSSS method variant.

    Subclasses build their networks in `__init__`, list parameters in `param_groups`, and
    implement `training_step` (forward, loss, `self.optimize(loss)`) and `cams`; `begin` for
    warm-ups and ramps, `init_from` for starting from another variant. The training contract
    (`wsss.train.Trainable`) owns optimizers, schedule hooks and device handling; state beyond
    the weights (teachers, banks) goes in the state_dict (`wsss.train.EMA`, `wsss.train.FIFO`).
    """

    registry_name = ""

    def __init__(self, cfg: dict[str, Any], num_classes: int):
        super().__init__()
        self.cfg = cfg
        self.num_classes = num_classes

    # -- inference ------------------------------------------------------------------------
    @abstractmethod
    def cams(self, images: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """Raw class activation maps (B, C, h, w) before ReLU and normalisation. `labels`
        (B, C) are the images' class labels, for methods whose maps depend on them."""

    def seg_logits(self, images: torch.Tensor) -> torch.Tensor:
        """(B, C+1, h, w) segmentation logits of a method with a segmentation head (declared
        `seg_head` in its REGISTER); methods without one do not override this."""
        raise NotImplementedError(f"{type(self).__name__} has no segmentation head")

    def cams_and_seg(self, images: torch.Tensor, labels: torch.Tensor | None = None
                     ) -> tuple[torch.Tensor, torch.Tensor]:
        """Both maps of a batch, for CAM extraction of a method with a segmentation head. This
        default runs two forward passes; a method whose CAMs and head share a trunk overrides
        it to run the trunk once."""
        return self.cams(images, labels), self.seg_logits(images)

    # -- training -------------------------------------------------------------------------
    def init_from(self, state_dict: dict[str, Any], source: str = "the given weights") -> int:
        """Start from another variant's trained weights (`init_from:`): load every entry of
        `state_dict` whose name and shape match one of this method's tensors, leave the rest
        as initialised, and return how many were loaded. A ConfigError naming `source` when
        none matches. Methods with a teacher copy the loaded student into it afterwards."""
        own = self.state_dict()
        match = {k: v for k, v in state_dict.items()
                 if torch.is_tensor(v) and torch.is_tensor(own.get(k)) and v.shape == own[k].shape}
        if not match:
            raise ConfigError(f"init_from {source}: none of its {len(state_dict)} entries matches "
                              f"a tensor of {type(self).__name__} by name and shape")
        self.load_state_dict(match, strict=False)
        log.info("init_from %s: loaded %d tensors, skipped %d of its %d; %d of %d of %s's "
                 "left as initialised", source, len(match), len(state_dict) - len(match),
                 len(state_dict), len(own) - len(match), len(own), type(self).__name__)
        return len(match)


@dataclass
class View:
    """One view of a batch as a base method sees it, for methods that add losses on top
    (`wsss.methods.plugin`). Maps are float32 on the view's feature grid, with gradient."""

    image: torch.Tensor  # (B, 3, H, W) the view's input
    feat: torch.Tensor  # (B, D, h, w) last backbone stage
    cam: torch.Tensor  # (B, C, h, w) raw foreground CAM (before ReLU)
    pseudo: torch.Tensor  # (B, C, h, w) the map the base infers from (SEAM: PCM-revised CAM)


def max_norm(x: torch.Tensor) -> torch.Tensor:
    """ReLU, then per-channel min-max scaling of (B, C, h, w) to [0, 1) (SEAM's and ACR's
    `max_norm`)."""
    x = F.relu(x)
    hi = x.amax(dim=(2, 3), keepdim=True)
    lo = x.amin(dim=(2, 3), keepdim=True)
    return F.relu(x - lo - NORM_EPS) / (hi - lo + NORM_EPS)


def second_view_size(size: tuple[int, int], scale: float, stride: int,
                     min_cells: int) -> tuple[int, int]:
    """Size of the downscaled second view: `scale` × the crop, but at least `min_cells` feature
    cells on each side. SEAM's 0.3 of a 448 crop is 134 px, 16 cells at stride 8; the same
    ratio on a 96 px crop would leave 3 cells, too few for a map to be compared with."""
    floor = min_cells * stride
    return tuple(min(n, max(floor, int(n * scale), 1)) for n in size)  # type: ignore[return-value]


def resize_view(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear, align_corners=True (SEAM's convention); a no-op at the same size."""
    if tuple(images.shape[-2:]) == tuple(size):
        return images
    return F.interpolate(images, size=size, mode="bilinear", align_corners=True)


class BackboneMethod(Method):
    """A method around one backbone built from cfg["backbone"], whose BatchNorm layers stay
    frozen (statistics and affine parameters) when `freeze_bn` is set."""

    second_view = False  # makes a downscaled second view of its own (plug-ins read it)

    def __init__(self, cfg: dict[str, Any], num_classes: int):
        super().__init__(cfg, num_classes)
        bb = cfg["backbone"]
        self.backbone = build_backbone(bb["name"], bb["output_stride"], bb["pretrained"])
        self.freeze_bn = bool(bb.get("freeze_bn", False))
        if self.freeze_bn:
            freeze_batchnorm(self.backbone)

    def train(self, mode: bool = True):
        super().train(mode)
        if mode and self.freeze_bn:  # nn.Module.train would switch the frozen BN back
            freeze_batchnorm(self.backbone)
        return self

    @property
    def stride(self) -> int:
        return int(self.cfg["backbone"]["output_stride"])

    @property
    def trunk(self) -> nn.Module:
        """The backbone, saved on its own in the classifier file (its `backbone` entry)."""
        return self.backbone

    # A method that can serve as a plug-in's base (declared `base` in its REGISTER) also defines
    #   view_losses(images, labels, scale=None) -> (its loss terms, "loss" their weighted
    #       total; its views of the batch), `scale` asking for a downscaled second view where
    #       the method has none;
    #   inference_view(images) -> View, the maps it infers from.


REGISTER = {"kind": "method", "name": "baseline", "base": True, "cam_norm": "max", "order": 0}


@register("baseline")
class BaselineCAM(BackboneMethod):
    """CAM (Zhou et al. 2016): backbone, 1×1 conv classifier, global average pooling,
    multilabel soft-margin loss. The CAM is the classifier applied at every position."""

    def __init__(self, cfg: dict[str, Any], num_classes: int):
        super().__init__(cfg, num_classes)
        self.classifier = nn.Conv2d(self.backbone.out_channels, num_classes, 1, bias=False)
        nn.init.xavier_uniform_(self.classifier.weight)

    def param_groups(self) -> list[dict[str, Any]]:
        new_mult = self.cfg["training"]["new_layer_lr_mult"]
        return [
            {"params": list(self.backbone.parameters()), "lr_mult": 1.0, "name": "backbone"},
            {"params": list(self.classifier.parameters()), "lr_mult": new_mult, "name": "new"},
        ]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.backbone(images))

    def view(self, images: torch.Tensor) -> View:
        with self.autocast():
            feat = self.backbone(images)
            cam = self.classifier(feat)
        return View(images, feat.float(), cam.float(), cam.float())

    def view_losses(self, images: torch.Tensor, labels: torch.Tensor,
                    scale: float | None = None) -> tuple[dict[str, torch.Tensor], list[View]]:
        """Classification loss, averaged over the crop and (with `scale`) its downscaled copy
        of at least `min_cells` feature cells a side."""
        views = [self.view(images)]
        if scale is not None:
            size = second_view_size(tuple(images.shape[-2:]), scale, self.stride, MIN_CELLS)
            views.append(self.view(resize_view(images, size)))
        cls = sum(F.multilabel_soft_margin_loss(v.cam.mean(dim=(2, 3)), labels)
                  for v in views) / len(views)
        return {"loss": cls, "cls": cls}, views

    def training_step(self, batch: dict[str, torch.Tensor], step: int) -> dict[str, float]:
        terms, _ = self.view_losses(batch["image"], batch["label"].float())
        self.optimize(terms["loss"])
        return {"loss": terms["loss"].item()}

    @torch.no_grad()
    def inference_view(self, images: torch.Tensor) -> View:
        """The batch as the method infers from it (the CAM is also `pseudo`)."""
        return self.view(images)

    @torch.no_grad()
    def cams(self, images: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        with self.autocast():
            return self(images).float()
