"""Heads on FSR's ViT encoder (`wsss.models.vit`): DeepLab-LargeFOV, the segmentation
decoder of ToCo and FSR, and DINO's projection head for the self-distillation branches.

`DINOHead`'s last layer is DINO's weight-normalised linear layer with its magnitude fixed at 1,
written directly as `F.linear(x, F.normalize(v, dim=1))` with `v` the only parameter: the
same function as `weight_norm` with g ≡ 1 frozen, with a plain state dict (`last_v`)
and no parametrisation to freeze.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class LargeFOV(nn.Module):
    """3×3 conv (dilation `dilation`, no bias) → ReLU → 3×3 conv (same) → ReLU → 1×1 conv to
    `out_ch` (no bias); kaiming-normal (fan_out) initialisation. Keeps the spatial size."""

    def __init__(self, in_ch: int, out_ch: int, width: int = 512, dilation: int = 5):
        super().__init__()
        self.conv6 = nn.Conv2d(in_ch, width, 3, padding=dilation, dilation=dilation, bias=False)
        self.conv7 = nn.Conv2d(width, width, 3, padding=dilation, dilation=dilation, bias=False)
        self.conv8 = nn.Conv2d(width, out_ch, 1, bias=False)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv8(F.relu(self.conv7(F.relu(self.conv6(x)))))


class DINOHead(nn.Module):
    """MLP in → hidden (→ hidden …) → bottleneck with GELU between (`layers` linear layers),
    L2-normalised, then a weight-normalised Linear(bottleneck, out_dim, bias=False) whose rows
    have norm 1. Acts on the last dimension: tokens B×N×in_dim or cls B×in_dim."""

    def __init__(self, in_dim: int, out_dim: int, hidden: int = 2048, bottleneck: int = 256,
                 layers: int = 3):
        super().__init__()
        if layers < 1:
            raise ValueError(f"DINOHead needs at least one layer, got {layers}")
        widths = [in_dim] + [hidden] * (layers - 1) + [bottleneck]
        mods: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(widths[:-1], widths[1:], strict=True)):
            mods += [nn.Linear(a, b)] + ([nn.GELU()] if i < layers - 1 else [])
        self.mlp = nn.Sequential(*mods)
        for m in self.mlp:
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        # the direction v of the last layer; its magnitude is fixed at 1 by the normalisation.
        # Initialised as nn.Linear's weight (DINO and FSR build it as a Linear after their
        # trunc-normal pass over the MLP)
        self.last_v = nn.Parameter(torch.empty(out_dim, bottleneck))
        nn.init.kaiming_uniform_(self.last_v, a=math.sqrt(5))

    def last_weight(self) -> torch.Tensor:
        """The last layer's effective weight: unit-norm rows."""
        return F.normalize(self.last_v, dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.normalize(self.mlp(x), dim=-1)
        return F.linear(x, self.last_weight())
