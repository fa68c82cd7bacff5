"""CSRM (wsss.methods.csrm): ClassMix on hand-made masks, the two-threshold CRF masks, the
S2C / unsupervised targets and their schedules, U2PL's pixel contrast and its banks, the EMA
teacher, the S2C gradient path, init_from, a kill and resume, and the config checks."""

import copy
import math

import numpy as np
import pytest
import torch
from fakes import BLUE, GREEN, RED, TRAINING, ToySet, fit_method, log_rows

import wsss.methods.csrm as csrm_module
from wsss.data.transforms import normalize
from wsss.errors import ConfigError
from wsss.methods.base import build_method
from wsss.methods.csrm import csrm_settings, ema_decay, linear_decay, s2c_weight
from wsss.methods.csrm_targets import (
    IGNORE,
    c2s_masks,
    class_mix,
    confident_targets,
    contrast_loss,
    restricted_probs,
    two_threshold_mask,
    unsup_targets,
)
from wsss.train import ClassBanks

pytestmark = pytest.mark.usefixtures("one_thread")

TRAIN = {"lr": 0.05, "momentum": 0.9, "weight_decay": 1e-4, "new_layer_lr_mult": 10,
         "crop_size": 32}
NO_DECAY = {**TRAIN, "weight_decay": 0.0, "grad_clip": None}
SMALL = {"head": {"aspp_width": 8, "low_width": 4, "width": 8, "rep_dim": 8, "rates": [1, 2]},
         "contrast": {"bank": 64, "bank_bg": 64, "queries": 8, "negatives": 4}}
LABELS = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
CRF = csrm_settings({})["c2s"]["crf"]


def _merge(base, over):
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _cfg(training=TRAIN, **csrm):
    return {"method": "csrm", "training": training,
            "backbone": {"name": "tiny", "output_stride": 8, "pretrained": "none",
                         "freeze_bn": True},
            "csrm": _merge(SMALL, csrm)}


def _method(seed=0, training=TRAIN, total=8, per_epoch=2, **csrm):
    torch.manual_seed(seed)
    method = build_method(_cfg(training, **csrm), 2)
    method.build_optimizers(training)
    method.begin(total, per_epoch, 0)
    return method.train()


def _batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"image": torch.randn(2, 3, 32, 32, generator=g), "label": LABELS.clone(),
            "image_u": torch.randn(2, 3, 32, 32, generator=g), "label_u": LABELS.flip(0)}


def _params(module):
    return {k: p.detach().clone() for k, p in module.named_parameters()}


