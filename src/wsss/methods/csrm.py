"""CSRM (David, Pedrini & Dias, VISAPP 2025): cross-supervision of a CAM classifier and a
segmentation branch, with pixel contrast of reliable and unreliable pseudo-labels.

One backbone, three branches (`wsss.models.deeplabv3plus` for the last two):
  classification   the CAM baseline's 1×1 classifier, pooled by GAP (`init_from: baseline`
                   loads backbone and classifier tensor by tensor, the paper's prior);
  segmentation     a DeepLabV3+ decoder (ASPP on the last stage, a stride-4 low-level
                   projection, GroupNorm, dropout) to background + classes, on the stride-4 grid;
  representation   U2PL's projection head on the same features (`csrm.head.rep_dim`).
A mean teacher (`wsss.train.EMA` of all three) is a hard copy of the student during the
warm-up (`warmup_epochs`, when only L_c and L_s train), then an EMA with the reference's decay
min(1 - 1 / (1 + s - s_warm), `ema`) after optimizer step s. It always runs in eval mode.

Each step takes B augmented images (`image`, the "labelled" half) and B unaugmented ones
(`image_u`, `training.unaugmented_batch`), all with their image labels, as the reference does:
 1. The teacher's CAMs, label-restricted and max-normalised (Eq. 2) and upsampled to the crop,
    go through IRN's two-threshold label CRF (`c2s.fg`, `c2s.bg`; pixels between are 255):
    the pseudo-masks I^s (Eq. 6). The CRFs run in the persistent process pool.
 2. ClassMix (probability `classmix.prob` per batch, as the reference): each image gets a
    partner drawn among the other images of the batch, and max(n // 2, 1) of the n foreground
    classes of the partner's pseudo-mask are pasted, in the image, the pseudo-mask and the
    teacher's segmentation logits; the image labels gain the pasted classes and lose those
    whose pseudo-mask pixels are all covered (`class_mix`).
 3. The student sees the (mixed) batch; the teacher sees it too when it was mixed, for its
    stride-4 probabilities, entropies and representations (without a mix, step 1's pass).
Losses (`weights`; Eq. 14: L_c + L_s + λ_s2c L_s2c + λ_u L_u + λ_m L_m):
  cls       multilabel soft margin on both halves, targets smoothed by `label_smoothing`
            (y (1 - ε) + ε / 2, the reference's `label_smoothing`) (Eq. 5);
  c2s       L_s: cross-entropy (label smoothing ε) of the student's segmentation on the
            augmented half against I^s, images with no confident foreground left out (Eq. 7);
  s2c       L_s2c: the teacher's segmentation probabilities restricted to the image labels
            (renormalised); pixels whose maximum exceeds `s2c.sigma` supervise the student's
            [background seg logit (detached), upsampled CAM] with cross-entropy (Eq. 8-9);
            λ_s2c rises linearly from `s2c.start` to its weight after the warm-up;
  u         L_u: on the unaugmented half, the student's segmentation against the argmax of
            the teacher's restricted probabilities, ignoring the highest-entropy pixels (the
            teacher's entropy on the mixed images); the ignored share falls linearly from
            `unsup.ignore` at epoch 0 to 0 at the end (Eq. 10-12);
  contrast  L_m: U2PL's pixel contrast (`contrast_loss`, Eq. 13) on the stride-4 grid.
L_s2c, L_u and L_m are off during the warm-up.

Where we do what the reference meant, not what it does:
  - ClassMix: the reference passes its ignore class (background, 0) positionally into the
    class count `k` of `generate_class_mask_pt`, so zero classes are selected, the mix mask
    is empty and ClassMix never happens. Here it selects max(n // 2, 1) classes, as the
    function does when `k` is not given.
  - Contrast: its per-class lists of query candidates and prototypes are filled for every
    class but read by the position in the list of valid classes (the i-th valid class reads
    class i's queries). Here each class reads its own.
  - The image labels after a mix: the reference only adds the pasted classes; a class whose
    every pixel was covered is removed here too (it is no longer in the image).
Where the paper and the reference differ, the paper (its text states the values):
  - δ_fg 0.35 (`c2s.fg`; the runner's 0.30), δ_bg 0.05.
  - L_u is the mean over the kept pixels (Eq. 12); the reference (U2PL) also multiplies it by
    all / kept pixels.
Where the paper is impossible as written: it says σ_s2c rises linearly from 10% to 100%, but a
confidence above 100% selects no pixel; the reference keeps σ at 0.5 and ramps λ_s2c from 0.1,
which is done here (`s2c.sigma`, `s2c.start`). The paper's "P = 50 queries, N = 256 negatives"
are U2PL's values swapped; the reference's (and U2PL's) 256 queries and 50 negatives are used.
Also as the reference: negatives are any pixel of the high-entropy group (its negative
confidence threshold is 1, not the paper's "1%"); rank window `low_rank` 3, `high_rank` 6
(the runner's); banks of 30,000 keys per class, 50,000 for the background.
Other deviations: the teacher is copied exactly during the warm-up (the reference copies one
epoch more, `epoch <= warmup_epochs`); the teacher's second pass runs in eval mode (the
reference runs it in train mode, with dropout); the final weights are the result (the
reference also keeps a checkpoint selected on train-set ground truth).

Inference: the teacher's maps (`predict: teacher`, as the reference saves and evaluates its
teacher after the warm-up), CAMs max-normalised (`cam_norm: max`, Eq. 2) and the segmentation
head's probabilities for the `seghead` refiner.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from wsss import registry
from wsss.errors import ConfigError
from wsss.methods.base import BaselineCAM, register
from wsss.methods.csrm_targets import (
    IGNORE,
    c2s_masks,
    class_mix,
    confident_targets,
    contrast_loss,
    entropy,
    normalised_cams,
    restricted_probs,
    unsup_targets,
)
from wsss.methods.hsc_crf import crf_workers
from wsss.models.backbones import stage_widths
from wsss.models.deeplabv3plus import DeepLabV3PlusHead
from wsss.train import EMA, ClassBanks

REGISTER = {
    "kind": "method",
    "name": "csrm",
    "block": "csrm",
    "base": False,
    "plugin": False,
    "seg_head": True,
    "cam_norm": "max",  # Eq. 2
    "order": 5,
    "schema": {
        "description": "CSRM's settings (method csrm); defaults are the paper's, the "
                       "reference's where the paper is silent (wsss/methods/csrm.py)",
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "weights": {
                "type": "object",
                "additionalProperties": False,
                "properties": {
                    "cls": {"type": "number", "minimum": 0, "default": 1.0},
                    "c2s": {"type": "number", "minimum": 0, "default": 1.0},
                    "s2c": {"type": "number", "minimum": 0, "default": 1.0},
                    "u": {"type": "number", "minimum": 0, "default": 1.0},
                    "contrast": {"type": "number", "minimum": 0, "default": 1.0},
                },
            },
            "label_smoothing": {"type": "number", "minimum": 0, "maximum": 1, "default": 0.1},
            "warmup_epochs": {"type": "integer", "minimum": 0, "default": 1},
            "ema": {"type": "number", "minimum": 0, "maximum": 1, "default": 0.99},
            "predict": {"enum": ["teacher", "student"], "default": "teacher"},
            "c2s": {
                "type": "object",
                "additionalProperties": False,
                "properties": {
                    "fg": {"type": "number", "minimum": 0, "maximum": 1, "default": 0.35},
                    "bg": {"type": "number", "minimum": 0, "maximum": 1, "default": 0.05},
                    # IRN's crf_inference_label
                    "crf": {"type": "object", "default": {
                        "iterations": 10, "gt_prob": 0.7, "gaussian": {"sxy": 3, "compat": 3},
                        "bilateral": {"sxy": 50, "srgb": 5, "compat": 10}}},
                },
            },
            "s2c": {
                "type": "object",
                "additionalProperties": False,
                "properties": {
                    "sigma": {"type": "number", "minimum": 0, "maximum": 1, "default": 0.5},
                    "start": {"type": "number", "minimum": 0, "default": 0.1},
                },
            },
            "unsup": {
                "type": "object",
                "additionalProperties": False,
                "properties": {
                    # share (%) of the highest-entropy pixels ignored at epoch 0
                    "ignore": {"type": "number", "minimum": 0, "maximum": 100, "default": 20},
                },
            },
            "classmix": {
                "type": "object",
                "additionalProperties": False,
                "properties": {
                    "prob": {"type": "number", "minimum": 0, "maximum": 1, "default": 0.5},
                },
            },
            "contrast": {
                "type": "object",
                "additionalProperties": False,
                "properties": {
                    "queries": {"type": "integer", "minimum": 1, "default": 256},
                    "negatives": {"type": "integer", "minimum": 1, "default": 50},
                    "temperature": {"type": "number", "exclusiveMinimum": 0, "default": 0.5},
                    "low_rank": {"type": "integer", "minimum": 1, "default": 3},
                    "high_rank": {"type": "integer", "minimum": 1, "default": 6},
                    "query_threshold": {"type": "number", "minimum": 0, "maximum": 1,
                                        "default": 0.3},
                    "negative_threshold": {"type": "number", "minimum": 0, "maximum": 1,
                                           "default": 1.0},
                    # share (%) of the lowest / highest teacher entropies that are reliable /
                    # unreliable at epoch 0, falling linearly to 0
                    "alpha": {"type": "number", "minimum": 0, "maximum": 50, "default": 20},
                    "bank": {"type": "integer", "minimum": 1, "default": 30000},
                    "bank_bg": {"type": "integer", "minimum": 1, "default": 50000},
                },
            },
            "head": {
                "type": "object",
                "additionalProperties": False,
                "properties": {
                    "rates": {"type": "array", "items": {"type": "integer", "minimum": 1},
                              "minItems": 1, "default": [6, 12, 18]},
                    "aspp_width": {"type": "integer", "minimum": 1, "default": 256},
                    "low_width": {"type": "integer", "minimum": 1, "default": 48},
                    "width": {"type": "integer", "minimum": 1, "default": 256},
                    "rep_dim": {"type": "integer", "minimum": 1, "default": 256},
                    # the decoder's two dropouts; the ASPP's is DeepLab's 0.5, as the reference's
                    "dropout": {"type": "number", "minimum": 0, "maximum": 1, "default": 0.1},
                    "groups": {"type": "integer", "minimum": 1, "default": 4},
                },
            },
        },
    },
}


def csrm_settings(cfg: dict[str, Any]) -> dict[str, Any]:
    out = registry.settings("method", "csrm", cfg.get("csrm"))
    c = out["contrast"]
    if c["high_rank"] <= c["low_rank"]:
        raise ConfigError(f"csrm.contrast.high_rank ({c['high_rank']}) must exceed "
                          f"csrm.contrast.low_rank ({c['low_rank']})")
    h = out["head"]
    for key in ("aspp_width", "low_width", "width"):
        if h[key] % min(h["groups"], h[key]):
            raise ConfigError(f"csrm.head.{key} ({h[key]}) must be a multiple of "
                              f"csrm.head.groups ({h['groups']}): GroupNorm splits it evenly")
    if out["c2s"]["bg"] > out["c2s"]["fg"]:
        raise ConfigError(f"csrm.c2s.bg ({out['c2s']['bg']}) must not exceed csrm.c2s.fg "
                          f"({out['c2s']['fg']})")
    return out


# -- schedules ------------------------------------------------------------------------------

def ema_decay(done: int, per_epoch: int, warmup_epochs: int, top: float) -> float:
    """The teacher's decay after optimizer step `done` (1-based): 0 (a copy) during the warm-up
    epochs, then min(1 - 1 / (1 + done - warm_steps), top)."""
    warm = warmup_epochs * per_epoch
    if done <= warm:
        return 0.0
    return min(1.0 - 1.0 / (1.0 + done - warm), top)


def linear_decay(start: float, epoch: int, epochs: int) -> float:
    """start · (1 - epoch / epochs): the entropy shares' schedule (per epoch, as the reference)."""
    return start * (1.0 - epoch / epochs)


