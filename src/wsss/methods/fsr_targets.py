"""FSR's (Yang et al., ECCV 2024, "Feature self-reinforcement") and its base ToCo's (Ru et al.,
CVPR 2023) CAMs, pseudo-labels, masks and losses, as pure functions of tensors (no network
here).

  multiscale_cams    flip-max, scale-summed, min-max normalised CAMs (both heads);
  cam_labels         two-threshold labels of the CAMs (255 between the thresholds);
  par_labels         the same through PAR, a background plane at each threshold;
  block_mask         FSR's uncertainty-first block masking on the token grid;
  balanced_seg_loss  the mean of the background and the foreground cross-entropies;
  affinity_mask      same / different / ignored token pairs of a label map;
  ptc_loss           ToCo's pairwise token contrast on those pairs;
  cosine_schedule    the teacher's momentum.

Where these differ from the reference (Jessie459/feature-self-reinforcement) it is said so
at the function.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from wsss.data.transforms import MEAN, STD
from wsss.ops.par import par_refine

IGNORE = 255
NORM_EPS = 1e-5

Forward = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


# -- CAMs and their labels ------------------------------------------------------------------

def _minmax(cam: torch.Tensor) -> torch.Tensor:
    """Per image and class: (x - min) / (max(x - min) + 1e-5), as the reference's
    x + maxpool(-x), then / (maxpool + 1e-5)."""
    cam = cam - cam.amin(dim=(2, 3), keepdim=True)
    return cam / (cam.amax(dim=(2, 3), keepdim=True) + NORM_EPS)


@torch.no_grad()
def multiscale_cams(forward: Forward, images: torch.Tensor, scales: Sequence[float],
                    flip: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """(cam, aux) (B, C, H, W) in [0, 1] of `images` (B, 3, H, W) (the reference's
    `multi_scale_cam`).

    `forward(x)` gives the raw (B', C, h, w) maps of both heads. At each scale the images are
    resized to (int(s H), int(s W)) (bilinear, align_corners=False; 1.0 is the image itself),
    sent with their mirror images in one call when `flip`, the maps resized to (H, W), the
    mirror's flipped back and the elementwise maximum of the pair taken; ReLU, summed over the
    scales, min-max normalised per image and class. Unlike the reference, which always adds
    scale 1.0 and skips any 1.0 among `scales`, exactly the `scales` given are used."""
    if not scales:
        raise ValueError("multiscale_cams needs at least one scale")
    b, _, h, w = images.shape
    sums: list[torch.Tensor] | None = None
    for s in scales:
        x = images if s == 1.0 else F.interpolate(
            images, size=(int(s * h), int(s * w)), mode="bilinear", align_corners=False)
        if flip:
            x = torch.cat([x, x.flip(-1)], dim=0)
        maps = []
        for raw in forward(x):
            raw = F.interpolate(raw.float(), size=(h, w), mode="bilinear", align_corners=False)
            if flip:
                raw = torch.maximum(raw[:b], raw[b:].flip(-1))
            maps.append(F.relu(raw))
        sums = maps if sums is None else [a + m for a, m in zip(sums, maps, strict=True)]
    cam, aux = (_minmax(m) for m in sums)
    return cam, aux


def restricted(cam: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """`cam` (B, C, H, W) with the classes not in `labels` (B, C) zeroed."""
    return cam * labels[:, :, None, None].to(cam.dtype)


def cam_labels(cam: torch.Tensor, labels: torch.Tensor, low: float, high: float
               ) -> torch.Tensor:
    """(B, H, W) int64: k + 1 where the label-restricted `cam`'s top class k scores above
    `high`, 255 where its score is in (low, high], 0 at or below `low` (the reference's
    `cam_to_label(..., ignore_mid=True)`)."""
    value, index = restricted(cam, labels).max(dim=1)
    out = torch.where(value <= high, IGNORE, index + 1)
    return torch.where(value <= low, 0, out)


def par_images(images: torch.Tensor) -> torch.Tensor:
    """ImageNet-normalised (B, 3, H, W) -> the colours in [0, 1] that the reference gives PAR
    (`denormalize_img2`: 0-255, to uint8, / 255). The reference's uint8 cast truncates (a
    colour 122.99997 from float error becomes 122); here colours are rounded, and clipped."""
    mean = torch.as_tensor(MEAN, dtype=torch.float32, device=images.device)[:, None, None]
    std = torch.as_tensor(STD, dtype=torch.float32, device=images.device)[:, None, None]
    return ((images.float() * std + mean) * 255.0).round().clamp(0.0, 255.0) / 255.0


def _valid_keys(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, K') planes to keep: 0 (background), then k + 1 for each labelled class k, padded
    with 0 to the batch's largest count; and (B, K') True where the key is real."""
    on = torch.cat([torch.ones_like(labels[:, :1], dtype=torch.bool), labels > 0.5], dim=1)
    count = on.sum(dim=1)
    order = torch.argsort((~on).to(torch.uint8), dim=1, stable=True)  # real keys first
    width = int(count.max())
    keys = order[:, :width]
    real = torch.arange(width, device=labels.device)[None] < count[:, None]
    return torch.where(real, keys, 0), real


