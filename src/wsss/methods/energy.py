"""The regularised loss of ToCo and FSR (Tang et al., ECCV 2018, "On regularized losses for
weakly-supervised CNN segmentation"): the dense CRF energy of a soft segmentation, in torch.

For an image with pixels i (position p_i, colour I_i) and softmax probabilities S (K × N), the
relaxed Potts energy is E = Σ_k S_k^T W (1 - S_k) with the dense Gaussian kernel
    W_ij = exp(-|p_i - p_j|² / 2σ_xy² - |I_i - I_j|² / 2σ_rgb²);
up to the constant Σ_k S_k^T W 1 = Σ_ij W_ij (the rows of S sum to 1), that is
-Σ_k S_k^T W S_k, which, weighted pixel by pixel by a gate (below), is what the reference's
`DenseEnergyLoss` returns (divided by the number of images, times its weight). The reference
computes W S with a compiled permutohedral bilateral filter (an approximation, and a C++
extension it does not ship); here W is exact, built in chunks of rows so that memory stays at
`chunk` × N, and the backward pass rebuilds the chunks instead of keeping them (d/dS of
-S^T W S is -2 W S, W being symmetric).

Pixels outside `roi` (0 there) take no part: their probabilities are zeroed first, as the
reference multiplies the segmentation by its region of interest.

The gate. The reference (`DenseEnergyLossFunction` of ToCo / FSR, models/losses.py) weights
each pixel's term by G_i = max(ROI_i - max_k S_ki, 0), G_i = 1 where the pseudo-label is 255:
confident pixels count little, uncertain and unlabelled ones fully. Its value is
    E = -Σ_k Σ_i S_ki G_i (W S_k)_i / B,
the gate a constant. Its hand-written backward returns -2 G ⊙ W S, which is not the gradient
of that value: d/dS of -S^T diag(G) W S is -(G ⊙ W S + W (G ⊙ S)), and the two agree only
when G is the same at every pixel (the ungated energy, G = 1). Here the value is the
reference's and the gradient its exact one with the gate detached (the reference, too, treats
G as a constant, though it is a function of S), which is what its backward meant; the
backward then needs two kernel products, done in one pass over W with S and G ⊙ S side by
side. `energy_loss` is the reference's whole `get_energy_loss` + `DenseEnergyLoss.forward`,
without its weight.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from wsss.data.transforms import MEAN, STD

IGNORE = 255
DEFAULT_CHUNK = 1024  # rows of W at a time: chunk × N floats in memory
# images of at most this many pixels keep their whole W from the forward pass for the backward
# (N² floats: 16 MB at 2,048 pixels) instead of building it twice
KEEP_PIXELS = 2048


def _features(image: torch.Tensor, sigma_rgb: float, sigma_xy: float) -> torch.Tensor:
    """(N, 5) pixel features scaled so that W_ij = exp(-|f_i - f_j|² / 2): position / σ_xy,
    colour / σ_rgb; `image` is (3, H, W) in the colour units of σ_rgb (0-255)."""
    _, h, w = image.shape
    ys, xs = torch.meshgrid(torch.arange(h, device=image.device, dtype=image.dtype),
                            torch.arange(w, device=image.device, dtype=image.dtype),
                            indexing="ij")
    pos = torch.stack([ys, xs]).reshape(2, -1) / sigma_xy
    rgb = image.reshape(3, -1) / sigma_rgb
    return torch.cat([pos, rgb]).t().contiguous()


def kernel_matrix(feats: torch.Tensor) -> torch.Tensor:
    """The whole (N, N) W of (N, 5) features."""
    sq = (feats * feats).sum(dim=1)
    return torch.exp(-0.5 * (sq[:, None] + sq[None, :] - 2.0 * feats @ feats.t()).clamp_min(0.0))


def kernel_product(feats: torch.Tensor, probs: torch.Tensor, chunk: int = DEFAULT_CHUNK
                   ) -> torch.Tensor:
    """W S for (N, 5) features and (N, K) probabilities, W built `chunk` rows at a time."""
    out = torch.empty_like(probs)
    sq = (feats * feats).sum(dim=1)
    for a in range(0, len(feats), chunk):
        f = feats[a:a + chunk]
        d2 = (sq[a:a + chunk, None] + sq[None, :] - 2.0 * f @ feats.t()).clamp_min(0.0)
        out[a:a + chunk] = torch.exp(-0.5 * d2) @ probs
    return out


class _DenseEnergy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, probs: torch.Tensor, feats: torch.Tensor, chunk: int,
                gate: torch.Tensor | None) -> torch.Tensor:
        ctx.kernel = None
        if len(feats) <= KEEP_PIXELS:  # small: one W for both passes
            ctx.kernel = kernel_matrix(feats)
            ws = ctx.kernel @ probs
        else:
            ws = kernel_product(feats, probs, chunk)
        ctx.save_for_backward(probs, feats, gate)
        ctx.chunk = chunk
        if gate is None:
            return -(probs * ws).sum()
        return -(probs * ws * gate[:, None]).sum()

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        probs, feats, gate = ctx.saved_tensors

        def product(x: torch.Tensor) -> torch.Tensor:
            return ctx.kernel @ x if ctx.kernel is not None else kernel_product(feats, x,
                                                                                ctx.chunk)

        if gate is None:
            return -2.0 * grad * product(probs), None, None, None
        gated = gate[:, None] * probs
        both = product(torch.cat([probs, gated], dim=1))
        ws, wgs = both.split(probs.shape[1], dim=1)
        return -grad * (gate[:, None] * ws + wgs), None, None, None


def dense_energy(images: torch.Tensor, probs: torch.Tensor, sigma_rgb: float, sigma_xy: float,
                 roi: torch.Tensor | None = None, chunk: int = DEFAULT_CHUNK,
                 gate: torch.Tensor | None = None) -> torch.Tensor:
    """-Σ_k S_k^T W S_k per image (-Σ_k Σ_i S_ki G_i (W S_k)_i with a `gate`), averaged over
    the batch.

    images (B, 3, H, W) in 0-255 colour units; probs (B, K, H, W) softmax probabilities (with
    gradient); roi (B, H, W), 1 where pixels count; gate (B, H, W) per-pixel weights, taken as
    constants (detached). Exact dense kernel, O(N² K) per image."""
    if images.shape[0] != probs.shape[0] or images.shape[-2:] != probs.shape[-2:]:
        raise ValueError(f"images {tuple(images.shape)} and probabilities "
                         f"{tuple(probs.shape)} differ in batch or size")
    if gate is not None and gate.shape != (probs.shape[0], *probs.shape[-2:]):
        raise ValueError(f"gate {tuple(gate.shape)} does not match probabilities "
                         f"{tuple(probs.shape)}")
    total = probs.new_zeros(())
    for b in range(len(probs)):
        s = probs[b]
        if roi is not None:
            s = s * roi[b].to(s)[None]
        feats = _features(images[b].detach().to(s.dtype), sigma_rgb, sigma_xy)
        g = None if gate is None else gate[b].detach().to(s.dtype).reshape(-1)
        total = total + _DenseEnergy.apply(s.reshape(len(s), -1).t(), feats, int(chunk), g)
    return total / len(probs)


def energy_gate(probs: torch.Tensor, labels: torch.Tensor, roi: torch.Tensor | None = None
                ) -> torch.Tensor:
    """(B, H, W) the reference's gate: max(ROI - max_k S, 0), 1 where `labels` is 255."""
    top = probs.detach().amax(dim=1)
    roi = torch.ones_like(top) if roi is None else roi.to(top)
    return torch.where(labels == IGNORE, torch.ones_like(top), (roi - top).clamp_min(0.0))


