"""FSR's ViT encoder in plain torch: a Vision Transformer whose [CLS] token stays out of the
self-attention blocks and is aggregated afterwards by class-attention (the paper's
aggregation module, CaiT-style).

Patch embedding (a stride-`patch` convolution) → the mask token at masked positions →
positional embeddings (patches only) → `depth` pre-norm self-attention blocks over the patches
→ `cls_depth` class-attention blocks (query: the cls token; keys, values: the final patches)
→ a final LayerNorm over [cls; patches]; the auxiliary output is block `aux_layer`'s patch
tokens, not normed. `encode` gives all of it (`ViTOutput`); `forward`/`forward_stages` are the
backbone interface of `wsss.models.backbones` (token maps B×dim×h×w, no cls token computed).

Deviations from FSR's reference code:
- the cls position embedding is dropped (the reference keeps timm's but never adds it: our cls
  token never passes the self-attention blocks), so `from_torchvision` drops torchvision's;
- masked keys: with a mask and `mask_keys=True`, masked positions get −inf logits in the
  class-attention (exactly zero weight, the paper's Eq. 7); the reference attends to them
  (`mask_keys=False`);
- the input is zero-padded at bottom/right to a multiple of the patch (any size runs; the grid
  is ceil(H/patch) × ceil(W/patch), like a strided ResNet);
- the positional embeddings live on a grid (`pos_grid`) and are bicubically interpolated to
  the token grid at every forward where the two differ.
Aggregations for the ablation: "mca" (the class-attention), "gap"/"gmp" (mean/max of the
unmasked final patch tokens, before the final norm; the pooled vector is then normed as the
cls token is).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import ViT_B_16_Weights

from wsss.errors import BackboneError
from wsss.models.backbones import _load_weights, register_backbone

REGISTER = [
    {"kind": "backbone", "name": "vit_tiny", "family": "vit", "order": 3},
    {"kind": "backbone", "name": "vit_b16", "family": "vit", "order": 4},
]
AGGREGATIONS = ("mca", "gap", "gmp")
# our keys that torchvision's ViT has no counterpart for: they keep their initial values
NOT_IN_TORCHVISION = ("cls_blocks.", "mask_token")
# vit_tiny's width and depth (head dim 32): the candidate whose cost is closest to the tiny
# ResNet's, measured by tests/benchmarks/bench_vit.py
TINY = {"dim": 64, "depth": 4}


@dataclass
class ViTOutput:
    cls: torch.Tensor  # B×dim, after the final norm
    tokens: torch.Tensor  # B×dim×h×w, final patch tokens after the final norm
    aux: torch.Tensor  # B×dim×h×w, block `aux_layer`'s patch tokens (not normed)
    attention: torch.Tensor | None  # B×heads×N, the last class-attention's weights ("mca")


def drop_path(x: torch.Tensor, rate: float, training: bool) -> torch.Tensor:
    """Stochastic depth: the whole residual branch of a sample dropped with probability
    `rate`, the kept ones scaled by 1/(1 − rate); the identity in eval mode."""
    if rate <= 0.0 or not training:
        return x
    keep = 1.0 - rate
    shape = (x.shape[0],) + (1,) * (x.ndim - 1)
    return x * x.new_empty(shape).bernoulli_(keep) / keep


class Mlp(nn.Module):
    def __init__(self, dim: int, ratio: float = 4.0):
        super().__init__()
        self.fc1 = nn.Linear(dim, int(dim * ratio))
        self.fc2 = nn.Linear(int(dim * ratio), dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class Attention(nn.Module):
    """Multi-head self-attention over any token sequence (q, k, v stacked in `qkv`)."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class Block(nn.Module):
    """Pre-norm transformer block; `drop_path` is its stochastic-depth rate."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0, drop_path: float = 0.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, mlp_ratio)
        self.drop_path = drop_path

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + drop_path(self.attn(self.norm1(x)), self.drop_path, self.training)
        return x + drop_path(self.mlp(self.norm2(x)), self.drop_path, self.training)


class ClassAttention(nn.Module):
    """The cls token's query against the patch tokens' keys and values; positions where
    `exclude` (B×N bool) is set get −inf logits."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.q, self.k, self.v = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, cls: torch.Tensor, patches: torch.Tensor,
                exclude: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        b, n, c = patches.shape
        hd = c // self.heads
        q, k, v = (t.reshape(b, -1, self.heads, hd).transpose(1, 2)
                   for t in (self.q(cls), self.k(patches), self.v(patches)))
        logits = (q * hd**-0.5) @ k.transpose(-2, -1)  # B×heads×1×N
        if exclude is not None:
            logits = logits.masked_fill(exclude[:, None, None, :], float("-inf"))
        weights = logits.softmax(dim=-1)
        out = (weights @ v).transpose(1, 2).reshape(b, 1, c)
        return self.proj(out), weights[:, :, 0]