# -- ClassMix -----------------------------------------------------------------------------------
def _two_image_case():
    """Image 0: class 0 (value 1) on rows 0-1, class 1 (value 2) on rows 6-7, cols 0-3.
    Image 1: class 2 (value 3) on rows 0-1 and rows 6-7 cols 0-1; 255 on rows 6-7 cols 2-3
    (over image 0's class 1) and on row 4 cols 4-7 (over its background)."""
    masks = torch.zeros(2, 8, 8, dtype=torch.long)
    masks[0, 0:2] = 1
    masks[0, 6:8, 0:4] = 2
    masks[1, 0:2] = 3
    masks[1, 6:8, 0:2] = 3
    masks[1, 6:8, 2:4] = IGNORE
    masks[1, 4, 4:8] = IGNORE
    labels = torch.tensor([[1.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    return masks, labels


def test_class_mix_by_hand():
    masks, labels = _two_image_case()
    images = torch.arange(2 * 3 * 64, dtype=torch.float32).view(2, 3, 8, 8)
    logits = -torch.arange(2 * 4 * 64, dtype=torch.float32).view(2, 4, 8, 8)
    # image 1's partner is itself: it takes nothing; image 0 takes image 1's only class
    mixed, new_labels, (img, lgt), paste = class_mix(masks, labels, [images, logits],
                                                     partners=torch.tensor([1, 1]))
    want_paste = torch.zeros(8, 8, dtype=torch.bool)
    want_paste[0:2] = True
    want_paste[6:8, 0:2] = True
    assert torch.equal(paste[0], want_paste) and not paste[1].any()
    want = masks[0].clone()
    want[want_paste] = 3  # the partner's 255 pixels and background are not pasted
    assert torch.equal(mixed[0], want) and torch.equal(mixed[1], masks[1])
    assert (mixed[0, 6:8, 2:4] == 2).all() and (mixed[0, 4] == 0).all()
    # class 0 is covered everywhere: removed; class 1 keeps rows 6-7 cols 2-3: stays
    assert new_labels.tolist() == [[0.0, 1.0, 1.0], [0.0, 0.0, 1.0]]
    assert labels.tolist() == [[1.0, 1.0, 0.0], [0.0, 0.0, 1.0]]  # the input is not modified
    for got, src in ((img, images), (lgt, logits)):
        assert torch.equal(got[0][:, want_paste], src[1][:, want_paste])
        assert torch.equal(got[0][:, ~want_paste], src[0][:, ~want_paste])
        assert torch.equal(got[1], src[1])


@pytest.mark.parametrize(("n", "k"), [(1, 1), (2, 1), (3, 1), (4, 2), (5, 2)])
def test_class_mix_pastes_half_the_partners_classes(n, k):
    masks = torch.zeros(2, 4, 8, dtype=torch.long)
    for c in range(n):  # the partner: class c (value c + 1) in column c
        masks[1, :, c] = c + 1
    masks[1, :, 7] = IGNORE
    labels = torch.zeros(2, 5)
    labels[1, :n] = 1.0
    seen = set()
    for seed in range(12):
        torch.manual_seed(seed)
        mixed, new_labels, _, paste = class_mix(masks, labels, [], partners=torch.tensor([1, 1]))
        pasted = set(mixed[0][paste[0]].tolist())
        assert len(pasted) == k and pasted <= set(range(1, n + 1)), seed
        # every pixel of the chosen classes, nothing else
        assert torch.equal(paste[0], torch.isin(masks[1], torch.tensor(sorted(pasted))))
        assert set((new_labels[0].nonzero()[:, 0] + 1).tolist()) == pasted
        seen |= pasted
    assert seen == set(range(1, n + 1))  # drawn at random, not the first k


def test_class_mix_partner_without_foreground_pastes_nothing():
    masks, labels = _two_image_case()
    masks[1][masks[1] == 3] = 0  # only background and 255 left
    images = torch.randn(2, 3, 8, 8)
    mixed, new_labels, (img,), paste = class_mix(masks, labels, [images],
                                                 partners=torch.tensor([1, 0]))
    assert not paste[0].any()
    assert torch.equal(mixed[0], masks[0]) and torch.equal(img[0], images[0])
    assert torch.equal(new_labels[0], labels[0])
    assert paste[1].any()  # the other way round there is foreground to paste


def test_class_mix_default_draw_mixes_every_image_with_another():
    """The reference's bug made the mix mask empty; here each image with a partner that has
    foreground gets pixels, from a partner drawn among the others."""
    masks = torch.zeros(3, 6, 6, dtype=torch.long)
    for i in range(3):  # image i: class i (value i + 1) in rows 2i, 2i + 1
        masks[i, 2 * i : 2 * i + 2] = i + 1
    labels = torch.eye(3)
    images = torch.randn(3, 3, 6, 6)
    partners_of_0 = set()
    for seed in range(10):
        torch.manual_seed(seed)
        mixed, new_labels, (img,), paste = class_mix(masks, labels, [images])
        assert paste.flatten(1).any(dim=1).all(), seed
        assert not torch.equal(mixed, masks)
        for i in range(3):
            (j,) = {v - 1 for v in mixed[i][paste[i]].tolist()}
            assert j != i
            assert new_labels[i].tolist() == [1.0 if c in (i, j) else 0.0 for c in range(3)]
            assert torch.equal(img[i][:, paste[i]], images[j][:, paste[i]])
            assert torch.equal(img[i][:, ~paste[i]], images[i][:, ~paste[i]])
            if i == 0:
                partners_of_0.add(j)
    assert partners_of_0 == {1, 2}


# -- C2S: two-threshold CRF masks ---------------------------------------------------------------
def _quadrants():
    """Four flat quadrants: red, green / blue, grey."""
    image = np.zeros((32, 32, 3), np.uint8)
    image[:16, :16], image[:16, 16:], image[16:, :16] = RED, GREEN, BLUE
    image[16:, 16:] = (128, 128, 128)
    return image


def _quadrant_cams():
    """Maps of classes 0 and 2: class 0 at 0.9 on the red quadrant, class 2 at 0.9 on the green
    one and 0.2 (between bg 0.05 and fg 0.35) on the blue one; a stray 0.9 pixel of class 0 on
    the grey quadrant that the CRF removes."""
    cams = np.zeros((2, 32, 32), np.float32)
    cams[0, :16, :16] = 0.9
    cams[1, :16, 16:] = 0.9
    cams[1, 16:, :16] = 0.2
    cams[0, 24, 24] = 0.9
    return cams


def _quadrant_mask():
    want = np.zeros((32, 32), np.int64)
    want[:16, :16], want[:16, 16:], want[16:, :16] = 1, 3, IGNORE
    return want


def test_two_threshold_mask_by_hand():
    image = _quadrants()
    mask = two_threshold_mask(image, _quadrant_cams(), np.array([0, 2]), 0.35, 0.05, CRF)
    assert mask.dtype == np.int64
    assert np.array_equal(mask, _quadrant_mask())
    empty = two_threshold_mask(image, np.zeros((0, 32, 32), np.float32), np.zeros(0), 0.35,
                               0.05, CRF)
    assert empty.shape == (32, 32) and not empty.any()


@pytest.mark.parametrize("workers", [1, 2])
def test_c2s_masks_use_only_the_labelled_planes(workers):
    """Image 0: labels {0, 2} with a strong unlabelled class-1 map on the grey quadrant;
    image 1: label {1} (blue quadrant) with an unlabelled class-0 map on the red one; image 2:
    no label. Pooled (2 workers, chunks [0, 1] and [2]) or not, in order."""
    image = _quadrants()
    images = torch.from_numpy(normalize(image))[None].repeat(3, 1, 1, 1)
    two = _quadrant_cams()
    cams = np.zeros((3, 3, 32, 32), np.float32)
    cams[0, 0], cams[0, 2] = two
    cams[0, 1, 16:, 16:] = 0.9
    cams[1, 1, 16:, :16] = 0.9
    cams[1, 0, :16, :16] = 0.9
    cams[2, 0, :16, :16] = 0.9
    labels = torch.tensor([[1.0, 0, 1], [0, 1, 0], [0, 0, 0]])
    masks = c2s_masks(images, torch.from_numpy(cams), labels, csrm_settings({})["c2s"],
                      workers)
    want = np.zeros((3, 32, 32), np.int64)
    want[0] = _quadrant_mask()
    want[1, 16:, :16] = 2
    assert masks.dtype == torch.int64 and np.array_equal(masks.numpy(), want)
    for i in range(3):  # the same as one two_threshold_mask per image on its labelled planes
        on = labels[i].numpy() > 0.5
        one = two_threshold_mask(image, cams[i][on], np.flatnonzero(on), 0.35, 0.05, CRF)
        assert np.array_equal(masks[i].numpy(), one), i


# -- S2C and unsupervised targets --------------------------------------------------------------
def test_restricted_probs_by_hand():
    # pixel 0: bg 0, c0 ln 3, c1 10 (not labelled), c2 ln 4 -> exp 1, 3, -, 4 over 8
    logits = torch.tensor([0.0, math.log(3.0), 10.0, math.log(4.0)]).view(1, 4, 1, 1)
    logits = torch.cat([logits, torch.zeros(1, 4, 1, 1)], dim=3)  # pixel 1: all equal
    probs = restricted_probs(logits, torch.tensor([[1.0, 0.0, 1.0]]))
    assert probs[0, :, 0, 0].tolist() == pytest.approx([0.125, 0.375, 0.0, 0.5])
    assert probs[0, :, 0, 1].tolist() == pytest.approx([1 / 3, 1 / 3, 0.0, 1 / 3])
    assert (probs[:, 2] == 0).all()
    assert torch.allclose(probs.sum(dim=1), torch.ones(1, 1, 2))


def test_confident_targets_by_hand():
    probs = torch.tensor([[0.125, 0.125, 0.75],   # -> 2
                          [0.5, 0.25, 0.25],      # max == sigma -> 255
                          [0.75, 0.125, 0.125],   # -> 0 (background is a class here)
                          [0.4, 0.3, 0.3]]).T.reshape(1, 3, 2, 2)
    assert confident_targets(probs, 0.5).tolist() == [[[2, IGNORE], [0, IGNORE]]]


def test_unsup_targets_ignores_the_highest_entropy_share_of_valid_pixels():
    target = torch.tensor([[[0, 1, 2, 0, IGNORE], [1, 2, 0, 1, IGNORE]]])
    # valid entropies 0.1 .. 0.8 (distinct); the 255 pixels have the largest: counting them
    # would move the 75% quantile from between 0.6 and 0.7 to between 0.7 and 0.8
    ent = torch.tensor([[[0.3, 0.8, 0.1, 0.5, 10.0], [0.7, 0.2, 0.6, 0.4, 20.0]]])
    out = unsup_targets(target, ent, 0.25)
    want = target.clone()
    want[0, 0, 1] = want[0, 1, 0] = IGNORE  # entropies 0.8 and 0.7
    assert torch.equal(out, want)
    assert torch.equal(unsup_targets(target, ent, 0.0), target)


def test_unsup_share_schedule():
    assert linear_decay(20, 0, 10) / 100 == pytest.approx(0.2)
    assert linear_decay(20, 5, 10) / 100 == pytest.approx(0.1)


def test_training_step_uses_the_epochs_unsup_share(monkeypatch):
    method = _method(total=8, per_epoch=2, warmup_epochs=0, weights={"contrast": 0.0},
                     classmix={"prob": 0.0})  # 4 epochs
    shares, real = [], csrm_module.unsup_targets
    monkeypatch.setattr(csrm_module, "unsup_targets",
                        lambda t, e, share: shares.append(share) or real(t, e, share))
    method.training_step(_batch(), 0)
    method.training_step(_batch(1), 5)  # epoch 2 of 4
    assert shares == pytest.approx([0.2, 0.1])


def test_s2c_weight_schedule():
    assert s2c_weight(0, 10, 2, 0.1, 1.0) == 0.0
    assert s2c_weight(1, 10, 2, 0.1, 1.0) == 0.0
    assert s2c_weight(2, 10, 2, 0.1, 1.0) == pytest.approx(0.1)
    assert s2c_weight(6, 10, 2, 0.1, 1.0) == pytest.approx(0.1 + 0.9 * 4 / 8)
    assert s2c_weight(10, 10, 2, 0.1, 1.0) == pytest.approx(1.0)
    assert s2c_weight(5, 10, 2, 0.1, 0.0) == 0.0


def test_s2c_gradient_does_not_reach_the_segmentation_head():
    """Only L_s2c on: its background logit is the student's, detached, so the head's
    parameters get no gradient and stay bit-identical; the classifier learns."""
    method = _method(training=NO_DECAY, warmup_epochs=0, classmix={"prob": 0.0},
                     weights={"cls": 0.0, "c2s": 0.0, "s2c": 1.0, "u": 0.0, "contrast": 0.0})
    head, classifier = _params(method.head), _params(method.classifier)
    out = method.training_step(_batch(), 0)
    assert out["w_s2c"] == pytest.approx(0.1) and out["s2c"] > 0
    for name, value in _params(method.head).items():
        assert torch.equal(value, head[name]), name
    assert not torch.equal(method.classifier.weight, classifier["weight"])


# -- contrast -----------------------------------------------------------------------------------
CONTRAST = {"queries": 4, "negatives": 3, "temperature": 0.5, "low_rank": 2, "high_rank": 3,
            "query_threshold": 0.3, "negative_threshold": 1.0}
# one image, four pixels on a 1×4 grid, background + 2 classes
PROB_T = torch.tensor([[0.7, 0.2, 0.1],    # p0: top-2 {0, 1}, third 2
                       [0.1, 0.6, 0.3],    # p1: top-2 {1, 2}, third 0
                       [0.5, 0.1, 0.4],    # p2: top-2 {0, 2}, third 1
                       [0.2, 0.3, 0.5]]).T.reshape(1, 3, 1, 4)  # p3: top-2 {2, 1}, third 0
REP_T = torch.tensor([[0.0, 1.0], [1.0, 0.0], [1.0, 1.0], [2.0, 0.0]]).T.reshape(1, 2, 1, 4)


def _rep():
    # the student: p1 -> (1, 0), p2 -> (0, 1); p0 and p3 are never queries
    return torch.tensor([[5.0, 5.0], [1.0, 0.0], [0.0, 1.0], [3.0, -1.0]]).T.reshape(
        1, 2, 1, 4).requires_grad_(True)


def test_contrast_augmented_half_banks_and_loss_by_hand():
    """Augmented half (n_aug = 1 = B): a pixel's teacher representation goes to class c's bank
    where c is in its top-2, is not its label and the pixel is unreliable. Labels 0, 1, 2, 1;
    reliable p1, p2; unreliable p0, p1, p3. Banks: class 1 <- p0; class 2 <- p1, p3 (in order);
    class 0 none (p2 is reliable only, p0's own label). Valid classes 1 and 2 (not 0, which
    has no reliable pixel), whose only queries are p1 and p2."""
    labels = torch.tensor([[[0, 1, 2, 1]]])
    low = torch.tensor([[[False, True, True, False]]])
    high = torch.tensor([[[True, True, False, True]]])
    banks = ClassBanks([64, 64, 64], 2)
    rep = _rep()
    loss = contrast_loss(rep, REP_T, PROB_T, labels, 1, torch.zeros(0, 2), low, high, banks,
                         CONTRAST)
    rows = REP_T[0, :, 0].T
    assert banks[0].shape == (0, 2)
    assert torch.equal(banks[1], rows[[0]])
    assert torch.equal(banks[2], rows[[1, 3]])
    # class 1: anchor (1, 0), positive rep_t[p1] = (1, 0) (cos 1), negatives (0, 1) (cos 0);
    # class 2: anchor (0, 1), positive (1, 1) (cos 1/sqrt 2), negatives (1, 0) or (2, 0)
    # (cos 0): each query's cross-entropy is log(1 + n exp((0 - cos_pos) / T))
    n, t = CONTRAST["negatives"], CONTRAST["temperature"]
    l1 = math.log(1 + n * math.exp(-1.0 / t))
    l2 = math.log(1 + n * math.exp(-(2 ** -0.5) / t))
    assert loss.item() == pytest.approx((l1 + l2) / 2, rel=1e-5)
    loss.backward()
    grad = rep.grad[0, :, 0].T
    assert torch.isfinite(grad).all()
    assert grad[1].abs().sum() > 0 and grad[2].abs().sum() > 0
    assert not grad[0].any() and not grad[3].any()  # not queries
    # p0 reliable too: class 0 is valid, without negatives (its bank is empty), and still
    # counts in the mean (U2PL's valid_seg)
    banks = ClassBanks([64, 64, 64], 2)
    loss = contrast_loss(_rep(), REP_T, PROB_T, labels, 1, torch.zeros(0, 2),
                         low | torch.tensor([[[True, False, False, False]]]), high, banks,
                         CONTRAST)
    assert banks[0].shape == (0, 2)
    assert loss.item() == pytest.approx((l1 + l2) / 3, rel=1e-5)


def test_contrast_unaugmented_half_rule():
    """Unaugmented half (n_aug = 0): class c's bank takes an unreliable pixel where c is in its
    top-2 and not an image label, or ranks third. Image labels {class 1} (value 1): class 2
    (value 2) is absent, background never is."""
    labels = torch.tensor([[[0, 1, 2, 1]]])
    low = torch.tensor([[[False, True, True, False]]])
    high = torch.tensor([[[True, True, False, True]]])
    banks = ClassBanks([64, 64, 64], 2)
    contrast_loss(_rep(), REP_T, PROB_T, labels, 0, torch.tensor([[1.0, 0.0]]), low, high,
                  banks, CONTRAST)
    rows = REP_T[0, :, 0].T
    assert torch.equal(banks[0], rows[[1, 3]])  # third for p1, p3
    assert banks[1].shape == (0, 2)  # labelled, third only for p2 (reliable)
    assert torch.equal(banks[2], rows[[0, 1, 3]])  # p0 third; p1, p3 top-2 and absent


def test_contrast_is_zero_with_fewer_than_two_reliable_classes():
    labels = torch.tensor([[[1, 1, 2, 1]]])
    low = torch.tensor([[[True, True, False, False]]])  # only class 1 is reliable
    high = torch.ones(1, 1, 4, dtype=torch.bool)
    banks = ClassBanks([64, 64, 64], 2)
    loss = contrast_loss(_rep(), REP_T, PROB_T, labels, 1, torch.zeros(0, 2), low, high, banks,
                         CONTRAST)
    assert loss.item() == 0.0
    assert len(banks[2]) > 0  # the banks are filled all the same


# -- the EMA teacher ----------------------------------------------------------------------------
def test_ema_decay_values():
    assert ema_decay(1, 2, 1, 0.99) == 0.0
    assert ema_decay(2, 2, 1, 0.99) == 0.0  # the last warm-up step
    assert ema_decay(3, 2, 1, 0.99) == pytest.approx(0.5)
    assert ema_decay(4, 2, 1, 0.99) == pytest.approx(2 / 3)
    assert ema_decay(1000, 2, 1, 0.99) == pytest.approx(0.99)
    assert ema_decay(1, 2, 0, 0.99) == pytest.approx(0.5)


def test_teacher_is_a_copy_in_the_warm_up_then_an_ema():
    method = _method(total=8, per_epoch=2, warmup_epochs=1, classmix={"prob": 1.0})
    teacher = method.teacher.module
    for step in (0, 1):  # the warm-up epoch
        method.training_step(_batch(step), step)
        for (name, t), s in zip(teacher.state_dict().items(),
                                method.student().state_dict().values(), strict=True):
            assert torch.equal(t, s), (step, name)
    before = _params(teacher)
    method.training_step(_batch(2), 2)
    d = ema_decay(3, 2, 1, 0.99)
    assert d == pytest.approx(0.5)
    student = dict(method.student().named_parameters())
    moved = False
    for name, t in teacher.named_parameters():
        s = student[name].detach()
        assert torch.allclose(t, d * before[name] + (1 - d) * s, atol=1e-6), name
        moved |= not torch.allclose(t, s)
    assert moved  # neither a copy of the student nor left behind
    assert not teacher.training
    assert all(p.grad is None and not p.requires_grad for p in method.teacher.parameters())


# -- init_from ----------------------------------------------------------------------------------
def test_init_from_a_baseline_loads_the_student_and_the_teacher():
    torch.manual_seed(3)
    baseline = build_method({**_cfg(), "method": "baseline"}, 2)
    with torch.no_grad():  # away from any initialisation, running statistics included
        for value in baseline.state_dict().values():
            if value.is_floating_point():
                value.add_(0.1 * torch.randn_like(value))
    method = _method(seed=4).eval()
    head = _params(method.head)
    assert method.init_from(baseline.state_dict()) == len(baseline.state_dict())
    own, teacher = method.state_dict(), method.teacher.module.state_dict()
    for name, value in baseline.state_dict().items():
        assert torch.equal(own[name], value), name
        assert torch.equal(teacher[name], value), name
    for name, value in _params(method.head).items():
        assert torch.equal(value, head[name]), name
    images = _batch()["image"]
    assert torch.equal(method.cams(images), baseline.eval().cams(images))  # the teacher's


# -- kill and resume ----------------------------------------------------------------------------
class PairSet(ToySet):
    """ToySet's first 4 images, plus the unaugmented sample of a 3-element key (index, epoch,
    index_u): image index_u as it is at epoch 0 (deterministic, whatever the epoch)."""

    def __len__(self):
        return 4

    def __getitem__(self, key):
        index, epoch = key[:2]
        sample = {**super().__getitem__((index, epoch)), "index": index}
        if len(key) == 3:
            plain = super().__getitem__((key[2], 0))
            sample.update(image_u=plain["image"], label_u=plain["label"], index_u=key[2])
        return sample


def _fit(out, stop_after=None):
    # 3 epochs of 2 steps (the first one warm-up), checkpoints every 2
    training = {**TRAINING, "epochs": 3, "batch_size": 2, "crop_size": 32,
                "unaugmented_batch": True}
    cfg = _cfg(training, warmup_epochs=1, classmix={"prob": 1.0})
    return fit_method(cfg, PairSet(), training, out, stop_after)


def test_resume_after_a_kill_is_bit_identical(tmp_path):
    """Student, teacher, banks and momenta: a checkpoint without the banks, or ClassMix /
    contrast draws outside the checkpointed RNG, would differ."""
    full = _fit(tmp_path / "full")
    _fit(tmp_path / "resumed", stop_after=3)
    resumed = _fit(tmp_path / "resumed")
    a, b = full.state_dict(), resumed.state_dict()
    assert a.keys() == b.keys()
    for name in a:
        if name.endswith("_extra_state"):
            assert a[name]["sizes"] == b[name]["sizes"]
            assert any(len(t) for t in a[name]["banks"])
            for x, y in zip(a[name]["banks"], b[name]["banks"], strict=True):
                assert torch.equal(x, y), name
        else:
            assert torch.equal(a[name], b[name]), name
    assert not torch.equal(a["teacher.module.classifier.weight"], a["classifier.weight"])
    for opt_a, opt_b in zip(full.optimizers, resumed.optimizers, strict=True):
        sa, sb = opt_a.state_dict()["state"], opt_b.state_dict()["state"]
        assert sa.keys() == sb.keys() and len(sa) > 0
        for k in sa:
            assert torch.equal(sa[k]["momentum_buffer"], sb[k]["momentum_buffer"]), k
    rows = log_rows(tmp_path / "full" / "train_log.csv")
    assert log_rows(tmp_path / "resumed" / "train_log.csv") == rows
    assert {r["mixed"] for r in rows} == {"1.0"}


# -- config checks -------------------------------------------------------------------------------
def test_high_rank_must_exceed_low_rank():
    with pytest.raises(ConfigError, match=r"csrm\.contrast\.high_rank"):
        build_method(_cfg(contrast={"low_rank": 3, "high_rank": 3}), 2)
    csrm_settings({"csrm": {"contrast": {"low_rank": 3, "high_rank": 4}}})


def test_bg_threshold_must_not_exceed_fg():
    with pytest.raises(ConfigError, match=r"csrm\.c2s\.bg"):
        build_method(_cfg(c2s={"fg": 0.3, "bg": 0.31}), 2)
    csrm_settings({"csrm": {"c2s": {"fg": 0.3, "bg": 0.3}}})


def test_head_widths_must_split_into_the_groups():
    """GroupNorm needs widths divisible by its groups: a ConfigError naming the key at build,
    not torch's ValueError from deep inside the head."""
    with pytest.raises(ConfigError, match="csrm.head.aspp_width"):
        csrm_settings({"csrm": {"head": {"aspp_width": 6, "groups": 4}}})
    csrm_settings({"csrm": {"head": {"aspp_width": 8, "groups": 4}}})
