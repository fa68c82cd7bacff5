"""PSA: pixel affinities learned from confident CAM regions, then a random walk (Ahn & Kwak 2018).

Three stages:

1. `make_labels`: two dense CRFs per image with background (1 - max CAM)^alpha. The low alpha
   (more background) keeps only confident foreground, the high alpha (less background) only
   confident background; the rest is 255.
2. `train`: AffinityNet = a backbone (`trunk`: the CAM classifier's by default, or a pretrained
   one, as PSA's ImageNet ResNet-38) + 1×1 convs on its last three stages, fused into a feature
   map f on the backbone's output-stride grid (PSA: stride 8, which `radius` 5 is sized for).
   The affinity of two cells closer than `radius` is exp(-mean_c |f_i - f_j|). Pairs of the
   same label are positives (background and foreground separately), pairs of different labels
   negatives.
3. `refine`: per image, affinities on the grid (averaged with the mirrored image's unless
   `inference.flip` is false; PSA does not flip), a random walk of the CAM scores (background
   plane (1 - max CAM)^bg_alpha in front), bilinear upsampling and argmax.

Training labels reach the grid by block majority (see `downsample_labels`). Settings and their
defaults (PSA's code) are the REGISTER schema below; what PSA shares with the other learned
refiner (training, loading, the walk stage's frame) is `wsss.refine.learned`.
"""

from __future__ import annotations

import functools
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from wsss import registry
from wsss.data.transforms import normalize, upsample
from wsss.models.backbones import Backbone, freeze_batchnorm
from wsss.refine import learned
from wsss.refine.crf import cam_probs, crf_labels, score_crf_labels
from wsss.refine.pool import IGNORE, write_labels
from wsss.refine.randomwalk import masked_mean, pair_indices, pair_offsets, random_walk
from wsss.refine.randomwalk import pair_labels as walk_pair_labels
from wsss.store import CamReader, StoreError
from wsss.train import Trainable

if TYPE_CHECKING:
    from wsss.data.voc import VocDataset


REGISTER = {
    "kind": "refiner",
    "name": "psa",
    "learned": True,
    "walk_keys": ["beta", "logt", "bg_alpha", "inference"],
    "network_log": "affinity",
    "needs_seg_head": False,
    "order": 1,
    "schema": {
        "description": "PSA / AffinityNet (Ahn & Kwak 2018), wsss/refine/psa.py; defaults: "
                       "PSA's code",
        "type": "object",
        "additionalProperties": False,
        "properties": {
            # PSA infer_cls low_alpha / high_alpha: confident foreground / background
            "crf_alpha_low": {"type": "number", "exclusiveMinimum": 0, "default": 4},
            "crf_alpha_high": {"type": "number", "exclusiveMinimum": 0, "default": 32},
            "crf": {"$ref": "#/$defs/refiner_crf",
                    "default": {"iterations": 10, "gaussian": {"sxy": 3, "compat": 3},
                                "bilateral": {"sxy": 80, "srgb": 13, "compat": 10}}},
            # pairs closer than this on the feature grid (PSA: 5 at stride 8)
            "radius": {"type": "integer", "minimum": 2, "default": 5},
            # affinity ** beta in the transition matrix
            "beta": {"type": "number", "exclusiveMinimum": 0, "default": 8},
            # 2**8 = 256 random-walk steps
            "logt": {"type": "integer", "minimum": 0, "default": 8},
            # background plane (1 - max CAM)^16 at refinement
            "bg_alpha": {"type": "number", "exclusiveMinimum": 0, "default": 16},
            # PSA train_aff: lr 0.1, batch 8, 8 epochs, crop 448, wd 5e-4, colour jitter 0.3,
            # flip, no rescaling; resize_long [500, 500] keeps VOC's 500-pixel long sides.
            # PSA's PolyOptimizer passes wd into SGD's momentum slot: momentum 5e-4 (none to
            # speak of), step lr/(1 - 5e-4) = 0.1 per unit gradient. Here real momentum 0.9 and
            # lr 0.01: the same steady-state step lr/(1 - m) = 0.01/0.1 = 0.1, and the same
            # decay per step (that step × wd); momentum averages over ~10 steps.
            "training": {"$ref": "#/$defs/refiner_training",
                         "default": {"seed": 0, "epochs": 8, "batch_size": 8, "lr": 0.01,
                                     "momentum": 0.9, "nesterov": False,
                                     "weight_decay": 5.0e-4, "poly_power": 0.9,
                                     "new_layer_lr_mult": 10, "crop_size": 448,
                                     "resize_long": [500, 500], "hflip": True,
                                     "color_jitter": 0.3, "num_workers": 0,
                                     "checkpoint_every": 200, "cache_max_images": 2000}},
            # crf: a dense CRF (the `crf` kernels) on the walk's scores before the argmax;
            # PSA's paper reports RW + dCRF, its infer_aff does not apply it.
            # flip: affinities averaged with the mirrored image's (`AffinityNet.affinities`).
            # PSA's infer_aff runs one unflipped pass; ours flips by default, as IRN's walk
            # and every CAM inference here do (a cheap test-time average; the default
            # also keeps earlier runs as they were); flip: false is PSA's.
            "inference": {"$ref": "#/$defs/refiner_inference",
                          "default": {"flip": True, "crf": False}},
            # the network's backbone (wsss.refine.features.refiner_trunk): `source: classifier`
            # the CAM variant's trained backbone; `pretrained` one built from `backbone`
            # ({name, output_stride, pretrained}), as PSA's ImageNet ResNet-38. PSA also
            # freezes conv1a and b2 (its first stage); here only BatchNorm is frozen.
            "trunk": {"$ref": "#/$defs/refiner_trunk", "default": {"source": "classifier"}},
        },
    },
}

