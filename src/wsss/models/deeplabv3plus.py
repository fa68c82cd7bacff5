"""A DeepLabV3+ decoder (Chen et al., ECCV 2018) with GroupNorm, and a representation head.

CSRM's segmentation and representation branches (`wsss.methods.csrm`) sit on a backbone's
stages: the ASPP reads the last stage, a 1×1 projection reads the first (stride 4), and the
two are concatenated on the stride-4 grid, where
  seg   3×3 conv, GN, ReLU, dropout, 3×3 conv, GN, ReLU, dropout, 1×1 to the class logits;
  rep   3×3 conv, GN, ReLU, 1×1 to `rep_dim` (U2PL's representation head).
Both output on the stride-4 grid. The ASPP ends in DeepLab's dropout 0.5 (the reference's ASPP);
`dropout` is the decoder's. GroupNorm (not BatchNorm) because the branches are trained
from scratch on small batches; the reference's `group_norm` uses 4 groups.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def _gn(channels: int, groups: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(groups, channels), channels)


def _conv_gn_relu(cin: int, cout: int, kernel: int, groups: int, dilation: int = 1
                  ) -> nn.Sequential:
    pad = dilation * (kernel // 2)
    return nn.Sequential(nn.Conv2d(cin, cout, kernel, padding=pad, dilation=dilation, bias=False),
                         _gn(cout, groups), nn.ReLU(inplace=True))


class ASPP(nn.Module):
    """DeepLab-v3's atrous spatial pyramid pooling as features: a 1×1 branch, one 3×3 branch
    per rate and an image-pooling branch, concatenated, fused by a 1×1 conv, then dropout."""

    def __init__(self, in_channels: int, width: int, rates: Sequence[int], groups: int,
                 dropout: float = 0.5):
        super().__init__()
        self.branches = nn.ModuleList(
            [_conv_gn_relu(in_channels, width, 1, groups)]
            + [_conv_gn_relu(in_channels, width, 3, groups, int(r)) for r in rates])
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1),
                                  _conv_gn_relu(in_channels, width, 1, groups))
        self.fuse = _conv_gn_relu(width * (len(rates) + 2), width, 1, groups)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        parts = [branch(x) for branch in self.branches]
        parts.append(self.pool(x).expand(-1, -1, *x.shape[-2:]))
        return self.dropout(self.fuse(torch.cat(parts, dim=1)))


class DeepLabV3PlusHead(nn.Module):
    """Segmentation logits and pixel representations from a backbone's stage outputs.

    `forward(stages)` takes the list of stage outputs (first at stride 4, last the deepest)
    and returns (seg logits (B, num_outputs, h4, w4), representations (B, rep_dim, h4, w4)),
    the representations only when asked (`with_rep`)."""

    def __init__(self, low_channels: int, high_channels: int, num_outputs: int, *,
                 rates: Sequence[int], aspp_width: int, low_width: int, width: int,
                 rep_dim: int, dropout: float, groups: int):
        super().__init__()
        self.aspp = ASPP(high_channels, aspp_width, rates, groups)
        self.project = _conv_gn_relu(low_channels, low_width, 1, groups)
        fused = aspp_width + low_width
        self.seg = nn.Sequential(
            _conv_gn_relu(fused, width, 3, groups), nn.Dropout(dropout),
            _conv_gn_relu(width, width, 3, groups), nn.Dropout(dropout),
            nn.Conv2d(width, num_outputs, 1))
        self.rep = nn.Sequential(_conv_gn_relu(fused, width, 3, groups),
                                 nn.Conv2d(width, rep_dim, 1))
        for m in self.modules():  # the reference: Kaiming normal for the scratch layers
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def features(self, stages: Sequence[torch.Tensor]) -> torch.Tensor:
        low = self.project(stages[0])
        high = F.interpolate(self.aspp(stages[-1]), size=low.shape[-2:], mode="bilinear",
                             align_corners=True)
        return torch.cat([high, low], dim=1)

    def forward(self, stages: Sequence[torch.Tensor], with_rep: bool = True
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
        feats = self.features(stages)
        return self.seg(feats), (self.rep(feats) if with_rep else None)
