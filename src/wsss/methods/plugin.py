"""Methods that plug extra heads and losses into a base method (HSC, DSCNet on SEAM or CAM).

A plug-in declares itself in its module's REGISTER (`"plugin": True`, its settings key `block`
and the JSON-schema of that block, defaults included: the one place they live). Its block names
its base (`<block>.base`), any method whose REGISTER says `"base": True`; the base is built from
the same method block, so `seam:` settings apply to a plug-in on SEAM exactly as to `seam` alone.
One training step runs the base's `view_losses` (its own loss terms and its views of the batch:
features, CAM, the map it infers from), adds the plug-in's terms computed from those views, and
steps one SGD optimizer over the base's parameter groups plus the plug-in's heads (at
`new_layer_lr_mult`, like every new layer).

What a base provides (besides being a `Method`): `view_losses(images, labels, scale=None)`,
`inference_view(images)` (see `wsss.methods.base.BackboneMethod`), `trunk` (its backbone) and,
when its `view_losses` makes a second view of its own (SEAM), a class attribute
`second_view = True`. A base without one (the CAM baseline) is given one, the crop downscaled by
`view_scale` (0.3 unless set), so that cross-view terms have a partner.
"""

from __future__ import annotations

from abc import abstractmethod
from typing import Any

import torch
from torch import nn

from wsss import registry
from wsss.errors import ConfigError, MethodError
from wsss.methods.base import Method, View, method_class

DEFAULT_VIEW_SCALE = 0.3


def base_names() -> list[str]:
    """The methods declared able to serve as a plug-in's base, in registry order."""
    return [name for name, comp in registry.components("method").items() if comp.get("base")]


class PluginMethod(Method):
    """Base class of plug-in methods. Subclasses build their heads in `__init__` (after this
    one), list them in `heads`, and implement `plugin_losses`; their block name and defaults come
    from their REGISTER (found under the name they are registered with)."""

    block = ""

    def __init__(self, cfg: dict[str, Any], num_classes: int):
        super().__init__(cfg, num_classes)
        declared = registry.component("method", self.registry_name)
        self.block = declared.get("block") or declared.name
        self.settings = registry.settings("method", declared.name, cfg.get(self.block))
        key = f"{self.block}.base"
        base = self.settings.get("base")
        bases = base_names()
        if base not in bases:
            raise MethodError(f"{key}: {base!r} cannot serve as a base method; "
                              f"choose one of {bases}")
        self.base = method_class(base, key=key)(cfg, num_classes)

    @property
    def trunk(self) -> nn.Module:
        """The backbone the plug-in's heads read: its base's."""
        return self.base.trunk

    def init_from(self, state_dict: dict[str, Any], source: str = "the given weights") -> int:
        """From a plug-in of the same kind: tensor by tensor as any method. From a base-method
        classifier (e.g. the CAM baseline's), whose names lack the `base.` prefix: through the
        base, the plug-in's heads left as initialised."""
        try:
            return super().init_from(state_dict, source)
        except ConfigError:
            return self.base.init_from(state_dict, source)

    @property
    def feat_dim(self) -> int:
        return self.trunk.out_channels

    @abstractmethod
    def heads(self) -> list[nn.Module]:
        """The plug-in's own layers (trained at the new-layer learning rate)."""

    def param_groups(self) -> list[dict[str, Any]]:
        new_mult = self.cfg["training"]["new_layer_lr_mult"]
        params = [p for m in self.heads() for p in m.parameters()]
        return [*self.base.param_groups(),
                {"params": params, "lr_mult": new_mult, "name": self.block}]

    def view_scale(self) -> float | None:
        """Scale of the second view: the base's own (None) unless the base has none."""
        scale = self.settings.get("view_scale")
        if scale is None and not self.base.second_view:
            return DEFAULT_VIEW_SCALE
        return scale

    @abstractmethod
    def plugin_losses(self, views: list[View], labels: torch.Tensor,
                      step: int) -> dict[str, torch.Tensor]:
        """The plug-in's terms; key "loss" is their weighted sum, added to the base's loss.
        Every key must be present at every step (the training log has fixed columns)."""

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
        terms = self.losses(batch["image"], batch["label"].float(), step)
        self.optimize(terms["loss"])
        return {k: float(v.detach()) for k, v in terms.items()}

    @torch.no_grad()
    def cams(self, images: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        return self.base.cams(images, labels)