@torch.no_grad()
def par_labels(images: torch.Tensor, cams: torch.Tensor, labels: torch.Tensor, high: float,
               low: float, par: dict[str, Any] | None = None, down_scale: int = 2
               ) -> torch.Tensor:
    """(B, H, W) int64 PAR-refined pseudo-labels (the reference's `refine_cams_with_bkg_v2`).

    `cams` (B, C, H, W) normalised, in [0, 1]; `images` ImageNet-normalised, given to PAR as
    `par_images`. A background plane at `high`, and another at `low`, before the cams; all
    downscaled to (H // down_scale, W // down_scale) (bilinear, align_corners=False), with the
    images; per image the background and its labelled classes only, softmax over them, PAR
    (`par`: par_refine's keyword arguments), back to (H, W) and argmax: label_h and label_l
    (0 background, k + 1 class k). The label is label_h, 255 where label_h is background but
    label_l is not. Batched: the images' key sets are padded to the largest and the padding
    set to -inf before the softmax, which leaves the per-image computation unchanged."""
    b, _, h, w = images.shape
    size = (h // down_scale, w // down_scale)
    small = F.interpolate(par_images(images), size=size, mode="bilinear", align_corners=False)
    cams = F.interpolate(cams.float(), size=size, mode="bilinear", align_corners=False)
    keys, real = _valid_keys(labels)
    index = keys[:, :, None, None].expand(-1, -1, *size)
    probs = []
    for t in (high, low):
        planes = torch.cat([torch.full_like(cams[:, :1], t), cams], dim=1)
        scores = planes.gather(1, index).masked_fill(~real[:, :, None, None], -math.inf)
        probs.append(scores.softmax(dim=1))
    refined = par_refine(torch.cat([small, small]), torch.cat(probs), **(par or {}))
    refined = F.interpolate(refined, size=(h, w), mode="bilinear", align_corners=False)
    both = keys.repeat(2, 1).gather(1, refined.argmax(dim=1).flatten(1)).view(2, b, h, w)
    label_h, label_l = both
    out = torch.where(label_h == 0, IGNORE, label_h)
    return torch.where((label_h == 0) & (label_l == 0), 0, out)


# -- masking ----------------------------------------------------------------------------------

def uncertain_blocks(cam: torch.Tensor, labels: torch.Tensor, blocks: tuple[int, int],
                     low: float, high: float) -> torch.Tensor:
    """(B, *blocks) bool: the label-restricted top class score of `cam` (B, C, H', W'),
    nearest-resized to the block grid, strictly between `low` and `high`."""
    top = restricted(cam.float(), labels).amax(dim=1, keepdim=True)
    top = F.interpolate(top, size=blocks, mode="nearest")[:, 0]
    return (top > low) & (top < high)


def block_mask(cam: torch.Tensor, labels: torch.Tensor, grid: tuple[int, int], block: int,
               ratio: float, low: float, high: float, uncertain: bool,
               generator: torch.Generator | None = None) -> torch.Tensor:
    """(B, h, w) bool, True where a token of the `grid` = (h, w) is masked (the reference's
    `MaskGenerator`).

    Blocks of `block` × `block` tokens (ceil(h / block) × ceil(w / block) of them, those at
    the border cropped); ceil(n_blocks · ratio) of them masked per image, those of highest
    score u ~ U(0, 1) (`generator`'s stream if given), plus 1 for the `uncertain_blocks` when
    `uncertain` (so these go first). The scores are drawn either way."""
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"mask ratio {ratio} is not in [0, 1]")
    h, w = grid
    blocks = (math.ceil(h / block), math.ceil(w / block))
    n = blocks[0] * blocks[1]
    k = math.ceil(n * ratio)
    b = cam.shape[0]
    device = generator.device if generator is not None else cam.device
    scores = torch.rand(b, n, generator=generator, device=device).to(cam.device)
    if uncertain:
        scores = scores + uncertain_blocks(cam, labels, blocks, low, high).reshape(b, n)
    chosen = torch.zeros(b, n, dtype=torch.bool, device=cam.device)
    if k > 0:
        chosen.scatter_(1, scores.topk(k, dim=1).indices, True)
    mask = chosen.view(b, *blocks).repeat_interleave(block, 1).repeat_interleave(block, 2)
    return mask[:, :h, :w]


