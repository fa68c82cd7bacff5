"""DeepLab segmentation networks, retrained on pseudo-labels as the last step of a WSSS pipeline.

Three heads on any backbone of the registry (dilated ResNet; the papers use ResNet-101 at
output stride 8), all ending in `num_classes + 1` logits (background first) on the backbone's
grid, so an h×w input gives ⌈h/stride⌉×⌈w/stride⌉ logits:

- `deeplabv2` (Chen et al. 2017, TPAMI): ASPP = the SUM of one 3×3 convolution per dilation rate
  (6, 12, 18, 24), each straight to the class logits, initialised N(0, 0.01) with zero bias as in
  the released Caffe model. This is the head WSSS papers retrain.
- `deeplabv3` (Chen et al. 2017, arXiv:1706.05587): a 1×1 branch, 3×3 atrous branches at the
  first three rates and an image-pooling branch, each conv + BN + ReLU, concatenated, fused by a
  1×1 conv + BN + ReLU, then a 1×1 classifier. The paper's branch width is 256.
- `largefov` (DeepLab-v1 LargeFOV, Chen et al. 2015): one dilated 3×3 conv to 1024 channels,
  ReLU, dropout 0.5, a 1×1 conv 1024 → 1024, ReLU, dropout 0.5 and a 1×1 classifier. The paper's
  dilation is 12 (on VGG at stride 8); here it is `rates[0]`, so `rates: [12]` reproduces it.

Head widths (256 for deeplabv3, 1024 for largefov) are capped at the backbone's output channels,
which leaves the ResNets (2048 channels) at the papers' widths and keeps the `tiny` backbone's
head (128 channels) from costing several times its trunk.

Rates are in cells of the backbone's grid. DeepLab's 6-24 suit the 41×41 grid of a 321 crop at
stride 8; on much smaller grids the large rates only see zero padding off-centre and their
branches degenerate towards 1×1 convolutions.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from wsss.errors import ConfigError
from wsss.models.backbones import Backbone, build_backbone

REGISTER = [  # the registry's declaration (read without importing torch)
    {"kind": "deeplab_arch", "name": "deeplabv2", "order": 0},
    {"kind": "deeplab_arch", "name": "deeplabv3", "order": 1},
    {"kind": "deeplab_arch", "name": "largefov", "order": 2},
]
ARCHS = tuple(d["name"] for d in REGISTER)
V3_WIDTH = 256  # DeepLab-v3's ASPP branch width
LARGEFOV_WIDTH = 1024  # fc6 / fc7 of DeepLab-LargeFOV


def _classifier_init(conv: nn.Conv2d) -> None:
    """DeepLab's initialisation of layers that output logits: N(0, 0.01), zero bias."""
    nn.init.normal_(conv.weight, mean=0.0, std=0.01)
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)


def _hidden_init(module: nn.Module) -> None:
    """He initialisation of the hidden convs of a head, BN as identity: the usual setting for
    layers trained from scratch in front of ReLUs."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class ASPPSum(nn.Module):
    """DeepLab-v2's ASPP: per rate a dilated 3×3 conv to the logits; the outputs are summed."""

    def __init__(self, in_channels: int, num_outputs: int, rates: Sequence[int]):
        super().__init__()
        self.branches = nn.ModuleList(
            nn.Conv2d(in_channels, num_outputs, 3, padding=r, dilation=r, bias=True)
            for r in rates
        )
        for conv in self.branches:
            _classifier_init(conv)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.branches[0](x)
        for branch in self.branches[1:]:
            out = out + branch(x)
        return out


