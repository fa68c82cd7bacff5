"""Pixel-adaptive refinement (wsss.ops.par): the vectorised neighbours and affinities against a
per-pixel loop, the growth factor on a flat image, and propagation that stops at colour edges."""

import math

import pytest
import torch

from wsss.ops.par import OFFSETS, affinities, par_refine

pytestmark = pytest.mark.usefixtures("one_thread")


def _loop_affinity(image, dilations, w_rgb, w_pos):
    """The PAR affinity of every pixel, neighbour by neighbour, with explicit border clamping."""
    _, h, w = image.shape
    dists = [d * math.hypot(dy, dx) for d in dilations for dy, dx in OFFSETS]
    dist = torch.tensor(dists, dtype=torch.float64)
    pos = (-(dist / dist.std() / w_rgb) ** 2).softmax(dim=0)
    out = torch.zeros(len(dists), h, w, dtype=torch.float64)
    for y in range(h):
        for x in range(w):
            near = torch.stack([image[:, min(max(y + dy * d, 0), h - 1),
                                      min(max(x + dx * d, 0), w - 1)]
                                for d in dilations for dy, dx in OFFSETS], dim=1)  # (3, n)
            std = near.std(dim=1, keepdim=True)
            colour = (-((near - image[:, y, x, None]).abs() / (std + 1e-8) / w_rgb) ** 2)
            out[:, y, x] = colour.mean(dim=0).softmax(dim=0) + w_pos * pos
    return out


def test_affinities_match_a_per_pixel_loop():
    """Wrong neighbour offsets, a missing border clamp or the std over the wrong axis would
    differ from the loop somewhere on a random 5 x 6 image."""
    image = torch.rand(1, 3, 5, 6, generator=torch.Generator().manual_seed(0),
                       dtype=torch.float64)
    ours = affinities(image, (1, 2), 0.3, 0.01)[0, 0]
    assert torch.allclose(ours, _loop_affinity(image[0], (1, 2), 0.3, 0.01), atol=1e-12)


def test_a_flat_map_on_a_flat_image_grows_by_one_plus_w_pos_per_iteration():
    """Each pixel's affinities sum to 1 + w_pos (two softmaxes), so a constant map is scaled
    by exactly that per step (the reference's behaviour, kept)."""
    image = torch.full((1, 3, 6, 6), 0.5, dtype=torch.float64)
    maps = torch.full((1, 2, 6, 6), 0.4, dtype=torch.float64)
    out = par_refine(image, maps, dilations=(1, 2), iterations=3, w_pos=0.01)
    assert torch.allclose(out, torch.full_like(out, 0.4 * 1.01 ** 3), atol=1e-12)


def test_propagation_fills_a_region_and_stops_at_its_colour_edge():
    """Left half red, right half blue; a CAM that is 1 on the left half except for a hole, 0 on
    the right: the hole is filled from its red neighbours, and the blue side stays near 0."""
    image = torch.zeros(1, 3, 12, 12, dtype=torch.float64)
    image[0, 0, :, :6] = 1.0
    image[0, 2, :, 6:] = 1.0
    image += 0.01 * torch.rand(image.shape, generator=torch.Generator().manual_seed(1),
                               dtype=torch.float64)
    cam = torch.zeros(1, 1, 12, 12, dtype=torch.float64)
    cam[0, 0, :, :6] = 1.0
    cam[0, 0, 5:7, 2:4] = 0.0  # the hole
    out = par_refine(image, cam, dilations=(1, 2, 4), iterations=10)[0, 0]
    assert out[5:7, 2:4].min() > 0.9
    assert out[:, 6:].max() < 0.1
    assert out[:, :6].min() > 0.9
