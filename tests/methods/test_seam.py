"""SEAM: PCM pieces and loss terms against hand-computed values, one training step, gradients."""

import math

import pytest
import torch

from wsss.methods.base import METHODS, build_method, second_view_size
from wsss.methods.seam import (
    SEAM,
    ecr_loss,
    er_loss,
    keep_max_foreground,
    min_pool_loss,
    pcm_affinity,
    pcm_preprocess,
    pcm_propagate,
    seam_settings,
    with_background,
)


def _cfg(**seam):
    return {
        "method": "seam",
        "backbone": {"name": "tiny", "output_stride": 8, "pretrained": "none"},
        "training": {"lr": 0.05, "momentum": 0.9, "weight_decay": 1e-4, "new_layer_lr_mult": 10},
        "seam": {"dropout": 0.0, "min_cells": 2, **seam},
    }


def _grid(*channels):
    """(1, K, 1, W) tensor from K lists of W values."""
    return torch.tensor(channels, dtype=torch.float32)[None, :, None, :]


def test_pcm_preprocess_by_hand():
    # channel 0 (background) is overwritten; fg maxima 2 and 4
    cam = _grid([5.0, -1.0, 3.0], [2.0, 1.0, 0.4], [1.0, 4.0, -2.0])
    out = pcm_preprocess(cam)[0, :, 0]
    # normalised fg1 = [1, .5, .2], fg2 = [.25, 1, 0]; bg = 1 - max = [0, 0, .8];
    # fg entries below their pixel's fg maximum are zeroed
    expected = torch.tensor([[0.0, 0.0, 0.8], [1.0, 0.0, 0.2], [0.0, 1.0, 0.0]])
    assert torch.allclose(out, expected, atol=1e-4)
    assert not pcm_preprocess(cam.requires_grad_()).requires_grad


def test_background_and_max_helpers():
    x = _grid([9.0, 9.0], [0.2, 0.7], [0.5, 0.7])
    bg = with_background(x)
    assert torch.allclose(bg[0, 0, 0], torch.tensor([0.5, 0.3]))
    kept = keep_max_foreground(bg)[0, :, 0]
    # the maximum keeps its value (not 1); ties keep both; background untouched
    assert torch.allclose(kept, torch.tensor([[0.5, 0.3], [0.0, 0.7], [0.5, 0.7]]))


def test_affinity_columns_sum_to_one_and_propagation_matches():
    torch.manual_seed(0)
    f = torch.randn(2, 8, 4, 5)
    aff = pcm_affinity(f)
    assert aff.shape == (2, 20, 20) and (aff >= 0).all()
    assert torch.allclose(aff.sum(dim=1), torch.ones(2, 20), atol=1e-4)
    cam = torch.rand(2, 3, 4, 5)
    direct = (cam.flatten(2) @ aff).view_as(cam)
    assert torch.allclose(pcm_propagate(cam, f), direct, atol=1e-5)


def test_constant_cam_over_identical_features_stays_constant():
    f = torch.randn(1, 6, 1, 1).expand(1, 6, 3, 4)
    cam = torch.tensor([0.2, 0.9, 0.0]).view(1, 3, 1, 1).expand(1, 3, 3, 4)
    assert torch.allclose(pcm_propagate(cam, f), cam, atol=1e-5)


def test_orthogonal_feature_groups_do_not_mix():
    # left half and right half have orthogonal features: cosine 0, so no affinity across
    f = torch.zeros(1, 2, 1, 4)
    f[0, 0, 0, :2] = 1.0
    f[0, 1, 0, 2:] = 1.0
    cam = _grid([1.0, 0.0, 0.0, 0.0])
    assert torch.allclose(pcm_propagate(cam, f)[0, 0, 0], torch.tensor([0.5, 0.5, 0, 0]),
                          atol=1e-5)


