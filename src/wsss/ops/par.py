"""Pixel-adaptive refinement (PAR; AFA, Ru et al. CVPR 2022, used by ToCo and FSR): CAMs
propagated along the image's colours, in torch.

Every pixel i looks at its 8 neighbours j at each dilation d (replicate padding at the border;
the pixel itself is not among them). Its affinity to neighbour j is
    softmax_j(-(|I_i - I_j| / (w_rgb σ_I,i))², averaged over the colour channels)
      + w_pos softmax_j(-(|P_i - P_j| / (w_rgb σ_P))²),
where σ_I,i is the standard deviation of the neighbours' colours (per channel) and |P_i - P_j|
is d (d √2 diagonally), σ_P their standard deviation. The maps are then replaced by the
affinity-weighted sum of their neighbours' values, `iterations` times. As in the reference, the
position term reuses the colour term's temperature (AFA's w1 = w2 = 0.3, the reference's `w1`)
and its weight w_pos (AFA's w3, the reference's `w2`, 0.01) makes each row sum to 1 + w_pos, so
the maps grow by that factor per iteration; the reference's values are the defaults.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

# the 8 neighbours as (dy, dx) in units of the dilation, row by row
OFFSETS = [(-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1)]
DILATIONS = (1, 2, 4, 8, 12, 24)


def neighbours(x: torch.Tensor, dilations: Sequence[int]) -> torch.Tensor:
    """(B, C, 8 · len(dilations), H, W): each pixel's neighbours, dilation by dilation."""
    h, w = x.shape[-2:]
    out = []
    for d in dilations:
        padded = F.pad(x, [d] * 4, mode="replicate")
        out += [padded[..., d + dy * d: d + dy * d + h, d + dx * d: d + dx * d + w]
                for dy, dx in OFFSETS]
    return torch.stack(out, dim=2)


def affinities(images: torch.Tensor, dilations: Sequence[int] = DILATIONS,
               w_rgb: float = 0.3, w_pos: float = 0.01) -> torch.Tensor:
    """(B, 1, 8 · len(dilations), H, W) PAR affinities of `images` (B, 3, H, W)."""
    near = neighbours(images, dilations)
    diff = (near - images.unsqueeze(2)).abs()
    std = near.std(dim=2, keepdim=True)
    colour = (-(diff / (std + 1e-8) / w_rgb) ** 2).mean(dim=1, keepdim=True)
    dist = torch.tensor([d * math.hypot(dy, dx) for d in dilations for dy, dx in OFFSETS],
                        dtype=images.dtype, device=images.device)
    pos = -(dist / (dist.std() + 1e-8) / w_rgb) ** 2
    return colour.softmax(dim=2) + w_pos * pos.softmax(dim=0).view(1, 1, -1, 1, 1)


def par_refine(images: torch.Tensor, maps: torch.Tensor, dilations: Sequence[int] = DILATIONS,
               iterations: int = 10, w_rgb: float = 0.3, w_pos: float = 0.01) -> torch.Tensor:
    """`maps` (B, K, h, w), bilinearly resized to the images' size (align_corners, as the
    reference), refined by `iterations` PAR steps on `images` (B, 3, H, W)."""
    maps = F.interpolate(maps, size=images.shape[-2:], mode="bilinear", align_corners=True)
    aff = affinities(images, dilations, w_rgb, w_pos)
    for _ in range(iterations):
        maps = _propagate(maps, aff, dilations)
    return maps


def _propagate(maps: torch.Tensor, aff: torch.Tensor, dilations: Sequence[int]) -> torch.Tensor:
    """One PAR step, Σ_j aff_j · neighbour_j: `(neighbours(maps) * aff).sum(dim=2)`, summed
    offset by offset instead of through the 8 · len(dilations) times larger stack."""
    h, w = maps.shape[-2:]
    out = torch.zeros_like(maps)
    j = 0
    for d in dilations:
        padded = F.pad(maps, [d] * 4, mode="replicate")
        for dy, dx in OFFSETS:
            near = padded[..., d + dy * d: d + dy * d + h, d + dx * d: d + dx * d + w]
            out.addcmul_(near, aff[:, :, j])
            j += 1
    return out
