"""SEAM (Wang et al., CVPR 2020): self-supervised equivariant attention for CAMs.

One network sees two views of each batch: the crop and the crop downscaled by `seam.scale`
(0.3 in SEAM), but to no fewer than `seam.min_cells` feature cells a side (8, our addition:
SEAM's 448 px crops give 16 cells at 0.3 and are unaffected; a 96 px crop at 0.3 would give a
3×3 map whose equivariance constraint mostly says "be blurry").

The head is a 1×1 classifier to C+1 channels, channel 0 the background (as
SEAM's fc8 with 21 outputs); only the C foreground channels are pooled into class scores.

The pixel correlation module (PCM) revises a view's CAM with an affinity learnt from low-level
features: the CAM, detached and preprocessed (`pcm_preprocess`), is averaged over the cells whose
features are similar (`pcm_affinity`, `pcm_propagate`). Its features are the image at the CAM's
size and ReLU(1×1 conv) of two earlier backbone stages (detached), projected to 192 channels.
SEAM takes its ResNet-38's conv4 (512 ch) -> 64 and conv5 (1024 ch) -> 128; here that is the
third-to-last stage -> 64 and the second-to-last -> 128: ResNet-50/101 layer2 and layer3, the
3-stage `tiny` backbone its stage 1 (stride 4, 32 ch) and stage 2 (stride 8, 64 ch). Stages
whose grid differs from the CAM's are resized to it (bilinear, align_corners=True) before their
1×1 conv, which is cheaper than the other order.

Losses (weights `seam.weights`, all 1 by default as in SEAM), with the CAM and the revised CAM
upsampled to their view's input size first, as SEAM does:
  cls    multilabel soft margin on the global average of the foreground channels, mean of views;
  rvmin  adaptive min-pooling: the mean of the lowest `min_pool_ratio` of per-pixel maxima over
         the label-masked foreground channels of the revised CAM, ReLU'd; mean of views;
  er     equivariant regularisation: mean |max_norm(CAM 1) resized to view 2 - max_norm(CAM 2)|
         over the label-masked foreground channels;
  ecr    equivariant cross regularisation: L1 between the other view's detached, max-normed CAM
         (background := 1 - foreground max, non-maximal foreground zeroed) and this view's
         max-normed revised CAM, averaged over the top `ecr_top` of (C+1)·h·w entries per image;
         both directions summed.
Because the PCM's input CAM and the stage features are detached, rvmin and ecr train only the
PCM convs; the backbone and the classifier learn from cls and er.

Memory: the affinity is (B, N, N) float32 for N feature cells, kept for backward: a 96 px crop
at stride 8 has N = 144 (83 KB per image); a 448 px crop N = 3136 (39 MB per image, about
0.1 GB per image with its ReLU'd copy and gradient). At inference a 500×375 image at scale 2.0
and stride 8 has N = 11,750: 0.55 GB per N×N matrix and image, so keep `inference.batch_size`
small for large images (each image counts twice with flip).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from wsss import registry
from wsss.methods.base import BackboneMethod, View, max_norm, register, second_view_size
from wsss.models.backbones import stage_widths
from wsss.train.trainable import bias_groups

# The registry's declaration, read without importing torch. `schema` is the `seam:` block of a
# method; its defaults (SEAM's own, `min_cells` ours) are the only place they are written.
REGISTER = {
    "kind": "method",
    "name": "seam",
    "block": "seam",
    "base": True,
    "plugin": False,
    # infer_SEAM.py min-max normalises each class plane (wsss.cams.normalise); plug-ins on
    # SEAM (HSC, DSCNet) infer from its maps and inherit this (registry.method_capability)
    "cam_norm": "minmax",
    "order": 1,
    "schema": {
        "description": "SEAM's settings (method seam); defaults are SEAM's (wsss/methods/seam.py)",
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "scale": {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1,
                      "default": 0.3},
            "dropout": {"type": "number", "minimum": 0, "exclusiveMaximum": 1, "default": 0.5},
            "weights": {
                "type": "object",
                "additionalProperties": False,
                "properties": {
                    "cls": {"type": "number", "minimum": 0, "default": 1.0},
                    "er": {"type": "number", "minimum": 0, "default": 1.0},
                    "ecr": {"type": "number", "minimum": 0, "default": 1.0},
                    "rvmin": {"type": "number", "minimum": 0, "default": 1.0},
                },
            },
            "ecr_top": {"type": "number", "exclusiveMinimum": 0, "maximum": 1, "default": 0.2},
            "min_pool_ratio": {"type": "number", "exclusiveMinimum": 0, "maximum": 1,
                               "default": 0.25},
            "min_cells": {
                "description": "smallest side of the second view in feature cells (ours; 8)",
                "type": "integer",
                "minimum": 1,
                "default": 8,
            },
            "bias_groups": {
                "description": "SEAM's four optimizer groups: biases at 2x their layers' lr "
                               "without weight decay (trunk 1x/2x, new layers 10x/20x); "
                               "false: two groups, biases with the weights. SEAM's code is "
                               "true; the default false keeps earlier runs unchanged",
                "type": "boolean",
                "default": False,
            },
        },
    },
}
EPS = 1e-5
PCM_LOW, PCM_MID, PCM_OUT = 64, 128, 192  # SEAM's widths for the two stages and the projection


def seam_settings(cfg: dict[str, Any]) -> dict[str, Any]:
    """The method block's `seam` sub-block with SEAM's defaults for every key left out."""
    return registry.declared_settings(REGISTER, cfg.get(REGISTER["block"]))


def resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear, align_corners=True (SEAM's convention everywhere); a no-op at the same size."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=True)


def with_background(x: torch.Tensor) -> torch.Tensor:
    """Replace channel 0 by 1 - the maximum over the foreground channels."""
    bg = 1.0 - x[:, 1:].amax(dim=1, keepdim=True)
    return torch.cat([bg, x[:, 1:]], dim=1)


def keep_max_foreground(x: torch.Tensor) -> torch.Tensor:
    """Zero every foreground entry below the foreground maximum of its pixel; the background
    channel and the maximal values themselves are kept (SEAM's `max_onehot` keeps the value,
    it does not write 1)."""
    fg = x[:, 1:]
    peak = fg.amax(dim=1, keepdim=True)
    return torch.cat([x[:, :1], torch.where(fg < peak, torch.zeros_like(fg), fg)], dim=1)


@torch.no_grad()
def pcm_preprocess(cam: torch.Tensor) -> torch.Tensor:
    """The PCM's input: ReLU, divide each channel by its maximum, background := 1 - foreground
    maximum, non-maximal foreground zeroed. Computed without gradient, as in SEAM: the PCM
    learns where to spread a CAM, not how to change it."""
    cam = F.relu(cam.float())
    peak = cam.amax(dim=(2, 3), keepdim=True) + EPS
    # subtracting EPS keeps all-zero channels at exactly zero after the division
    cam = F.relu(cam - EPS) / peak
    return keep_max_foreground(with_background(cam))


def _unit_features(f: torch.Tensor) -> torch.Tensor:
    """(B, D, h, w) -> (B, D, N), each cell's feature vector scaled to unit length."""
    f = f.flatten(2)
    return f / (f.norm(dim=1, keepdim=True) + EPS)