def energy_loss(images: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor,
                sigma_rgb: float = 15.0, sigma_xy: float = 100.0, scale: float = 0.5,
                chunk: int = DEFAULT_CHUNK) -> torch.Tensor:
    """The reference's regularised loss (`get_energy_loss` + `DenseEnergyLoss`) before its
    weight (1e-7 × w_reg there; the caller multiplies).

    images (B, 3, H, W) ImageNet-normalised; logits (B, K, H, W); labels (B, H, W) pseudo-
    labels, 255 unlabelled. Colours back in 0-255 units, probabilities = softmax(logits);
    everything downscaled by `scale` (images and labels nearest, probabilities bilinear,
    align_corners=False, sizes floor(scale · H) as the reference's recompute_scale_factor),
    σ_xy × scale; the ROI is the whole image and the gate comes from the downscaled
    probabilities and labels."""
    if images.shape[-2:] != logits.shape[-2:] or labels.shape[-2:] != logits.shape[-2:]:
        raise ValueError(f"images {tuple(images.shape)}, logits {tuple(logits.shape)} and "
                         f"labels {tuple(labels.shape)} differ in size")
    mean = torch.as_tensor(MEAN, dtype=images.dtype, device=images.device)[:, None, None]
    std = torch.as_tensor(STD, dtype=images.dtype, device=images.device)[:, None, None]
    colours = (images.detach() * std + mean) * 255.0
    probs = logits.softmax(dim=1)
    kw = {"scale_factor": scale, "recompute_scale_factor": True}
    colours = F.interpolate(colours, mode="nearest", **kw)
    probs = F.interpolate(probs, mode="bilinear", align_corners=False, **kw)
    small = F.interpolate(labels[:, None].float(), mode="nearest", **kw)[:, 0]
    gate = energy_gate(probs, small.long())
    return dense_energy(colours, probs, sigma_rgb, sigma_xy * scale, chunk=chunk, gate=gate)
