"""DSCNet: k-means groups, class weights, nodes, fusion and contrast against hand-computed values;
training steps on SEAM and the baseline, gradient paths, switches."""

import math

import pytest
import torch

from wsss.methods.base import METHODS, build_method
from wsss.methods.contrast import multi_positive_nce
from wsss.methods.dscnet import (
    DSCNet,
    class_scores,
    contrast,
    fuse,
    group_classes,
    group_features,
    image_groups,
    pearson_kmeans,
    pearson_unit,
    predicted_labels,
    semantic_nodes,
)


def _cfg(base="seam", **dscnet):
    return {
        "method": "dscnet",
        "backbone": {"name": "tiny", "output_stride": 8, "pretrained": "none"},
        "training": {"lr": 0.05, "momentum": 0.9, "weight_decay": 1e-4, "new_layer_lr_mult": 10},
        "seam": {"dropout": 0.0, "min_cells": 2},
        "dscnet": {"base": base, **dscnet},
    }


def _batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"image": torch.randn(3, 3, 96, 96, generator=g),
            "label": torch.tensor([[1.0, 0, 0, 0, 1], [0, 1, 0, 0, 0], [0, 0, 1, 1, 0]]),
            "index": torch.arange(3)}


def _planted(seed=0, per=6):
    """Cells near three orthogonal directions in 8 channels (planted groups 0, 1, 2)."""
    g = torch.Generator().manual_seed(seed)
    dirs = torch.zeros(3, 8)
    dirs[0, :2] = 1.0
    dirs[1, 2:5] = 1.0
    dirs[2, 5:] = 1.0
    truth = torch.arange(3).repeat_interleave(per)
    x = dirs[truth] * 3 + 0.1 * torch.randn(3 * per, 8, generator=g)
    perm = torch.randperm(3 * per, generator=g)
    return x[perm], truth[perm]


def _same_partition(a, b):
    return torch.equal(a[:, None] == a[None, :], b[:, None] == b[None, :])


# -- k-means --------------------------------------------------------------------------------------
def test_kmeans_recovers_planted_groups_deterministically():
    x, truth = _planted()
    assign, centroids = pearson_kmeans(x, 3)
    assert _same_partition(assign, truth)
    assert centroids.shape == (3, 8)
    assert torch.allclose(centroids.norm(dim=1), torch.ones(3), atol=1e-4)
    again, _ = pearson_kmeans(x.clone(), 3)
    assert torch.equal(assign, again)
    # no gradient through the assignment or the centroids
    a, c = pearson_kmeans(x.clone().requires_grad_(), 3)
    assert not a.requires_grad and not c.requires_grad


def test_pearson_centring_ignores_a_constant_per_cell():
    x, _ = _planted(seed=1)
    shifted = x + torch.linspace(-5.0, 5.0, len(x))[:, None]  # a different constant per cell
    assert torch.allclose(pearson_unit(x), pearson_unit(shifted), atol=1e-5)
    assert torch.equal(pearson_kmeans(x, 3)[0], pearson_kmeans(shifted, 3)[0])
    # cosine of centred rows is the Pearson correlation
    a, b = torch.randn(2, 16).unbind()
    pearson = torch.corrcoef(torch.stack([a, b]))[0, 1]
    assert (pearson_unit(a) @ pearson_unit(b)).item() == pytest.approx(pearson.item(), abs=1e-5)


def test_kmeans_drops_empty_groups_and_caps_at_cells():
    x = torch.tensor([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    assign, centroids = pearson_kmeans(x, 5)  # more groups than cells, two cells identical
    assert centroids.shape[0] == 2 and assign.max().item() == 1
    assert assign[0] == assign[1] != assign[2]


# -- groups, classes, nodes -----------------------------------------------------------------
def test_group_features_are_member_means_with_gradient():
    emb = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [3.0, 1.0]], requires_grad=True)
    assign = torch.tensor([0, 1, 0, 1])
    p = group_features(emb, assign, 2)
    assert torch.allclose(p, torch.tensor([[1.0, 0.5], [1.5, 1.0]]), atol=1e-5)
    p.sum().backward()
    assert torch.allclose(emb.grad, torch.full((4, 2), 0.5), atol=1e-5)