def pcm_affinity(f: torch.Tensor) -> torch.Tensor:
    """(B, N, N) affinity from features (B, D, h, w): ReLU of the cosine similarity, each column
    divided by its sum, so column j holds the weights with which cell j averages the others."""
    f = _unit_features(f)
    aff = F.relu(f.transpose(1, 2) @ f)
    return aff / (aff.sum(dim=1, keepdim=True) + EPS)


def pcm_propagate(cam: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """Revised CAM = CAM × `pcm_affinity(f)`, with the CAM (B, K, h, w) on the grid of f.

    Divides the product by the column sums instead of the matrix by them: the same numbers with
    one N×N tensor fewer in memory.
    """
    b, k, h, w = cam.shape
    fu = _unit_features(f)
    aff = F.relu(fu.transpose(1, 2) @ fu)
    out = (cam.flatten(2) @ aff) / (aff.sum(dim=1).unsqueeze(1) + EPS)
    return out.view(b, k, h, w)


def min_pool_loss(x: torch.Tensor, ratio: float) -> torch.Tensor:
    """Adaptive min-pooling: per image, the lowest `ratio` of the per-pixel channel maxima of
    x (B, K, H, W), ReLU'd and averaged (over those pixels and the batch)."""
    peaks = x.amax(dim=1).flatten(1)
    k = max(1, int(peaks.shape[1] * ratio))
    lowest = torch.topk(peaks, k, dim=1, largest=False).values
    return F.relu(lowest).mean()


def er_loss(cam1: torch.Tensor, cam2: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    """Equivariant regularisation between max-normed CAMs, view 1 brought to view 2's size;
    `label` (B, C+1, 1, 1) masks absent classes (they still count in the mean, as in SEAM)."""
    a = resize(max_norm(cam1), cam2.shape[-2:]) * label
    b = max_norm(cam2) * label
    return (a[:, 1:] - b[:, 1:]).abs().mean()


def ecr_loss(target: torch.Tensor, revised: torch.Tensor, top: float) -> torch.Tensor:
    """Mean of the largest `top` fraction of |target - revised| per image, over all C+1
    channels; `target` is expected detached (the stop-gradient of SEAM)."""
    diff = (target - revised).abs().flatten(1)
    k = max(1, int(diff.shape[1] * top))
    return torch.topk(diff, k, dim=1).values.mean()


@register(REGISTER["name"])
class SEAM(BackboneMethod):
    """Backbone, Dropout2d, 1×1 classifier to C+1 channels and the PCM; see the module doc."""

    second_view = True  # view_losses makes its own downscaled view (wsss.methods.plugin)

    def __init__(self, cfg: dict[str, Any], num_classes: int):
        super().__init__(cfg, num_classes)
        self.seam = seam_settings(cfg)
        widths = stage_widths(self.backbone)
        if len(widths) < 3:
            raise ValueError("SEAM's PCM needs a backbone with at least three stages")
        self.dropout = nn.Dropout2d(float(self.seam["dropout"]))
        self.classifier = nn.Conv2d(self.backbone.out_channels, num_classes + 1, 1, bias=False)
        self.pcm_low = nn.Conv2d(widths[-3], PCM_LOW, 1, bias=False)
        self.pcm_mid = nn.Conv2d(widths[-2], PCM_MID, 1, bias=False)
        self.pcm_proj = nn.Conv2d(3 + PCM_LOW + PCM_MID, PCM_OUT, 1, bias=False)
        for conv in (self.classifier, self.pcm_low, self.pcm_mid, self.pcm_proj):
            nn.init.xavier_uniform_(conv.weight)

    def param_groups(self) -> list[dict[str, Any]]:
        """Backbone at 1×, new layers (classifier, PCM convs) at `new_layer_lr_mult`; with
        `seam.bias_groups` each split as SEAM's get_parameter_groups does (biases at 2× their
        group's rate, no weight decay: `wsss.train.trainable.bias_groups`).

        SEAM's own network has no trainable bias (ResNet-38's convs and its new 1×1 convs have
        none, its BatchNorm is frozen), so there its two bias groups are empty; so are ours
        with a frozen-BN ResNet (`backbone.freeze_bn`), whose convs have no bias either. The
        groups matter for backbones that train BatchNorm (BN biases 2×, no decay).
        """
        new_mult = self.cfg["training"]["new_layer_lr_mult"]
        new = [self.classifier, self.pcm_low, self.pcm_mid, self.pcm_proj]
        if self.seam["bias_groups"]:
            return [*bias_groups("backbone", [self.backbone], 1.0),
                    *bias_groups("new", new, new_mult)]
        return [
            {"params": list(self.backbone.parameters()), "lr_mult": 1.0, "name": "backbone"},
            {"params": [p for m in new for p in m.parameters()], "lr_mult": new_mult,
             "name": "new"},
        ]

    def features(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(CAM (B, C+1, h, w), PCM features (B, 192, h, w), last stage (B, D, h, w)), float32
        on the feature grid."""
        with self.autocast():
            stages = self.backbone.forward_stages(images)
            cam = self.classifier(self.dropout(stages[-1])).float()
        size = tuple(cam.shape[-2:])
        # the PCM runs in float32: cosines and column sums over thousands of cells lose too
        # much in bfloat16, and its 1×1 convs are cheap
        low = F.relu(self.pcm_low(resize(stages[-3].detach().float(), size)))
        mid = F.relu(self.pcm_mid(resize(stages[-2].detach().float(), size)))
        f = self.pcm_proj(torch.cat([resize(images.float(), size), low, mid], dim=1))
        return cam, f, stages[-1].float()

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(CAM, revised CAM), both (B, C+1, h, w) float32 on the feature grid."""
        cam, f, _ = self.features(images)
        return cam, pcm_propagate(pcm_preprocess(cam), f)

    def view(self, images: torch.Tensor) -> tuple[View, torch.Tensor, torch.Tensor]:
        """The view for plug-in methods (foreground channels) and the full CAM and revised
        CAM (with background channel 0) for SEAM's own losses."""
        cam, f, feat = self.features(images)
        rv = pcm_propagate(pcm_preprocess(cam), f)
        return View(images, feat, cam[:, 1:], rv[:, 1:]), cam, rv

    def losses(self, images: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        """Every loss term and the weighted total for a batch (B, 3, H, W), labels (B, C)."""
        return self.view_losses(images, labels)[0]

    def view_losses(self, images: torch.Tensor, labels: torch.Tensor,
                    scale: float | None = None) -> tuple[dict[str, torch.Tensor], list[View]]:
        """SEAM's loss terms and its two views; `scale` overrides `seam.scale`."""
        s = self.seam
        h1, w1 = images.shape[-2:]
        size2 = second_view_size((h1, w1), s["scale"] if scale is None else scale,
                                 self.stride, int(s["min_cells"]))
        view1, cam1, rv1 = self.view(images)
        view2, cam2, rv2 = self.view(resize(images, size2))
        label = torch.cat([labels.new_ones(labels.shape[0], 1), labels], dim=1)[:, :, None, None]

        cls = (F.multilabel_soft_margin_loss(cam1[:, 1:].mean(dim=(2, 3)), labels)
               + F.multilabel_soft_margin_loss(cam2[:, 1:].mean(dim=(2, 3)), labels)) / 2
        # SEAM compares the views at input resolution, view 2's size for the cross-view terms
        cam1, rv1 = resize(cam1, (h1, w1)), resize(rv1, (h1, w1))
        cam2, rv2 = resize(cam2, size2), resize(rv2, size2)
        ratio = s["min_pool_ratio"]
        rvmin = (min_pool_loss((rv1 * label)[:, 1:], ratio)
                 + min_pool_loss((rv2 * label)[:, 1:], ratio)) / 2
        er = er_loss(cam1, cam2, label)

        t1 = with_background(resize(max_norm(cam1), size2) * label)
        t2 = with_background(max_norm(cam2) * label)
        r1 = resize(max_norm(rv1), size2) * label
        r2 = max_norm(rv2) * label
        ecr = (ecr_loss(keep_max_foreground(t2.detach()), r1, s["ecr_top"])
               + ecr_loss(keep_max_foreground(t1.detach()), r2, s["ecr_top"]))

        w = s["weights"]
        total = w["cls"] * cls + w["rvmin"] * rvmin + w["er"] * er + w["ecr"] * ecr
        terms = {"loss": total, "cls": cls, "rvmin": rvmin, "er": er, "ecr": ecr}
        return terms, [view1, view2]

    def training_step(self, batch: dict[str, torch.Tensor], step: int) -> dict[str, float]:
        terms = self.losses(batch["image"], batch["label"].float())
        self.optimize(terms["loss"])
        return {k: v.item() for k, v in terms.items()}

    @torch.no_grad()
    def inference_view(self, images: torch.Tensor) -> View:
        """The batch as SEAM infers from it: last stage, foreground CAM and, as `pseudo`, the
        foreground channels of the revised CAM, on the feature grid; CAM and PCM features come
        from the same forward pass.

        The PCM is global (every cell's average and the per-channel maxima run over the whole
        grid), so a batch must not be zero-padded to a common size: `cams.multiscale_maps`
        batches views of one size only.
        """
        cam, f, feat = self.features(images)
        revised = pcm_propagate(pcm_preprocess(cam), f)[:, 1:]
        return View(images, feat, cam[:, 1:], revised)

    @torch.no_grad()
    def cams(self, images: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """Foreground channels of the revised CAM (SEAM infers from it); see `inference_view`."""
        return self.inference_view(images).pseudo
