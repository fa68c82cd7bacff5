"""ACR (Kweon, Yoon & Yoon, CVPR 2023): adversarial learning of a classifier and a reconstructor.

Two networks, each a backbone of the registry with a 1×1 classifier pooled by global average:
  classifier      the CAM baseline's network exactly (`backbone`, `classifier`), whose CAMs are
                  the output; `init_from: baseline` loads it tensor by tensor;
  reconstructor   its own backbone and classifier, 1×1 projections of its last three stages
                  (`acr.projections` channels; ACR's ResNet-38 conv4/conv5/conv6 -> 64/128/256),
                  each bilinearly upsampled to the input and concatenated into X, and a
                  pix2pix U-Net (`wsss.models.unet`, `acr.unet`) that decodes X into the
                  normalised image. ACR's U-Net has depth 8 on 256 px crops; the input side
                  must be a multiple of 2^depth, which a config with a crop that is not is
                  refused for at start-up, naming `acr.unet.depth`.

Each step draws one target class t per image, uniformly among its labels (OC-CSE's
`split_label`); A_t is its CAM, ReLU'd, min-max normalised over the label-restricted map
(`max_norm`) and bilinearly upsampled to the crop. Then two phases, as the reference orders them:

Reconstructor update (RU; the classifier frozen, in eval mode, A_t without gradient). SRF draws a
grid of `srf.grid`² cells, each hidden with probability p (nearest-upsampled to the crop). The
"from target" input keeps X except the non-target region inside hidden cells, H_nt = (1 - A_t)·g,
and is scored on H_nt; the "from non-target" input hides H_t = A_t·g and is scored on H_t:
  ru_t   = mean |H_nt ⊙ (G_D(X ⊙ (1 - H_nt)) - I)|      (the paper's L_t^RU, Eq. 5, 8, 10)
  ru_nt  = mean |H_t  ⊙ (G_D(X ⊙ (1 - H_t))  - I)|      (L_nt^RU, Eq. 6, 9, 10)
  ru_cls = the reconstructor's classification loss                 (reference only)
  ru_full = mean |G_D(X.detach()) - I|, which trains the decoder only (reference only)
This is the paper's Eq. 8-10 with its feeding grid g_paper = 1 - g: the reference writes SRF
as hiding (`segment_t_fuse = 1 - cam_t * grid`) and its hiding probability grows over training;
the paper's feeding probability q is 1 - p. Without SRF (`srf.enabled: false`) g = 1: the
whole other segment is hidden (Eq. 3-7).

Classifier update (CU; the reconstructor frozen, in eval mode, X without gradient, no SRF):
  cls  multilabel soft margin of the classifier's pooled CAM (the baseline's loss);
  cu_t  = -mean |V_t ⊙ (G_D(X ⊙ A_t) - I)|,  V_t = 1 - A_t  (Eq. 12)
  cu_nt = -mean |V_nt ⊙ (G_D(X ⊙ (1 - A_t)) - I)|,  V_nt = A_t  (Eq. 13)
The gradient reaches the classifier through A_t in the decoder's input only; V is detached (the
reference detaches its masks; with gradient through V, the classifier could lower the loss by
moving V onto badly reconstructed pixels instead of by hiding information). `cu_masks:
reference` uses the reference's masks instead: V_t = [A_t = 0] (hard) and V_nt = A_t where the
raw CAM's argmax is t.

Loss weights (`acr.weights`): the paper's λ_t^RU = λ_nt^RU = 0.5, λ_t^CU = 0.8, λ_nt^CU = 0.3
(Sec. 5.2). The reference's RU weights differ (0.5 on ru_t, 0.3 on ru_nt) and it adds ru_cls
(weight 1) and ru_full (0.2), terms Eq. 7 does not have; where the paper is silent, the
reference's: they are on by default with its weights, and 0 gives Eq. 7 exactly. A term of
weight 0 is not computed (its log column is 0).

Where we do what the reference meant, not what it does:
  - Momentum: its PolyOptimizer passes the weight decay into SGD's momentum slot (momentum
    5e-4); here the training block's momentum (0.9) and weight decay apply as written.
  - Schedule: it decays the lr over 40 epochs' steps and then trains 60 more epochs at a
    learning rate of about zero (Lightning's max_epochs is 100); here the trainer's poly
    schedule runs over exactly the steps that run.
  - SRF probability: the reference's (20 + epoch)/100 is tied to the epoch count (0.20 at the
    first of its 40 intended epochs, 0.59 at the last, ≥ 1 from epoch 80 of the 100 it runs);
    here p rises linearly with training progress from `srf.hide_start` (0.2) to
    `srf.hide_end` (0.6), the values of its 40-epoch schedule, at any run length.
  - Selection: the reference picks its reported epoch on train-set ground truth; here the final
    weights are the result, as for every method.
Also ours: the reference skips its hidden-target term for a sample with fewer than 50 visible
pixels (a guard against an all-hidden 256² crop that is practically never taken) and skips an
optimizer step whose loss is NaN; neither is done here. The classifier is the baseline's 1×1
head, not the reference's 4096 -> 256 -> 20 head, so that the comparison with the baseline
isolates the adversarial training. Reference parameter groups: every convolution at 1× and only
the transposed convolutions at 10× (`acr.recon_lr_mult`, `acr.transposed_lr_mult`); the
classifier's head follows the training block's `new_layer_lr_mult` like the baseline's.

Inference: the classifier's CAMs through the shared multi-scale + flip path, ReLU'd, summed,
label-restricted and min-max normalised per class (`cam_norm: minmax`), as ACR's `infer`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from wsss import registry
from wsss.errors import ConfigError
from wsss.methods.base import BaselineCAM, max_norm, register
from wsss.models.backbones import build_backbone, freeze_batchnorm, stage_widths
from wsss.models.unet import UNetDecoder

REGISTER = {
    "kind": "method",
    "name": "acr",
    "block": "acr",
    "base": False,
    "plugin": False,
    "cam_norm": "minmax",  # ACR's infer: max_norm of the summed, label-restricted maps
    "order": 4,
    "schema": {
        "description": "ACR's settings (method acr); defaults are the paper's, the reference's "
                       "where the paper is silent (wsss/methods/acr.py)",
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "weights": {
                "type": "object",
                "additionalProperties": False,
                "properties": {
                    "cls": {"type": "number", "minimum": 0, "default": 1.0},
                    "cu_t": {"type": "number", "minimum": 0, "default": 0.8},
                    "cu_nt": {"type": "number", "minimum": 0, "default": 0.3},
                    "ru_t": {"type": "number", "minimum": 0, "default": 0.5},
                    "ru_nt": {"type": "number", "minimum": 0, "default": 0.5},
                    "ru_cls": {"type": "number", "minimum": 0, "default": 1.0},
                    "ru_full": {"type": "number", "minimum": 0, "default": 0.2},
                },
            },
            "srf": {
                "type": "object",
                "additionalProperties": False,
                "properties": {
                    "enabled": {"type": "boolean", "default": True},
                    "grid": {"type": "integer", "minimum": 1, "default": 16},
                    "hide_start": {"type": "number", "minimum": 0, "maximum": 1,
                                   "default": 0.2},
                    "hide_end": {"type": "number", "minimum": 0, "maximum": 1,
                                 "default": 0.6},
                },
            },
            "cu_masks": {"enum": ["paper", "reference"], "default": "paper"},
            "projections": {
                "description": "channels of the 1x1 projections of the reconstructor's last "
                               "three stages (ACR: 64, 128, 256)",
                "type": "array", "items": {"type": "integer", "minimum": 1},
                "minItems": 3, "maxItems": 3, "default": [64, 128, 256],
            },
            "unet": {
                "type": "object",
                "additionalProperties": False,
                "properties": {
                    "depth": {"type": "integer", "minimum": 2, "default": 8},
                    "width": {"type": "integer", "minimum": 1, "default": 64},
                    "max_width": {"type": "integer", "minimum": 1, "default": 512},
                    "dropout": {"type": "number", "minimum": 0, "exclusiveMaximum": 1,
                                "default": 0.5},
                },
            },
            "recon_lr_mult": {"type": "number", "minimum": 0, "default": 1.0},
            "transposed_lr_mult": {"type": "number", "minimum": 0, "default": 10.0},
        },
    },
}


def acr_settings(cfg: dict[str, Any]) -> dict[str, Any]:
    """The method block's `acr` sub-block with the declared defaults for every key left out."""
    return registry.declared_settings(REGISTER, cfg.get(REGISTER["block"]))


