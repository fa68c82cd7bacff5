"""Feature extractors built from torchvision's ResNet class.

All backbones return the last feature map and expose `out_channels` and `output_stride`.
ResNet-50/101 are torchvision's networks with the last stage(s) dilated instead of strided
(output stride 16 or 8), the usual setting for CAMs. `tiny` is the same ResNet class with one
BasicBlock per stage and no fourth stage, fast enough to train on a laptop CPU in seconds.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torchvision.models import ResNet50_Weights, ResNet101_Weights, resnet50, resnet101
from torchvision.models.resnet import BasicBlock, ResNet

from wsss import registry
from wsss.errors import BackboneError
from wsss.paths import SYNTHETIC, pretrained_path

# the registry's declaration (read without importing torch); the builders register below
REGISTER = [
    {"kind": "backbone", "name": "tiny", "order": 0},
    {"kind": "backbone", "name": "resnet50", "order": 1},
    {"kind": "backbone", "name": "resnet101", "order": 2},
]
BACKBONES: dict[str, Callable[..., Backbone]] = {}


def register_backbone(name: str):
    def wrap(fn):
        BACKBONES[name] = fn
        return fn

    return wrap


class Backbone(nn.Module):
    """ResNet trunk without pooling and fully connected layer."""

    def __init__(self, net: ResNet, stages: int, out_channels: int, output_stride: int):
        super().__init__()
        self.stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)
        self.stages = nn.ModuleList([getattr(net, f"layer{i}") for i in range(1, stages + 1)])
        self.out_channels = out_channels
        self.output_stride = output_stride

    def forward_stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Outputs of every stage (used by refiners that need multi-level features)."""
        x = self.stem(x)
        feats = []
        for stage in self.stages:
            x = stage(x)
            feats.append(x)
        return feats

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_stages(x)[-1]

    def net_state_dict(self) -> dict[str, torch.Tensor]:
        """The weights under torchvision's ResNet names (conv1, bn1, layer1, ...): what
        `pretrained: <path>` loads, so a trained trunk can be saved as pretrained weights."""
        names = {"stem.0": "conv1", "stem.1": "bn1",
                 **{f"stages.{i}": f"layer{i + 1}" for i in range(len(self.stages))}}
        out = {}
        for key, value in self.state_dict().items():
            head, _, rest = key.partition(".")
            prefix = f"{head}.{rest.partition('.')[0]}"
            out[f"{names[prefix]}.{rest.partition('.')[2]}"] = value.detach().clone()
        return out


def without_pretrained(block: dict[str, Any]) -> dict[str, Any]:
    """A config block holding a `backbone` (a method's, DeepLab's `model`) with that backbone's
    `pretrained` set to none: the block to rebuild a trained network from, whose weights file
    replaces every weight (no download, no dependency on the pretrain stage's file)."""
    return {**block, "backbone": {**block.get("backbone", {}), "pretrained": "none"}}


def _dilation(output_stride: int, name: str) -> list[bool]:
    if output_stride == 16:
        return [False, False, True]
    if output_stride == 8:
        return [False, True, True]
    raise BackboneError(f"backbone '{name}': output_stride must be 8 or 16, got {output_stride}")


def _load_weights(net: nn.Module, pretrained: str, name: str, imagenet) -> None:
    if pretrained == "none":
        return
    if pretrained == "imagenet":
        if imagenet is None:
            raise BackboneError(f"backbone '{name}' has no ImageNet weights; use pretrained: none")
        # downloads into TORCH_HOME on first use; offline nodes read the cache
        state = imagenet.get_state_dict(progress=False)
    else:
        path = pretrained_path(name) if pretrained == SYNTHETIC else Path(pretrained)
        if not path.is_file():
            if pretrained == SYNTHETIC:
                raise BackboneError(f"backbone '{name}', pretrained: synthetic: no weights at "
                                    f"{path}; the pretrain stage writes them "
                                    f"(snakemake {path})")
            raise BackboneError(f"pretrained weights file not found: {path}")
        state = torch.load(path, map_location="cpu", weights_only=True)
        recorded = state.get("backbone") if isinstance(state, dict) else None
        if isinstance(recorded, str) and recorded != name:
            # a pretrain-stage file says which architecture it holds
            raise BackboneError(f"weights '{path}' are for backbone '{state['backbone']}', "
                                f"not '{name}'")
        state = state.get("state_dict", state) if isinstance(state, dict) else state
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    try:
        missing, unexpected = net.load_state_dict(state, strict=False)
    except RuntimeError as err:  # shape mismatches
        raise BackboneError(f"weights '{pretrained}' do not fit backbone '{name}': {err}") from err
    missing = [k for k in missing if not k.startswith("fc.")]
    if missing or unexpected:
        raise BackboneError(
            f"weights '{pretrained}' do not fit backbone '{name}': "
            f"missing {missing[:5]}, unexpected {unexpected[:5]}"
        )


