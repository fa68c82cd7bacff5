"""The regularised (dense CRF energy) loss of ToCo / FSR in torch (wsss.methods.energy): a
two-pixel case by hand, the chunked kernel and its gradient against a direct dense
computation, the region of interest, the reference's gate and its whole `energy_loss`."""

import math

import pytest
import torch
import torch.nn.functional as F

from wsss.methods import energy
from wsss.methods.energy import dense_energy, energy_loss

pytestmark = pytest.mark.usefixtures("one_thread")


def _direct(images, probs, sigma_rgb, sigma_xy, roi=None, gate=None):
    """-sum_k S_k^T W S_k (-sum_k sum_i S_ki G_i (W S_k)_i with a gate) with W built whole,
    per image, averaged (autograd does the rest; the gate is a constant)."""
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
        g = 1.0 if gate is None else gate[b].reshape(1, -1)
        total = total - (s * g * (s @ kernel)).sum()
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
@pytest.mark.parametrize("keep", [0, 4096])
def test_chunked_energy_and_gradient_match_the_dense_computation(chunk, keep, monkeypatch):
    # keep 0: W rebuilt chunk by chunk in the backward; 4096: the forward's whole W kept
    monkeypatch.setattr(energy, "KEEP_PIXELS", keep)
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


def _kernel(image, sigma_rgb, sigma_xy):
    _, h, w = image.shape
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float64),
                            torch.arange(w, dtype=torch.float64), indexing="ij")
    pos = torch.stack([ys.flatten(), xs.flatten()], 1)
    rgb = image.reshape(3, -1).t()
    return torch.exp(-0.5 * (torch.cdist(pos, pos) ** 2 / sigma_xy ** 2
                             + torch.cdist(rgb, rgb) ** 2 / sigma_rgb ** 2))


def test_gate_by_hand_value_and_gradient():
    """The two same-colour pixels of the first test, both in class 0, W = [[1, e], [e, 1]]:
    gate (1, 0) keeps pixel 0's term only, -(1 + e). The exact gradient -(G WS + W(G S)) is
    -(2 + e) at pixel 0 and -e at pixel 1, whose gate is 0 (the reference's -2 G WS would say
    -2(1 + e) and 0)."""
    image = torch.full((1, 3, 1, 2), 100.0, dtype=torch.float64)
    e = math.exp(-1.0 / (2 * 3.0 ** 2))
    probs = torch.tensor([[[[1.0, 1.0]], [[0.0, 0.0]]]], dtype=torch.float64,
                         requires_grad=True)
    gate = torch.tensor([[[1.0, 0.0]]], dtype=torch.float64)
    energy = dense_energy(image, probs, 15.0, 3.0, gate=gate)
    assert energy.item() == pytest.approx(-(1 + e))
    energy.backward()
    assert probs.grad[0, 0, 0].tolist() == pytest.approx([-(2 + e), -e])
    assert probs.grad[0, 1, 0].tolist() == [0.0, 0.0]  # S_1 = 0: W S_1 = W(G S_1) = 0
    # a gate of ones is the ungated energy; a gate of zeros none at all
    assert dense_energy(image, probs, 15.0, 3.0, gate=torch.ones_like(gate)).item() == \
        pytest.approx(-(2 + 2 * e))
    assert dense_energy(image, probs, 15.0, 3.0, gate=torch.zeros_like(gate)).item() == 0.0


