"""A minimal single-stage method, defined outside the package (joins through WSSS_PLUGINS).

The CAM baseline plus a 1×1 convolution on the backbone features that predicts background +
classes. The head learns from the CAM itself: per pixel the argmax of a constant background
score against the image's labelled classes' max-normalised (detached) CAMs, the way
single-stage methods bootstrap their masks. Loss: classification + `head_weight` × that CE.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from wsss import registry
from wsss.methods.base import BaselineCAM, register

REGISTER = {
    "kind": "method",
    "name": "tiny_head",
    "block": "tiny_head",
    # its head is not carried into a plug-in built on it, so it cannot serve as a base
    "base": False,
    "plugin": False,
    "seg_head": True,
    "order": 90,
    "schema": {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "head_weight": {"type": "number", "minimum": 0, "default": 1.0},
            "bg_score": {"type": "number", "minimum": 0, "maximum": 1, "default": 0.3},
        },
    },
}


@register("tiny_head")
class TinyHead(BaselineCAM):
    def __init__(self, cfg: dict[str, Any], num_classes: int):
        super().__init__(cfg, num_classes)
        self.settings = registry.settings("method", "tiny_head", cfg.get("tiny_head"))
        self.head = nn.Conv2d(self.backbone.out_channels, num_classes + 1, 1)

    def param_groups(self) -> list[dict[str, Any]]:
        groups = super().param_groups()
        groups[-1]["params"] = groups[-1]["params"] + list(self.head.parameters())
        return groups

    def head_targets(self, cam: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """(B, h, w) plane indices: background where no labelled class beats `bg_score`."""
        cam = F.relu(cam.detach()) * labels[:, :, None, None]
        cam = cam / (cam.flatten(2).amax(dim=2)[:, :, None, None] + 1e-5)
        bg = torch.full_like(cam[:, :1], float(self.settings["bg_score"]))
        return torch.cat([bg, cam], dim=1).argmax(dim=1)

    def training_step(self, batch: dict[str, torch.Tensor], step: int) -> dict[str, float]:
        labels = batch["label"].float()
        feat = self.backbone(batch["image"])
        cam = self.classifier(feat)
        cls = F.multilabel_soft_margin_loss(cam.mean(dim=(2, 3)), labels)
        seg = F.cross_entropy(self.head(feat), self.head_targets(cam, labels))
        loss = cls + float(self.settings["head_weight"]) * seg
        self.optimize(loss)
        return {"loss": loss.item(), "cls": cls.item(), "seg": seg.item()}

    @torch.no_grad()
    def seg_logits(self, images: torch.Tensor) -> torch.Tensor:
        with self.autocast():
            return self.head(self.backbone(images)).float()

    @torch.no_grad()
    def cams_and_seg(self, images: torch.Tensor, labels: torch.Tensor | None = None
                     ) -> tuple[torch.Tensor, torch.Tensor]:
        """Both maps from one pass of the shared backbone."""
        with self.autocast():
            feat = self.backbone(images)
            return self.classifier(feat).float(), self.head(feat).float()