def s2c_weight(epoch: int, epochs: int, warmup_epochs: int, start: float, weight: float) -> float:
    """λ_s2c: 0 in the warm-up, then linear from `start` (first epoch after it) to `weight`
    (reached at the end of training)."""
    if epoch < warmup_epochs or weight == 0:
        return 0.0
    span = max(1, epochs - warmup_epochs)
    return start + (weight - start) * (epoch - warmup_epochs) / span


def _up(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    return F.interpolate(x, size=size, mode="bilinear", align_corners=True)


def _down_labels(labels: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    return F.interpolate(labels[:, None].float(), size=size, mode="nearest")[:, 0].long()


def branch_maps(net: nn.ModuleDict, images: torch.Tensor, with_rep: bool = True
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(raw CAMs on the backbone grid, seg logits and representations on the stride-4 grid)
    of a student or teacher `net` (backbone, classifier, head)."""
    stages = net["backbone"].forward_stages(images)
    seg, rep = net["head"](stages, with_rep=with_rep)
    return net["classifier"](stages[-1]), seg, rep


@register(REGISTER["name"])
class CSRM(BaselineCAM):
    """The baseline's network plus CSRM's segmentation and representation branches, a mean
    teacher and per-class banks; see the module doc."""

    def __init__(self, cfg: dict[str, Any], num_classes: int):
        super().__init__(cfg, num_classes)
        self.csrm = csrm_settings(cfg)
        widths = stage_widths(self.backbone)
        h = self.csrm["head"]
        self.head = DeepLabV3PlusHead(
            widths[0], widths[-1], num_classes + 1, rates=h["rates"], aspp_width=h["aspp_width"],
            low_width=h["low_width"], width=h["width"], rep_dim=h["rep_dim"],
            dropout=h["dropout"], groups=h["groups"])
        c = self.csrm["contrast"]
        self.banks = ClassBanks([c["bank_bg"]] + [c["bank"]] * num_classes, h["rep_dim"])
        self.teacher = EMA(self.student())
        self.total_steps, self.per_epoch = 1, 1

    def student(self) -> nn.ModuleDict:
        """The student's three branches as one module (the same submodules, not copies)."""
        return nn.ModuleDict({"backbone": self.backbone, "classifier": self.classifier,
                              "head": self.head})

    def predictor(self) -> nn.ModuleDict:
        return self.teacher.module if self.csrm["predict"] == "teacher" else self.student()

    @property
    def trunk(self) -> nn.Module:
        """The predicting network's backbone (what the refiners' classifier trunk reads)."""
        return self.predictor()["backbone"]

    def param_groups(self) -> list[dict[str, Any]]:
        """The prior's layers (backbone, classifier) at 1×, the scratch branches at
        `new_layer_lr_mult` (the reference's x10)."""
        return [
            {"params": [*self.backbone.parameters(), *self.classifier.parameters()],
             "lr_mult": 1.0, "name": "pretrained"},
            {"params": list(self.head.parameters()),
             "lr_mult": self.cfg["training"]["new_layer_lr_mult"], "name": "new"},
        ]

    def init_from(self, state_dict: dict[str, Any], source: str = "the given weights") -> int:
        n = super().init_from(state_dict, source)
        self.teacher.update(self.student(), 0.0)  # the teacher starts as the prior too
        return n

    def begin(self, total_steps: int, steps_per_epoch: int, start_step: int) -> None:
        self.total_steps, self.per_epoch = total_steps, steps_per_epoch

    @property
    def epochs(self) -> int:
        return max(1, self.total_steps // self.per_epoch)

    # -- one step ---------------------------------------------------------------------------
    def training_step(self, batch: dict[str, torch.Tensor], step: int) -> dict[str, float]:
        s = self.csrm
        w = s["weights"]
        epoch = step // self.per_epoch
        warm = epoch < s["warmup_epochs"]
        lam = {"cls": w["cls"], "c2s": w["c2s"],
               "s2c": s2c_weight(epoch, self.epochs, s["warmup_epochs"], s["s2c"]["start"],
                                 w["s2c"]),
               "u": 0.0 if warm else w["u"], "contrast": 0.0 if warm else w["contrast"]}
        images = torch.cat([batch["image"], batch["image_u"]])
        labels = torch.cat([batch["label"], batch["label_u"]]).float()
        n_aug = len(batch["image"])
        size = tuple(images.shape[-2:])
        ls = float(s["label_smoothing"])
        teacher = self.teacher.module

        contrast = lam["contrast"] > 0  # representations are needed for L_m only
        with torch.no_grad(), self.autocast():
            cam_t, seg_t, rep_t = branch_maps(teacher, images, with_rep=contrast)
        seg_large_t = _up(seg_t.float(), size)
        mix = s["classmix"]["prob"] > 0 and float(torch.rand(())) < s["classmix"]["prob"]
        need = len(images) if mix else n_aug  # without a mix only the augmented half's masks
        cams = normalised_cams(cam_t[:need], labels[:need], size)
        masks = c2s_masks(images[:need], cams, labels[:need], s["c2s"], crf_workers())
        if mix:
            masks, labels, (images, seg_large_t), _ = class_mix(masks, labels,
                                                                [images, seg_large_t])
            with torch.no_grad(), self.autocast():
                _, seg_t, rep_t = branch_maps(teacher, images, with_rep=contrast)
        probs_t = restricted_probs(seg_large_t, labels)

        with self.autocast():
            cam, seg, rep = branch_maps(self.student(), images, with_rep=contrast)
        cam, seg = cam.float(), seg.float()
        seg_large = _up(seg, size)
        zero = images.new_zeros(())
        terms: dict[str, torch.Tensor] = {}
        terms["cls"] = F.multilabel_soft_margin_loss(cam.mean(dim=(2, 3)),
                                                     (1 - ls) * labels + ls * 0.5)
        m_aug = masks[:n_aug]
        has_fg = ((m_aug != 0) & (m_aug != IGNORE)).flatten(1).any(dim=1)
        terms["c2s"] = (F.cross_entropy(seg_large[:n_aug][has_fg], m_aug[has_fg],
                                        ignore_index=IGNORE, label_smoothing=ls)
                        if lam["c2s"] and has_fg.any() else zero)
        if lam["s2c"]:
            target = confident_targets(probs_t, float(s["s2c"]["sigma"]))
            joint = torch.cat([seg_large[:, :1].detach(), _up(cam, size)], dim=1)
            terms["s2c"] = (F.cross_entropy(joint, target, ignore_index=IGNORE,
                                            label_smoothing=ls)
                            if (target != IGNORE).any() else zero)
        else:
            terms["s2c"] = zero
        prob4_t = F.softmax(seg_t.float(), dim=1)
        if lam["u"]:
            ent_large = entropy(F.softmax(_up(seg_t[n_aug:].float(), size), dim=1))
            share = linear_decay(float(s["unsup"]["ignore"]), epoch, self.epochs) / 100.0
            target_u = unsup_targets(probs_t[n_aug:].argmax(dim=1), ent_large, share)
            terms["u"] = (F.cross_entropy(seg_large[n_aug:], target_u, ignore_index=IGNORE)
                          if (target_u != IGNORE).any() else zero)
        else:
            terms["u"] = zero
        if contrast:
            grid = tuple(seg.shape[-2:])
            lab4 = torch.cat([_down_labels(m_aug, grid),
                              _down_labels(probs_t[n_aug:].argmax(dim=1), grid)])
            ent4 = entropy(prob4_t[n_aug:])
            alpha = linear_decay(float(s["contrast"]["alpha"]), epoch, self.epochs) / 100.0
            valid_u = lab4[n_aug:] != IGNORE
            low_u = torch.zeros_like(valid_u)
            high_u = torch.zeros_like(valid_u)
            if valid_u.any():
                e = ent4[valid_u].float()
                low_u = (ent4 < torch.quantile(e, alpha)) & valid_u
                high_u = (ent4 >= torch.quantile(e, 1.0 - alpha)) & valid_u
            known = lab4[:n_aug] != IGNORE
            terms["contrast"] = contrast_loss(
                rep.float(), rep_t.float(), prob4_t, lab4, n_aug, labels[n_aug:],
                torch.cat([known, low_u]), torch.cat([known, high_u]), self.banks,
                s["contrast"])
        else:
            terms["contrast"] = zero
        loss = sum(lam[k] * v for k, v in terms.items())
        self.optimize(loss)
        self.teacher.update(self.student(), ema_decay(step + 1, self.per_epoch,
                                                      s["warmup_epochs"], float(s["ema"])))
        out = {"loss": float(loss.detach()), **{k: float(v.detach()) for k, v in terms.items()}}
        out.update(w_s2c=lam["s2c"], mixed=float(mix),
                   c2s_known=float((m_aug != IGNORE).float().mean()))
        return out

    # -- inference --------------------------------------------------------------------------
    @torch.no_grad()
    def cams(self, images: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        net = self.predictor()
        with self.autocast():
            return net["classifier"](net["backbone"](images)).float()

    @torch.no_grad()
    def seg_logits(self, images: torch.Tensor) -> torch.Tensor:
        with self.autocast():
            return branch_maps(self.predictor(), images, with_rep=False)[1].float()

    @torch.no_grad()
    def cams_and_seg(self, images: torch.Tensor, labels: torch.Tensor | None = None
                     ) -> tuple[torch.Tensor, torch.Tensor]:
        with self.autocast():
            cam, seg, _ = branch_maps(self.predictor(), images, with_rep=False)
        return cam.float(), seg.float()
