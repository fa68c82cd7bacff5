"""FSR / ToCo targets and losses (wsss.methods.fsr_targets) on hand-built cases: the multi-scale
flip-max CAMs, the two-threshold and PAR labels, the uncertainty-first block masks, the
balanced segmentation loss, the token affinities and their contrast, the momentum."""

import math

import pytest
import torch
import torch.nn.functional as F

from wsss.data.transforms import MEAN, STD
from wsss.methods.fsr_targets import (
    IGNORE,
    affinity_mask,
    balanced_seg_loss,
    block_mask,
    cam_labels,
    cosine_schedule,
    multiscale_cams,
    par_images,
    par_labels,
    ptc_loss,
    uncertain_blocks,
)
from wsss.ops.par import par_refine

pytestmark = pytest.mark.usefixtures("one_thread")


def _normalise(pixels):
    """[0, 1] colours (B, 3, H, W) -> ImageNet-normalised."""
    return (pixels - torch.tensor(MEAN)[:, None, None]) / torch.tensor(STD)[:, None, None]


# -- multiscale_cams ----------------------------------------------------------------------------

def test_multiscale_cams_flip_max_scale_sum_and_normalisation():
    """A hand `forward` whose maps are (2, 4) patterns chosen by the input's width (so no
    resizing of maps): per scale the pair (x, mirror) gives A and A flipped back, their max,
    ReLU, the sum over scales, then (x - min) / (max - min + 1e-5) per image and class.
    Class 0, first row: scale 1 max(A, flip A) = [1 3 3 1], scale 0.5 relu(max) = [5 0 0 5]:
    sum [6 3 3 6] -> [1 .5 .5 1], second row 0. Class 1 is class 0 + 10: [26 22 22 26] over a
    row of 20s -> [1 1/3 1/3 1], only if each class is normalised on its own. aux is -A."""
    row = {4: [1.0, 2.0, 3.0, -4.0], 2: [-1.0, -1.0, -1.0, 5.0]}
    seen = []

    def forward(x):
        seen.append(x.clone())
        a = torch.zeros(len(x), 1, 2, 4)
        a[:, 0, 0] = torch.tensor(row[x.shape[-1]])
        return torch.cat([a, a + 10.0], dim=1), -a

    pixels = torch.arange(24, dtype=torch.float32).view(1, 3, 2, 4) + 1.0
    cam, aux = multiscale_cams(forward, pixels, scales=(1.0, 0.5))
    k = 6.0 / (6.0 + 1e-5)
    assert cam[0, 0].flatten().tolist() == pytest.approx([k, k / 2, k / 2, k, 0, 0, 0, 0])
    assert cam[0, 1].flatten().tolist() == pytest.approx([k, k / 3, k / 3, k, 0, 0, 0, 0])
    # aux: scale 1 max(-A, flip -A) = [4 -2 -2 4], scale .5 = [1 1 1 1]: [5 1 1 5] / 5
    k = 5.0 / (5.0 + 1e-5)
    assert aux[0, 0].flatten().tolist() == pytest.approx([k, k / 5, k / 5, k, 0, 0, 0, 0])
    # one call per scale with the mirror in the same batch; scale 0.5 gets the 2 x 2 means
    assert [tuple(x.shape) for x in seen] == [(2, 3, 2, 4), (2, 3, 1, 2)]
    assert torch.equal(seen[0][1], pixels[0].flip(-1))
    means = pixels[0].view(3, 1, 2, 2, 2).mean(dim=(2, 4)).view(3, 1, 2)
    assert torch.allclose(seen[1][0], means) and torch.allclose(seen[1][1], means.flip(-1))


def test_multiscale_cams_take_no_gradient_and_can_skip_the_flip():
    weight = torch.tensor(2.0, requires_grad=True)
    ramp = torch.tensor([0.0, 1.0, 2.0, 3.0])
    calls = []

    def forward(x):
        calls.append(len(x))
        a = (x[:, :1] * ramp * weight).expand(-1, 2, -1, -1)
        return a, a

    pixels = torch.ones(1, 3, 2, 4)
    cam, _ = multiscale_cams(forward, pixels, scales=(1.0,), flip=False)
    assert not cam.requires_grad and calls == [1]
    assert cam[0, 0, 0].tolist() == pytest.approx([0, 1 / 3, 2 / 3, 1], abs=1e-5)
    flipped, _ = multiscale_cams(forward, pixels, scales=(1.0,))
    assert flipped[0, 0, 0].tolist() == pytest.approx([1, 0, 0, 1], abs=1e-5)  # max(r, r[::-1])