def hide_probability(step: int, total_steps: int, start: float, end: float) -> float:
    """SRF's probability of hiding a cell at 0-based `step` of `total_steps`: linear in the
    training progress step / total_steps, `start` at the first step."""
    progress = step / max(total_steps, 1)
    return min(1.0, max(0.0, start + (end - start) * progress))


def srf_grid(batch: int, cells: int, probability: float, size: tuple[int, int],
             device: torch.device | str = "cpu") -> torch.Tensor:
    """(batch, 1, H, W) of 0/1: `cells`×`cells` independent Bernoulli(`probability`) cells per
    image, nearest-upsampled to `size` (1 = hidden). Draws from the global torch RNG."""
    hidden = (torch.rand(batch, 1, cells, cells) < probability).float()
    return F.interpolate(hidden, size=size, mode="nearest").to(device)


def pick_targets(labels: torch.Tensor) -> torch.Tensor:
    """(B,) one class per image, uniform among its labels (any class for an image without
    labels, whose label-restricted CAM is zero anyway). Draws from the global torch RNG."""
    weights = (labels > 0).float()
    weights = weights + (weights.sum(dim=1, keepdim=True) == 0).float()
    return torch.multinomial(weights.cpu(), 1)[:, 0].to(labels.device)


def target_cam(raw: torch.Tensor, labels: torch.Tensor, targets: torch.Tensor,
               size: tuple[int, int]) -> torch.Tensor:
    """A_t (B, 1, H, W): the target class's CAM, label-restricted and min-max normalised
    (`max_norm`), bilinearly upsampled to `size` (align_corners=False, as the reference)."""
    picked = raw[torch.arange(len(raw), device=raw.device), targets][:, None]
    on = labels[torch.arange(len(raw), device=raw.device), targets].view(-1, 1, 1, 1)
    cam = max_norm(picked.float()) * (on > 0).float()
    return F.interpolate(cam, size=size, mode="bilinear", align_corners=False)


