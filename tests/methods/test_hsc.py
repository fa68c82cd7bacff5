"""HSC: pseudo labels, the three contrast levels against hand-computed values and plain loops,
the CRF pool, one training step on SEAM and on CAM, gradient paths and component switches."""

import copy
import math
import pickle

import numpy as np
import pytest
import torch

from wsss import registry
from wsss.errors import MethodError
from wsss.methods import hsc as H
from wsss.methods import hsc_crf
from wsss.methods.base import METHODS, build_method
from wsss.methods.contrast import PrototypeBank

LABELS = torch.tensor([[1.0, 0, 0, 0, 1], [0, 1, 0, 0, 0], [0, 0, 1, 1, 0]])


def _cfg(base="seam", **hsc):
    return {
        "method": "hsc",
        "backbone": {"name": "tiny", "output_stride": 8, "pretrained": "none"},
        "training": {"lr": 0.05, "momentum": 0.9, "weight_decay": 1e-4, "new_layer_lr_mult": 10},
        "seam": {"dropout": 0.0},
        "hsc": {"base": base, **hsc},
    }


def _method(base="seam", classes=5, seed=0, **hsc):
    torch.manual_seed(seed)
    return build_method(_cfg(base, **hsc), classes).train()


def _images(seed=0, n=3, size=96):
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


NO_CRF = {"psc": False, "rsc_csc": False}


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


# -- ROI level ------------------------------------------------------------------------------------

def test_rsc_level_cross_uses_the_other_views_background():
    method = _method("baseline", classes=2)
    # one image, two cells: ROI and background; view 1's ROI is orthogonal to its own
    # background but equal to view 2's background
    labels = [torch.tensor([[[1, 0]]]), torch.tensor([[[1, 0]]])]
    u_a = torch.tensor([[1.0, 0.0], [0.0, 1.0]]).T[None, :, None, :]  # ROI e0, bg e1
    u_b = torch.tensor([[0.0, 1.0], [1.0, 0.0]]).T[None, :, None, :]  # ROI e1, bg e0
    big, small = -math.log(5e-4), -math.log(1 - 5e-4)
    assert method.rsc([u_a, u_b], labels).item() == pytest.approx(small + big, rel=1e-4)
    method.settings["components"]["cross"] = False
    assert method.rsc([u_a, u_b], labels).item() == pytest.approx(small, rel=1e-4)


# -- class level ----------------------------------------------------------------------------------

def test_csc_level_uses_the_banks_before_the_update():
    method = _method("baseline", classes=3, proj1_dim=8)
    g = torch.Generator().manual_seed(0)
    u1 = [torch.rand(2, 8, 3, 3, generator=g) for _ in range(2)]
    acts = [torch.rand(2, 3, 3, 3, generator=g) for _ in range(2)]
    labels = torch.tensor([[1.0, 0, 1], [0, 1, 1]])
    assert method.csc(u1, acts, labels, None).item() == 0.0  # empty banks: no term yet
    for bank in method.class_banks:
        assert bank.filled.tolist() == [True, True, True]
        assert not bank.prototypes.requires_grad
    first = [b.prototypes.clone() for b in method.class_banks]
    # new inputs: the loss must use the banks of step 1 (an update before the loss would give
    # another value), and the banks afterwards mix step 2's r_c into them with momentum 0.9
    u1b = [torch.rand(2, 8, 3, 3, generator=g) for _ in range(2)]
    actsb = [torch.rand(2, 3, 3, 3, generator=g) for _ in range(2)]
    reps = [H.class_representations(u, a, labels, 16) for u, a in zip(u1b, actsb, strict=True)]
    filled = torch.ones(3, dtype=torch.bool)
    want = sum(H.csc_loss(r, c, first[b], filled, 0.1)
               for (c, r) in reps for b in (0, 1)) / 2
    second = method.csc(u1b, actsb, labels, None)
    assert second.item() == pytest.approx(want.item(), rel=1e-5)
    for bank, before, (classes, r) in zip(method.class_banks, first, reps, strict=True):
        mixed = H.unit(0.9 * H.unit(r) + 0.1 * before[classes])
        assert torch.allclose(bank.prototypes[classes], mixed, atol=1e-5)


