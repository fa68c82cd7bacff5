"""A pix2pix-style U-Net that decodes a full-resolution feature map into an image (ACR's
reconstructor decoder, `wsss.methods.acr`).

`depth` down blocks (4×4 convolutions of stride 2, InstanceNorm without affine parameters except
on the first and the last, LeakyReLU 0.2), `depth - 1` up blocks (4×4 transposed convolutions of
stride 2, InstanceNorm, ReLU, the skip of the matching down block concatenated), then a nearest
×2 upsampling and a 3×3 convolution to `out_channels`, no output activation. Widths start at
`width` and double per level up to `max_width`; dropout `dropout` on the down blocks from the
fourth on and on the up blocks whose outputs are at those levels (pix2pix's generator). ACR's
is depth 8, width 64, max 512 on 256 px crops (its bottleneck is 1×1); the input side must be
a multiple of 2^depth, so a smaller crop needs a shallower U-Net.
"""

from __future__ import annotations

import torch
from torch import nn

FIRST_DROPOUT_LEVEL = 3  # pix2pix: dropout from the fourth down block on


class Down(nn.Module):
    def __init__(self, c_in: int, c_out: int, norm: bool, dropout: float):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(c_in, c_out, 4, 2, 1, bias=False)]
        if norm:
            layers.append(nn.InstanceNorm2d(c_out, affine=False))
        layers.append(nn.LeakyReLU(0.2))
        if dropout:
            layers.append(nn.Dropout(dropout))
        self.body = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class Up(nn.Module):
    def __init__(self, c_in: int, c_out: int, dropout: float):
        super().__init__()
        layers: list[nn.Module] = [nn.ConvTranspose2d(c_in, c_out, 4, 2, 1, bias=False),
                                   nn.InstanceNorm2d(c_out, affine=False), nn.ReLU()]
        if dropout:
            layers.append(nn.Dropout(dropout))
        self.body = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.body(x), skip], dim=1)


class UNetDecoder(nn.Module):
    """(B, in_channels, H, W) -> (B, out_channels, H, W), H and W multiples of `2**depth`."""

    # channels-last runs these convolutions faster on CPU (tests/benchmarks/bench_acr.py; the
    # figure is in the README, "ACR on the benchmark"); results are the same up to float
    # rounding. A class attribute so that the benchmark can compare both layouts.
    channels_last = True

    def __init__(self, in_channels: int, out_channels: int = 3, depth: int = 8, width: int = 64,
                 max_width: int = 512, dropout: float = 0.5):
        super().__init__()
        if depth < 2:
            raise ValueError(f"U-Net depth must be at least 2, got {depth}")
        self.depth = depth
        widths = [min(width * 2**i, max_width) for i in range(depth)]
        drops = [dropout if i >= FIRST_DROPOUT_LEVEL else 0.0 for i in range(depth)]
        self.downs = nn.ModuleList(
            Down(in_channels if i == 0 else widths[i - 1], widths[i],
                 norm=0 < i < depth - 1, dropout=drops[i])
            for i in range(depth))
        # up block j takes level depth-1-j to level depth-2-j and joins that level's skip
        ups = []
        c_in = widths[-1]
        for level in range(depth - 2, -1, -1):
            ups.append(Up(c_in, widths[level], dropout=drops[level]))
            c_in = 2 * widths[level]
        self.ups = nn.ModuleList(ups)
        self.final = nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"),
                                   nn.Conv2d(c_in, out_channels, 3, padding=1))
        if self.channels_last:
            self.to(memory_format=torch.channels_last)

    @property
    def multiple(self) -> int:
        """The input side must be a multiple of this."""
        return 2**self.depth

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2] % self.multiple or x.shape[-1] % self.multiple:
            raise ValueError(f"U-Net of depth {self.depth} needs sides that are multiples of "
                             f"{self.multiple}, got {tuple(x.shape[-2:])}")
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        skips = []
        for down in self.downs:
            x = down(x)
            skips.append(x)
        x = skips.pop()
        for up in self.ups:
            x = up(x, skips.pop())
        return self.final(x)
