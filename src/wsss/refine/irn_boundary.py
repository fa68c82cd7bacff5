"""IRN's boundary network (Ahn, Cho & Kwak 2019) and the geometry it is trained on.

A boundary branch on the classifier's frozen backbone: every level (stem output and each stage)
goes through a 1×1 conv to 32 channels + GroupNorm + ReLU, is upsampled to the stride-4 grid,
and the concatenation is fused by a 1×1 conv into one channel; its sigmoid is the boundary map
B. The affinity of two cells is 1 - max B over IRN's path between them (`path_cells`: every
cell whose centre lies closer than 1 to the segment joining the two centres), learned from the
pairs of the stride-4 label grid closer than `train_radius` with IRN's loss (`affinity_loss`).
The stages that use it are in `wsss.refine.irn`.
"""

from __future__ import annotations

import functools
import math
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from wsss.data.transforms import normalize, upsample
from wsss.models.backbones import Backbone
from wsss.refine.randomwalk import masked_mean, pair_indices, pair_labels
from wsss.train import Trainable

STRIDE = 4  # grid of the boundary map, the relation labels and the CAMs the walk propagates
SIDE_WIDTH, SIDE_GROUPS = 32, 4  # IRN: every level -> 32 channels, GroupNorm(4)
# IRN adds 1e-5 inside the logs (not a clamp), which keeps a gradient for saturated pairs.
LOG_EPS = 1e-5


# -- pairs and paths on the stride-4 grid -------------------------------------------------------

def path_cells(dy: int, dx: int) -> np.ndarray:
    """(K, 2) cells (y, x) of IRN's path from (0, 0) to (dy, dx), ordered along the segment.

    IRN's rule (`PathIndex` in the authors' misc/indexing.py): the cells of the bounding box of
    the two ends whose centre lies closer than 1 (strictly) to the line through both centres,
    i.e. (dy·x - dx·y)² < dy² + dx², in exact integer arithmetic. Inside that box a centre's
    projection always falls on the segment, and any cell outside it is at least 1 away, so this
    is also "every cell closer than 1 to the segment", with both end cells included. The rule
    is symmetric in x and y and under swapping the two ends. It holds every cell the segment
    passes through (those are within √2/2), so the path is 4-connected and cannot slip
    diagonally between the cells of an 8-connected boundary line; off the axes it is wider than
    one cell, and on an axis it is the row or column between the ends (a neighbouring row is at
    distance exactly 1). Cells are sorted by their projection y·dy + x·dx on the segment, then
    by (y, x): (0, 0) comes first and (dy, dx) last.
    """
    length_sq = dy * dy + dx * dx
    if length_sq == 0:
        return np.zeros((1, 2), dtype=np.int64)
    ys, xs = np.meshgrid(np.arange(min(0, dy), max(0, dy) + 1),
                         np.arange(min(0, dx), max(0, dx) + 1), indexing="ij")
    ys, xs = ys.ravel().astype(np.int64), xs.ravel().astype(np.int64)
    keep = (dy * xs - dx * ys) ** 2 < length_sq
    ys, xs = ys[keep], xs[keep]
    order = np.lexsort((xs, ys, ys * dy + xs * dx))
    return np.stack([ys[order], xs[order]], axis=1)


class PairIndex(NamedTuple):
    """Pairs of `pair_indices(h, w, radius)` and, per pair, the flat cells of its path.

    `path` is (P, K) with K the longest path (paths of different offsets differ in length);
    shorter paths repeat their last cell, which leaves the maximum unchanged.
    """

    src: torch.Tensor
    dst: torch.Tensor
    path: torch.Tensor


@functools.lru_cache(maxsize=8)
def pair_index(h: int, w: int, radius: int, device: str = "cpu") -> PairIndex:
    """Cached PairIndex of an h×w grid (training sees one crop size, inference a few)."""
    src, dst = pair_indices(h, w, radius)
    dy, dx = dst // w - src // w, dst % w - src % w
    # one padded path table per offset; pairs find theirs through (dy, dx)
    span = 2 * radius + 1
    lut = np.zeros(max(radius, 1) * span, dtype=np.int64)
    offsets = sorted(set(zip(dy.tolist(), dx.tolist(), strict=True)))
    paths = [path_cells(oy, ox) for oy, ox in offsets]
    k = max((len(p) for p in paths), default=1)
    table = np.zeros((max(len(paths), 1), k), dtype=np.int64)
    for i, ((oy, ox), p) in enumerate(zip(offsets, paths, strict=True)):
        lut[oy * span + ox + radius] = i
        flat = p[:, 0] * w + p[:, 1]
        table[i] = np.concatenate([flat, np.full(k - len(flat), flat[-1])])
    path = src[:, None] + table[lut[dy * span + dx + radius]]
    return PairIndex(*(torch.from_numpy(a).to(device) for a in (src, dst, path)))


def path_affinity(boundary: torch.Tensor, path: torch.Tensor) -> torch.Tensor:
    """(..., P) affinities 1 - max boundary along each pair's path, for (..., h, w) maps."""
    flat = boundary.flatten(-2)
    return 1.0 - flat[..., path].amax(dim=-1)