def test_bank_ema_with_the_papers_momentum():
    bank = PrototypeBank(3, 2, momentum=0.9)
    bank.update(torch.tensor([1]), torch.tensor([[3.0, 0.0]]))
    assert bank.filled.tolist() == [False, True, False]
    assert torch.allclose(bank.prototypes[1], torch.tensor([1.0, 0.0]))  # first update: a copy
    bank.update(torch.tensor([1]), torch.tensor([[0.0, 2.0]]))
    mixed = torch.tensor([0.1, 0.9])  # 0.9 the new value, 0.1 the old
    assert torch.allclose(bank.prototypes[1], mixed / mixed.norm(), atol=1e-6)
    method = _method("baseline", momentum=0.7)
    assert all(b.momentum == 0.7 for b in [*method.class_banks, *method.pixel_banks])


# -- pixel level ----------------------------------------------------------------------------------

def _prototypes_loop(u2, act, labels, k):
    kk, d = act.shape[1], u2.shape[1]
    protos, available = torch.zeros(kk, d), torch.zeros(kk, dtype=torch.bool)
    cells = [(b, y, x) for b in range(u2.shape[0]) for y in range(u2.shape[2])
             for x in range(u2.shape[3])]
    for c in range(kk):
        mine = [p for p in cells if labels[p] == c]
        if not mine:
            continue
        top = sorted(mine, key=lambda p: -act[p[0], c, p[1], p[2]].item())[:k]
        w = torch.stack([act[b, c, y, x] for b, y, x in top])
        f = torch.stack([u2[b, :, y, x] for b, y, x in top])
        q = (w[:, None] * f).sum(0) / w.sum()
        protos[c], available[c] = q / q.norm(), True
    return protos, available


def _psc_loop(u2, labels, protos, available, tau):
    losses = []
    for b in range(u2.shape[0]):
        for y in range(u2.shape[2]):
            for x in range(u2.shape[3]):
                t = labels[b, y, x].item()
                if not available[t]:
                    continue
                u = u2[b, :, y, x] / u2[b, :, y, x].norm()
                logits = {c: (u @ protos[c]).item() / tau for c in range(len(protos))
                          if available[c]}
                norm = math.log(sum(math.exp(v) for v in logits.values()))
                losses.append(norm - logits[t])
    return sum(losses) / len(losses)


def _pixel_example(seed):
    g = torch.Generator().manual_seed(seed)
    u2 = H.unit(torch.randn(2, 5, 3, 4, generator=g), dim=1)
    act = torch.rand(2, 4, 3, 4, generator=g) + 0.01
    labels = torch.randint(0, 3, (2, 3, 4), generator=g)  # class 3 never assigned
    return u2, act, labels


def test_batch_prototypes_and_psc_match_loops():
    u2, act, labels = _pixel_example(0)
    protos, available = H.batch_prototypes(u2, act, labels, 3)
    want, want_available = _prototypes_loop(u2, act, labels, 3)
    assert available.tolist() == want_available.tolist() == [True, True, True, False]
    assert torch.allclose(protos, want, atol=1e-5)
    loss = H.psc_loss(u2, labels, protos, available, 0.1)
    assert loss.item() == pytest.approx(_psc_loop(u2, labels, protos, available, 0.1), rel=1e-5)
    # cells whose label has no prototype are skipped
    other = labels.clone()
    other[0] = 3
    loss = H.psc_loss(u2, other, protos, available, 0.1)
    assert loss.item() == pytest.approx(_psc_loop(u2, other, protos, available, 0.1), rel=1e-5)
    assert H.psc_loss(u2, torch.full_like(labels, 3), protos, available, 0.1).item() == 0.0


