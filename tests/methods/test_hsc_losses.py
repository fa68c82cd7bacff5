"""HSC's stateless pieces against hand-computed values and plain loops: the in-training pseudo
labels, the ROI-level loss and representations, the class-level loss and representations (the
pixel level's loops stay with the method's tests, which share them)."""

import math

import pytest
import torch

from wsss.methods import hsc_losses as H

# -- pseudo labels --------------------------------------------------------------------------------

def test_pseudo_labels_by_hand():
    pseudo = torch.tensor([[-1.0, 2.0, 4.0], [3.0, 1.0, 0.0]])[None, :, None, :]
    act = H.activations(pseudo, torch.tensor([[1.0, 0.0]]), (1, 3))
    # channel 1: ReLU [0, 2, 4], min-max -> [0, .5, 1]; channel 2 is absent from the image
    assert torch.allclose(act[0, :, 0], torch.tensor([[0.0, 0.5, 1.0], [0, 0, 0]]), atol=1e-4)
    assert H.pseudo_labels(act, 0.1)[0, 0].tolist() == [0, 1, 1]
    assert H.pseudo_labels(act, 0.6)[0, 0].tolist() == [0, 0, 1]
    # None: SEAM's background 1 - max foreground, [1, .5, 0]; the tie at .5 goes to background
    assert H.pseudo_labels(act, None)[0, 0].tolist() == [0, 0, 1]
    assert H.pseudo_labels(torch.tensor([0.2, 0.7]).view(1, 2, 1, 1), None).item() == 2
    # a tie goes to the background
    assert H.pseudo_labels(torch.full((1, 2, 1, 1), 0.1), 0.1).item() == 0
    full = H.with_background(act)
    assert torch.allclose(full[0, 0, 0], torch.tensor([1.0, 0.5, 0.0]), atol=1e-4)
    assert not H.activations(pseudo.requires_grad_(), torch.ones(1, 2), (1, 3)).requires_grad


# -- ROI level ------------------------------------------------------------------------------------

def test_rsc_identical_orthogonal_opposite():
    e0, e1 = torch.eye(2)
    assert H.rsc_loss(e0[None], e0[None]).item() == pytest.approx(-math.log(5e-4), rel=1e-4)
    # orthogonal and opposite both clamp to cos 5e-4: -log(1 - 5e-4), about log 1 = 0
    small = -math.log(1 - 5e-4)
    assert H.rsc_loss(e0[None], e1[None]).item() == pytest.approx(small, rel=1e-4)
    opposite = (-e0[None]).requires_grad_()
    loss = H.rsc_loss(e0[None], opposite)
    assert loss.item() == pytest.approx(small, rel=1e-4)
    loss.backward()
    assert not opposite.grad.any()  # the clamp stops the gradient of dissimilar pairs
    # mean over all (ROI, background) pairs
    pair = H.rsc_loss(e0[None], torch.stack([e0, e1]))
    assert pair.item() == pytest.approx((-math.log(5e-4) + small) / 2, rel=1e-4)
    assert H.rsc_loss(e0[None], torch.zeros(0, 2)).item() == 0.0


def test_roi_representations_by_hand():
    u1 = torch.arange(2 * 2 * 4, dtype=torch.float32).view(2, 2, 1, 4)
    labels = torch.tensor([[[0, 2, 1, 0]], [[0, 0, 0, 0]]])
    r_o, r_b = H.roi_representations(u1, labels)
    assert torch.allclose(r_o, torch.tensor([[1.5, 5.5]]))  # image 2 has no ROI: left out
    assert torch.allclose(r_b, torch.tensor([[1.5, 5.5], [9.5, 13.5]]))


# -- class level ----------------------------------------------------------------------------------

def test_csc_by_hand_and_unfilled_prototypes():
    tau, k = 0.5, 4  # a tau large enough for a loss well above float32 rounding
    protos = torch.eye(k)
    reps, classes = protos[[2]], torch.tensor([2])
    expected = -math.log(math.exp(1 / tau) / (math.exp(1 / tau) + (k - 1)))
    full = torch.ones(k, dtype=torch.bool)
    assert H.csc_loss(reps, classes, protos, full, tau).item() == pytest.approx(expected, rel=1e-5)
    partly = torch.tensor([True, False, True, True])  # one negative never filled
    expected = -math.log(math.exp(1 / tau) / (math.exp(1 / tau) + 2))
    assert H.csc_loss(reps, classes, protos, partly, tau).item() == pytest.approx(expected,
                                                                                rel=1e-5)
    # a class whose own prototype is unfilled contributes nothing
    own_missing = torch.tensor([True, True, False, True])
    assert H.csc_loss(reps, classes, protos, own_missing, tau).item() == 0.0
    two = H.csc_loss(protos[[0, 2]], torch.tensor([0, 2]), protos, own_missing, tau)
    assert two.item() == pytest.approx(-math.log(math.exp(2) / (math.exp(2) + 2)), rel=1e-5)


def _class_reps_loop(u1, act, image_labels, k, candidates=None):
    out = {}
    for c in range(act.shape[1]):
        per = []
        for b in range(u1.shape[0]):
            if image_labels[b, c] == 0:
                continue
            scores = act[b, c].flatten()
            cells = list(range(len(scores)))
            if candidates is not None:
                chosen = [i for i in cells if candidates[b].flatten()[i] == c + 1]
                cells = chosen or cells
            cells = sorted(cells, key=lambda i: -scores[i].item())[:k]
            w = scores[cells]
            feats = u1[b].flatten(1)[:, cells].T
            per.append((w[:, None] * feats).sum(0) / w.sum())
        if per:
            out[c] = torch.stack(per).mean(0)
    return out


def test_class_representations_match_a_loop():
    g = torch.Generator().manual_seed(3)
    u1 = torch.randn(3, 4, 3, 3, generator=g)
    act = torch.rand(3, 4, 3, 3, generator=g) + 0.01
    image_labels = torch.tensor([[1.0, 0, 1, 0], [1, 1, 0, 0], [0, 0, 1, 0]])
    candidates = torch.randint(0, 5, (3, 3, 3), generator=g)
    candidates[2] = 0  # image 3 has no candidate cell for its class: falls back to all cells
    for cand in (None, candidates):
        classes, reps = H.class_representations(u1, act, image_labels, 3, cand)
        want = _class_reps_loop(u1, act, image_labels, 3, cand)
        assert classes.tolist() == sorted(want) == [0, 1, 2]
        for i, c in enumerate(classes.tolist()):
            assert torch.allclose(reps[i], want[c], atol=1e-5), (cand is None, c)