def test_min_pool_loss_by_hand():
    x = torch.zeros(2, 2, 2, 2)
    x[0, 0] = torch.tensor([[-1.0, 3.0], [0.5, 2.0]])
    x[0, 1] = torch.tensor([[-2.0, 1.0], [0.2, 0.0]])  # per-pixel max: -1, 3, 0.5, 2
    x[1, 0] = torch.tensor([[1.0, 2.0], [3.0, 4.0]])    # second image: 1, 2, 3, 4 (ch 1 zeros)
    # ratio 0.5: lowest two per image, ReLU'd: (0, 0.5) and (1, 2) -> mean 3.5 / 4
    assert min_pool_loss(x, 0.5).item() == pytest.approx(3.5 / 4)
    # ratio 0.25: the single lowest per image: relu(-1) = 0 and 1
    assert min_pool_loss(x, 0.25).item() == pytest.approx(0.5)


def test_er_loss_by_hand_and_by_loop():
    label = torch.tensor([1.0, 1.0, 0.0]).view(1, 3, 1, 1)  # bg, fg1 present, fg2 absent
    cam1 = _grid([7.0, 1.0], [0.0, 2.0], [0.0, 4.0])
    cam2 = _grid([0.0, 3.0], [2.0, 0.0], [1.0, 1.0])
    # max-normed fg1: [0, 1] vs [1, 0]; fg2 masked; mean over 2 channels x 2 pixels = 0.5
    assert er_loss(cam1, cam2, label).item() == pytest.approx(0.5, abs=1e-4)

    torch.manual_seed(1)
    cam1, cam2 = torch.randn(2, 4, 3, 3), torch.randn(2, 4, 3, 3)
    label = torch.tensor([[1.0, 1, 0, 1], [1, 0, 1, 1]])
    total = 0.0
    for b in range(2):
        for c in range(1, 4):
            planes = []
            for cam in (cam1, cam2):
                p = cam[b, c].clamp_min(0)
                lo, hi = p.min(), p.max()
                planes.append((p - lo - 1e-5).clamp_min(0) / (hi - lo + 1e-5) * label[b, c])
            total += (planes[0] - planes[1]).abs().sum().item()
    expected = total / (2 * 3 * 9)
    assert er_loss(cam1, cam2, label[:, :, None, None]).item() == pytest.approx(expected, rel=1e-5)


def test_ecr_loss_by_hand_and_its_gradient():
    target = _grid([0.2, 1.0], [0.8, 0.0], [0.5, 0.0])
    revised = _grid([0.0, 0.0], [0.0, 0.0], [0.0, 0.0]).requires_grad_()
    # 6 entries, top 50% = 3 largest of |target|: 1.0, 0.8, 0.5
    loss = ecr_loss(keep_max_foreground(target), revised, 0.5)
    # keep_max_foreground zeroes fg2's 0.5 (below fg1's 0.8): top 3 of [.2, 1, .8, 0, 0, 0]
    assert loss.item() == pytest.approx((1.0 + 0.8 + 0.2) / 3)
    assert ecr_loss(target, revised, 0.5).item() == pytest.approx((1.0 + 0.8 + 0.5) / 3)
    # int(6 * 0.2) = 1: only the largest entry, and only it receives gradient (-1: raising
    # the revised value towards the target lowers the loss)
    ecr_loss(target, revised, 0.2).backward()
    assert revised.grad[0, :, 0].tolist() == [[0.0, -1.0], [0.0, 0.0], [0.0, 0.0]]


def test_ecr_targets_are_detached_in_the_training_losses(monkeypatch):
    # SEAM's stop-gradient: each ecr term's target (the other view's CAM) carries no graph,
    # its revised CAM does; a missing .detach() would train the classifier towards the PCM
    import wsss.methods.seam as seam

    calls, real = [], seam.ecr_loss

    def spy(target, revised, top):
        calls.append((target, revised))
        return real(target, revised, top)

    monkeypatch.setattr(seam, "ecr_loss", spy)
    torch.manual_seed(0)
    method = build_method(_cfg(), 5).train()
    batch = _batch()
    method.losses(batch["image"], batch["label"])["ecr"].backward()
    assert len(calls) == 2
    for target, revised in calls:
        assert not target.requires_grad and target.grad_fn is None
        assert revised.requires_grad and revised.grad_fn is not None
    assert method.pcm_proj.weight.grad.abs().sum() > 0
    assert method.classifier.weight.grad is None or not method.classifier.weight.grad.any()


