"""The regularised loss of ToCo and FSR (Tang et al., ECCV 2018, "On regularized losses for
weakly-supervised CNN segmentation"): the dense CRF energy of a soft segmentation, in torch.

For an image with pixels i (position p_i, colour I_i) and softmax probabilities S (K × N), the
relaxed Potts energy is E = Σ_k S_k^T W (1 - S_k) with the dense Gaussian kernel
    W_ij = exp(-|p_i - p_j|² / 2σ_xy² - |I_i - I_j|² / 2σ_rgb²);
up to the constant Σ_k S_k^T W 1 = Σ_ij W_ij (the rows of S sum to 1), that is
-Σ_k S_k^T W S_k, which is what the reference's `DenseEnergyLoss` returns (divided by the
number of images, times its weight). The reference computes W S with a compiled permutohedral
bilateral filter (an approximation, and a C++ extension it does not ship); here W is exact,
built in chunks of rows so that memory stays at `chunk` × N, and the backward pass rebuilds
the chunks instead of keeping them (d/dS of -S^T W S is -2 W S, W being symmetric).

Pixels outside `roi` (0 there) take no part: their probabilities are zeroed first, as the
reference multiplies the segmentation by its region of interest.
"""

from __future__ import annotations

import torch

DEFAULT_CHUNK = 1024  # rows of W at a time: chunk × N floats in memory


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
    def forward(ctx, probs: torch.Tensor, feats: torch.Tensor, chunk: int) -> torch.Tensor:
        ws = kernel_product(feats, probs, chunk)
        ctx.save_for_backward(probs, feats)
        ctx.chunk = chunk
        return -(probs * ws).sum()

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        probs, feats = ctx.saved_tensors
        return -2.0 * grad * kernel_product(feats, probs, ctx.chunk), None, None


def dense_energy(images: torch.Tensor, probs: torch.Tensor, sigma_rgb: float, sigma_xy: float,
                 roi: torch.Tensor | None = None, chunk: int = DEFAULT_CHUNK) -> torch.Tensor:
    """-Σ_k S_k^T W S_k per image, averaged over the batch.

    images (B, 3, H, W) in 0-255 colour units; probs (B, K, H, W) softmax probabilities (with
    gradient); roi (B, H, W), 1 where pixels count. Exact dense kernel, O(N² K) per image."""
    if images.shape[0] != probs.shape[0] or images.shape[-2:] != probs.shape[-2:]:
        raise ValueError(f"images {tuple(images.shape)} and probabilities "
                         f"{tuple(probs.shape)} differ in batch or size")
    total = probs.new_zeros(())
    for b in range(len(probs)):
        s = probs[b]
        if roi is not None:
            s = s * roi[b].to(s)[None]
        feats = _features(images[b].detach().to(s.dtype), sigma_rgb, sigma_xy)
        total = total + _DenseEnergy.apply(s.reshape(len(s), -1).t(), feats, int(chunk))
    return total / len(probs)
