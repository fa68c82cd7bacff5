"""Contrastive building blocks shared by the contrastive methods (HSC, DSCNet, later CSRM).

Conventions: representations are rows (N, D); every similarity is the cosine similarity (rows
are L2-normalised inside the functions, so callers may pass raw features); a temperature `tau`
divides the similarities before the softmax.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

EPS = 1e-6


def unit(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """L2-normalise along `dim`; a zero vector stays zero."""
    return x / (x.norm(dim=dim, keepdim=True) + EPS)


def cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(N, D) × (M, D) -> (N, M) cosine similarities."""
    return unit(a) @ unit(b).T


def info_nce(anchors: torch.Tensor, keys: torch.Tensor, positive: torch.Tensor, tau: float,
             key_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Per anchor: -log softmax over the keys of sim(anchor, key)/tau, taken at `positive`.

    anchors (N, D), keys (K, D), positive (N,) indices into the keys. `key_mask` (K,) or (N, K)
    bool drops keys from the denominator (e.g. prototypes never updated); the positive itself is
    always kept. Returns the (N,) losses, so callers choose the reduction.
    """
    logits = cosine(anchors, keys) / tau
    if key_mask is not None:
        keep = key_mask.expand_as(logits).clone()
        keep[torch.arange(len(positive), device=logits.device), positive] = True
        logits = logits.masked_fill(~keep, float("-inf"))
    return F.cross_entropy(logits, positive, reduction="none")


def multi_positive_nce(x: torch.Tensor, classes: torch.Tensor, tau: float) -> torch.Tensor:
    """Supervised contrast inside one set of representations x (N, D) with class ids (N,).

    For each anchor with at least one other member of its class: the mean over those positives
    of -log( exp(s_ap/tau) / sum_{b != a} exp(s_ab/tau) ). Returns the (M,) losses of the M
    anchors that have a positive (empty when none has).
    """
    n = x.shape[0]
    logits = cosine(x, x) / tau
    self_mask = torch.eye(n, dtype=torch.bool, device=x.device)
    logits = logits.masked_fill(self_mask, float("-inf"))
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    pos = (classes[:, None] == classes[None, :]) & ~self_mask
    count = pos.sum(dim=1)
    has = count > 0
    per = -(log_prob.masked_fill(~pos, 0.0)).sum(dim=1)
    return per[has] / count[has]


def masked_average_pool(feat: torch.Tensor, masks: torch.Tensor) -> tuple[torch.Tensor,
                                                                           torch.Tensor]:
    """Weighted means of features under masks.

    feat (B, D, h, w), masks (B, K, h, w) non-negative weights (binary or soft) -> (B, K, D)
    means and a (B, K) bool telling which masks had any weight (the others give zero vectors).
    """
    w = masks.flatten(2)
    total = w.sum(dim=2)
    pooled = torch.einsum("bkn,bdn->bkd", w, feat.flatten(2)) / (total[..., None] + EPS)
    return pooled, total > 0


def topk_pool(feat: torch.Tensor, scores: torch.Tensor, k: int) -> torch.Tensor:
    """Per row of scores, the score-weighted mean of the features at its `k` highest scores.

    feat (B, N, D) candidates, scores (B, K, N) -> (B, K, D); 2-d inputs (N, D), (K, N) give
    (K, D). The weights are the scores themselves (clamped at 0); a row whose top-k scores are
    all zero gets the plain mean of those k features.
    """
    squeeze = feat.dim() == 2
    if squeeze:
        feat, scores = feat[None], scores[None]
    k = max(1, min(k, feat.shape[1]))
    top, idx = scores.topk(k, dim=2)  # (B, K, k)
    w = top.clamp_min(0)
    w = torch.where(w.sum(dim=2, keepdim=True) > 0, w, torch.ones_like(w))
    w = w / w.sum(dim=2, keepdim=True)
    b, kk, _ = idx.shape
    picked = torch.gather(feat, 1, idx.reshape(b, kk * k, 1).expand(-1, -1, feat.shape[2]))
    out = torch.einsum("bkn,bknd->bkd", w, picked.view(b, kk, k, -1))
    return out[0] if squeeze else out


class PrototypeBank(nn.Module):
    """One momentum prototype per class: P_c <- m * r_c + (1 - m) * P_c, kept unit length.

    A class's first update copies its representation instead of mixing it with an arbitrary
    initial value (the HSC code starts from unnormalised torch.randn, which only delays the
    prototypes becoming meaningful); `filled` tells which classes have been seen, so losses can
    leave unseen prototypes out of their denominators. Prototypes and `filled` are buffers:
    saved in checkpoints, so a resumed run continues with the same banks. The bank follows its
    owner's train()/eval(): in eval mode `update` does nothing, so computing the losses of a
    method under eval() (a validation loss, a diagnostic) leaves its banks as training left them.
    """

    def __init__(self, num_classes: int, dim: int, momentum: float):
        super().__init__()
        self.momentum = float(momentum)
        self.register_buffer("prototypes", torch.zeros(num_classes, dim))
        self.register_buffer("filled", torch.zeros(num_classes, dtype=torch.bool))

    @torch.no_grad()
    def update(self, classes: torch.Tensor, reps: torch.Tensor) -> None:
        """EMA update of the prototypes of `classes` (M,) with `reps` (M, D), detached; a no-op
        unless the bank (its owner) is in training mode."""
        if not self.training or len(classes) == 0:
            return
        reps = unit(reps.detach().float())
        old = self.prototypes[classes]
        mixed = torch.where(self.filled[classes, None],
                            self.momentum * reps + (1 - self.momentum) * old, reps)
        self.prototypes[classes] = unit(mixed)
        self.filled[classes] = True

    def forward(self) -> torch.Tensor:
        return self.prototypes