def test_psc_level_four_terms_and_switches():
    tau = 0.1
    (u_a, act_a, y_a), (u_b, act_b, y_b) = _pixel_example(1), _pixel_example(2)
    act_a, act_b = act_a[:, 1:], act_b[:, 1:]  # foreground activations; background is derived
    q_a = H.batch_prototypes(u_a, H.with_background(act_a), y_a, 32)
    q_b = H.batch_prototypes(u_b, H.with_background(act_b), y_b, 32)
    intra = (H.psc_loss(u_a, y_a, *q_a, tau) + H.psc_loss(u_b, y_b, *q_b, tau)) / 2
    cross = (H.psc_loss(u_a, y_a, *q_b, tau) + H.psc_loss(u_a, y_b, *q_a, tau)
             + H.psc_loss(u_b, y_b, *q_a, tau) + H.psc_loss(u_b, y_a, *q_b, tau)) / 2
    args = ([u_a, u_b], [act_a, act_b], [y_a, y_b])

    def run(**components):
        method = _method("baseline", classes=3, proj2_dim=5, components=components)
        return method.psc(*args).item(), method.psc(*args).item(), method

    # the momentum banks are empty at the first step; at the second they hold exactly this
    # step's prototypes, so the momentum term equals the intra-view term
    first, second, method = run()
    assert first == pytest.approx((intra + cross).item(), rel=1e-5)
    assert second == pytest.approx((2 * intra + cross).item(), rel=1e-5)
    assert method.pixel_banks[0].filled.tolist() == [True, True, True, False]
    first, second, _ = run(cross=False)
    assert first == pytest.approx(intra.item(), rel=1e-5)
    assert second == pytest.approx(2 * intra.item(), rel=1e-5)
    first, second, method = run(mpl=False)
    assert first == second == pytest.approx((intra + cross).item(), rel=1e-5)
    assert not method.pixel_banks[0].filled.any()


def test_psc_prototypes_are_stop_gradient():
    """Eq. 10's batch prototypes Q_c are targets, not paths: PSC's gradient w.r.t. u2 is the one
    with Q_c (and the activations) held constant. Prototypes left attached would add a second
    gradient through the top-k mean of the same u2, which the backbone and proj2 would take as
    well (so test_gradient_paths cannot see it)."""
    (u_a, act_a, y_a), (u_b, act_b, y_b) = _pixel_example(1), _pixel_example(2)
    acts, ys = [act_a[:, 1:], act_b[:, 1:]], [y_a, y_b]
    u2 = [u_a.clone().requires_grad_(), u_b.clone().requires_grad_()]
    method = _method("baseline", classes=3, proj2_dim=5, components={"mpl": False})
    got = torch.autograd.grad(method.psc(u2, acts, ys), u2)
    # the same eq. 13 (intra + cross-view prototypes + cross-CAM) with constant prototypes
    const = [tuple(t.detach() for t in H.batch_prototypes(u.detach(), H.with_background(a),
                                                           y, 32))
             for u, a, y in zip(u2, acts, ys, strict=True)]
    want_loss = sum(H.psc_loss(u2[v], ys[v], *const[v], 0.1)
                    + H.psc_loss(u2[v], ys[v], *const[o], 0.1)
                    + H.psc_loss(u2[v], ys[o], *const[v], 0.1) for v, o in ((0, 1), (1, 0))) / 2
    want = torch.autograd.grad(want_loss, u2)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-7)


# -- CRF ------------------------------------------------------------------------------------------

@pytest.fixture
def pools(monkeypatch):
    """The sizes of the persistent pools the CRF asks for, call by call."""
    asked, real = [], hsc_crf.persistent_pool

    def spy(workers):
        asked.append(workers)
        return real(workers)

    monkeypatch.setattr(hsc_crf, "persistent_pool", spy)
    return asked