def test_class_scores_and_group_classes_by_hand():
    pseudo = torch.tensor([[2.0, 1.0, 0.0, -1.0],   # class 0, max 2 -> [1, .5, 0, 0]
                           [9.0, 9.0, 9.0, 9.0],    # class 1, absent
                           [0.0, 0.0, 4.0, 1.0]])   # class 2, max 4 -> [0, 0, 1, .25]
    label = torch.tensor([1.0, 0.0, 1.0])
    scores, ids = class_scores(pseudo.requires_grad_(), label, 0.2)
    assert ids.tolist() == [0, 1, 3]
    expected = torch.tensor([[0.2] * 4, [1.0, 0.5, 0.0, 0.0], [0.0, 0.0, 1.0, 0.25]])
    assert torch.allclose(scores, expected, atol=1e-5)
    assert scores.grad_fn is None
    # background as 1 - max fg
    scores, _ = class_scores(pseudo, label, None)
    assert torch.allclose(scores[0], torch.tensor([0.0, 0.5, 0.0, 0.75]), atol=1e-5)
    # without a background class
    scores, ids = class_scores(pseudo, label, 0.2, background=False)
    assert ids.tolist() == [1, 3] and scores.shape == (2, 4)

    # groups {0, 1} and {2, 3}: means (bg, c0, c2) = (.2, .75, 0) and (.2, 0, .625)
    m = group_classes(expected.requires_grad_(), torch.tensor([0, 0, 1, 1]), 2)
    assert m.grad_fn is None
    assert torch.allclose(m, torch.tensor([[0.2, 0.75, 0.0], [0.2, 0.0, 0.625]])
                          / torch.tensor([[0.95], [0.825]]), atol=1e-5)
    assert torch.allclose(m.sum(dim=1), torch.ones(2), atol=1e-5)


def test_semantic_nodes_are_weighted_means():
    reps = torch.tensor([[1.0, 0.0], [0.0, 1.0], [2.0, 2.0]])
    weights = torch.tensor([[0.5, 0.5], [1.0, 0.0], [0.25, 0.75]])
    nodes = semantic_nodes(reps, weights)
    # class 0: (.5 (1,0) + 1 (0,1) + .25 (2,2)) / 1.75; class 1: (.5 (1,0) + .75 (2,2)) / 1.25
    expected = torch.tensor([[1.0 / 1.75, 1.5 / 1.75], [2.0 / 1.25, 1.5 / 1.25]])
    assert torch.allclose(nodes, expected, atol=1e-5)


def test_image_groups_on_planted_cells():
    x, truth = _planted(seed=2)
    emb = torch.nn.functional.normalize(x, dim=1)
    # class scores: one class per planted group (bg, c0, c3)
    scores = torch.nn.functional.one_hot(truth, 3).T.float()
    g = image_groups(emb, scores, torch.tensor([0, 1, 4]), 10)
    assert _same_partition(g.assign, truth)
    assert sorted(g.group_classes.tolist()) == [0, 1, 4]
    assert g.nodes.shape == (3, 8) and g.reps.shape == (3, 8)
    # one-hot M: each node is the representation of its group
    order = g.weights.argmax(dim=1)
    assert torch.allclose(g.nodes[order], g.reps, atol=1e-5)
    assert image_groups(emb, scores[:0], torch.tensor([], dtype=torch.long), 10) is None


# -- fusion -------------------------------------------------------------------------------
def test_fusion_shapes_and_hard_attention():
    torch.manual_seed(0)
    centroids = pearson_unit(torch.randn(3, 6))
    weights = torch.tensor([[0.7, 0.3], [0.0, 1.0], [0.5, 0.5]])
    nodes = torch.randn(2, 6)
    emb = torch.randn(10, 6)
    out = fuse(emb, centroids, weights, nodes, 0.1)
    assert out.shape == (10, 6)
    # a cell aligned with centroid 1 attends (at a tiny temperature) only to group 1: f̃ = M_1 S
    cell = centroids[1:2] * 2.0 + 3.0  # scale and shift do not change its Pearson direction
    out = fuse(cell, centroids, weights, nodes, 1e-3)
    assert torch.allclose(out[0], weights[1] @ nodes, atol=1e-4)


# -- contrast -----------------------------------------------------------------------------
def test_contrast_by_hand_four_groups_two_classes():
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]])
    classes = torch.tensor([0, 0, 1, 1])
    # each anchor: positive cosine 0, others 0 and -1 -> -log(e^0 / (2 e^0 + e^-1))
    expected = math.log(2 + math.exp(-1))
    assert contrast(x, classes, 1.0).item() == pytest.approx(expected, rel=1e-5)
    # tau 0.5: log(2 + e^-2)
    assert contrast(x, classes, 0.5).item() == pytest.approx(math.log(2 + math.exp(-2)),
                                                            rel=1e-5)
    # no positive at all: a zero with a graph
    x.requires_grad_()
    z = contrast(x, torch.tensor([0, 1, 2, 3]), 0.1)
    assert z.item() == 0.0 and z.requires_grad