def test_settings_defaults_and_registry():
    assert METHODS["seam"] is SEAM
    s = seam_settings({"seam": {"scale": 0.5, "weights": {"er": 0.5}}})
    assert s["scale"] == 0.5 and s["dropout"] == 0.5 and s["ecr_top"] == 0.2
    assert s["weights"] == {"cls": 1.0, "er": 0.5, "ecr": 1.0, "rvmin": 1.0}
    assert seam_settings({})["min_pool_ratio"] == 0.25
    method = build_method({k: v for k, v in _cfg().items() if k != "seam"}, 5)
    assert isinstance(method, SEAM) and method.dropout.p == 0.5
    assert method.classifier.out_channels == 6  # background + 5 classes
    # tiny: third-to-last stage = stage 1 (32 ch), second-to-last = stage 2 (64 ch)
    assert method.pcm_low.in_channels == 32 and method.pcm_mid.in_channels == 64
    (opt,) = method.build_optimizers(_cfg()["training"])
    mults = {g["name"]: g["lr_mult"] for g in opt.param_groups}
    assert mults == {"backbone": 1.0, "new": 10}
    new_ids = {id(p) for g in opt.param_groups if g["name"] == "new" for p in g["params"]}
    for conv in (method.classifier, method.pcm_low, method.pcm_mid, method.pcm_proj):
        assert id(conv.weight) in new_ids


def _seam_with_biases():
    """SEAM with `seam.bias_groups`, trainable BatchNorm in the backbone (its biases are trunk
    biases) and a classifier with a bias (SEAM's has none), so all four groups are populated."""
    torch.manual_seed(0)
    method = build_method(_cfg(bias_groups=True), 5)
    old = method.classifier
    method.classifier = torch.nn.Conv2d(old.in_channels, old.out_channels, 1)
    return method


def test_bias_groups_hold_every_parameter_once_with_seams_multipliers():
    method = _seam_with_biases()
    training = _cfg()["training"]
    (opt,) = method.build_optimizers(training)
    groups = {g["name"]: g for g in opt.param_groups}
    assert set(groups) == {"backbone", "backbone_bias", "new", "new_bias"}
    listed = [id(p) for g in opt.param_groups for p in g["params"]]
    assert sorted(listed) == sorted(id(p) for p in method.parameters())
    mult = training["new_layer_lr_mult"]
    expected = {"backbone": (1.0, training["weight_decay"]), "backbone_bias": (2.0, 0.0),
                "new": (mult, training["weight_decay"]), "new_bias": (2.0 * mult, 0.0)}
    assert {k: (g["lr_mult"], g["weight_decay"]) for k, g in groups.items()} == expected
    names = {id(p): n for n, p in method.named_parameters()}
    for name, group in groups.items():
        for p in group["params"]:
            assert names[id(p)].endswith(".bias") == name.endswith("_bias"), names[id(p)]
    assert [id(p) for p in groups["new_bias"]["params"]] == [id(method.classifier.bias)]
    # off (the default): the two groups of before, biases with their layers' weights
    (plain,) = build_method(_cfg(), 5).build_optimizers(training)
    assert {g["name"]: g["lr_mult"] for g in plain.param_groups} == {"backbone": 1.0, "new": mult}


def test_a_zero_gradient_step_leaves_seams_biases_and_decays_its_weights():
    from wsss.train import set_lr

    method = _seam_with_biases()
    training = _cfg()["training"]
    opts = method.build_optimizers(training)
    set_lr(opts, 1.0)
    before = {n: p.detach().clone() for n, p in method.named_parameters()}
    for p in method.parameters():
        p.grad = torch.zeros_like(p)
    opts[0].step()
    new = ("classifier.", "pcm_")
    for name, p in method.named_parameters():
        if name.endswith(".bias"):
            assert torch.equal(p.detach(), before[name]), name
            continue
        mult = training["new_layer_lr_mult"] if name.startswith(new) else 1.0
        factor = 1 - training["lr"] * mult * training["weight_decay"]
        torch.testing.assert_close(p.detach(), before[name] * factor)


