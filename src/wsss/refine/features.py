"""Feature extractors for the refiners' networks, taken from a trained CAM classifier.

On the embedded benchmark there are no ImageNet weights, so PSA's and IRN's networks start from
the backbone the CAM variant trained (it has seen exactly these images); with `pretrained:
imagenet` configs the classifier's backbone began from ImageNet as well.
"""

from __future__ import annotations

from pathlib import Path

import torch

from wsss.models.backbones import Backbone, build_backbone


def classifier_backbone(classifier_path: str | Path, frozen: bool = False) -> Backbone:
    """The backbone of a `classifier.pt` written by `wsss train`, with its trained weights.

    `frozen`: eval mode (fixed BatchNorm statistics) and no gradients, as IRN keeps its trunk.
    """
    state = torch.load(classifier_path, map_location="cpu", weights_only=False)
    bb = state["config"]["backbone"]
    backbone = build_backbone(bb["name"], bb["output_stride"], "none")
    # "backbone." for a method that owns its backbone, "base.backbone." for a plug-in method
    # (HSC, DSCNet), whose base owns it: the shortest prefix ending in "backbone."
    prefix = min((k[: k.index("backbone.") + len("backbone.")] for k in state["method"]
                  if "backbone." in k), key=len, default="backbone.")
    weights = {k[len(prefix):]: v for k, v in state["method"].items() if k.startswith(prefix)}
    backbone.load_state_dict(weights)
    if frozen:
        backbone.eval()
        backbone.requires_grad_(False)
    return backbone