def test_contrast_is_the_mean_over_anchors_with_a_positive():
    # the per-anchor losses are pinned against a loop in tests/test_contrast.py
    torch.manual_seed(3)
    x = torch.randn(9, 5, requires_grad=True)
    classes = torch.tensor([0, 2, 0, 1, 2, 2, 3, 0, 1])  # class 3 has no positive
    assert len(multi_positive_nce(x, classes, 0.2)) == 8
    # written out: per anchor with a positive, the mean over its positives of
    # -log(exp(s_ap / tau) / sum_{b != a} exp(s_ab / tau)); then the mean over those 8 anchors
    # (counting class 3's anchor as a zero would divide by 9)
    u = x.detach() / x.detach().norm(dim=1, keepdim=True)
    sim = (u @ u.T / 0.2).tolist()
    losses = []
    for a in range(9):
        positives = [p for p in range(9) if p != a and classes[p] == classes[a]]
        if positives:
            norm = math.log(sum(math.exp(sim[a][b]) for b in range(9) if b != a))
            losses.append(sum(norm - sim[a][p] for p in positives) / len(positives))
    expected = sum(losses) / len(losses)
    assert contrast(x, classes, 0.2).item() == pytest.approx(expected, rel=1e-5)
    # nobody has a positive: a zero that still backpropagates
    none = contrast(x, torch.arange(9), 0.2)
    assert none.item() == 0.0 and none.requires_grad


def test_predicted_labels_keep_the_top_class():
    assert predicted_labels(torch.tensor([-1.0, 0.5, -0.2, 2.0])).tolist() == [0, 1, 0, 1]
    assert predicted_labels(torch.tensor([-1.0, -0.5, -0.2])).tolist() == [0, 0, 1]


# -- the method ---------------------------------------------------------------------------
def _method(base="seam", seed=0, **dscnet):
    torch.manual_seed(seed)
    method = build_method(_cfg(base, **dscnet), 5)
    method.build_optimizers(_cfg()["training"])
    return method.train()


def test_registry_settings_and_param_groups():
    assert METHODS["dscnet"] is DSCNet
    method = _method("baseline", alpha=0.5, components={"fusion": False})
    s = method.settings
    assert s["alpha"] == 0.5 and s["beta"] == 0.4 and s["bg_threshold"] == 0.15
    assert s["components"] == {"pgcl": True, "sgcl": True, "fusion": False}
    assert method.view_scale() is None
    assert method.projector[0].in_channels == 128 and method.projector[2].out_channels == 128
    assert method.refined_classifier.in_channels == 256
    assert method.refined_classifier.out_channels == 5
    (opt,) = method.optimizers
    assert {g["name"]: g["lr_mult"] for g in opt.param_groups} == {
        "backbone": 1.0, "new": 10, "dscnet": 10}
    with pytest.raises(ValueError, match="infer_from"):
        build_method(_cfg(infer_from="pcm"), 5)


@pytest.mark.parametrize("base", ["seam", "baseline"])
def test_training_step_runs_and_updates_weights(base):
    method = _method(base)
    watched = {"backbone": method.base.backbone.stem[0].weight,
               "projector": method.projector[0].weight,
               "refined": method.refined_classifier.weight}
    before = {k: v.detach().clone() for k, v in watched.items()}
    out = method.training_step(_batch(), 0)
    assert {"loss", "base", "dscnet", "cls", "pgcl", "sgcl", "ce"} <= set(out)
    assert all(math.isfinite(v) for v in out.values())
    assert out["pgcl"] > 0 and out["sgcl"] > 0 and out["ce"] > 0
    s = method.settings
    assert out["dscnet"] == pytest.approx(s["alpha"] * out["pgcl"] + s["beta"] * out["sgcl"]
                                          + out["ce"], rel=1e-5)
    assert out["loss"] == pytest.approx(out["base"] + out["dscnet"], rel=1e-5)
    for name, w in watched.items():
        assert not torch.equal(w.detach(), before[name]), name


def test_baseline_base_has_one_view_and_seam_two():
    batch = _batch()
    for base, n in (("baseline", 1), ("seam", 2)):
        method = _method(base)
        _, views = method.base.view_losses(batch["image"], batch["label"], method.view_scale())
        assert len(views) == n, base