# Channels of the 1×1 convs on the last three stages (PSA: 64, 128, 256 -> 448 fused), capped
# at each stage's own width.
STAGE_WIDTHS = (64, 128, 256)
# 1 - affinity is floored here before the log: identical features must not give an infinite
# negative-pair loss (PSA adds the same 1e-5).
NEG_FLOOR = 1e-5


def settings(cfg: dict[str, Any] | None) -> dict[str, Any]:
    """`cfg` completed with the REGISTER defaults for every key it leaves out (nested blocks
    merged)."""
    return registry.declared_settings(REGISTER, cfg)


# -- stage 1: affinity training labels ---------------------------------------------------------

def confident_label(low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """Foreground of the low-alpha map, background of the high-alpha map, 255 elsewhere.

    Where the two disagree outright (foreground at low alpha, background at high alpha, which
    only the CRF's smoothing can produce) background wins, as in PSA.
    """
    label = np.where(low > 0, low, IGNORE).astype(np.uint8)
    label[high == 0] = 0
    return label


def _confident_task(image: np.ndarray, cams: np.ndarray, keys: np.ndarray,
                    cfg: dict[str, Any]) -> np.ndarray:
    low, high = (
        crf_labels(image, cams, keys, {"mode": "power", "alpha": cfg[alpha]}, cfg["crf"])
        for alpha in ("crf_alpha_low", "crf_alpha_high")
    )
    return confident_label(low, high)



def make_labels(cam_path: str | os.PathLike, ds: VocDataset, split: str, cfg: dict[str, Any],
                out_path: str | os.PathLike, threads: int) -> None:
    """Write confident-region labels (0 bg, k + 1 class k, 255 unsure) of `split` to `out_path`.

    Both CRFs of an image run in the same worker task, so each image and its CAMs are read once.
    """
    write_labels(cam_path, ds, split, _confident_task, settings(cfg), out_path, threads,
                 f"{REGISTER['name']} labels")


# -- stage 2: AffinityNet ----------------------------------------------------------------------

@functools.lru_cache(maxsize=32)
def _pairs(h: int, w: int, radius: int) -> tuple[torch.Tensor, torch.Tensor]:
    src, dst = pair_indices(h, w, radius)
    return torch.from_numpy(src), torch.from_numpy(dst)


def pair_distance(feats: torch.Tensor, radius: int) -> torch.Tensor:
    """(B, P) mean absolute feature difference of the grid pairs, in `pair_indices` order.

    The pairs of one offset are one shifted slice of the map, taken in pair_indices' own
    order (offset-major, sources in raster order); slicing is about twice as fast as
    gathering by index, backward included.
    """
    b, c, h, w = feats.shape
    parts = [feats.new_zeros(b, 0)]
    for dy, dx in pair_offsets(radius).tolist():
        x0, x1 = max(0, -dx), min(w, w - dx)
        if dy >= h or x0 >= x1:
            continue
        diff = feats[:, :, : h - dy, x0:x1] - feats[:, :, dy:, x0 + dx : x1 + dx]
        parts.append(diff.abs().mean(dim=1).flatten(1))
    return torch.cat(parts, dim=1)


def downsample_labels(labels: torch.Tensor, size: tuple[int, int], stride: int) -> torch.Tensor:
    """(B, H, W) labels -> (B, h, w): the most frequent value of each stride×stride block.

    255 counts as a value of its own, so a block that is mostly unsure stays unsure, close to
    PSA, which block-averages the two CRF score maps before its argmaxes. Unlike PSA, crop
    padding (also 255 here) votes too, so a block mostly outside the image is ignored. Ties go
    to the smallest value. The map is padded with 255 (or cropped) to h*stride × w*stride.
    """
    b, hh, ww = labels.shape
    h, w = size
    grid = labels.new_full((b, h * stride, w * stride), IGNORE)
    ch, cw = min(hh, h * stride), min(ww, w * stride)
    grid[:, :ch, :cw] = labels[:, :ch, :cw]
    blocks = grid.reshape(b, h, stride, w, stride).permute(0, 1, 3, 2, 4).flatten(3)
    return blocks.mode(dim=-1).values


def pair_labels(grid: torch.Tensor, radius: int) -> tuple[torch.Tensor, ...]:
    """(bg_pos, fg_pos, neg) boolean (B, P) masks of the pairs within `radius` of a label grid."""
    _, h, w = grid.shape
    src, dst = (t.to(grid.device) for t in _pairs(h, w, radius))
    return walk_pair_labels(grid, src, dst)


def affinity_loss(dist: torch.Tensor, bg_pos: torch.Tensor, fg_pos: torch.Tensor,
                  neg: torch.Tensor) -> dict[str, torch.Tensor]:
    """PSA's loss bg_pos/4 + fg_pos/4 + neg/2 for affinities exp(-dist).

    Positives: -log(aff) = dist exactly. Negatives: -log(1 - aff), with 1 - aff floored.
    Each term is the mean over its pairs in the whole batch.
    """
    neg_loss = -torch.log((-torch.expm1(-dist)).clamp_min(NEG_FLOOR))
    terms = {
        "bg_pos": masked_mean(dist, bg_pos),
        "fg_pos": masked_mean(dist, fg_pos),
        "neg": masked_mean(neg_loss, neg),
    }
    terms["loss"] = terms["bg_pos"] / 4 + terms["fg_pos"] / 4 + terms["neg"] / 2
    return terms


class AffinityNet(Trainable):
    """Backbone + PSA's affinity head, trained by `wsss.train.fit`.

    `cfg` is the PSA config block (radius, training); the backbone's BatchNorm stays frozen
    (PSA freezes its first stage as well; here the rest of the backbone trains).
    """

    def __init__(self, cfg: dict[str, Any], num_classes: int, backbone: Backbone):
        super().__init__()
        self.cfg, self.num_classes = cfg, num_classes
        self.backbone = backbone
        self.stride = backbone.output_stride
        self.radius = int(cfg["radius"])
        freeze_batchnorm(self.backbone)
        with torch.no_grad():  # stage widths differ between backbones: ask the network
            channels = [f.shape[1] for f in backbone.forward_stages(torch.zeros(1, 3, 32, 32))]
        # never wider than the stage read: small backbones get a proportionally small head
        widths = [min(c, k) for c, k in zip(channels[-3:], STAGE_WIDTHS, strict=True)]
        self.reduce = nn.ModuleList(
            nn.Conv2d(c, k, 1, bias=False) for c, k in zip(channels[-3:], widths, strict=True)
        )
        self.fuse = nn.Conv2d(sum(widths), sum(widths), 1, bias=False)
        for conv in self.reduce:  # PSA's initialisation
            nn.init.kaiming_normal_(conv.weight)
        nn.init.xavier_uniform_(self.fuse.weight, gain=4)

    def train(self, mode: bool = True):
        super().train(mode)
        if mode:
            freeze_batchnorm(self.backbone)
        return self

    def param_groups(self) -> list[dict[str, Any]]:
        new_mult = self.cfg["training"]["new_layer_lr_mult"]
        new = list(self.reduce.parameters()) + list(self.fuse.parameters())
        return [
            {"params": list(self.backbone.parameters()), "lr_mult": 1.0, "name": "backbone"},
            {"params": new, "lr_mult": new_mult, "name": "new"},
        ]

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """(B, D, h, w) float32 features on the grid of the last stage."""
        with self.autocast():
            stages = self.backbone.forward_stages(images)[-3:]
            size = stages[-1].shape[-2:]
            # conv before pooling: both are linear, and pooling fewer channels is cheaper
            parts = [F.elu(F.adaptive_avg_pool2d(conv(x), size))
                     for conv, x in zip(self.reduce, stages, strict=True)]
            return F.elu(self.fuse(torch.cat(parts, dim=1))).float()

    def training_step(self, batch: dict[str, torch.Tensor], step: int) -> dict[str, float]:
        feats = self.features(batch["image"])
        dist = pair_distance(feats, self.radius)
        grid = downsample_labels(batch["label"], feats.shape[-2:], self.stride)
        terms = affinity_loss(dist, *pair_labels(grid, self.radius))
        self.optimize(terms["loss"])
        return {k: v.item() for k, v in terms.items()}

    @torch.no_grad()
    def affinities(self, images: torch.Tensor, flip: bool = False
                   ) -> tuple[torch.Tensor, tuple[int, int]]:
        """(B, P) affinities of the `pair_indices(h, w, radius)` pairs and the grid (h, w).

        `flip`: averaged with the mirrored images'; their features are flipped back first, so
        pair (i, j) meets the mirror images of cells i and j. PSA's infer_aff does not flip;
        `refine` does unless `inference.flip` is false (see the REGISTER).
        """
        views = torch.cat([images, images.flip(-1)]) if flip else images
        feats = self.features(views)
        b = images.shape[0]
        aff = torch.exp(-pair_distance(feats[:b], self.radius))
        if flip:
            aff = (aff + torch.exp(-pair_distance(feats[b:].flip(-1), self.radius))) / 2
        return aff, (feats.shape[2], feats.shape[3])



def train(ds: VocDataset, split: str, label_path: str | os.PathLike, cfg: dict[str, Any],
          classifier_path: str | os.PathLike, out_path: str | os.PathLike,
          device: torch.device | str) -> Path:
    """Train AffinityNet on the `split` labels of `label_path`; the weights go to `out_path`.

    Checkpoints and resume are `wsss.train.fit`'s (affinity.checkpoint.pt, affinity.log.csv next
    to `out_path`).
    """
    return learned.train_network(REGISTER, AffinityNet, ds, split, label_path, cfg,
                                 classifier_path, out_path, device)


def load_affinity_net(weights_path: str | os.PathLike, device: torch.device,
                      radius: int | None = None) -> AffinityNet:
    """The trained network of `weights_path`; `radius` replaces the training radius (the
    features do not depend on it, only which pairs are scored)."""
    net = learned.load_network(AffinityNet, weights_path, device)
    if radius is not None:
        net.radius = int(radius)
    return net


# -- stage 3: random walk ------------------------------------------------------------------

def _walk_inputs(net: AffinityNet, image: np.ndarray, cams: np.ndarray, cfg: dict[str, Any]
                 ) -> tuple[torch.Tensor, torch.Tensor, tuple[int, int]]:
    """(affinities (P,), scores on the grid (K+1, h, w), padded size) of one image."""
    stride, (hh, ww) = net.stride, image.shape[:2]
    ph, pw = math.ceil(hh / stride) * stride, math.ceil(ww / stride) * stride
    # zero padding after normalisation = the mean colour; PSA pads to a multiple of 8 too
    x = F.pad(torch.from_numpy(normalize(image)), (0, pw - ww, 0, ph - hh))
    aff, (h, w) = net.affinities(x[None].to(net.device), flip=cfg["inference"]["flip"])
    # the background plane is built at full resolution and pooled with the CAMs, as in PSA
    probs = cam_probs(cams, {"mode": "power", "alpha": cfg["bg_alpha"]})
    probs = F.pad(torch.from_numpy(probs), (0, pw - ww, 0, ph - hh))
    probs = F.adaptive_avg_pool2d(probs[None], (h, w))[0]
    return aff[0], probs.to(aff.device), (ph, pw)


def _walk_scores(aff: torch.Tensor, probs: torch.Tensor, padded: tuple[int, int],
                 size: tuple[int, int], cfg: dict[str, Any]) -> torch.Tensor:
    """(K+1, H, W) walked scores (background plane first) at the image's resolution."""
    _, h, w = probs.shape
    src, dst = _pairs(h, w, cfg["radius"])
    # On a CPU the 2**logt sparse products beat logt dense n×n squarings from a few hundred
    # cells on (63×47 grid, 256 steps: 0.04 s vs 3.2 s); a GPU squares 4096 cells quickly.
    dense_limit = 4096 if probs.device.type == "cuda" else 256
    scores = random_walk(probs, src, dst, aff, cfg["beta"], cfg["logt"], dense_limit)
    return upsample(scores[None], padded)[0, :, : size[0], : size[1]]


def refine(cam_path: str | os.PathLike, ds: VocDataset, split: str, cfg: dict[str, Any],
           weights_path: str | os.PathLike, out_path: str | os.PathLike,
           device: torch.device | str, threads: int) -> None:
    """Random-walk pseudo-labels (uint8, 0 bg, k + 1 class k) of `split`, written to `out_path`.

    The network runs image by image in this thread, the walks on its device in `threads`
    threads, and the optional dense CRF on the walked scores (`inference.crf`) in `threads`
    processes (`learned.refine_walks`).
    """
    cfg = settings(cfg)

    def start(reader: CamReader, ids: list[str]):
        net = load_affinity_net(weights_path, learned.as_device(device), cfg["radius"])

        def jobs():
            for image_id in ids:
                cams, keys = reader.get(image_id)
                image = ds.load_image(image_id)
                if image.shape[:2] != cams.shape[1:]:
                    raise StoreError(f"{cam_path}: image '{image_id}': CAM size "
                                     f"{cams.shape[1:]} differs from image {image.shape[:2]}")
                walk = None
                if len(keys):
                    walk = functools.partial(_walk_scores, *_walk_inputs(net, image, cams, cfg),
                                             image.shape[:2], cfg)
                yield image_id, image, keys, walk

        return jobs()

    learned.refine_walks(cam_path, ds, split, cfg, out_path, threads, start, score_crf_labels,
                         cfg["crf"], f"{REGISTER['name']} refine")