def _conv_bn_relu(cin: int, cout: int, kernel: int, dilation: int = 1) -> nn.Sequential:
    pad = dilation * (kernel // 2)
    return nn.Sequential(nn.Conv2d(cin, cout, kernel, padding=pad, dilation=dilation, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class ASPPv3(nn.Module):
    """DeepLab-v3's ASPP and classifier.

    The image-pooling branch normalises one value per channel and image, so BatchNorm in
    training mode needs batches of two or more images.
    """

    def __init__(self, in_channels: int, num_outputs: int, rates: Sequence[int], width: int):
        super().__init__()
        self.branches = nn.ModuleList(
            [_conv_bn_relu(in_channels, width, 1)]
            + [_conv_bn_relu(in_channels, width, 3, r) for r in rates]
        )
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), _conv_bn_relu(in_channels, width, 1))
        self.fuse = _conv_bn_relu(width * (len(rates) + 2), width, 1)
        self.classifier = nn.Conv2d(width, num_outputs, 1)
        _hidden_init(self)
        _classifier_init(self.classifier)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        parts = [branch(x) for branch in self.branches]
        parts.append(self.pool(x).expand(-1, -1, *x.shape[-2:]))
        return self.classifier(self.fuse(torch.cat(parts, dim=1)))


class LargeFOV(nn.Module):
    """DeepLab-LargeFOV's fc6 (dilated 3×3), fc7 (1×1) and fc8 (classifier)."""

    def __init__(self, in_channels: int, num_outputs: int, rate: int, width: int):
        super().__init__()
        self.fc6 = nn.Conv2d(in_channels, width, 3, padding=rate, dilation=rate)
        self.fc7 = nn.Conv2d(width, width, 1)
        self.fc8 = nn.Conv2d(width, num_outputs, 1)
        self.dropout = nn.Dropout(0.5)
        _hidden_init(self)
        _classifier_init(self.fc8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.dropout(F.relu(self.fc6(x), inplace=True))
        x = self.dropout(F.relu(self.fc7(x), inplace=True))
        return self.fc8(x)


class DeepLabNet(nn.Module):
    """Backbone + DeepLab head; `forward` returns logits on the backbone's output-stride grid."""

    def __init__(self, backbone: Backbone, head: nn.Module, arch: str):
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.arch = arch

    @property
    def output_stride(self) -> int:
        return self.backbone.output_stride

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(images))

    def head_parameters(self) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
        """(weights, biases) of the head, for DeepLab's learning-rate multipliers.

        DeepLab trains new layers' weights at 10× and their biases at 20× the base rate, without
        weight decay on biases. "Biases" are all of the head's `bias` parameters, BatchNorm
        shifts (deeplabv3) included; BatchNorm scales count as weights.
        """
        weights, biases = [], []
        for name, p in self.head.named_parameters():
            (biases if name.rsplit(".", 1)[-1] == "bias" else weights).append(p)
        return weights, biases


def _rates(model_cfg: dict[str, Any]) -> list[int]:
    rates = model_cfg.get("rates")
    ok = isinstance(rates, list | tuple) and len(rates) > 0 and all(
        isinstance(r, int) and not isinstance(r, bool) and r >= 1 for r in rates)
    if not ok:
        raise ConfigError(
            f"deeplab.model.rates must be a non-empty list of positive integers, got {rates!r}"
        )
    return list(rates)


def build_deeplab(model_cfg: dict[str, Any], num_classes: int) -> DeepLabNet:
    """The DeepLab of a `deeplab.model` block (arch, backbone, rates) for `num_classes`
    foreground classes; it outputs num_classes + 1 logits, background first."""
    arch = model_cfg.get("arch")
    if arch not in ARCHS:
        raise ConfigError(f"deeplab.model.arch: unknown architecture {arch!r}; "
                          f"choose one of {list(ARCHS)}")
    rates = _rates(model_cfg)
    bb = model_cfg["backbone"]
    backbone = build_backbone(bb["name"], bb["output_stride"], bb.get("pretrained", "none"))
    cin, n = backbone.out_channels, num_classes + 1
    if arch == "deeplabv2":
        head: nn.Module = ASPPSum(cin, n, rates)
    elif arch == "deeplabv3":
        head = ASPPv3(cin, n, rates[:3], min(V3_WIDTH, cin))
    else:
        head = LargeFOV(cin, n, rates[0], min(LARGEFOV_WIDTH, cin))
    return DeepLabNet(backbone, head, arch)
