"""The method protocol, the registry of methods, and the baseline CAM method.

A method owns its networks, its optimizers and its training step, because methods differ in
exactly that; the generic trainer (`wsss.train`) owns the loop, the learning-rate schedule,
checkpoints and logging. Optimizer param groups carry an `lr_mult` that the trainer multiplies
into the scheduled learning rate.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from wsss.errors import MethodError
from wsss.models.backbones import build_backbone

METHODS: dict[str, type[Method]] = {}
MIN_CELLS = 8  # smallest side, in feature cells, of a downscaled second view


def register(name: str):
    """Class decorator: make a method available as `method: <name>` in config.yaml."""

    def wrap(cls):
        METHODS[name] = cls
        cls.registry_name = name
        return cls

    return wrap


def build_method(cfg: dict[str, Any], num_classes: int) -> Method:
    name = cfg.get("method")
    if name not in METHODS:
        raise MethodError(f"unknown method '{name}'; choose one of {sorted(METHODS)}")
    return METHODS[name](cfg, num_classes)


class Method(nn.Module):
    """Base class of every WSSS method variant.

    Subclasses build their networks in `__init__`, list parameters in `param_groups`, and
    implement `training_step` (forward, loss, backward, optimizer step) and `cams`.
    """

    registry_name = ""

    def __init__(self, cfg: dict[str, Any], num_classes: int):
        super().__init__()
        self.cfg = cfg
        self.num_classes = num_classes
        self.optimizers: list[torch.optim.Optimizer] = []

    # -- training -------------------------------------------------------------------------
    def param_groups(self) -> list[dict[str, Any]]:
        """Parameter groups with `lr_mult`; the default optimizer is SGD over these."""
        raise NotImplementedError(f"{type(self).__name__} must define param_groups")

    def build_optimizers(self, training: dict[str, Any]) -> list[torch.optim.Optimizer]:
        groups = []
        for group in self.param_groups():
            params = [p for p in group["params"] if p.requires_grad]
            if params:
                groups.append({**group, "params": params})
        opt = torch.optim.SGD(
            groups,
            lr=training["lr"],
            momentum=training["momentum"],
            weight_decay=training["weight_decay"],
            nesterov=training.get("nesterov", False),
        )
        for group in opt.param_groups:
            group["initial_lr"] = training["lr"] * group.get("lr_mult", 1.0)
        self.optimizers = [opt]
        return self.optimizers

    def training_step(self, batch: dict[str, torch.Tensor], step: int) -> dict[str, float]:
        raise NotImplementedError(f"{type(self).__name__} must define training_step")

    # -- inference ------------------------------------------------------------------------
    def cams(self, images: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """Raw class activation maps (B, C, h, w) before ReLU and normalisation. `labels`
        (B, C) are the images' class labels, for methods whose maps depend on them."""
        raise NotImplementedError(f"{type(self).__name__} must define cams")

    def seg_probs(self, images: torch.Tensor) -> torch.Tensor | None:
        """(B, C+1, h, w) segmentation probabilities for single-stage methods, else None."""
        return None

    # -- helpers --------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def autocast(self):
        """bfloat16 autocast on CUDA (no loss scaling needed); a no-op on CPU."""
        if self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()


def freeze_batchnorm(module: nn.Module) -> None:
    """Keep BatchNorm layers in eval mode with fixed affine parameters (pretrained statistics)."""
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()
            for p in m.parameters():
                p.requires_grad_(False)


@dataclass
class View:
    """One view of a batch as a base method sees it, for methods that add losses on top
    (`wsss.methods.plugin`). Maps are float32 on the view's feature grid, with gradient."""

    image: torch.Tensor  # (B, 3, H, W) the view's input
    feat: torch.Tensor  # (B, D, h, w) last backbone stage
    cam: torch.Tensor  # (B, C, h, w) raw foreground CAM (before ReLU)
    pseudo: torch.Tensor  # (B, C, h, w) the map the base infers from (SEAM: PCM-revised CAM)


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

    # A method that can serve as a plug-in's base (wsss.methods.plugin.BASES) also defines
    #   view_losses(images, labels, scale=None) -> (its loss terms, "loss" their weighted
    #       total; its views of the batch), `scale` asking for a downscaled second view where
    #       the method has none;
    #   inference_view(images) -> View, the maps it infers from, padding handled.


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
        (opt,) = self.optimizers
        terms, _ = self.view_losses(batch["image"], batch["label"].float())
        opt.zero_grad(set_to_none=True)
        terms["loss"].backward()
        opt.step()
        return {"loss": terms["loss"].item()}

    @torch.no_grad()
    def inference_view(self, images: torch.Tensor) -> View:
        """The batch as the method infers from it (the CAM is also `pseudo`)."""
        return self.view(images)

    @torch.no_grad()
    def cams(self, images: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        with self.autocast():
            return self(images).float()
