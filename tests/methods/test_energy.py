"""The regularised (dense CRF energy) loss of ToCo / FSR in torch (wsss.methods.energy): a
two-pixel case by hand, the chunked kernel and its gradient against a direct dense
computation, and the region of interest."""

import math

import pytest
import torch

from wsss.methods.energy import dense_energy

pytestmark = pytest.mark.usefixtures("one_thread")


def _direct(images, probs, sigma_rgb, sigma_xy, roi=None):
    """-sum_k S_k^T W S_k with W built whole, per image, averaged (autograd does the rest)."""
    total = 0.0
    for b in range(len(probs)):
        _, h, w = images[b].shape
        ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float64),
                                torch.arange(w, dtype=torch.float64), indexing="ij")
        pos = torch.stack([ys.flatten(), xs.flatten()], 1)
        rgb = images[b].reshape(3, -1).t()
        d2 = (torch.cdist(pos, pos) ** 2 / sigma_xy ** 2 + torch.cdist(rgb, rgb) ** 2
              / sigma_rgb ** 2)
        kernel = torch.exp(-0.5 * d2)
        s = probs[b] if roi is None else probs[b] * roi[b][None]
        s = s.reshape(len(s), -1)
        total = total - (s * (s @ kernel)).sum()
    return total / len(probs)


def test_two_pixels_by_hand():
    """Two pixels one apart, same colour: W = [[1, e], [e, 1]], e = exp(-1 / (2 sigma_xy^2)).
    Both in one class: -(2 + 2e); in different classes: -2; so agreeing neighbours cost less."""
    image = torch.full((1, 3, 1, 2), 100.0, dtype=torch.float64)
    e = math.exp(-1.0 / (2 * 3.0 ** 2))
    same = torch.tensor([[[[1.0, 1.0]], [[0.0, 0.0]]]], dtype=torch.float64)
    other = torch.tensor([[[[1.0, 0.0]], [[0.0, 1.0]]]], dtype=torch.float64)
    assert dense_energy(image, same, 15.0, 3.0).item() == pytest.approx(-(2 + 2 * e))
    assert dense_energy(image, other, 15.0, 3.0).item() == pytest.approx(-2.0)
    # a colour edge between them weakens the pair: W_01 = e * exp(-100^2 / (2 * 15^2))
    edge = image.clone()
    edge[..., 1] = 0.0
    far = e * math.exp(-100.0 ** 2 / (2 * 15.0 ** 2))
    assert dense_energy(edge, same, 15.0, 3.0).item() == pytest.approx(-(2 + 2 * far))


@pytest.mark.parametrize("chunk", [1, 7, 4096])
def test_chunked_energy_and_gradient_match_the_dense_computation(chunk):
    """Any chunk size gives the dense energy and its autograd gradient (a backward that drops
    the factor 2 or the chunk offsets would not)."""
    g = torch.Generator().manual_seed(0)
    images = torch.rand(2, 3, 5, 6, generator=g, dtype=torch.float64) * 255
    logits = torch.randn(2, 3, 5, 6, generator=g, dtype=torch.float64)
    roi = (torch.rand(2, 5, 6, generator=g) > 0.3).double()
    a = logits.clone().requires_grad_(True)
    ours = dense_energy(images, a.softmax(dim=1), 20.0, 2.0, roi=roi, chunk=chunk)
    ours.backward()
    b = logits.clone().requires_grad_(True)
    ref = _direct(images, b.softmax(dim=1), 20.0, 2.0, roi=roi)
    ref.backward()
    assert ours.item() == pytest.approx(ref.item(), rel=1e-10)
    assert torch.allclose(a.grad, b.grad, rtol=1e-8, atol=1e-12)


def test_pixels_outside_the_roi_take_no_gradient_and_no_part():
    g = torch.Generator().manual_seed(1)
    images = torch.rand(1, 3, 4, 4, generator=g, dtype=torch.float64) * 255
    logits = torch.randn(1, 2, 4, 4, generator=g, dtype=torch.float64, requires_grad=True)
    roi = torch.ones(1, 4, 4, dtype=torch.float64)
    roi[0, :, :2] = 0.0
    energy = dense_energy(images, logits.softmax(dim=1), 15.0, 2.0, roi=roi)
    energy.backward()
    assert torch.all(logits.grad[0, :, :, :2] == 0)
    assert torch.any(logits.grad[0, :, :, 2:] != 0)
    # the same as the energy of the right half alone
    alone = dense_energy(images[..., 2:], logits.detach()[..., 2:].softmax(dim=1), 15.0, 2.0)
    assert energy.item() == pytest.approx(alone.item(), rel=1e-10)


def test_mismatched_sizes_are_refused():
    with pytest.raises(ValueError, match="differ"):
        dense_energy(torch.zeros(1, 3, 4, 4), torch.zeros(1, 2, 4, 5), 15.0, 2.0)
