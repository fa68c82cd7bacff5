"""The trunks of the learned refiners' networks: a trained CAM classifier's backbone, or a
backbone built fresh from a declared block (an ImageNet one, as the papers use).

A learned kind's `trunk` setting picks one (`refiner_trunk`): `source: classifier` (the default)
takes the backbone the CAM variant trained; on the embedded benchmark, which has no ImageNet
weights, that is the only trunk that has seen these images, and with `pretrained: imagenet`
configs the classifier's backbone began from ImageNet as well. `wsss.train.fit` stores it on
its own in classifier.pt (its `backbone` entry, the trunk's state dict, whatever the method
calls it inside), next to the backbone block `config.backbone`. `source: pretrained` builds
`trunk.backbone` ({name, output_stride, pretrained}) with `build_backbone`, as IRN (a frozen
ImageNet ResNet-50) and PSA (ImageNet ResNet-38) do; the classifier is then not read.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

import torch

from wsss.errors import ConfigError
from wsss.models.backbones import Backbone, build_backbone
from wsss.store import StoreError

TRUNK_SOURCES = ("classifier", "pretrained")
BACKBONE_KEYS = ("name", "output_stride", "pretrained")  # what build_backbone reads


class Trunk(NamedTuple):
    """A refiner network's backbone and the block that rebuilds its architecture
    ({name, output_stride, ...}; the weights file records it as `backbone_config`)."""

    backbone: Backbone
    config: dict[str, Any]


def classifier_trunk(classifier_path: str | Path, frozen: bool = False) -> Trunk:
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
    return Trunk(_freeze(backbone) if frozen else backbone, block)


def _freeze(backbone: Backbone) -> Backbone:
    backbone.eval()
    backbone.requires_grad_(False)
    return backbone


def check_trunk(trunk: dict[str, Any], key: str = "trunk") -> None:
    """A ConfigError naming `key` (e.g. `refiners.<name>.trunk`) for an unknown `source`, a
    pretrained trunk without a complete `backbone` block, or a `backbone` block with
    `source: classifier` (where it would be silently ignored)."""
    source, block = trunk.get("source"), trunk.get("backbone")
    if source == "classifier":
        if block is not None:
            raise ConfigError(f"{key}.backbone is read only with source 'pretrained' (source is "
                              f"'classifier': the classifier's own backbone)")
    elif source == "pretrained":
        missing = [k for k in BACKBONE_KEYS if not isinstance(block, dict) or k not in block]
        if missing:
            raise ConfigError(f"{key}.backbone: source 'pretrained' needs a backbone block with "
                              f"{list(BACKBONE_KEYS)}; missing {missing}")
    else:
        raise ConfigError(f"{key}.source {source!r}: expected one of {list(TRUNK_SOURCES)}")


def refiner_trunk(trunk: dict[str, Any], classifier_path: str | Path | None, frozen: bool = False,
                  key: str = "trunk") -> Trunk:
    """The trunk a learned refiner's `trunk` setting asks for (see the module doc, and
    `check_trunk` for the errors); `frozen` as in `classifier_trunk`. A pretrained trunk's
    block is recorded as given (so the weights file says where its initial weights came from);
    loading reads its architecture only and takes the weights from the file
    (`wsss.refine.learned.load_network`). Building a backbone with `pretrained: none` draws
    its initial weights from torch's generator: seed first.
    """
    check_trunk(trunk, key)
    if trunk["source"] == "classifier":
        if classifier_path is None:
            raise ConfigError(f"{key}.source 'classifier' needs the classifier's weights file")
        return classifier_trunk(classifier_path, frozen)
    block = trunk["backbone"]
    backbone = build_backbone(block["name"], block["output_stride"], block["pretrained"])
    return Trunk(_freeze(backbone) if frozen else backbone, dict(block))


def classifier_backbone(classifier_path: str | Path, frozen: bool = False) -> Backbone:
    """The trained backbone of a `classifier.pt` (see `classifier_trunk`)."""
    return classifier_trunk(classifier_path, frozen).backbone