def _grads(method, term):
    method.zero_grad(set_to_none=True)
    batch = _batch()
    method.losses(batch["image"], batch["label"])[term].backward()
    def has(p):
        return p.grad is not None and p.grad.abs().sum() > 0
    return {"backbone": any(has(p) for p in method.base.backbone.parameters()),
            "projector": all(has(p) for p in method.projector.parameters()),
            "refined": has(method.refined_classifier.weight)}


def test_gradient_paths():
    method = _method("baseline")
    for term in ("pgcl", "sgcl"):
        assert _grads(method, term) == {"backbone": True, "projector": True, "refined": False}
    assert _grads(method, "ce") == {"backbone": True, "projector": True, "refined": True}


def test_dscnet_terms_leave_seams_pcm_and_classifier_alone():
    # PGCL, SGCL and the refined CAM's loss use the base's map only as detached pseudo labels:
    # they train the projector and the backbone under it, never SEAM's classifier or PCM
    method = _method("seam")
    base = method.base
    pcm = [base.pcm_low.weight, base.pcm_mid.weight, base.pcm_proj.weight]
    for term in ("pgcl", "sgcl", "ce"):
        got = _grads(method, term)
        assert got["backbone"] and got["projector"], term
        for p in [base.classifier.weight, *pcm]:
            assert p.grad is None or not p.grad.any(), term
    # SEAM's own loss still reaches both (the check above is not vacuous)
    _grads(method, "base")
    assert base.classifier.weight.grad.abs().sum() > 0
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in pcm)


def test_no_gradient_through_assignments_and_weights():
    method = _method("seam")
    batch = _batch()
    _, views = method.base.view_losses(batch["image"], batch["label"])
    emb = method.embed(views[0].feat)
    g = method.groups(emb[0], views[0].pseudo[0], batch["label"][0])
    assert g.weights.grad_fn is None and g.centroids.grad_fn is None
    assert g.assign.dtype == torch.long
    assert g.reps.grad_fn is not None and g.nodes.grad_fn is not None
    # image 0 has two classes: background + 2 groups
    assert g.classes.tolist() == [0, 1, 5] and g.reps.shape == (3, 128)


@pytest.mark.parametrize("components,zero", [
    ({"pgcl": True, "sgcl": False, "fusion": False}, {"sgcl", "ce"}),     # M1
    ({"pgcl": False, "sgcl": True, "fusion": False}, {"pgcl", "ce"}),     # M2
    ({"pgcl": True, "sgcl": True, "fusion": False}, {"ce"}),              # M3
])
def test_component_switches(components, zero):
    method = _method("baseline", components=components)
    batch = _batch()
    out = method.losses(batch["image"], batch["label"])
    for key in ("pgcl", "sgcl", "ce"):
        assert (out[key].item() == 0.0) == (key in zero), key
    # without fusion the CAMs are the base's
    method.eval()
    images = batch["image"][:2]
    assert torch.equal(method.cams(images, batch["label"][:2]), method.base.cams(images))


def test_infer_from_base_and_refined_cams():
    method = _method("seam", infer_from="base").eval()
    images, labels = _batch()["image"][:2], _batch()["label"][:2]
    assert torch.equal(method.cams(images, labels), method.base.cams(images, labels))
    method.settings["infer_from"] = "refined"
    cams = method.cams(images, labels)
    assert cams.shape == (2, 5, 12, 12) and not cams.requires_grad
    assert torch.equal(cams, method.cams(images, labels))  # deterministic
    # each image's refined CAM from its own features, map and labels; without labels the
    # base's predicted classes choose the groups (a mix-up of images or of given and
    # predicted labels changes the groups and so the CAMs)
    with torch.no_grad():
        view = method.base.inference_view(images)
        guessed = [predicted_labels(view.cam[i].mean(dim=(1, 2))) for i in range(2)]
        by_hand = [method.refined_cam(view.feat[i], view.pseudo[i], lab)
                   for i, lab in enumerate(labels)]
        by_guess = [method.refined_cam(view.feat[i], view.pseudo[i], guessed[i])
                    for i in range(2)]
    assert torch.allclose(cams, torch.stack(by_hand), atol=1e-5)
    assert any(not torch.equal(g, lab) for g, lab in zip(guessed, labels, strict=True))
    assert not torch.allclose(cams, torch.stack(by_guess), atol=1e-4)
    assert torch.allclose(method.cams(images), torch.stack(by_guess), atol=1e-5)


def test_same_seed_same_numbers():
    runs = []
    for _ in range(2):
        method = _method("seam", seed=7)
        runs.append((method.training_step(_batch(), 0), method.training_step(_batch(1), 1)))
    assert runs[0] == runs[1]