def test_crf_pool_matches_inline(pools):
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (8, 8, 3), dtype=np.uint8) for _ in range(5)]
    planes = [rng.integers(0, 4, (8, 8)) for _ in range(5)]
    defaults = registry.defaults(H.REGISTER["schema"])["crf"]
    crf = {k: v for k, v in defaults.items() if k not in H.CRF_SWITCHES}
    inline = H.crf_refine(images, planes, 4, crf, workers=1)
    assert pools == []
    pooled = H.crf_refine(images, planes, 4, crf, workers=2)
    assert pools == [2] and len(pooled) == 5
    for a, b in zip(inline, pooled, strict=True):
        assert a.shape == (8, 8) and np.array_equal(a, b)
    # a flat image with one stray label: the CRF smooths it away
    flat = np.full((8, 8, 3), 120, dtype=np.uint8)
    plane = np.zeros((8, 8), dtype=np.int64)
    plane[3, 3] = 2
    assert not H.crf_refine([flat], [plane], 4, crf, workers=2)[0].any()


def test_uint8_round_trip():
    from wsss.data.transforms import normalize

    image = np.random.default_rng(1).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    back = H.to_uint8(torch.from_numpy(normalize(image))[None])
    assert back.dtype == np.uint8 and np.array_equal(back[0], image)


def test_refine_runs_each_distinct_crf_once(monkeypatch):
    method = _method("baseline", classes=3)
    calls = []

    def fake(images, planes, n, crf, workers):
        calls.append(len(images))
        assert n == 4 and set(crf) == {"gt_prob", "iterations", "gaussian", "bilateral"}
        return [p + 0 for p in planes]

    monkeypatch.setattr(H, "crf_refine", fake)
    y = torch.randint(0, 4, (3, 2, 2), generator=torch.Generator().manual_seed(0))
    other = y.clone()
    other[1] = (other[1] + 1) % 4
    out = method.refine(torch.randn(3, 3, 16, 16), [y, other], (2, 2))
    assert calls == [4]  # images 1 and 3 agree in both views
    assert torch.equal(out[0], y) and torch.equal(out[1], other)


# -- the method -----------------------------------------------------------------------------------

def test_settings_registry_and_param_groups():
    assert METHODS["hsc"] is H.HSC
    method = _method("seam", components={"rsc": False}, crf={"gt_prob": 0.8})
    s = method.settings
    assert s["components"] == {"psc": True, "csc": True, "rsc": False, "cross": True,
                               "mpl": True}
    assert s["crf"]["gt_prob"] == 0.8 and s["crf"]["bilateral"]["srgb"] == 5
    assert s["k_c"] == 16 and s["k_p"] == 32 and s["bg_threshold"] == 0.10
    assert method.proj1[0].kernel_size == (3, 3) and method.proj1[2].out_channels == 256
    assert method.proj2[0].out_channels == 128
    (opt,) = method.build_optimizers(_cfg()["training"])
    mults = {g["name"]: g["lr_mult"] for g in opt.param_groups}
    assert mults == {"backbone": 1.0, "new": 10, "hsc": 10}
    keys = method.state_dict().keys()
    assert {"class_banks.0.prototypes", "pixel_banks.1.filled"} <= set(keys)
    pickle.loads(pickle.dumps(copy.deepcopy(method)))
    with pytest.raises(MethodError, match="components"):
        _method("seam", components={"pcs": True})


def _step_terms(method, images, labels):
    method.build_optimizers(_cfg()["training"])
    return method.training_step({"image": images, "label": labels}, 0)