# -- cam_labels and par_labels -------------------------------------------------------------------

def test_cam_labels_thresholds_by_hand():
    """low 0.25, high 0.7: at low -> 0, at high -> 255, above -> k + 1; unlabelled classes
    never win, however high."""
    cam = torch.tensor([[[[0.25, 0.7, 0.71, 0.3, 0.1]], [[0.9, 0.9, 0.9, 0.9, 0.9]],
                         [[0.0, 0.0, 0.0, 0.8, 0.0]]]])
    labels = torch.tensor([[1.0, 0.0, 1.0]])
    out = cam_labels(cam, labels, low=0.25, high=0.7)
    assert out[0, 0].tolist() == [0, IGNORE, 1, 3, 0]
    both = cam_labels(cam, torch.tensor([[1.0, 1.0, 1.0]]), low=0.25, high=0.7)
    assert both[0, 0].tolist() == [2, 2, 2, 2, 2]


def test_par_images_are_the_colours_in_unit_range():
    pixels = torch.tensor([0, 17, 128, 255], dtype=torch.float32).view(1, 1, 1, 4) / 255.0
    pixels = pixels.expand(1, 3, 1, 4)
    assert torch.allclose(par_images(_normalise(pixels)), pixels, atol=1e-7)


def test_par_labels_on_flat_images_are_the_two_thresholds():
    """One flat colour: PAR only averages constant maps, so the labels are the thresholds' own:
    cam 0.9 > high -> k + 1; low < 0.5 < high -> 255 (background at high, not at low); 0.1
    below both -> 0."""
    images = _normalise(torch.full((3, 3, 8, 8), 0.4))
    cams = torch.zeros(3, 2, 8, 8)
    for i, v in enumerate([0.9, 0.5, 0.1]):
        cams[i, 1] = v
    labels = torch.tensor([[0.0, 1.0]] * 3)
    out = par_labels(images, cams, labels, high=0.7, low=0.25)
    assert [set(o.unique().tolist()) for o in out] == [{2}, {IGNORE}, {0}]


def test_par_labels_follow_the_colour_edge():
    """Black | white halves, the white half class 2; its CAM bleeds three columns into the
    black half, where the raw two-threshold labels call it class 2. The refined labels make no
    such mistake (the seam may be left 255) and never say class 0, unlabelled though its CAM is
    1 everywhere."""
    pixels = torch.zeros(1, 3, 16, 16)
    pixels[..., 8:] = 1.0
    labels = torch.tensor([[0.0, 0.0, 1.0]])
    cam = torch.zeros(1, 3, 16, 16)
    cam[:, 2, :, 8:] = 0.9
    cam[:, 2, :, 5:8] = 0.8
    cam[:, 0] = 1.0
    truth = torch.zeros(16, 16, dtype=torch.long)
    truth[:, 8:] = 3
    raw = cam_labels(cam, labels, 0.25, 0.7)[0]
    out = par_labels(_normalise(pixels), cam, labels, high=0.7, low=0.25)[0]
    wrong = lambda x: ((x != IGNORE) & (x != truth)).sum().item()  # noqa: E731
    assert wrong(raw) == 48 and wrong(out) == 0
    assert (out != IGNORE).float().mean() >= 0.75
    assert not (out == 1).any()