@pytest.mark.parametrize("chunk", [1, 7, 4096])
@pytest.mark.parametrize("keep", [0, 4096])
def test_gated_energy_and_gradient_match_the_dense_computation(chunk, keep, monkeypatch):
    # keep 0: W rebuilt chunk by chunk in the backward; 4096: the forward's whole W kept
    monkeypatch.setattr(energy, "KEEP_PIXELS", keep)
    """A random gate and ROI: the value and the gradient of the dense computation with the gate
    a constant, for any chunk size; and that gradient is not the reference's -2 G WS / B."""
    g = torch.Generator().manual_seed(2)
    images = torch.rand(2, 3, 5, 6, generator=g, dtype=torch.float64) * 255
    logits = torch.randn(2, 3, 5, 6, generator=g, dtype=torch.float64)
    roi = (torch.rand(2, 5, 6, generator=g) > 0.3).double()
    gate = torch.rand(2, 5, 6, generator=g, dtype=torch.float64)
    a = logits.softmax(dim=1).requires_grad_(True)
    ours = dense_energy(images, a, 20.0, 2.0, roi=roi, chunk=chunk, gate=gate)
    ours.backward()
    b = logits.softmax(dim=1).requires_grad_(True)
    ref = _direct(images, b, 20.0, 2.0, roi=roi, gate=gate)
    ref.backward()
    assert ours.item() == pytest.approx(ref.item(), rel=1e-10)
    assert torch.allclose(a.grad, b.grad, rtol=1e-8, atol=1e-12)
    s = b.detach() * roi[:, None]
    ws = torch.stack([(s[i].reshape(3, -1) @ _kernel(images[i], 20.0, 2.0)).reshape(3, 5, 6)
                      for i in range(2)])
    theirs = -2.0 * gate[:, None] * ws * roi[:, None] / 2
    assert not torch.allclose(a.grad, theirs, rtol=1e-3)


def _normalise(pixels):
    """0-255 colours -> ImageNet-normalised, with the reference's own 0-255 statistics."""
    mean = torch.tensor([123.675, 116.28, 103.53], dtype=torch.float64)[:, None, None]
    std = torch.tensor([58.395, 57.12, 57.375], dtype=torch.float64)[:, None, None]
    return (pixels - mean) / std


def test_energy_loss_is_the_reference_pipeline():
    """Colours back in 0-255, probabilities downscaled bilinearly (by 0.5: 2 × 2 means),
    images and labels by nearest (the top-left pixel of each 2 × 2), sigma_xy halved, the gate
    1 - max S from the downscaled probabilities, 1 where the label is 255; gradients reach
    the logits through the softmax and the downscaling."""
    g = torch.Generator().manual_seed(3)
    pixels = torch.rand(2, 3, 6, 8, generator=g, dtype=torch.float64) * 255
    logits = torch.randn(2, 3, 6, 8, generator=g, dtype=torch.float64)
    labels = torch.randint(0, 3, (2, 6, 8), generator=g)
    labels[torch.rand(2, 6, 8, generator=g) < 0.4] = 255
    a = logits.clone().requires_grad_(True)
    ours = energy_loss(_normalise(pixels), a, labels, sigma_rgb=15.0, sigma_xy=6.0, scale=0.5)
    ours.backward()
    b = logits.clone().requires_grad_(True)
    probs = F.avg_pool2d(b.softmax(dim=1), 2)
    small = labels[:, ::2, ::2]
    gate = torch.where(small == 255, 1.0, 1.0 - probs.detach().amax(dim=1))
    ref = _direct(pixels[..., ::2, ::2], probs, 15.0, 3.0, gate=gate)
    ref.backward()
    assert ours.item() == pytest.approx(ref.item(), rel=1e-6)
    assert torch.allclose(a.grad, b.grad, rtol=1e-5, atol=1e-12)
    assert gate.min() < 0.5 < gate.max()  # the gate did vary


def test_energy_loss_counts_unlabelled_and_uncertain_pixels_only():
    """Two same-colour pixels, both confidently class 0 (gate 0): no energy while both are
    labelled; unlabelling pixel 0 (gate 1) brings back its term, -(1 + e)."""
    pixels = torch.full((1, 3, 1, 2), 100.0, dtype=torch.float64)
    logits = torch.tensor([[[[50.0, 50.0]], [[-50.0, -50.0]]]], dtype=torch.float64)
    e = math.exp(-1.0 / (2 * 3.0 ** 2))
    labelled = torch.tensor([[[0, 0]]])
    unlabelled = torch.tensor([[[255, 0]]])
    assert energy_loss(_normalise(pixels), logits, labelled, sigma_xy=3.0, scale=1.0).item() \
        == pytest.approx(0.0, abs=1e-12)
    assert energy_loss(_normalise(pixels), logits, unlabelled, sigma_xy=3.0,
                       scale=1.0).item() == pytest.approx(-(1 + e), rel=1e-6)