class ClassBlock(nn.Module):
    """Class-attention block: q from η(cls), k, v from η(patches), η one LayerNorm applied to
    [cls; patches] (Eq. 5-6); residual on the cls token, then its MLP. No drop-path."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = ClassAttention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, mlp_ratio)

    def forward(self, cls: torch.Tensor, patches: torch.Tensor,
                exclude: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        normed = self.norm1(torch.cat([cls, patches], dim=1))
        out, weights = self.attn(normed[:, :1], normed[:, 1:], exclude)
        cls = cls + out
        return cls + self.mlp(self.norm2(cls)), weights


STEMS = ("patch", "conv")


def conv_stem(patch: int, dim: int) -> nn.Sequential:
    """Xiao et al.'s convolutional stem ("Early convolutions help transformers see better",
    2021): log2(patch) 3×3 stride-2 convolutions (BatchNorm, ReLU) widening to `dim`, then a
    1×1 projection; the same token grid as the patch embedding on an input padded to a
    multiple of the patch."""
    steps = round(math.log2(patch))
    if 2 ** steps != patch:
        raise BackboneError(f"ViT: a conv stem needs a power-of-two patch, got {patch}")
    layers: list[nn.Module] = []
    width = 3
    for i in range(steps):
        out = max(dim // 2 ** (steps - 1 - i), 1)
        layers += [nn.Conv2d(width, out, 3, stride=2, padding=1, bias=False),
                   nn.BatchNorm2d(out), nn.ReLU(inplace=True)]
        width = out
    layers.append(nn.Conv2d(width, dim, 1))
    return nn.Sequential(*layers)


class ViT(nn.Module):
    """FSR's encoder (see the module docstring); a backbone with `output_stride` = patch."""

    def __init__(self, patch: int = 16, dim: int = 768, depth: int = 12, heads: int = 12,
                 pos_grid: tuple[int, int] = (14, 14), cls_depth: int = 2,
                 mlp_ratio: float = 4.0, drop_path: float = 0.0, aux_layer: int = -3,
                 stem: str = "patch"):
        super().__init__()
        if stem not in STEMS:
            raise BackboneError(f"ViT: stem must be one of {STEMS}, got {stem!r}")
        if dim % heads or not -depth <= aux_layer < depth:
            raise BackboneError(f"ViT: dim {dim} must be a multiple of heads {heads} and "
                                f"aux_layer {aux_layer} index one of {depth} blocks")
        self.patch_size = self.output_stride = patch
        self.out_channels, self.heads, self.aux_layer = dim, heads, aux_layer
        self.pos_grid = tuple(pos_grid)
        self.patch_embed = (nn.Conv2d(3, dim, kernel_size=patch, stride=patch)
                            if stem == "patch" else conv_stem(patch, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, dim, *self.pos_grid))
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.mask_token = nn.Parameter(torch.zeros(1, dim))
        self.blocks = nn.ModuleList([Block(dim, heads, mlp_ratio) for _ in range(depth)])
        self.cls_blocks = nn.ModuleList([ClassBlock(dim, heads, mlp_ratio)
                                         for _ in range(cls_depth)])
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.set_drop_path(drop_path)
        for p in (self.pos_embed, self.cls_token, self.mask_token):
            nn.init.trunc_normal_(p, std=0.02)
        for m in self.modules():  # LayerNorms keep their initial weight 1, bias 0
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def set_drop_path(self, rate: float) -> None:
        """Stochastic-depth rates linearly spaced from 0 (first block) to `rate` (last)."""
        n = len(self.blocks)
        for i, block in enumerate(self.blocks):
            block.drop_path = float(rate) * i / max(n - 1, 1)

    def positions(self, h: int, w: int) -> torch.Tensor:
        """The positional embeddings on an h×w token grid (1×dim×h×w)."""
        if (h, w) == self.pos_grid:
            return self.pos_embed
        return F.interpolate(self.pos_embed, size=(h, w), mode="bicubic", align_corners=False)

    def embed(self, images: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Patch embeddings, masked positions (mask B×h×w, True = masked) replaced by the mask
        token, plus positions: B×dim×h×w."""
        p = self.patch_size
        pad_h, pad_w = -images.shape[-2] % p, -images.shape[-1] % p
        if pad_h or pad_w:
            images = F.pad(images, (0, pad_w, 0, pad_h))
        x = self.patch_embed(images)
        if mask is not None:
            if tuple(mask.shape) != (x.shape[0], *x.shape[-2:]):
                raise ValueError(f"mask of shape {tuple(mask.shape)} for a token grid of "
                                 f"{tuple(x.shape[-2:])} and batch {x.shape[0]}")
            token = self.mask_token.to(x.dtype).view(1, -1, 1, 1)
            x = torch.where(mask[:, None].bool(), token, x)
        return x + self.positions(*x.shape[-2:]).to(x.dtype)

    def _features(self, images: torch.Tensor, mask: torch.Tensor | None = None):
        """Final patch tokens (B×N×dim, before the final norm), the aux tokens and the grid."""
        x = self.embed(images, mask)
        h, w = x.shape[-2:]
        outs = [x.flatten(2).transpose(1, 2)]
        for block in self.blocks:
            outs.append(block(outs[-1]))
        return outs[-1], outs[1:][self.aux_layer], (h, w)

    @staticmethod
    def _grid(tokens: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
        return tokens.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], *hw)

    def encode(self, images: torch.Tensor, mask: torch.Tensor | None = None,
               aggregate: str = "mca", mask_keys: bool = True) -> ViTOutput:
        """Everything FSR reads off the encoder (see `ViTOutput`)."""
        if aggregate not in AGGREGATIONS:
            raise ValueError(f"aggregate must be one of {AGGREGATIONS}, got {aggregate!r}")
        x, aux, hw = self._features(images, mask)
        # positions left out of the aggregation; an image with every token masked keeps all
        drop = None if mask is None else mask.flatten(1).bool()
        drop = None if drop is None else drop & ~drop.all(dim=1, keepdim=True)
        attention = None
        if aggregate == "mca":
            cls = self.cls_token.expand(x.shape[0], -1, -1).to(x.dtype)
            for block in self.cls_blocks:
                cls, attention = block(cls, x, drop if mask_keys else None)
        elif aggregate == "gap":
            keep = torch.ones_like(x[..., :1]) if drop is None else (~drop)[..., None].to(x.dtype)
            cls = (x * keep).sum(1, keepdim=True) / keep.sum(1, keepdim=True)
        else:
            kept = x if drop is None else x.masked_fill(drop[..., None], float("-inf"))
            cls = kept.amax(1, keepdim=True)
        out = self.norm(torch.cat([cls, x], dim=1))
        return ViTOutput(out[:, 0], self._grid(out[:, 1:], hw), self._grid(aux, hw), attention)

    def forward_stages(self, images: torch.Tensor) -> list[torch.Tensor]:
        """[aux map, final token map], B×dim×h×w each (the cls token is not computed)."""
        x, aux, hw = self._features(images)
        return [self._grid(aux, hw), self._grid(self.norm(x), hw)]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.forward_stages(images)[-1]

    def net_state_dict(self) -> dict[str, torch.Tensor]:
        """Its weights under its own names: what `pretrained: <path>` loads."""
        return {k: v.detach().clone() for k, v in self.state_dict().items()}


# -- torchvision's ViT weights -----------------------------------------------------------------
_LAYER = re.compile(r"encoder\.layers\.encoder_layer_(\d+)\.(.+)")
_LAYER_PARTS = {"ln_1": "norm1", "ln_2": "norm2", "self_attention.out_proj": "attn.proj",
                "mlp.0": "mlp.fc1", "mlp.3": "mlp.fc2",
                "mlp.linear_1": "mlp.fc1", "mlp.linear_2": "mlp.fc2"}  # legacy MLPBlock names


def _map_key(key: str) -> str | None:
    """Our name for a torchvision ViT key; None for keys we drop. BackboneError otherwise."""
    fixed = {"conv_proj.weight": "patch_embed.weight", "conv_proj.bias": "patch_embed.bias",
             "class_token": "cls_token", "encoder.ln.weight": "norm.weight",
             "encoder.ln.bias": "norm.bias"}
    if key in fixed:
        return fixed[key]
    if key.startswith("heads."):
        return None
    layer = _LAYER.fullmatch(key)
    if layer:
        index, rest = layer.groups()
        if rest in ("self_attention.in_proj_weight", "self_attention.in_proj_bias"):
            return f"blocks.{index}.attn.qkv.{rest.rpartition('_')[2]}"
        part, _, leaf = rest.rpartition(".")
        if part in _LAYER_PARTS and leaf in ("weight", "bias"):
            return f"blocks.{index}.{_LAYER_PARTS[part]}.{leaf}"
    raise BackboneError(f"torchvision ViT weights: unexpected key '{key}'")


def from_torchvision(state: dict[str, torch.Tensor], model: ViT) -> dict[str, torch.Tensor]:
    """A torchvision `VisionTransformer` state dict under our names: the cls position embedding
    dropped, the patch positions interpolated (bicubic) to `model.pos_grid`, `heads` dropped.
    Our class-attention blocks and mask token have no counterpart (not in the result)."""
    out = {}
    for key, value in state.items():
        if key == "encoder.pos_embedding":
            patches = value[0, 1:]
            side = math.isqrt(patches.shape[0])
            if side * side != patches.shape[0]:
                raise BackboneError(f"torchvision ViT weights: {patches.shape[0]} patch "
                                    "positions are not a square grid")
            grid = patches.T.reshape(1, -1, side, side).float()
            if (side, side) != model.pos_grid:
                grid = F.interpolate(grid, size=model.pos_grid, mode="bicubic",
                                     align_corners=False)
            out["pos_embed"] = grid.contiguous()
            continue
        name = _map_key(key)
        if name is not None:
            out[name] = value
    return out


class TorchvisionWeights:
    """Torchvision ViT weights as `_load_weights` asks for them (`get_state_dict`), mapped by
    `from_torchvision`, with `model`'s own values for the keys torchvision has no counterpart
    for (any other missing key is reported by the loader)."""

    def __init__(self, weights: Any, model: ViT):
        self.weights, self.model = weights, model

    def get_state_dict(self, progress: bool = True) -> dict[str, torch.Tensor]:
        mapped = from_torchvision(self.weights.get_state_dict(progress=progress), self.model)
        own = self.model.state_dict()
        return {**{k: v for k, v in own.items() if k.startswith(NOT_IN_TORCHVISION)}, **mapped}


def _build(name: str, output_stride: int, pretrained: str, imagenet: Any, **arch: Any) -> ViT:
    patch = arch["patch"]
    if output_stride != patch:
        raise BackboneError(f"backbone '{name}': output_stride must be {patch} (its patch "
                            f"size), got {output_stride}")
    net = ViT(**arch)
    _load_weights(net, pretrained, name, None if imagenet is None
                  else TorchvisionWeights(imagenet, net))
    return net


@register_backbone("vit_b16")
def _vit_b16(output_stride: int = 16, pretrained: str = "none", drop_path: float = 0.0) -> ViT:
    # torchvision vit_b_16's architecture (and, with pretrained: imagenet, its weights)
    return _build("vit_b16", output_stride, pretrained, ViT_B_16_Weights.IMAGENET1K_V1,
                  patch=16, dim=768, depth=12, heads=12, pos_grid=(14, 14), drop_path=drop_path)


@register_backbone("vit_tiny")
def _vit_tiny(output_stride: int = 8, pretrained: str = "none", drop_path: float = 0.0) -> ViT:
    # the embedded benchmark's ViT: patch 8 gives the tiny ResNet's 12×12 grid on 96 px crops;
    # dims chosen to cost what the tiny ResNet costs (tests/benchmarks/bench_vit.py)
    return _build("vit_tiny", output_stride, pretrained, None, patch=8, dim=TINY["dim"],
                  depth=TINY["depth"], heads=TINY["dim"] // 32, pos_grid=(12, 12),
                  drop_path=drop_path)