def test_cams_are_the_revised_foreground_without_dropout():
    # inference uses the PCM-revised CAM (not the raw CAM, not the background channel) and
    # switches dropout off: a dropout applied at inference would make two calls differ
    torch.manual_seed(0)
    method = build_method(_cfg(dropout=0.5), 5).eval()
    images = torch.randn(2, 3, 48, 64)
    cams = method.cams(images)
    assert torch.equal(cams, method.cams(images))
    with torch.no_grad():
        cam, f, _ = method.features(images)
        revised = pcm_propagate(pcm_preprocess(cam), f)
    assert cams.shape == (2, 5, 6, 8)
    assert torch.allclose(cams, revised[:, 1:], atol=1e-6)
    assert not torch.allclose(cams, cam[:, 1:].clamp_min(0), atol=1e-3)


def _batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"image": torch.randn(3, 3, 64, 64, generator=g),
            "label": torch.tensor([[1.0, 0, 0, 0, 1], [0, 1, 0, 0, 0], [0, 0, 1, 1, 0]]),
            "index": torch.arange(3)}


def test_training_step_runs_and_updates_weights():
    torch.manual_seed(0)
    method = build_method(_cfg(dropout=0.5), 5)
    method.build_optimizers(_cfg()["training"])
    method.train()
    watched = {"backbone": method.backbone.stem[0].weight, "classifier": method.classifier.weight,
               "pcm": method.pcm_proj.weight, "pcm_low": method.pcm_low.weight}
    before = {k: v.detach().clone() for k, v in watched.items()}
    out = method.training_step(_batch(), 0)
    assert set(out) == {"loss", "cls", "rvmin", "er", "ecr"}
    assert all(math.isfinite(v) for v in out.values())
    assert out["loss"] == pytest.approx(out["cls"] + out["rvmin"] + out["er"] + out["ecr"],
                                        rel=1e-5)
    for name, w in watched.items():
        assert not torch.equal(w.detach(), before[name]), name


def test_ecr_and_rvmin_train_only_the_pcm():
    torch.manual_seed(0)
    method = build_method(_cfg(), 5).train()
    batch = _batch()
    pcm = [method.pcm_low.weight, method.pcm_mid.weight, method.pcm_proj.weight]
    for term in ("ecr", "rvmin"):
        method.zero_grad(set_to_none=True)
        method.losses(batch["image"], batch["label"])[term].backward()
        # the detached CAM (target and PCM input) and the detached stages pass nothing back
        for p in [method.classifier.weight, *method.backbone.parameters()]:
            assert p.grad is None or not p.grad.any(), term
        for p in pcm:
            assert p.grad is not None and p.grad.abs().sum() > 0, term
    method.zero_grad(set_to_none=True)
    method.losses(batch["image"], batch["label"])["er"].backward()
    assert method.classifier.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in pcm)


def test_resnet_stages_feed_the_pcm():
    cfg = {**_cfg(), "backbone": {"name": "resnet50", "output_stride": 16, "pretrained": "none"}}
    method = build_method(cfg, 3).eval()
    assert method.pcm_low.in_channels == 512 and method.pcm_mid.in_channels == 1024
    assert method.cams(torch.randn(1, 3, 64, 64)).shape == (1, 3, 4, 4)


def test_second_view_keeps_min_cells():
    # SEAM's 448 crop at 0.3 is 134 px (16 cells at stride 8): the floor does not apply
    assert second_view_size((448, 448), 0.3, 8, 8) == (134, 134)
    # a 96 px crop at 0.3 would be 28 px, 3 cells: raised to 8 cells
    assert second_view_size((96, 80), 0.3, 8, 8) == (64, 64)
    # never larger than the crop itself
    assert second_view_size((40, 96), 0.3, 8, 8) == (40, 64)