@pytest.mark.parametrize("base", ["seam", "baseline"])
def test_training_step_updates_backbone_classifier_and_projectors(base, monkeypatch, pools):
    monkeypatch.setattr(H, "crf_workers", lambda: 2)  # the CRF of the step runs in the pool
    workers, refine = [], H.crf_refine

    def spy(images, planes, n, crf, count):
        workers.append((len(images), count))
        return refine(images, planes, n, crf, count)

    monkeypatch.setattr(H, "crf_refine", spy)
    method = _method(base)
    watched = {"backbone": method.base.backbone.stem[0].weight,
               "classifier": method.base.classifier.weight,
               "proj1": method.proj1[0].weight, "proj2": method.proj2[0].weight}
    before = {k: v.detach().clone() for k, v in watched.items()}
    out = _step_terms(method, _images(), LABELS)
    assert {"loss", "base", "hsc", "rsc", "csc", "psc"} <= set(out)
    assert all(math.isfinite(v) for v in out.values())
    assert out["csc"] == 0.0 and out["rsc"] > 0 and out["psc"] > 0  # empty class banks
    assert out["hsc"] == pytest.approx(0.1 * (out["rsc"] + out["csc"] + out["psc"]), rel=1e-5)
    assert out["loss"] == pytest.approx(out["base"] + out["hsc"], rel=1e-5)
    for name, w in watched.items():
        assert not torch.equal(w.detach(), before[name]), name
    # the base loss alone changes backbone and classifier too; against the same step with
    # every HSC level off, only the HSC terms' reach differs: the backbone (HSC's projectors
    # sit on it) but not the classifier (the pseudo labels are detached)
    twin = _method(base, components={"rsc": False, "csc": False, "psc": False})
    twin_out = _step_terms(twin, _images(), LABELS)
    assert twin_out["base"] == pytest.approx(out["base"], rel=1e-6) and twin_out["hsc"] == 0
    assert not torch.allclose(twin.base.backbone.stem[0].weight, watched["backbone"])
    assert torch.allclose(twin.base.classifier.weight, watched["classifier"], atol=1e-7)
    assert len(workers) == 1 and workers[0][0] >= 3 and workers[0][1] == 2 and pools == [2]
    out = method.training_step({"image": _images(1), "label": LABELS}, 1)
    assert out["csc"] > 0 and math.isfinite(out["loss"])
    for bank in [*method.class_banks, *method.pixel_banks]:
        assert not bank.prototypes.requires_grad and bank.filled.any()


def _grads(method, term, images):
    method.zero_grad(set_to_none=True)
    method.losses(images, LABELS)[term].backward()

    def has(params):
        return any(p.grad is not None and p.grad.abs().sum() > 0 for p in params)

    base = method.base
    return {"proj1": has(method.proj1.parameters()), "proj2": has(method.proj2.parameters()),
            "backbone": has(base.backbone.parameters()),
            "classifier": has(base.classifier.parameters()),
            "pcm": has([base.pcm_low.weight, base.pcm_mid.weight, base.pcm_proj.weight])}


def test_gradient_paths():
    method = _method("seam", crf=NO_CRF)
    images = _images()
    method.losses(images, LABELS)  # fill the class banks, so that csc has terms
    want = {"rsc": {"proj1", "backbone"}, "csc": {"proj1", "backbone"},
            "psc": {"proj2", "backbone"}}
    for term, reached in want.items():
        got = _grads(method, term, images)
        assert {k for k, v in got.items() if v} == reached, term
    for bank in [*method.class_banks, *method.pixel_banks]:
        assert not bank.prototypes.requires_grad


def test_component_switches_remove_their_terms():
    images = _images()
    for off in ("rsc", "csc", "psc"):
        method = _method("baseline", crf=NO_CRF, components={off: False})
        method.losses(images, LABELS)
        out = method.losses(images, LABELS)
        assert out[off].item() == 0.0 and not out[off].requires_grad, off
        for other in {"rsc", "csc", "psc"} - {off}:
            assert out[other].item() > 0, (off, other)
    method = _method("baseline", crf=NO_CRF, components={"rsc": False, "csc": False})
    method.zero_grad(set_to_none=True)
    method.losses(images, LABELS)["hsc"].backward()
    assert all(p.grad is None for p in method.proj1.parameters())
    assert not method.class_banks[0].filled.any()


def test_same_seed_same_losses():
    def run():
        method = _method("seam", seed=5)
        method.build_optimizers(_cfg()["training"])
        batch = {"image": _images(2), "label": LABELS}
        return [method.training_step(batch, s) for s in range(2)]

    assert run() == run()