@register_backbone("resnet50")
def _resnet50(output_stride: int = 16, pretrained: str = "none") -> Backbone:
    net = resnet50(weights=None, replace_stride_with_dilation=_dilation(output_stride, "resnet50"))
    _load_weights(net, pretrained, "resnet50", ResNet50_Weights.IMAGENET1K_V1)
    return Backbone(net, 4, 2048, output_stride)


@register_backbone("resnet101")
def _resnet101(output_stride: int = 16, pretrained: str = "none") -> Backbone:
    dil = _dilation(output_stride, "resnet101")
    net = resnet101(weights=None, replace_stride_with_dilation=dil)
    _load_weights(net, pretrained, "resnet101", ResNet101_Weights.IMAGENET1K_V1)
    return Backbone(net, 4, 2048, output_stride)


@register_backbone("tiny")
def _tiny(output_stride: int = 8, pretrained: str = "none", width: int = 32) -> Backbone:
    # torchvision's ResNet assembly with one BasicBlock per stage, three stages and half the
    # usual widths (32/64/128): about a sixth of ResNet-18's cost, trainable on a laptop CPU
    net = ResNet(BasicBlock, [1, 1, 1, 1])
    net.conv1 = nn.Conv2d(3, width, kernel_size=7, stride=2, padding=3, bias=False)
    net.bn1 = nn.BatchNorm2d(width)
    net.inplanes = width
    net.layer1 = net._make_layer(BasicBlock, width, 1)
    net.layer2 = net._make_layer(BasicBlock, 2 * width, 1, stride=2)
    if output_stride == 8:
        net.layer3 = net._make_layer(BasicBlock, 4 * width, 1, stride=1)
    elif output_stride == 16:
        net.layer3 = net._make_layer(BasicBlock, 4 * width, 1, stride=2)
    else:
        raise BackboneError(f"backbone 'tiny': output_stride must be 8 or 16, got {output_stride}")
    del net.layer4, net.fc
    for m in net.modules():  # torchvision's initialisation, re-applied to the replaced layers
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
    _load_weights(net, pretrained, "tiny", None)
    return Backbone(net, 3, 4 * width, output_stride)


def build_backbone(name: str, output_stride: int, pretrained: str = "none") -> Backbone:
    if name not in BACKBONES:
        # a builder in another module (the ViTs, wsss.models.vit) registers when imported
        declared = registry.components("backbone")
        if name not in declared:
            raise BackboneError(f"unknown backbone '{name}'; choose one of {list(declared)}")
        registry.load(declared[name])
        if name not in BACKBONES:
            raise BackboneError(f"{declared[name].path} declares backbone '{name}' but "
                                "registers no builder")
    return BACKBONES[name](output_stride=output_stride, pretrained=pretrained)


def stage_widths(backbone: Backbone) -> list[int]:
    """Output channels of every backbone stage, read off a tiny forward pass (no bookkeeping
    per backbone kind to keep in sync). Every submodule gets back the mode it had: a
    `backbone.train()` would put frozen BatchNorm back into train mode."""
    modes = [(m, m.training) for m in backbone.modules()]
    backbone.eval()
    with torch.no_grad():
        outs = backbone.forward_stages(torch.zeros(1, 3, 32, 32))
    for module, mode in modes:
        module.training = mode
    return [o.shape[1] for o in outs]


def freeze_batchnorm(module: nn.Module) -> None:
    """Keep BatchNorm layers in eval mode with fixed affine parameters (pretrained statistics)."""
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()
            for p in m.parameters():
                p.requires_grad_(False)
