"""Methods that plug extra heads and losses into a base method (HSC, DSCNet on SEAM or CAM).

A plug-in's config block (`hsc:`, `dscnet:` …) names its base (`base: seam | baseline`); the
base is built from the same method block, so `seam:` settings apply to `hsc` on SEAM exactly as
to `seam` alone. One training step runs the base's `view_losses` (its own loss terms and its
views of the batch: features, CAM, the map it infers from), adds the plug-in's terms computed
from those views, and steps one SGD optimizer over the base's parameter groups plus the
plug-in's heads (at `new_layer_lr_mult`, like every new layer).

A base without a second view of its own (the CAM baseline) is given one, the crop downscaled
by `view_scale` (0.3 unless set), so that cross-view terms have a partner.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from wsss.errors import MethodError
from wsss.methods.base import METHODS, Method, View

BASES = ("baseline", "seam")
DEFAULT_VIEW_SCALE = 0.3


def merge_settings(defaults: dict[str, Any], given: dict[str, Any] | None) -> dict[str, Any]:
    """`defaults` deep-copied, with `given` merged in recursively (nested dicts key by key)."""
    out = copy.deepcopy(defaults)
    for key, value in (given or {}).items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge_settings(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


class PluginMethod(Method):
    """Base class of plug-in methods. Subclasses set `block` and `DEFAULTS`, build their heads
    in `__init__` (after this one), list them in `heads`, and implement `plugin_losses`."""

    block = ""
    DEFAULTS: dict[str, Any] = {}

    def __init__(self, cfg: dict[str, Any], num_classes: int):
        super().__init__(cfg, num_classes)
        self.settings = merge_settings(self.DEFAULTS, cfg.get(self.block))
        base = self.settings.get("base")
        if base not in BASES:
            raise MethodError(f"{self.block}.base: unknown base method '{base}'; "
                              f"choose one of {list(BASES)}")
        self.base = METHODS[base](cfg, num_classes)

    @property
    def feat_dim(self) -> int:
        return self.base.backbone.out_channels

    def heads(self) -> list[nn.Module]:
        """The plug-in's own layers (trained at the new-layer learning rate)."""
        raise NotImplementedError(f"{type(self).__name__} must define heads")

    def param_groups(self) -> list[dict[str, Any]]:
        new_mult = self.cfg["training"]["new_layer_lr_mult"]
        params = [p for m in self.heads() for p in m.parameters()]
        return [*self.base.param_groups(),
                {"params": params, "lr_mult": new_mult, "name": self.block}]

    def view_scale(self) -> float | None:
        """Scale of the second view: the base's own (None) unless the base has none."""
        scale = self.settings.get("view_scale")
        if scale is None and self.settings["base"] == "baseline":
            return DEFAULT_VIEW_SCALE
        return scale

    def plugin_losses(self, views: list[View], labels: torch.Tensor,
                      step: int) -> dict[str, torch.Tensor]:
        """The plug-in's terms; key "loss" is their weighted sum, added to the base's loss.
        Every key must be present at every step (the training log has fixed columns)."""
        raise NotImplementedError(f"{type(self).__name__} must define plugin_losses")

    def losses(self, images: torch.Tensor, labels: torch.Tensor,
               step: int = 0) -> dict[str, torch.Tensor]:
        """Every term of the base and of the plug-in, their totals under "base" and the
        plug-in's block name, and the sum under "loss"."""
        base_terms, views = self.base.view_losses(images, labels, self.view_scale())
        extra = self.plugin_losses(views, labels, step)
        total = base_terms["loss"] + extra["loss"]
        out = {"loss": total, "base": base_terms["loss"], self.block: extra["loss"]}
        for terms in (base_terms, extra):
            for key, value in terms.items():
                if key != "loss":
                    if key in out:  # a programming error: one log column for two terms
                        raise MethodError(f"{self.block}: loss term '{key}' named twice")
                    out[key] = value
        return out

    def training_step(self, batch: dict[str, torch.Tensor], step: int) -> dict[str, float]:
        (opt,) = self.optimizers
        terms = self.losses(batch["image"], batch["label"].float(), step)
        opt.zero_grad(set_to_none=True)
        terms["loss"].backward()
        opt.step()
        return {k: float(v.detach()) for k, v in terms.items()}

    @torch.no_grad()
    def cams(self, images: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        return self.base.cams(images, labels)
