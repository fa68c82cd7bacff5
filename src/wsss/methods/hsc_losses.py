"""HSC's pieces without state (Wu et al., IJCAI 2023; see `wsss.methods.hsc` for the method and
the choices it makes): the in-training pseudo labels and the loss of each contrast level.

All maps live on the contrast grid (the second view's feature grid); labels are 0 background,
c + 1 class c.
"""

from __future__ import annotations

import torch

from wsss.methods.contrast import cosine, info_nce, masked_average_pool, topk_pool, unit
from wsss.methods.seam import max_norm, resize

SIM_CLAMP = 5e-4  # HSC's SimMinLoss keeps log(1 - cos) finite and away from log(1)
# Selected cells get at least this weight, so that a top-k whose only candidates have zero
# activation still averages those candidates, not the filler cells topk_pool picks after them.
MIN_WEIGHT = 1e-8


# -- pseudo labels ------------------------------------------------------------------------------

@torch.no_grad()
def activations(pseudo: torch.Tensor, labels: torch.Tensor,
                size: tuple[int, int]) -> torch.Tensor:
    """(B, C, *size) activation w: the map resized to `size`, ReLU, per-channel min-max
    normalised, times the image labels (B, C); detached."""
    return max_norm(resize(pseudo.detach().float(), size)) * labels[:, :, None, None].float()


def with_background(act: torch.Tensor) -> torch.Tensor:
    """(B, C, h, w) -> (B, C + 1, h, w) with background activation 1 - max foreground first."""
    return torch.cat([1.0 - act.amax(dim=1, keepdim=True), act], dim=1)


@torch.no_grad()
def pseudo_labels(act: torch.Tensor, bg_threshold: float | None) -> torch.Tensor:
    """(B, h, w) argmax of a background plane and the activations: 0 background, c + 1 class c;
    ties go to the background (the first plane). The plane is the constant `bg_threshold`, or
    with None SEAM's own 1 - max foreground (a cell is foreground where its top class is above
    0.5)."""
    if bg_threshold is None:
        return with_background(act).argmax(dim=1)
    bg = torch.full_like(act[:, :1], float(bg_threshold))
    return torch.cat([bg, act], dim=1).argmax(dim=1)


# -- ROI level ------------------------------------------------------------------------------------

def roi_representations(u1: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor,
                                                                         torch.Tensor]:
    """(r_o, r_b) of eq. 3: per image the mean of u1 (B, D, h, w) over its ROI (label != 0) and
    its background cells; images with an empty mask are left out of either."""
    masks = torch.stack([labels != 0, labels == 0], dim=1).to(u1.dtype)
    pooled, has = masked_average_pool(u1, masks)
    return pooled[:, 0][has[:, 0]], pooled[:, 1][has[:, 1]]


def rsc_loss(r_o: torch.Tensor, r_b: torch.Tensor) -> torch.Tensor:
    """F_rsc of eq. 4 over all (ROI, background) pairs, cosine clamped to [5e-4, 1 - 5e-4];
    0 when either side is empty."""
    if len(r_o) == 0 or len(r_b) == 0:
        return r_o.new_zeros(())
    sim = cosine(r_o, r_b).clamp(SIM_CLAMP, 1.0 - SIM_CLAMP)
    return -torch.log1p(-sim).mean()


# -- class level ----------------------------------------------------------------------------------

def class_representations(u1: torch.Tensor, act: torch.Tensor, image_labels: torch.Tensor,
                          k: int, candidates: torch.Tensor | None = None
                          ) -> tuple[torch.Tensor, torch.Tensor]:
    """(classes (M,), r_c (M, D)) of eq. 6 for the M foreground classes (0-based) in the batch.

    u1 (B, D, h, w), act (B, C, h, w) activations, image_labels (B, C). Per image with class c:
    the activation-weighted mean of u1 over its top-k cells of act[:, c]; `candidates` (B, h, w)
    pseudo labels restrict those cells to the ones labelled c + 1 (all cells when none is).
    """
    c = act.shape[1]
    feat = u1.flatten(2).transpose(1, 2)  # (B, N, D)
    scores = act.flatten(2)  # (B, C, N)
    if candidates is not None:
        ids = torch.arange(1, c + 1, device=act.device)
        allowed = candidates.flatten(1)[:, None, :] == ids[None, :, None]
        restricted = allowed.any(dim=2, keepdim=True)
        scores = torch.where(allowed, scores.clamp_min(MIN_WEIGHT),
                             torch.where(restricted, -1.0, scores))
    per_image = topk_pool(feat, scores, k)  # (B, C, D)
    present = (image_labels > 0).to(per_image.dtype)
    count = present.sum(dim=0)
    reps = torch.einsum("bc,bcd->cd", present, per_image) / count.clamp_min(1)[:, None]
    classes = torch.nonzero(count > 0).flatten()
    return classes, reps[classes]


def csc_loss(reps: torch.Tensor, classes: torch.Tensor, prototypes: torch.Tensor,
             filled: torch.Tensor, tau: float) -> torch.Tensor:
    """Mean F_csc (eq. 8) of r_c against a bank (K, D) with positive P_c, over the classes
    whose own prototype is filled; unfilled prototypes leave the denominator. 0 if none."""
    keep = filled[classes]
    if not keep.any():
        return reps.new_zeros(())
    return info_nce(reps[keep], prototypes, classes[keep], tau, key_mask=filled).mean()


# -- pixel level ----------------------------------------------------------------------------------

@torch.no_grad()
def batch_prototypes(u2: torch.Tensor, act: torch.Tensor, labels: torch.Tensor,
                     k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(Q (K, D) unit length, available (K,)) of eq. 10, detached.

    u2 (B, D, h, w), act (B, K, h, w) activations of every label 0..K-1 (background included),
    labels (B, h, w). Q_c is the activation-weighted mean of u2 over the top-k cells of the batch
    labelled c; a class no cell is labelled with has no prototype (a zero row)."""
    kk = act.shape[1]
    feat = u2.detach().permute(0, 2, 3, 1).reshape(-1, u2.shape[1])
    scores = act.permute(1, 0, 2, 3).reshape(kk, -1)
    assigned = labels.reshape(1, -1) == torch.arange(kk, device=labels.device)[:, None]
    scores = torch.where(assigned, scores.clamp_min(MIN_WEIGHT), -1.0)
    available = assigned.any(dim=1)
    protos = unit(topk_pool(feat, scores, k)) * available[:, None]
    return protos, available


def psc_loss(u2: torch.Tensor, labels: torch.Tensor, prototypes: torch.Tensor,
             available: torch.Tensor, tau: float) -> torch.Tensor:
    """Mean F_psc (eq. 12) over the cells of u2 (B, D, h, w) whose label (B, h, w) has a
    prototype; prototypes (K, D) without `available` leave the denominator. 0 if no cell."""
    cells = u2.permute(0, 2, 3, 1).reshape(-1, u2.shape[1])
    target = labels.reshape(-1)
    keep = available[target]
    if not keep.any():
        return u2.new_zeros(())
    return info_nce(cells[keep], prototypes, target[keep], tau, key_mask=available).mean()
