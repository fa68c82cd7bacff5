"""HSC (Wu et al., IJCAI 2023): hierarchical semantic contrast as a plug-in on SEAM or CAM.

    L = L_base + gamma (L_rsc + L_csc + L_psc)                                        (eq. 1)

Two projectors on the last backbone stage of both views (shared between the views):
proj1 (3×3 conv D -> proj1_dim, ReLU, 1×1 conv, ReLU) gives u1 for the ROI and class levels,
proj2 (1×1 conv D -> proj2_dim, ReLU) gives u2 for the pixel level, L2-normalised per cell.
All HSC terms live on the *contrast grid*, the second view's feature grid (HSC's code: 16×16 for
its 128 px second view): view 1's maps and projections are resized down to it (bilinear,
align_corners=True), view 2's are native.

Pseudo labels (per view, no gradient): the base's inference map (`View.pseudo`, SEAM's
PCM-revised CAM, the CAM for the baseline) resized to the contrast grid, ReLU'd and min-max
normalised per channel (`seam.max_norm`), multiplied by the image labels: that is the activation
w; a constant background plane `bg_threshold` in front (channel 0, SEAM's convention here; HSC's
EPS code puts it last), argmax -> 0 background, c + 1 = class c. With CRF (Table 4's CRF† and
CRF columns) the labels of both views are refined by the label CRF of IRN/PSA
(`wsss.ops.densecrf.label_crf`, unary gt_prob on the labelled plane over all C + 1 planes, as
HSC's `n_labels=21`) on the de-normalised second-view image at the contrast grid, for both views.

  rsc (eq. 3–5)   per image, masked averages of u1 over ROI (label != 0) and background cells;
                  F(r_o, r_b) = -mean_ij log(1 - clamp(cos(r_o^i, r_b^j), 5e-4, 1 - 5e-4));
                  one view's term: F(r_o, r_b) + F(r_o, r̃_b) with r̃_b the other view's.
  csc (eq. 6–9)   per image and present class c, the w-weighted mean of u1 over its top k_c
                  cells, averaged over the images with c -> r_c; InfoNCE of r_c against the
                  view's class prototype bank P (positive P_c) and the other view's P̃.
  psc (eq. 10–13) per class 0..C (background activation 1 - max foreground activation) the
                  batch prototype Q_c: w-weighted mean of u2 over the top k_p cells labelled c
                  in the whole batch; per cell -log softmax_c(cos(u2, Q_c) / tau) at its label,
                  four times: intra (u2, y', Q), cross-view prototypes (u2, y', Q̃), cross-CAM
                  (u2, ỹ', Q) and momentum (u2, y', Q').
Each level's loss is the mean over the two views of its one-view formula. The log reports the
unweighted levels ("rsc", "csc", "psc") and the plug-in total gamma · (sum) under "hsc".

Config block `hsc:` (every key optional; defaults in REGISTER's schema):
  base          seam | baseline: the method HSC is plugged into (built from the same config).
  gamma         weight of the HSC sum in eq. 1 (paper: 0.1).
  tau           temperature of every InfoNCE (paper: 0.1).
  momentum      lambda of eq. 7 and 11, the weight of the *new* value as the paper writes it
                (paper: 0.9; HSC's code uses 0.5 everywhere).
  k_c           top-k cells per image and class for the class level (eq. 6; paper 16).
  k_p           top-k cells over the batch per class for the pixel level (eq. 10; paper 32).
  proj1_dim     width of proj1 (paper 256); proj2_dim width of proj2 (paper 128).
  bg_threshold  constant background score of the in-training pseudo labels (HSC's code: 0.10).
  view_scale    second view scale; null = the base's own (SEAM's `seam.scale`), 0.3 for the
                baseline (`PluginMethod`).
  components    psc, csc, rsc: the three levels; cross: cross supervision (Table 4's CS: the
                r̃_b, P̃, Q̃ and ỹ' terms); mpl: momentum prototypes in PSC (the Q' term). Each
                false removes its term(s); a disabled level reports 0.
  crf           psc: refine the labels PSC uses (Table 4's CRF†); rsc_csc: RSC masks and CSC
                candidates use the refined labels too (Table 4's last CRF column); gt_prob,
                iterations, gaussian {sxy, compat}, bilateral {sxy, srgb, compat}: the label CRF
                (HSC's `crf_inference_label`: 0.7, 10, 3/3, 50/5/10).

Choices the paper leaves open, and departures from HSC's released code (which is EPS + SEAM +
HSC; the non-saliency HSC-on-SEAM variant used here is not released, see
shared/notes/reference-implementations.md §4):
- The EPS saliency loss is not part of this variant; the base's losses are the base's own.
- Momentum banks start empty and take their first representation as is (`PrototypeBank`);
  HSC's code starts them from unnormalised torch.randn. A term whose positive prototype is not
  yet filled is left out, unfilled prototypes are left out of the denominators, so the first step
  has no CSC and no momentum-PSC term. Losses use the banks as they were before the step; the
  banks are updated afterwards with the detached representations (CSC: r_c of eq. 6, PSC: Q_c).
- The L1 pull of the ROI representations to a foreground / background bank in HSC's RSC code is
  left out: neither eq. 5 nor the paper's text has it, and the paper argues against pulling
  ROI-level representations together. The ROI banks therefore do not exist here.
- CSC follows eq. 6 (top k_c per image, mean over images); HSC's code instead takes the top 128
  cells over the whole batch for the loss and the top 16 for the bank update. The CSC mean of
  eq. 9 is taken per bank over the classes whose own prototype is filled (equal to eq. 9 once
  every present class has been seen).
- CSC candidates: all cells of the image, or with crf.rsc_csc only the cells whose refined label
  is c (all cells again if none is), the paper's "CRF in complete HSC".
- The pixel-level batch prototypes Q_c are detached and unit length (HSC's code computes them
  under no_grad and normalises them); the cells of B_c are those labelled c (the paper; HSC's code
  ranks every cell by activation). The background activation is 1 - max foreground activation
  (HSC's code uses the constant 0.10 plane, which makes its background top-k arbitrary).
- Cross-CAM contrast pairs the other view's labels with this view's prototypes, as eq. 13 and
  HSC's code do.
- Cells whose label has no prototype in a term (class absent from the other view's labels,
  unfilled momentum prototype) are left out of that term; each PSC term is a mean over its cells.
- RSC images without ROI or without background cells are left out of eq. 4. The cosine clamp
  (from HSC's code) also stops the gradient of pairs already dissimilar (cos < 5e-4).
- Projector biases and PyTorch's default initialisation; HSC's proj1 has a BatchNorm that its
  frozen-BN training keeps an identity, left out. On CUDA the projectors run under the base's
  bfloat16 autocast; every loss is computed in float32.
- The CRF image is the second view resized to the contrast grid (bilinear, align_corners=True),
  de-normalised, rounded and clipped to uint8 (HSC's code truncates).
- CRF work runs in a persistent fork pool of `torch.get_num_threads()` processes (pydensecrf
  holds the GIL), one chunk of images per worker and step (`hsc_crf`); identical (image, labels)
  pairs, such as both views agreeing, are refined once. The pool lives in `wsss.ops.pool`, not
  in the module, so the method stays picklable and deep-copyable.

Measured figures (the component ablation, workflow/configs/ablations/hsc_components.yaml, and
three training seeds, seeds.yaml) are in the README's "Methods" section, not here, where they
would go stale. A risk of the method on a backbone trained from scratch, seen on earlier
commits as a collapse of one training seed: the levels contrast cells against prototypes built
from the model's own pseudo-labels, so labels that spill onto the background pull background
features towards the objects', the CAM spreads further and the labels follow; in its extreme
every cell ends up foreground, where RSC has no background left and PSC a single class. The
papers start from an ImageNet ResNet-38 whose first pseudo-labels are already good, as the
benchmark's default config does with the pretrain stage's weights (the README compares both
regimes).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from wsss.errors import MethodError
from wsss.methods.base import View, register
from wsss.methods.contrast import PrototypeBank, unit
from wsss.methods.hsc_crf import crf_refine, crf_workers, to_uint8
from wsss.methods.hsc_losses import (
    activations,
    batch_prototypes,
    class_representations,
    csc_loss,
    psc_loss,
    pseudo_labels,
    roi_representations,
    rsc_loss,
    with_background,
)
from wsss.methods.plugin import PluginMethod
from wsss.methods.seam import resize

REGISTER = {
    "kind": "method",
    "name": "hsc",
    "block": "hsc",
    "base": False,
    "plugin": True,
    "order": 2,
    "schema": {
        "description": "HSC's settings (method hsc), wsss/methods/hsc.py",
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "base": {"$ref": "#/$defs/plugin_base", "default": "seam"},
            "gamma": {"type": "number", "minimum": 0, "default": 0.1},
            "tau": {"type": "number", "exclusiveMinimum": 0, "default": 0.1},
            "momentum": {"type": "number", "exclusiveMinimum": 0, "maximum": 1, "default": 0.9},
            "k_c": {"type": "integer", "minimum": 1, "default": 16},
            "k_p": {"type": "integer", "minimum": 1, "default": 32},
            "proj1_dim": {"type": "integer", "minimum": 1, "default": 256},
            "proj2_dim": {"type": "integer", "minimum": 1, "default": 128},
            "bg_threshold": {
                "description": "constant background score of the pseudo-labels; "
                               "null = 1 - max fg",
                "type": ["number", "null"],
                "minimum": 0,
                "maximum": 1,
                "default": 0.10,
            },
            "view_scale": {"type": ["number", "null"], "exclusiveMinimum": 0,
                           "exclusiveMaximum": 1, "default": None},
            "components": {
                "type": "object",
                "additionalProperties": False,
                "properties": {
                    "psc": {"type": "boolean", "default": True},
                    "csc": {"type": "boolean", "default": True},
                    "rsc": {"type": "boolean", "default": True},
                    "cross": {"type": "boolean", "default": True},
                    "mpl": {"type": "boolean", "default": True},
                },
            },
            "crf": {
                "type": "object",
                "additionalProperties": False,
                "properties": {
                    "psc": {"type": "boolean", "default": True},
                    "rsc_csc": {"type": "boolean", "default": True},
                    "gt_prob": {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1,
                                "default": 0.7},
                    "iterations": {"type": "integer", "minimum": 1, "default": 10},
                    # inline, not the refiners' kernel blocks: HSC's defaults are its own
                    "gaussian": {
                        "type": "object",
                        "additionalProperties": False,
                        "properties": {
                            "sxy": {"type": "number", "exclusiveMinimum": 0, "default": 3},
                            "compat": {"type": "number", "minimum": 0, "default": 3},
                        },
                    },
                    "bilateral": {
                        "type": "object",
                        "additionalProperties": False,
                        "properties": {
                            "sxy": {"type": "number", "exclusiveMinimum": 0, "default": 50},
                            "srgb": {"type": "number", "exclusiveMinimum": 0, "default": 5},
                            "compat": {"type": "number", "minimum": 0, "default": 10},
                        },
                    },
                },
            },
        },
    },
}
COMPONENTS = tuple(REGISTER["schema"]["properties"]["components"]["properties"])
# the keys of the `crf` block that switch the CRF on per level, not settings of the CRF itself
CRF_SWITCHES = ("psc", "rsc_csc")


# -- the method -----------------------------------------------------------------------------------

@register("hsc")
class HSC(PluginMethod):
    """The base (SEAM or CAM) with HSC's projectors, banks and three contrast levels; see the
    module doc."""

    def __init__(self, cfg: dict[str, Any], num_classes: int):
        super().__init__(cfg, num_classes)
        s = self.settings
        unknown = set(s["components"]) - set(COMPONENTS)
        if unknown:
            raise MethodError(f"hsc.components: unknown {sorted(unknown)}; "
                              f"choose from {list(COMPONENTS)}")
        d, d1, d2 = self.feat_dim, int(s["proj1_dim"]), int(s["proj2_dim"])
        self.proj1 = nn.Sequential(nn.Conv2d(d, d1, 3, padding=1), nn.ReLU(),
                                   nn.Conv2d(d1, d1, 1), nn.ReLU())
        self.proj2 = nn.Sequential(nn.Conv2d(d, d2, 1), nn.ReLU())
        m = float(s["momentum"])
        self.class_banks = nn.ModuleList(PrototypeBank(num_classes, d1, m) for _ in range(2))
        self.pixel_banks = nn.ModuleList(PrototypeBank(num_classes + 1, d2, m)
                                         for _ in range(2))

    def heads(self) -> list[nn.Module]:
        return [self.proj1, self.proj2]

    def project(self, proj: nn.Module, feat: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """proj(feat) in float32, resized to the contrast grid `size`."""
        with self.autocast():
            out = proj(feat)
        return resize(out.float(), size)

    def plugin_losses(self, views: list[View], labels: torch.Tensor,
                      step: int) -> dict[str, torch.Tensor]:
        if len(views) != 2:
            raise MethodError(f"hsc needs two views of the batch, the base gave {len(views)}")
        s, on, crf = self.settings, self.settings["components"], self.settings["crf"]
        grid = tuple(views[1].feat.shape[-2:])
        acts = [activations(v.pseudo, labels, grid) for v in views]
        raw = [pseudo_labels(a, s["bg_threshold"]) for a in acts]
        use_psc = bool(on["psc"] and crf["psc"])
        use_rc = bool((on["rsc"] or on["csc"]) and crf["rsc_csc"])
        refined = self.refine(views[1].image, raw, grid) if use_psc or use_rc else raw
        zero = labels.new_zeros((), dtype=torch.float32)
        rsc = csc = psc = zero
        if on["rsc"] or on["csc"]:
            u1 = [self.project(self.proj1, v.feat, grid) for v in views]
            rc_labels = refined if use_rc else raw
            if on["rsc"]:
                rsc = self.rsc(u1, rc_labels)
            if on["csc"]:
                csc = self.csc(u1, acts, labels, rc_labels if use_rc else None)
        if on["psc"]:
            u2 = [unit(self.project(self.proj2, v.feat, grid), dim=1) for v in views]
            psc = self.psc(u2, acts, refined if use_psc else raw)
        loss = float(s["gamma"]) * (rsc + csc + psc)
        return {"loss": loss, "rsc": rsc, "csc": csc, "psc": psc}

    @torch.no_grad()
    def refine(self, image: torch.Tensor, labels: list[torch.Tensor],
               grid: tuple[int, int]) -> list[torch.Tensor]:
        """The views' pseudo labels refined by the label CRF on the second view's image at the
        contrast grid; each distinct (image, labels) pair is refined once."""
        pixels = to_uint8(resize(image.float(), grid))
        planes = [y.cpu().numpy() for y in labels]
        slots: dict[tuple[int, bytes], int] = {}
        images, todo, index = [], [], []
        for view in planes:
            for b, plane in enumerate(view):
                key = (b, plane.tobytes())
                if key not in slots:
                    slots[key] = len(todo)
                    images.append(pixels[b])
                    todo.append(plane)
                index.append(slots[key])
        crf = {k: v for k, v in self.settings["crf"].items() if k not in CRF_SWITCHES}
        out = crf_refine(images, todo, self.num_classes + 1, crf, crf_workers())
        refined = torch.from_numpy(np.stack([out[i] for i in index])).to(labels[0].device)
        return list(refined.view(len(planes), *labels[0].shape))

    def rsc(self, u1: list[torch.Tensor], labels: list[torch.Tensor]) -> torch.Tensor:
        """L_rsc (eq. 5), mean over the views."""
        reps = [roi_representations(u, y) for u, y in zip(u1, labels, strict=True)]
        total = u1[0].new_zeros(())
        for v, o in ((0, 1), (1, 0)):
            r_o, r_b = reps[v]
            total = total + rsc_loss(r_o, r_b)
            if self.settings["components"]["cross"]:
                total = total + rsc_loss(r_o, reps[o][1])
        return total / 2

    def csc(self, u1: list[torch.Tensor], acts: list[torch.Tensor], labels: torch.Tensor,
            candidates: list[torch.Tensor] | None) -> torch.Tensor:
        """L_csc (eq. 9), mean over the views, against the banks before this step; then the
        banks take this step's r_c."""
        s = self.settings
        reps = [class_representations(u, a, labels, int(s["k_c"]),
                                      None if candidates is None else candidates[i])
                for i, (u, a) in enumerate(zip(u1, acts, strict=True))]
        banks = [(b.prototypes, b.filled) for b in self.class_banks]
        total = u1[0].new_zeros(())
        for v, o in ((0, 1), (1, 0)):
            classes, r = reps[v]
            total = total + csc_loss(r, classes, *banks[v], float(s["tau"]))
            if s["components"]["cross"]:
                total = total + csc_loss(r, classes, *banks[o], float(s["tau"]))
        for bank, (classes, r) in zip(self.class_banks, reps, strict=True):
            bank.update(classes, r)
        return total / 2

    def psc(self, u2: list[torch.Tensor], acts: list[torch.Tensor],
            labels: list[torch.Tensor]) -> torch.Tensor:
        """L_psc (eq. 13), mean over the views; the momentum banks take this step's Q_c after."""
        s, on = self.settings, self.settings["components"]
        tau = float(s["tau"])
        protos = [batch_prototypes(u, with_background(a), y, int(s["k_p"]))
                  for u, a, y in zip(u2, acts, labels, strict=True)]
        banks = [(b.prototypes, b.filled) for b in self.pixel_banks]
        total = u2[0].new_zeros(())
        for v, o in ((0, 1), (1, 0)):
            u, y = u2[v], labels[v]
            total = total + psc_loss(u, y, *protos[v], tau)
            if on["cross"]:
                total = (total + psc_loss(u, y, *protos[o], tau)
                         + psc_loss(u, labels[o], *protos[v], tau))
            if on["mpl"]:
                total = total + psc_loss(u, y, *banks[v], tau)
        if on["mpl"]:
            for bank, (q, available) in zip(self.pixel_banks, protos, strict=True):
                bank.update(torch.nonzero(available).flatten(), q[available])
        return total / 2