# -- losses and schedules ---------------------------------------------------------------------

def _mean_ce(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    total = F.cross_entropy(logits, target, ignore_index=IGNORE, reduction="sum")
    return total / (target != IGNORE).sum().clamp_min(1)


def balanced_seg_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(CE over the background pixels + CE over the foreground pixels) / 2, each a mean over
    its own pixels, 255 ignored (the reference's `get_seg_loss`). A half without any pixel
    counts 0 here; the reference's cross-entropy returns NaN for it."""
    target = target.long()
    bg = torch.where(target == 0, target, IGNORE)
    fg = torch.where(target == 0, IGNORE, target)
    return 0.5 * (_mean_ce(logits, bg) + _mean_ce(logits, fg))


def affinity_mask(label: torch.Tensor) -> torch.Tensor:
    """(B, N, N) int64 of a (B, h, w) label map, N = h w: 1 for two tokens of the same label,
    0 for different labels, 255 where either is 255 and on the diagonal (the reference's
    `label_to_aff_mask`)."""
    flat = label.flatten(1)
    aff = (flat[:, :, None] == flat[:, None, :]).long()
    ignored = flat == IGNORE
    aff = aff.masked_fill(ignored[:, :, None] | ignored[:, None, :], IGNORE)
    eye = torch.eye(flat.shape[1], dtype=torch.bool, device=label.device)
    return aff.masked_fill(eye, IGNORE)


def ptc_loss(tokens: torch.Tensor, aff: torch.Tensor) -> torch.Tensor:
    """ToCo's masked pairwise token contrast (the reference's `get_masked_ptc_loss`): |cos|
    between all pairs of the (B, D, h, w) `tokens`, pulled to 1 on the pairs `aff` marks 1 and
    to 0 on those it marks 0: 0.5 (1 - Σ_pos |cos| / (n_pos + 1)) + 0.5 Σ_neg |cos| / (n_neg + 1),
    over the whole batch, the reference's + 1 kept."""
    x = F.normalize(tokens.flatten(2), p=2, dim=1, eps=1e-8)
    if aff.shape != (x.shape[0], x.shape[2], x.shape[2]):
        raise ValueError(f"affinity mask {tuple(aff.shape)} does not fit tokens "
                         f"{tuple(tokens.shape)}")
    sim = (x.transpose(1, 2) @ x).abs()
    pos, neg = aff == 1, aff == 0
    return (0.5 * (1.0 - (sim * pos).sum() / (pos.sum() + 1))
            + 0.5 * (sim * neg).sum() / (neg.sum() + 1))


def cosine_schedule(step: int, total: int, start: float, end: float) -> float:
    """`start` at step 0 along half a cosine towards `end`, reached at step `total` and kept
    after (the reference's `cosine_scheduler(start, end, total)`, then 1.0 = end past FSR's
    iterations): end + (start - end) (1 + cos(π step / total)) / 2."""
    if step < 0:
        raise ValueError(f"step {step} is negative")
    if step >= total:
        return float(end)
    return float(end + 0.5 * (start - end) * (1.0 + math.cos(math.pi * step / total)))


def teacher_momentum(step: int, total: int, window: float, until: float) -> float:
    """The EMA momentum after step `step` of `total`: from m0 = 1 - 1 / (window · total)
    (the reference's 0.9995 at window 0.1 of 20,000 steps) to 1 on a cosine over the first
    `until` of the run, then 1."""
    start = max(0.0, 1.0 - 1.0 / max(window * total, 1.0))
    span = round(until * total)
    return 1.0 if step >= span else cosine_schedule(step, span, start, 1.0)