def affinity_loss(aff: torch.Tensor, bg_pos: torch.Tensor, fg_pos: torch.Tensor,
                  neg: torch.Tensor) -> dict[str, torch.Tensor]:
    """IRN's (pos + neg) / 2 with pos = (bg_pos + fg_pos) / 2.

    Positives -log(aff), negatives -log(1 - aff); each term is the mean over its pairs in the
    whole batch, and a term without pairs is 0.
    """
    pos_loss = -torch.log(aff + LOG_EPS)
    neg_loss = -torch.log(1.0 + LOG_EPS - aff)
    terms = {
        "bg_pos": masked_mean(pos_loss, bg_pos),
        "fg_pos": masked_mean(pos_loss, fg_pos),
        "neg": masked_mean(neg_loss, neg),
    }
    terms["loss"] = (terms["bg_pos"] / 2 + terms["fg_pos"] / 2 + terms["neg"]) / 2
    return terms


def label_grid(labels: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(B, H, W) labels -> (B, h, w): the label at each grid cell's centre (nearest), as IRN
    rescales its label crops by 1/4."""
    hh, ww = labels.shape[-2:]
    h, w = size
    ys = ((torch.arange(h, device=labels.device) + 0.5) * hh / h).long().clamp_max(hh - 1)
    xs = ((torch.arange(w, device=labels.device) + 0.5) * ww / w).long().clamp_max(ww - 1)
    return labels[:, ys][:, :, xs]


# -- the boundary network ------------------------------------------------------------------

class BoundaryNet(Trainable):
    """Frozen trunk (`trunk:`: the classifier's backbone or a pretrained one) + IRN's
    boundary branch, trained by `wsss.train.fit`. `cfg` is the IRN config block
    (train_radius, training)."""

    def __init__(self, cfg: dict[str, Any], num_classes: int, backbone: Backbone):
        super().__init__()
        self.cfg, self.num_classes = cfg, num_classes
        self.backbone = backbone
        backbone.eval()
        backbone.requires_grad_(False)
        with torch.no_grad():  # level widths differ between backbones: ask the network
            widths = [f.shape[1] for f in self._levels(torch.zeros(1, 3, 32, 32))]
        self.sides = nn.ModuleList(
            nn.Sequential(nn.Conv2d(c, SIDE_WIDTH, 1, bias=False),
                          nn.GroupNorm(SIDE_GROUPS, SIDE_WIDTH), nn.ReLU(inplace=True))
            for c in widths
        )
        self.fuse = nn.Conv2d(SIDE_WIDTH * len(widths), 1, 1)

    def train(self, mode: bool = True):
        super().train(mode)
        self.backbone.eval()  # the trunk is fixed, BatchNorm statistics included
        return self

    def param_groups(self) -> list[dict[str, Any]]:
        branch = list(self.sides.parameters()) + list(self.fuse.parameters())
        mult = self.cfg["training"]["new_layer_lr_mult"]
        return [{"params": branch, "lr_mult": mult, "name": "boundary"}]

    def _levels(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Stem output (stride 4) and every stage output, without gradients."""
        with torch.no_grad():
            x = self.backbone.stem(images)
            levels = [x]
            for stage in self.backbone.stages:
                x = stage(x)
                levels.append(x)
        return levels

    def boundary_logits(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 1, h4, w4) float32 logits on the stem's stride-4 grid."""
        with self.autocast():
            levels = self._levels(images)
            size = levels[0].shape[-2:]
            parts = [side(x) for side, x in zip(self.sides, levels, strict=True)]
            parts = [p if p.shape[-2:] == size else upsample(p, size) for p in parts]
            return self.fuse(torch.cat(parts, dim=1)).float()

    def boundary(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 1, h4, w4) boundary probabilities."""
        return torch.sigmoid(self.boundary_logits(images))

    def training_step(self, batch: dict[str, torch.Tensor], step: int) -> dict[str, float]:
        boundary = self.boundary(batch["image"])[:, 0]
        h, w = boundary.shape[-2:]
        index = pair_index(h, w, int(self.cfg["train_radius"]), str(boundary.device))
        grid = label_grid(batch["label"], (h, w))
        aff = path_affinity(boundary, index.path)
        terms = affinity_loss(aff, *pair_labels(grid, index.src, index.dst))
        self.optimize(terms["loss"])
        return {k: v.item() for k, v in terms.items()}


@torch.no_grad()
def boundary_map(net: BoundaryNet, image: np.ndarray, flip: bool) -> torch.Tensor:
    """(⌈H/4⌉, ⌈W/4⌉) boundary probabilities of one H×W×3 image, on the network's device.

    The image is zero-padded (= the mean colour after normalisation) at the bottom and right to
    a multiple of the backbone's output stride, so every level lands exactly on the stride-4
    grid, and the map cropped back. With `flip`, the logits are averaged with the mirrored
    image's, flipped back (as IRN does).
    """
    hh, ww = image.shape[:2]
    stride = net.backbone.output_stride
    ph, pw = math.ceil(hh / stride) * stride, math.ceil(ww / stride) * stride
    x = torch.from_numpy(normalize(image))
    views = [x, x.flip(-1)] if flip else [x]
    batch = torch.stack([F.pad(v, (0, pw - ww, 0, ph - hh)) for v in views]).to(net.device)
    h, w = math.ceil(hh / STRIDE), math.ceil(ww / STRIDE)
    logits = net.boundary_logits(batch)[:, 0, :h, :w]
    if flip:
        logits[1] = logits[1].flip(-1)
    return torch.sigmoid(logits.mean(dim=0))