def _par_labels_per_image(images, cams, labels, high, low):
    """The reference's loop: per image, the background and its labelled classes only."""
    h, w = images.shape[-2:]
    small = F.interpolate(par_images(images), size=(h // 2, w // 2), mode="bilinear",
                          align_corners=False)
    out = []
    for i in range(len(images)):
        keys = torch.cat([torch.zeros(1, dtype=torch.long), labels[i].nonzero()[:, 0] + 1])
        res = []
        for t in (high, low):
            planes = torch.cat([torch.full_like(cams[i:i + 1, :1], t), cams[i:i + 1]], dim=1)
            planes = F.interpolate(planes, size=(h // 2, w // 2), mode="bilinear",
                                   align_corners=False)
            refined = par_refine(small[i:i + 1], planes[:, keys].softmax(dim=1))
            refined = F.interpolate(refined, size=(h, w), mode="bilinear", align_corners=False)
            res.append(keys[refined.argmax(dim=1)[0]])
        lab = torch.where(res[0] == 0, IGNORE, res[0])
        out.append(torch.where((res[0] == 0) & (res[1] == 0), 0, lab))
    return torch.stack(out)


def test_batched_par_labels_equal_the_per_image_computation():
    """Images with 0, 1, 2 and 4 labelled classes in one batch (so key sets are padded)."""
    g = torch.Generator().manual_seed(0)
    images = _normalise(torch.rand(4, 3, 12, 10, generator=g))
    cams = torch.rand(4, 5, 12, 10, generator=g)
    labels = torch.tensor([[0, 0, 0, 0, 0], [0, 0, 1, 0, 0], [1, 0, 0, 0, 1],
                           [1, 1, 0, 1, 1]], dtype=torch.float32)
    ours = par_labels(images, cams, labels, high=0.6, low=0.3)
    assert torch.equal(ours, _par_labels_per_image(images, cams, labels, 0.6, 0.3))
    assert len(ours.unique()) >= 4  # not a degenerate all-one-label case


# -- block_mask ------------------------------------------------------------------------------

def _block_cam(values):
    """A (1, 2, 8, 8) CAM, class 1 labelled, constant over each 2 x 2 block of a 4 x 4 grid."""
    cam = torch.zeros(1, 2, 8, 8)
    cam[0, 1] = torch.tensor(values, dtype=torch.float32).repeat_interleave(2, 0) \
        .repeat_interleave(2, 1)
    cam[0, 0] = 0.5  # unlabelled, would make every block uncertain
    return cam, torch.tensor([[0.0, 1.0]])


VALUES = [[0.9, 0.5, 0.1, 0.2], [0.7, 0.9, 0.3, 0.1], [0.9, 0.1, 0.69, 0.9],
          [0.1, 0.1, 0.21, 0.1]]
UNCERTAIN = {(0, 1), (1, 2), (2, 2), (3, 2)}  # 0.2 and 0.7 exactly are not


def _blocks(mask):
    return {(i, j) for i in range(4) for j in range(4) if mask[2 * i, 2 * j]}


def test_uncertain_blocks_are_strictly_between_the_thresholds():
    cam, labels = _block_cam(VALUES)
    found = uncertain_blocks(cam, labels, (4, 4), low=0.2, high=0.7)[0]
    assert {tuple(ij) for ij in found.nonzero().tolist()} == UNCERTAIN


@pytest.mark.parametrize("seed", range(5))
def test_block_mask_takes_the_uncertain_blocks_first(seed):
    cam, labels = _block_cam(VALUES)
    g = torch.Generator().manual_seed(seed)
    exact = block_mask(cam, labels, (8, 8), 2, 4 / 16, 0.2, 0.7, True, generator=g)[0]
    assert _blocks(exact) == UNCERTAIN
    assert exact.sum() == 16  # whole 2 x 2 blocks
    more = block_mask(cam, labels, (8, 8), 2, 0.5, 0.2, 0.7, True, generator=g)[0]
    assert len(_blocks(more)) == 8 and UNCERTAIN <= _blocks(more)


def test_block_mask_without_uncertainty_follows_the_noise():
    """k = ceil(16 · 0.3) = 5 blocks, the five highest draws of the generator; the random
    others of an uncertain mask change with the seed."""
    cam, labels = _block_cam(VALUES)
    mask = block_mask(cam, labels, (8, 8), 2, 0.3, 0.2, 0.7, False,
                      generator=torch.Generator().manual_seed(7))[0]
    noise = torch.rand(1, 16, generator=torch.Generator().manual_seed(7))[0]
    top = {divmod(i, 4) for i in noise.topk(5).indices.tolist()}
    assert _blocks(mask) == top
    others = {frozenset(_blocks(block_mask(cam, labels, (8, 8), 2, 0.5, 0.2, 0.7, True,
                                           generator=torch.Generator().manual_seed(s))[0])
                        - UNCERTAIN) for s in range(6)}
    assert len(others) > 1
    assert not block_mask(cam, labels, (8, 8), 2, 0.0, 0.2, 0.7, True).any()


def test_block_mask_crops_the_border_blocks():
    """A 7 x 5 token grid in 2 x 2 blocks: 4 x 3 blocks; the one uncertain block, bottom
    right, covers the single token (6, 4). The CAM is given at the block grid's size."""
    cam = torch.full((1, 1, 4, 3), 0.9)
    cam[0, 0, 3, 2] = 0.5
    mask = block_mask(cam, torch.ones(1, 1), (7, 5), 2, 1 / 12, 0.2, 0.7, True)[0]
    assert mask.shape == (7, 5) and mask.nonzero().tolist() == [[6, 4]]


# -- losses ------------------------------------------------------------------------------

def _ce(z, t):
    return math.log(sum(math.exp(v) for v in z)) - z[t]


def test_balanced_seg_loss_by_hand():
    """Pixels: background, class 2, unsure, class 1: (CE_0 + (CE_1 + CE_3) / 2) / 2."""
    z = [[0.0, 1.0, 2.0], [1.0, 0.5, -1.0], [3.0, 3.0, 3.0], [-2.0, 0.0, 2.0]]
    logits = torch.tensor(z).t().reshape(1, 3, 1, 4)
    target = torch.tensor([[[0, 2, IGNORE, 1]]])
    expected = 0.5 * (_ce(z[0], 0) + 0.5 * (_ce(z[1], 2) + _ce(z[3], 1)))
    assert balanced_seg_loss(logits, target).item() == pytest.approx(expected, rel=1e-6)


def test_balanced_seg_loss_with_an_empty_half_is_finite():
    """Foreground only: half the foreground CE (the reference: NaN); nothing valid: 0, and
    the gradient is finite either way."""
    z = [[0.0, 1.0, 2.0], [1.0, 0.5, -1.0]]
    logits = torch.tensor(z).t().reshape(1, 3, 1, 2).requires_grad_(True)
    loss = balanced_seg_loss(logits, torch.tensor([[[1, 2]]]))
    assert loss.item() == pytest.approx(0.25 * (_ce(z[0], 1) + _ce(z[1], 2)), rel=1e-6)
    loss.backward()
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0
    none = balanced_seg_loss(logits, torch.full((1, 1, 2), IGNORE))
    assert none.item() == 0.0


def test_affinity_mask_on_three_tokens():
    label = torch.tensor([[[0, 2, 0]], [[1, IGNORE, 1]]])
    i = IGNORE
    assert affinity_mask(label).tolist() == [[[i, 0, 1], [0, i, 0], [1, 0, i]],
                                             [[i, i, 1], [i, i, i], [1, i, i]]]


def test_ptc_loss_by_hand():
    """Tokens (1, 0), (2, 0), (0, 1), labels 1, 1, 2: the positive pair has |cos| 1, the
    negatives 0: 0.5 (1 - 2 / 3) + 0 = 1/6. Turning the third token to (-1, 0) makes the
    negatives |cos| = 1 (absolute value): + 0.5 · 4 / 5. A 255-labelled token takes no part."""
    aff = affinity_mask(torch.tensor([[[1, 1, 2]]]))
    tokens = torch.tensor([[1.0, 2.0, 0.0], [0.0, 0.0, 1.0]]).view(1, 2, 1, 3)
    assert ptc_loss(tokens, aff).item() == pytest.approx(1 / 6)
    opposite = torch.tensor([[1.0, 2.0, -1.0], [0.0, 0.0, 0.0]]).view(1, 2, 1, 3)
    assert ptc_loss(opposite, aff).item() == pytest.approx(1 / 6 + 0.4)
    ignored = affinity_mask(torch.tensor([[[1, 1, IGNORE]]]))
    assert ptc_loss(tokens, ignored).item() == pytest.approx(ptc_loss(opposite, ignored).item())


def test_ptc_loss_gradient_reaches_the_paired_tokens_only():
    """The gradient reaches the tokens in pairs, not the 255-labelled one, and a small step
    against it lowers the loss."""
    g = torch.Generator().manual_seed(0)
    tokens = torch.randn(1, 4, 1, 4, generator=g, requires_grad=True)
    aff = affinity_mask(torch.tensor([[[1, 1, 2, IGNORE]]]))
    loss = ptc_loss(tokens, aff)
    loss.backward()
    grad = tokens.grad[0, :, 0]
    assert (grad[:, :3].abs().sum(dim=0) > 0).all() and (grad[:, 3] == 0).all()
    assert ptc_loss(tokens.detach() - 0.05 * tokens.grad, aff) < loss


def test_cosine_schedule_endpoints_and_midpoint():
    """The reference's schedule: base at 0, the mean of both half way, not yet `end` at the
    last step (cos(π (T - 1) / T)), `end` from step T on."""
    assert cosine_schedule(0, 100, 0.9995, 1.0) == pytest.approx(0.9995)
    assert cosine_schedule(50, 100, 0.9995, 1.0) == pytest.approx(0.99975)
    last = 1.0 - 0.0005 * 0.5 * (1 + math.cos(math.pi * 99 / 100))
    assert cosine_schedule(99, 100, 0.9995, 1.0) == pytest.approx(last) and last < 1.0
    assert cosine_schedule(100, 100, 0.9995, 1.0) == 1.0
    assert cosine_schedule(5000, 100, 0.9995, 1.0) == 1.0
