"""FSR (He et al., AAAI 2024): progressive feature self-reinforcement, a single-stage ViT
method built on ToCo (Ru et al., CVPR 2023).

Networks (the student; `wsss.models.vit`, `wsss.models.vit_heads`):
  encoder     our ViT: [CLS] kept out of the self-attention blocks and aggregated after them
              by class-attention blocks (the aggregation module, masked cross-attention);
              an auxiliary output from block `aux_layer` (-3);
  classifiers top and auxiliary 1x1 convolutions (no bias) on globally max-pooled tokens;
  decoder     LargeFOV on the final tokens, background + classes;
  projector   DINO's head (MLP, L2 norm, weight-normalised linear), on the class token and
              the patch tokens.
The teacher (`wsss.train.EMA`) is all four, updated after each step with a momentum that
rises from m0 to 1 on a cosine over the first `teacher.until` of the run.

Each step takes two augmented views of each image (`training.views: 2`):
 1. The student's CAMs of both views, multi-scale (`cam_scales`) + flip, in eval mode (no
    drop-path: deterministic maps), without gradient, min-max normalised; one pass for all
    that needs them (the reference runs three such passes, two on view 2, one of whose
    labels it never reads).
 2. View 2 is masked in blocks of `masking.block` x `masking.block` tokens, `masking.ratio`
    of the blocks: at random until `masking.random_until` of the run, then preferring the
    blocks whose label-restricted auxiliary CAM is uncertain (strictly between
    `masking.low` and `masking.high`, Eq. 3-4; the reference hard-codes 0.2 / 0.7 there, not
    its --low_thre 0.25); a learned mask token replaces them.
 3. The student sees both views (view 2 masked), the teacher both unmasked.
Losses (`weights`; Eq. 10 plus ToCo's terms):
  cls, aux    multilabel soft margin of the top and auxiliary classifiers on view 1;
  ptc         ToCo's patch token contrast of view 1's final tokens, pairs from its auxiliary
              CAM labels (`thresholds`);
  seg         the decoder's balanced cross-entropy against PAR-refined CAM labels of view 1
              (`thresholds` high / low), from `seg_start` of the run on;
  reg         the regularised loss (the dense CRF energy of the decoder's softmax,
              `wsss.methods.energy`, times `energy.weight`), from `seg_start` on;
  fsr_cls     cer.FSR (Eq. 9): DINO cross-entropy of the student's class token of the masked
              view 2 against the teacher's of view 1 (centred, sharpened);
  fsr_patch   unc.FSR (Eq. 8): the same on the masked patch tokens of view 2 against the
              teacher's tokens of view 2 at those positions.
  Both FSR terms stop after `teacher.until` of the run (the reference's fsr_iters).

Iteration constants are fractions of the run (the reference's at 20,000 iterations:
seg_start 2,000 -> 0.1, random masking 4,000 -> 0.2, teacher-temperature warm-up 2,500 ->
0.125). The teacher's momentum is given as `teacher.window`, the EMA's averaging horizon
1 / (1 - m0) as a fraction of the run: the reference's m0 0.9995 is a window of 2,000 of its
20,000 steps, 0.1; the same m0 on a run of a few hundred steps would leave the teacher at its
initialisation.

Where the paper and the reference differ, the paper: masked keys get no class attention
(Eq. 7; the reference's aggregation attends to the mask tokens; `mask_keys: false` is the
reference). Where we do what the reference meant: the teacher and the CAM passes run
without drop-path (the reference leaves the teacher, and the student's no-grad CAM passes,
in train mode); the regularised loss's gradient is exact (`wsss.methods.energy`); a
segmentation half without a pixel adds 0, not NaN. Other deviations: the projector runs only
on the rows the losses read (the student's class token and masked patches of view 2, the
teacher's class token of view 1 and patches of view 2), the reference projects every token of
both views; the patch loss is the mean over all masked tokens of the batch (the reference
averages per image, then over images: the same when each image masks as many tokens).

Inference: the `predict` network's top CAMs, min-max normalised (Eq. 2, `cam_norm: minmax`),
and the decoder's logits for the `seghead` refiner (ToCo's fusion, `inference.seg_fusion:
flip_sum_max`).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from wsss import registry
from wsss.errors import ConfigError
from wsss.methods.base import BackboneMethod, register
from wsss.methods.dino import DINOLoss, teacher_temperature
from wsss.methods.energy import energy_loss
from wsss.methods.fsr_targets import (
    affinity_mask,
    balanced_seg_loss,
    block_mask,
    cam_labels,
    multiscale_cams,
    par_labels,
    ptc_loss,
    teacher_momentum,
)
from wsss.models.vit_heads import DINOHead, LargeFOV
from wsss.train import EMA

REGISTER = {
    "kind": "method",
    "name": "fsr",
    "block": "fsr",
    "base": False,
    "plugin": False,
    "seg_head": True,
    "cam_norm": "minmax",  # Eq. 2 (and ToCo's multi_scale_cam)
    "order": 6,
    "schema": {
        "description": "FSR's settings (method fsr); defaults are the paper's, the reference's "
                       "where the paper is silent (wsss/methods/fsr.py)",
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "weights": {
                "type": "object",
                "additionalProperties": False,
                "properties": {
                    "cls": {"type": "number", "minimum": 0, "default": 1.0},
                    "aux": {"type": "number", "minimum": 0, "default": 1.0},
                    "ptc": {"type": "number", "minimum": 0, "default": 0.2},
                    "seg": {"type": "number", "minimum": 0, "default": 0.1},
                    "reg": {"type": "number", "minimum": 0, "default": 0.05},
                    "fsr_cls": {"type": "number", "minimum": 0, "default": 0.1},
                    "fsr_patch": {"type": "number", "minimum": 0, "default": 0.1},
                },
            },
            # how the class token aggregates the unmasked tokens (Table 4: gap / gmp / mca)
            "aggregate": {"enum": ["mca", "gap", "gmp"], "default": "mca"},
            "mask_keys": {"type": "boolean", "default": True},
            "masking": {
                "type": "object",
                "additionalProperties": False,
                "properties": {
                    "ratio": {"type": "number", "minimum": 0, "maximum": 1, "default": 0.4},
                    "block": {"type": "integer", "minimum": 1, "default": 4},  # tokens a side
                    "strategy": {"enum": ["uncertain", "random"], "default": "uncertain"},
                    "random_until": {"type": "number", "minimum": 0, "maximum": 1, "default": 0.2},
                    "low": {"type": "number", "minimum": 0, "maximum": 1, "default": 0.2},
                    "high": {"type": "number", "minimum": 0, "maximum": 1, "default": 0.7},
                },
            },
            # ToCo's background thresholds of the PAR labels and the PTC pairs
            "thresholds": {
                "type": "object",
                "additionalProperties": False,
                "properties": {"low": {"type": "number", "minimum": 0, "maximum": 1,
                               "default": 0.25},
                               "high": {"type": "number", "minimum": 0, "maximum": 1,
                                        "default": 0.7}},
            },
            "seg_start": {"type": "number", "minimum": 0, "maximum": 1, "default": 0.1},
            "cam_scales": {"type": "array", "items": {"type": "number", "exclusiveMinimum": 0},
                           "minItems": 1, "default": [1.0, 0.5, 1.5]},
            "drop_path": {"type": "number", "minimum": 0, "maximum": 1, "default": 0.1},
            "teacher": {
                "type": "object",
                "additionalProperties": False,
                "properties": {
                    "window": {"type": "number", "exclusiveMinimum": 0, "default": 0.1},
                    "until": {"type": "number", "minimum": 0, "maximum": 1, "default": 1.0},
                },
            },
            "predict": {"enum": ["student", "teacher"], "default": "student"},
            "dino": {
                "type": "object",
                "additionalProperties": False,
                "properties": {
                    "out_dim": {"type": "integer", "minimum": 1, "default": 4096},
                    "hidden": {"type": "integer", "minimum": 1, "default": 2048},
                    "bottleneck": {"type": "integer", "minimum": 1, "default": 256},
                    "student_temp": {"type": "number", "exclusiveMinimum": 0, "default": 0.1},
                    "teacher_temp": {"type": "array", "items": {"type": "number"},
                                     "minItems": 2, "maxItems": 2, "default": [0.04, 0.07]},
                    "temp_warmup": {"type": "number", "minimum": 0, "maximum": 1, "default": 0.125},
                    "center_momentum": {"type": "number", "minimum": 0, "maximum": 1,
                                        "default": 0.9},
                },
            },
            "decoder": {
                "type": "object",
                "additionalProperties": False,
                "properties": {"width": {"type": "integer", "minimum": 1, "default": 512},
                               "dilation": {"type": "integer", "minimum": 1, "default": 5}},
            },
            "energy": {
                "type": "object",
                "additionalProperties": False,
                "properties": {
                    "weight": {"type": "number", "minimum": 0, "default": 1.0e-7},
                    "sigma_rgb": {"type": "number", "exclusiveMinimum": 0, "default": 15.0},
                    "sigma_xy": {"type": "number", "exclusiveMinimum": 0, "default": 100.0},
                    "scale": {"type": "number", "exclusiveMinimum": 0, "maximum": 1,
                              "default": 0.5},
                },
            },
        },
    },
}


def fsr_settings(cfg: dict[str, Any]) -> dict[str, Any]:
    out = registry.settings("method", "fsr", cfg.get("fsr"))
    for key in ("masking", "thresholds"):
        if out[key]["low"] >= out[key]["high"]:
            raise ConfigError(f"fsr.{key}.low ({out[key]['low']}) must be below "
                              f"fsr.{key}.high ({out[key]['high']})")
    if int(cfg["training"].get("views", 1)) != 2:
        raise ConfigError(f"methods.<variant>.training.views: FSR trains on two augmented "
                          f"views of each image; set views: 2 (got "
                          f"{cfg['training'].get('views', 1)})")
    return out


def _pool(tokens: torch.Tensor, classifier: nn.Conv2d) -> torch.Tensor:
    """Class logits of a (B, D, h, w) token map: global max pooling, then the 1x1 classifier."""
    return classifier(tokens.amax(dim=(2, 3), keepdim=True)).flatten(1)


@register(REGISTER["name"])
class FSR(BackboneMethod):
    """The ViT, its classifiers, decoder and projector, and their EMA teacher."""

    def __init__(self, cfg: dict[str, Any], num_classes: int):
        super().__init__(cfg, num_classes)
        self.fsr = s = fsr_settings(cfg)
        if not hasattr(self.backbone, "encode"):
            raise ConfigError(f"methods.<variant>.backbone.name '{cfg['backbone']['name']}': "
                              f"FSR needs a ViT backbone (vit_tiny, vit_b16)")
        self.backbone.set_drop_path(float(s["drop_path"]))
        dim = self.backbone.out_channels
        self.classifier = nn.Conv2d(dim, num_classes, 1, bias=False)
        self.aux_classifier = nn.Conv2d(dim, num_classes, 1, bias=False)
        self.decoder = LargeFOV(dim, num_classes + 1, width=s["decoder"]["width"],
                                dilation=s["decoder"]["dilation"])
        d = s["dino"]
        self.projector = DINOHead(dim, d["out_dim"], hidden=d["hidden"],
                                  bottleneck=d["bottleneck"])
        self.dino_cls = DINOLoss(d["out_dim"], d["student_temp"], d["center_momentum"])
        self.dino_patch = DINOLoss(d["out_dim"], d["student_temp"], d["center_momentum"])
        self.teacher = EMA(self.student())
        self.total_steps = 1

    def student(self) -> nn.ModuleDict:
        return nn.ModuleDict({"backbone": self.backbone, "classifier": self.classifier,
                              "aux_classifier": self.aux_classifier, "decoder": self.decoder,
                              "projector": self.projector})

    def predictor(self) -> nn.ModuleDict:
        return self.teacher.module if self.fsr["predict"] == "teacher" else self.student()

    @property
    def trunk(self) -> nn.Module:
        return self.predictor()["backbone"]

    def param_groups(self) -> list[dict[str, Any]]:
        """The reference's four groups: the encoder at 1x, classifiers, decoder and projector
        at `new_layer_lr_mult`; no weight decay on 1-D parameters, biases and the position
        embedding, class and mask tokens."""
        mult = self.cfg["training"]["new_layer_lr_mult"]
        groups = []
        for name, modules, lr_mult in (
                ("encoder", [self.backbone], 1.0),
                ("new", [self.classifier, self.aux_classifier, self.decoder, self.projector],
                 mult)):
            decay, plain = [], []
            for module in modules:
                for pname, p in module.named_parameters():
                    no_decay = p.ndim <= 1 or pname.endswith(".bias") or any(
                        t in pname for t in ("pos_embed", "cls_token", "mask_token"))
                    (plain if no_decay else decay).append(p)
            groups += [{"params": decay, "lr_mult": lr_mult, "name": name},
                       {"params": plain, "lr_mult": lr_mult, "weight_decay": 0.0,
                        "name": f"{name}_no_decay"}]
        return groups

    def begin(self, total_steps: int, steps_per_epoch: int, start_step: int) -> None:
        self.total_steps = total_steps

    # -- pieces -----------------------------------------------------------------------------
    def _raw_cams(self, net: nn.ModuleDict, images: torch.Tensor
                  ) -> tuple[torch.Tensor, torch.Tensor]:
        # the token maps only: the class token's aggregation is not needed for CAMs
        aux, tokens = net["backbone"].forward_stages(images)
        return net["classifier"](tokens), net["aux_classifier"](aux)

    @torch.no_grad()
    def _training_cams(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised top and auxiliary CAMs of `images` at their size, in eval mode."""
        net = self.student()
        modes = [(m, m.training) for m in net.modules()]
        net.eval()
        try:
            with self.autocast():
                return multiscale_cams(lambda x: tuple(m.float() for m in self._raw_cams(net, x)),
                                       images, self.fsr["cam_scales"])
        finally:
            for module, mode in modes:
                module.training = mode

    # -- one step ---------------------------------------------------------------------------
    def training_step(self, batch: dict[str, torch.Tensor], step: int) -> dict[str, float]:
        s, w = self.fsr, self.fsr["weights"]
        views = batch["views"]
        n = len(views)
        x1, x2 = views[:, 0], views[:, 1]
        labels = batch["label"].float()
        both = torch.cat([x1, x2])
        size = tuple(x1.shape[-2:])
        progress = step / self.total_steps
        reinforce = progress < s["teacher"]["until"] and (w["fsr_cls"] > 0 or w["fsr_patch"] > 0)
        seg_on = progress >= s["seg_start"]

        cams, aux_cams = self._training_cams(both)
        enc = self.backbone
        grid = (math.ceil(size[0] / enc.patch_size), math.ceil(size[1] / enc.patch_size))
        m = s["masking"]
        mask = None
        if reinforce and m["ratio"] > 0:
            uncertain = m["strategy"] == "uncertain" and progress >= m["random_until"]
            mask2 = block_mask(aux_cams[n:], labels, grid, m["block"], m["ratio"], m["low"],
                               m["high"], uncertain)
            mask = torch.cat([torch.zeros_like(mask2), mask2])

        with self.autocast():
            out = enc.encode(both, mask=mask, aggregate=s["aggregate"], mask_keys=s["mask_keys"])
        tokens1, aux1 = out.tokens[:n].float(), out.aux[:n].float()
        terms: dict[str, torch.Tensor] = {}
        terms["cls"] = F.multilabel_soft_margin_loss(_pool(tokens1, self.classifier), labels)
        terms["aux"] = F.multilabel_soft_margin_loss(_pool(aux1, self.aux_classifier), labels)
        t = s["thresholds"]
        aux_small = F.interpolate(aux_cams[:n], size=grid, mode="bilinear", align_corners=False)
        terms["ptc"] = ptc_loss(tokens1, affinity_mask(cam_labels(aux_small, labels, t["low"],
                                                                  t["high"])))
        zero = tokens1.new_zeros(())
        if seg_on and (w["seg"] > 0 or w["reg"] > 0):
            seg = F.interpolate(self.decoder(tokens1), size=size, mode="bilinear",
                                align_corners=False)
            target = par_labels(x1, cams[:n] * labels[:, :, None, None], labels, t["high"],
                                t["low"])
            terms["seg"] = balanced_seg_loss(seg, target)
            e = s["energy"]
            terms["reg"] = e["weight"] * energy_loss(x1, seg, target, e["sigma_rgb"],
                                                     e["sigma_xy"], e["scale"])
        else:
            terms["seg"] = terms["reg"] = zero
        if reinforce:
            terms["fsr_cls"], terms["fsr_patch"] = self._reinforcement(out, both, mask, n, step)
        else:
            terms["fsr_cls"] = terms["fsr_patch"] = zero
        lam = {k: (w[k] if (k not in ("seg", "reg") or seg_on) else 0.0) for k in terms}
        loss = sum(lam[k] * v for k, v in terms.items())
        self.optimize(loss)
        momentum = teacher_momentum(step, self.total_steps, s["teacher"]["window"],
                                    s["teacher"]["until"])
        if reinforce or s["predict"] == "teacher":
            self.teacher.update(self.student(), momentum)
        logged = {"loss": float(loss.detach()), **{k: float(v.detach()) for k, v in terms.items()}}
        logged.update(momentum=momentum,
                      masked=float(mask[n:].float().mean()) if mask is not None else 0.0)
        return logged

    def _reinforcement(self, out, both: torch.Tensor, mask: torch.Tensor | None, n: int,
                       step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(cer.FSR, unc.FSR): the student's projected class token of view 2 against the
        teacher's of view 1, and its masked patch tokens of view 2 against the teacher's."""
        s = self.fsr
        d = s["dino"]
        temp = teacher_temperature(step, round(d["temp_warmup"] * self.total_steps),
                                   *d["teacher_temp"])
        teacher = self.teacher.module
        with torch.no_grad(), self.autocast():
            t_out = teacher["backbone"].encode(both, aggregate=s["aggregate"])
        zero = out.cls.new_zeros(())
        cls_loss = patch_loss = zero
        if s["weights"]["fsr_cls"] > 0:
            with torch.no_grad(), self.autocast():
                t_cls = teacher["projector"](t_out.cls[:n]).float()
            with self.autocast():
                s_cls = self.projector(out.cls[n:]).float()
            cls_loss = self.dino_cls(s_cls, t_cls, temp)
        if s["weights"]["fsr_patch"] > 0 and mask is not None:
            with torch.no_grad(), self.autocast():  # every patch: the centre follows them all
                t_patch = teacher["projector"](t_out.tokens[n:].flatten(2).transpose(1, 2))
            picked = mask[n:].flatten(1)
            s_tokens = out.tokens[n:].flatten(2).transpose(1, 2)[picked]
            with self.autocast():
                s_patch = self.projector(s_tokens).float()
            t_patch = t_patch.float()
            patch_loss = self.dino_patch(s_patch, t_patch[picked], temp,
                                         center_rows=t_patch.mean(dim=1))
        return cls_loss, patch_loss

    # -- inference --------------------------------------------------------------------------
    @torch.no_grad()
    def cams(self, images: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        with self.autocast():
            return self._raw_cams(self.predictor(), images)[0].float()

    @torch.no_grad()
    def seg_logits(self, images: torch.Tensor) -> torch.Tensor:
        return self.cams_and_seg(images)[1]

    @torch.no_grad()
    def cams_and_seg(self, images: torch.Tensor, labels: torch.Tensor | None = None
                     ) -> tuple[torch.Tensor, torch.Tensor]:
        net = self.predictor()
        with self.autocast():
            tokens = net["backbone"](images)
            return net["classifier"](tokens).float(), net["decoder"](tokens).float()
