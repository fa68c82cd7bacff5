"""Feature extractors for the learned refiners' networks, taken from a trained CAM classifier.

On the embedded benchmark there are no ImageNet weights, so the refiners' networks start from
the backbone the CAM variant trained (it has seen exactly these images); with `pretrained:
imagenet` configs the classifier's backbone began from ImageNet as well. `wsss.train.fit`
stores that backbone on its own in classifier.pt (its `backbone` entry, the trunk's state dict,
whatever the method calls it inside), next to the backbone block `config.backbone`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

import torch

from wsss.models.backbones import Backbone, build_backbone
from wsss.store import StoreError


class ClassifierTrunk(NamedTuple):
    """A classifier's trained backbone and its config block ({name, output_stride, ...})."""

    backbone: Backbone
    config: dict[str, Any]


def classifier_trunk(classifier_path: str | Path, frozen: bool = False) -> ClassifierTrunk:
    """The backbone of a `classifier.pt` written by `wsss train`, with its trained weights,
    and its backbone block.

    `frozen`: eval mode (fixed BatchNorm statistics) and no gradients, as IRN keeps its trunk.
    A StoreError names the file when it has no `backbone` entry (written before fit stored one).
    """
    path = Path(classifier_path)
    if not path.is_file():
        raise StoreError(f"{path}: no such classifier file")
    state = torch.load(path, map_location="cpu", weights_only=False)
    if "backbone" not in state:
        raise StoreError(f"{path}: no 'backbone' entry (the trained trunk's weights); the "
                         f"file predates it: train the classifier again")
    try:
        block = state["config"]["backbone"]
    except (KeyError, TypeError) as err:
        raise StoreError(f"{path}: no backbone block in its config") from err
    backbone = build_backbone(block["name"], block["output_stride"], "none")
    backbone.load_state_dict(state["backbone"])
    if frozen:
        backbone.eval()
        backbone.requires_grad_(False)
    return ClassifierTrunk(backbone, block)


def classifier_backbone(classifier_path: str | Path, frozen: bool = False) -> Backbone:
    """The trained backbone of a `classifier.pt` (see `classifier_trunk`)."""
    return classifier_trunk(classifier_path, frozen).backbone