def masked_l1(recon: torch.Tensor, image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """mean over B×3×H×W of |mask ⊙ (recon - image)| (the reference's masked_L1)."""
    return ((recon.float() - image.float()).abs() * mask).mean()


@contextlib.contextmanager
def no_param_grad(module: nn.Module) -> Iterator[None]:
    """Inside, `module`'s parameters take no gradient (gradients still flow through it to its
    inputs); their previous `requires_grad` comes back afterwards."""
    params = [(p, p.requires_grad) for p in module.parameters()]
    for p, _ in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in params:
            p.requires_grad_(flag)


class Reconstructor(nn.Module):
    """Backbone, GAP classifier, projections of the last three stages and the U-Net decoder."""

    def __init__(self, backbone: dict[str, Any], num_classes: int, projections: list[int],
                 unet: dict[str, Any]):
        super().__init__()
        self.backbone = build_backbone(backbone["name"], backbone["output_stride"],
                                       backbone["pretrained"])
        widths = stage_widths(self.backbone)
        if len(widths) < 3:
            raise ConfigError(f"acr: the reconstructor needs a backbone with three stages; "
                              f"'{backbone['name']}' has {len(widths)}")
        self.classifier = nn.Conv2d(self.backbone.out_channels, num_classes, 1, bias=False)
        self.projections = nn.ModuleList(
            nn.Conv2d(w, p, 1, bias=False) for w, p in zip(widths[-3:], projections, strict=True))
        for conv in (self.classifier, *self.projections):
            nn.init.xavier_uniform_(conv.weight)
        self.decoder = UNetDecoder(sum(projections), 3, depth=unet["depth"],
                                   width=unet["width"], max_width=unet["max_width"],
                                   dropout=unet["dropout"])

    def encode(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(class logits (B, C), X (B, sum(projections), H, W) at the input's size)."""
        stages = self.backbone.forward_stages(images)
        logits = self.classifier(stages[-1]).mean(dim=(2, 3))
        size = tuple(images.shape[-2:])
        feats = [F.interpolate(proj(s), size=size, mode="bilinear", align_corners=False)
                 for proj, s in zip(self.projections, stages[-3:], strict=True)]
        return logits, torch.cat(feats, dim=1)


@register(REGISTER["name"])
class ACR(BaselineCAM):
    """The baseline's classifier and a reconstructor, trained in alternation; see the module
    doc. Optimizers: [classifier's, reconstructor's]."""

    def __init__(self, cfg: dict[str, Any], num_classes: int):
        super().__init__(cfg, num_classes)
        self.acr = acr_settings(cfg)
        self.reconstructor = Reconstructor(cfg["backbone"], num_classes,
                                           list(self.acr["projections"]), self.acr["unet"])
        multiple = self.reconstructor.decoder.multiple
        crop = cfg.get("training", {}).get("crop_size")
        if crop is not None and int(crop) % multiple:
            raise ConfigError(
                f"acr.unet.depth {self.acr['unet']['depth']}: the U-Net needs crops whose side "
                f"is a multiple of {multiple}, but training.crop_size is {crop}; choose a depth "
                f"d with crop_size divisible by 2^d")
        if self.freeze_bn:
            freeze_batchnorm(self.reconstructor.backbone)
        self.total_steps = 1

    # -- modes and parameters -------------------------------------------------------------
    def train(self, mode: bool = True):
        super().train(mode)
        if mode and self.freeze_bn:
            freeze_batchnorm(self.reconstructor.backbone)
        return self

    def _modes(self, classifier: bool, reconstructor: bool) -> None:
        """Train/eval mode per network (frozen BatchNorm stays frozen)."""
        for module in (self.backbone, self.classifier):
            module.train(classifier)
        self.reconstructor.train(reconstructor)
        if self.freeze_bn:
            freeze_batchnorm(self.backbone)
            freeze_batchnorm(self.reconstructor.backbone)

    def classifier_groups(self) -> list[dict[str, Any]]:
        """The baseline's groups: backbone 1×, classifier `new_layer_lr_mult`."""
        return BaselineCAM.param_groups(self)

    def reconstructor_groups(self) -> list[dict[str, Any]]:
        """Backbone 1×, transposed convolutions `transposed_lr_mult`, every other new layer
        (classifier, projections, U-Net convolutions) `recon_lr_mult`."""
        rec = self.reconstructor
        transposed = [p for m in rec.decoder.modules() if isinstance(m, nn.ConvTranspose2d)
                      for p in m.parameters()]
        skip = {id(p) for p in transposed}
        new = [p for m in (rec.classifier, rec.projections, rec.decoder) for p in m.parameters()
               if id(p) not in skip]
        return [
            {"params": list(rec.backbone.parameters()), "lr_mult": 1.0, "name": "recon_backbone"},
            {"params": new, "lr_mult": float(self.acr["recon_lr_mult"]), "name": "recon_new"},
            {"params": transposed, "lr_mult": float(self.acr["transposed_lr_mult"]),
             "name": "recon_transposed"},
        ]

    def param_groups(self) -> list[dict[str, Any]]:
        return [*self.classifier_groups(), *self.reconstructor_groups()]

    def optimizer_groups(self) -> list[list[dict[str, Any]]]:
        """Two optimizers: [classifier's, reconstructor's]."""
        return [self.classifier_groups(), self.reconstructor_groups()]

    def begin(self, total_steps: int, steps_per_epoch: int, start_step: int) -> None:
        self.total_steps = total_steps

    # -- the two phases ---------------------------------------------------------------------
    def hide_p(self, step: int) -> float:
        srf = self.acr["srf"]
        return hide_probability(step, self.total_steps, srf["hide_start"], srf["hide_end"])

    def ru_losses(self, images: torch.Tensor, labels: torch.Tensor, targets: torch.Tensor,
                  hidden: torch.Tensor) -> dict[str, torch.Tensor]:
        """The reconstructor's terms with `hidden` (B, 1, H, W) the SRF cells (1: hidden); the
        classifier's CAM without gradient. "loss" is their weighted sum."""
        w = self.acr["weights"]
        size = tuple(images.shape[-2:])
        with torch.no_grad(), self.autocast():
            a = target_cam(self.classifier(self.backbone(images)), labels, targets, size)
        hidden_nt = (1.0 - a) * hidden
        hidden_t = a * hidden
        rec = self.reconstructor
        zero = images.new_zeros(())
        with self.autocast():
            logits, x = rec.encode(images)
            terms = {"ru_cls": F.multilabel_soft_margin_loss(logits.float(), labels),
                     "ru_t": masked_l1(rec.decoder(x * (1.0 - hidden_nt)), images, hidden_nt)
                     if w["ru_t"] else zero,
                     "ru_nt": masked_l1(rec.decoder(x * (1.0 - hidden_t)), images, hidden_t)
                     if w["ru_nt"] else zero,
                     "ru_full": masked_l1(rec.decoder(x.detach()), images, torch.ones_like(a))
                     if w["ru_full"] else zero}
        terms["loss"] = sum(w[k] * v for k, v in terms.items())
        return terms

    def cu_losses(self, images: torch.Tensor, labels: torch.Tensor,
                  targets: torch.Tensor) -> dict[str, torch.Tensor]:
        """The classifier's terms; the reconstructor's features without gradient and its
        decoder's parameters frozen. "loss" is their weighted sum."""
        w = self.acr["weights"]
        size = tuple(images.shape[-2:])
        rec = self.reconstructor
        with torch.no_grad(), self.autocast():
            _, x = rec.encode(images)
        with self.autocast():
            raw = self.classifier(self.backbone(images))
        raw = raw.float()
        a = target_cam(raw, labels, targets, size)
        if self.acr["cu_masks"] == "paper":
            v_t, v_nt = (1.0 - a).detach(), a.detach()
        else:
            argmax = F.interpolate(raw.detach(), size=size, mode="bilinear",
                                   align_corners=False).argmax(dim=1, keepdim=True)
            v_t = (a == 0).float().detach()
            v_nt = a.detach() * (argmax == targets.view(-1, 1, 1, 1)).float()
        zero = images.new_zeros(())
        terms = {"cls": F.multilabel_soft_margin_loss(raw.mean(dim=(2, 3)), labels)}
        with no_param_grad(rec.decoder), self.autocast():
            terms["cu_t"] = (-masked_l1(rec.decoder(x * a), images, v_t)
                             if w["cu_t"] else zero)
            terms["cu_nt"] = (-masked_l1(rec.decoder(x * (1.0 - a)), images, v_nt)
                              if w["cu_nt"] else zero)
        terms["loss"] = sum(w[k] * v for k, v in terms.items())
        return terms

    def training_step(self, batch: dict[str, torch.Tensor], step: int) -> dict[str, float]:
        images, labels = batch["image"], batch["label"].float()
        opt_cls, opt_rec = self.optimizers
        targets = pick_targets(labels)
        srf = self.acr["srf"]
        p = self.hide_p(step) if srf["enabled"] else 1.0
        hidden = (srf_grid(len(images), int(srf["grid"]), p, tuple(images.shape[-2:]),
                           images.device) if srf["enabled"]
                  else images.new_ones(len(images), 1, *images.shape[-2:]))

        self._modes(classifier=False, reconstructor=True)
        ru = self.ru_losses(images, labels, targets, hidden)
        self.optimize(ru["loss"], [opt_rec])

        self._modes(classifier=True, reconstructor=False)
        cu = self.cu_losses(images, labels, targets)
        self.optimize(cu["loss"], [opt_cls])
        self._modes(classifier=True, reconstructor=True)

        out = {"loss": float(cu["loss"].detach()), "ru": float(ru["loss"].detach())}
        for terms in (cu, ru):
            out.update({k: float(v.detach()) for k, v in terms.items() if k != "loss"})
        out["hide_p"] = p
        return out
