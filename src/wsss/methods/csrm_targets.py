"""CSRM's pseudo-masks, ClassMix and loss targets, as pure functions of tensors (the method that
calls them, its schedules and its settings: `wsss.methods.csrm`).

  C2S masks     the teacher's CAMs through IRN's two-threshold label CRF, in the persistent pool;
  ClassMix      a real one (the reference's selects zero classes);
  S2C / L_u     label-restricted teacher probabilities, confident and low-entropy targets;
  L_m           U2PL's memory-bank pixel contrast, each class reading its own queries.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from wsss.methods.hsc_crf import to_uint8
from wsss.ops.densecrf import label_crf
from wsss.ops.pool import persistent_pool
from wsss.train import ClassBanks

IGNORE = 255
NORM_EPS = 1e-5


# -- pseudo-masks (C2S) ---------------------------------------------------------------------

def normalised_cams(raw: torch.Tensor, labels: torch.Tensor, size: tuple[int, int]
                    ) -> torch.Tensor:
    """ψ(A) of Eq. 2 for the labelled classes (others 0): ReLU, divided by the per-class
    maximum, bilinearly upsampled to `size` (align_corners, as the reference)."""
    cam = F.relu(raw.float()) * labels[:, :, None, None]
    cam = cam / (cam.flatten(2).amax(dim=2)[:, :, None, None] + NORM_EPS)
    return F.interpolate(cam, size=size, mode="bilinear", align_corners=True)


def two_threshold_mask(image: np.ndarray, cams: np.ndarray, keys: np.ndarray, fg: float,
                       bg: float, crf: dict[str, Any]) -> np.ndarray:
    """int64 H×W: keys[i] + 1 where the label CRF at threshold `fg` says class keys[i], 0 where
    the CRF at `bg` says background too, 255 elsewhere (IRN's `cam_to_ir_label`). `cams` are
    the K×H×W normalised maps of the classes `keys`."""
    keys = np.asarray(keys, np.int64).reshape(-1)
    if keys.size == 0:
        return np.zeros(image.shape[:2], np.int64)
    planes = np.concatenate([[0], keys + 1])
    out = []
    for t in (fg, bg):
        scores = np.concatenate([np.full((1, *cams.shape[1:]), t, np.float32), cams])
        out.append(planes[label_crf(image, scores.argmax(axis=0), len(planes), crf)])
    high, low = out
    mask = high.copy()
    mask[high == 0] = IGNORE
    mask[(high == 0) & (low == 0)] = 0
    return mask


def _mask_chunk(chunk: tuple[float, float, dict[str, Any], list[tuple[np.ndarray, ...]]]
                ) -> list[np.ndarray]:
    fg, bg, crf, items = chunk
    return [two_threshold_mask(image, cams, keys, fg, bg, crf) for image, cams, keys in items]


def c2s_masks(images: torch.Tensor, cams: torch.Tensor, labels: torch.Tensor,
              cfg: dict[str, Any], workers: int) -> torch.Tensor:
    """(B, H, W) int64 pseudo-masks of ImageNet-normalised `images` from normalised `cams`
    (B, C, H, W); one contiguous chunk of images per worker of the persistent pool."""
    pixels = to_uint8(images)
    cams_np = cams.detach().float().cpu().numpy()
    on = labels.detach().cpu().numpy() > 0.5
    items = [(pixels[i], cams_np[i][on[i]], np.flatnonzero(on[i])) for i in range(len(pixels))]
    fg, bg, crf = float(cfg["fg"]), float(cfg["bg"]), cfg["crf"]
    if workers <= 1 or len(items) <= 1:
        masks = _mask_chunk((fg, bg, crf, items))
    else:
        bounds = np.linspace(0, len(items), min(workers, len(items)) + 1).round().astype(int)
        chunks = [(fg, bg, crf, items[a:b]) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
        masks = [m for part in persistent_pool(workers).map(_mask_chunk, chunks, chunksize=1)
                 for m in part]
    return torch.from_numpy(np.stack(masks)).to(images.device)


# -- ClassMix -------------------------------------------------------------------------------

def class_mix(masks: torch.Tensor, labels: torch.Tensor, tensors: list[torch.Tensor],
              partners: torch.Tensor | None = None
              ) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor], torch.Tensor]:
    """ClassMix (Olsson et al. 2021) of a batch by its pseudo-masks.

    `masks` (B, H, W): 0 background, k + 1 class k, 255 unsure. Image i takes from its
    partner j (`partners[i]`, drawn uniformly among the other images when not given)
    max(n // 2, 1) of the n foreground classes of masks[j], drawn at random; the pixels of
    those classes in masks[j] are copied into masks[i] and into every (B, ..., H, W) tensor of
    `tensors` (images, teacher logits). labels[i] gains the pasted classes and loses each class
    that had pixels in masks[i] and has none left. Returns (mixed masks, mixed labels, mixed
    tensors, the (B, H, W) boolean paste masks). Random draws use the torch global RNG.
    """
    b = len(masks)
    if partners is None:
        partners = (torch.arange(b) + torch.randint(1, b, (b,))) % b if b > 1 else torch.zeros(
            1, dtype=torch.long)
    paste = torch.zeros_like(masks, dtype=torch.bool)
    new_labels = labels.clone()
    for i in range(b):
        j = int(partners[i])
        if j == i:
            continue
        present = torch.unique(masks[j])
        present = present[(present != 0) & (present != IGNORE)]
        if present.numel() == 0:
            continue
        k = max(present.numel() // 2, 1)
        chosen = present[torch.randperm(present.numel())[:k].to(present.device)]
        paste[i] = torch.isin(masks[j], chosen)
        new_labels[i, chosen - 1] = 1.0
    mixed_masks = torch.where(paste, masks[partners], masks)
    for i in range(b):  # classes of image i whose pixels were all covered
        before = torch.unique(masks[i])
        for value in before[(before != 0) & (before != IGNORE)].tolist():
            if not (mixed_masks[i] == value).any():
                new_labels[i, value - 1] = 0.0
    mixed = [torch.where(paste.view(b, *([1] * (t.dim() - 3)), *paste.shape[1:]),
                         t[partners.to(t.device)], t) for t in tensors]
    return mixed_masks, new_labels, mixed, paste


# -- segmentation-side targets and losses --------------------------------------------------

def restricted_probs(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Softmax over background + classes, restricted to the background and the image's labelled
    classes and renormalised (the reference's teacher probabilities)."""
    probs = F.softmax(logits.float(), dim=1) * F.pad(labels, (1, 0), value=1.0)[:, :, None, None]
    return probs / probs.sum(dim=1, keepdim=True).clamp_min(1e-12)


def confident_targets(probs: torch.Tensor, sigma: float) -> torch.Tensor:
    """argmax where the maximum probability exceeds `sigma`, 255 elsewhere (Eq. 8)."""
    conf, target = probs.max(dim=1)
    return torch.where(conf > sigma, target, torch.full_like(target, IGNORE))


def entropy(probs: torch.Tensor) -> torch.Tensor:
    """Per-pixel entropy of (B, K, H, W) probabilities (Eq. 10)."""
    return -(probs * torch.log(probs + 1e-10)).sum(dim=1)


def unsup_targets(target: torch.Tensor, ent: torch.Tensor, share: float) -> torch.Tensor:
    """`target` with the `share` (a fraction) of its valid pixels of highest `ent` set to 255:
    those at or above the (1 - share) quantile of the valid entropies (Eq. 11)."""
    valid = target != IGNORE
    if share <= 0 or not valid.any():
        return target
    thresh = torch.quantile(ent[valid].float(), 1.0 - share)
    return torch.where(valid & (ent >= thresh), torch.full_like(target, IGNORE), target)


def onehot(labels: torch.Tensor, n: int) -> torch.Tensor:
    """(B, H, W) labels with 255 -> (B, n, H, W) float one-hot, all zero where 255."""
    valid = labels != IGNORE
    out = F.one_hot(torch.where(valid, labels, 0), n).permute(0, 3, 1, 2).float()
    return out * valid[:, None].float()


def contrast_loss(rep: torch.Tensor, rep_t: torch.Tensor, prob_t: torch.Tensor,
                  labels: torch.Tensor, n_aug: int, image_labels_u: torch.Tensor,
                  low: torch.Tensor, high: torch.Tensor, banks: ClassBanks,
                  cfg: dict[str, Any]) -> torch.Tensor:
    """U2PL's memory-bank pixel contrast (Eq. 13) on a grid.

    rep, rep_t  (B, D, h, w) student / teacher representations;
    prob_t      (B, K, h, w) the teacher's probabilities (K = background + classes);
    labels      (B, h, w) pseudo-labels (the first `n_aug` images: the CRF masks; the rest:
                the teacher's restricted argmax), 255 unknown;
    image_labels_u (B - n_aug, K - 1) image labels of the unaugmented half;
    low, high   (B, h, w) the reliable (low-entropy) and unreliable (high-entropy) pixels.
    Per class c: queries are student representations of reliable pixels labelled c where the
    teacher's p_c > `query_threshold`; the positive is the mean teacher representation of the
    reliable pixels labelled c; negatives come from c's bank, into which the teacher's
    representations of unreliable pixels are pushed first where c ranks in the teacher's top
    `low_rank` and is not the pixel's label (augmented half) or not an image label (the other
    half), or ranks in [low_rank, high_rank). The loss is averaged over the classes with
    reliable pixels; 0 when fewer than two have any.
    """
    k = prob_t.shape[1]
    queries, temp = int(cfg["queries"]), float(cfg["temperature"])
    onehots = onehot(labels, k)
    low_valid = onehots * low[:, None].float()
    ranks = prob_t.argsort(dim=1, descending=True)  # (B, K, h, w) classes by rank
    lo, hi = int(cfg["low_rank"]), int(cfg["high_rank"])
    top = F.one_hot(ranks[:, :lo], k).sum(dim=1).permute(0, 3, 1, 2).bool()  # (B, K, h, w)
    mid = F.one_hot(ranks[:, lo:hi], k).sum(dim=1).permute(0, 3, 1, 2).bool()
    absent_u = F.pad(image_labels_u, (1, 0), value=1.0)[:, :, None, None] == 0
    negative = torch.cat([top[:n_aug] & (onehots[:n_aug] == 0),
                          (top[n_aug:] & absent_u) | mid[n_aug:]])
    negative &= (high[:, None] & (prob_t < float(cfg["negative_threshold"])))
    rep_p = rep.permute(0, 2, 3, 1)
    rep_tp = rep_t.permute(0, 2, 3, 1).detach()
    candidates, protos, valid = [], [], []
    for c in range(k):
        mask_c = low_valid[:, c] > 0
        candidates.append(rep_p[mask_c & (prob_t[:, c] > float(cfg["query_threshold"]))])
        protos.append(rep_tp[mask_c].mean(dim=0) if mask_c.any() else None)
        banks.push(c, rep_tp[negative[:, c]])
        if mask_c.any():
            valid.append(c)
    loss = rep.new_zeros(())
    if len(valid) <= 1:
        return loss
    zeros = torch.zeros(queries, dtype=torch.long, device=rep.device)
    n_neg = int(cfg["negatives"])
    for c in valid:
        bank = banks[c]
        if len(candidates[c]) == 0 or len(bank) == 0:
            continue
        anchors = candidates[c][torch.randint(len(candidates[c]), (queries,)).to(rep.device)]
        with torch.no_grad():
            neg = bank[torch.randint(len(bank), (queries * n_neg,))].to(rep)
            neg = neg.view(queries, n_neg, -1)
            pos = protos[c].to(rep).view(1, 1, -1).expand(queries, 1, -1)
            keys = torch.cat([pos, neg], dim=1)
        logits = F.cosine_similarity(anchors[:, None].float(), keys.float(), dim=2) / temp
        loss = loss + F.cross_entropy(logits, zeros)
    return loss / len(valid)
