"""ACR (wsss.methods.acr): which network each phase trains, the adversarial signs and masks on a
decoder we control, SRF and its schedule, target selection, parameter groups, init_from, a kill
and resume, and the config checks."""


import pytest
import torch
from fakes import TRAINING, ToySet, fit_method, log_rows
from torch import nn

import wsss.methods.acr as acr_module
from wsss.errors import ConfigError
from wsss.methods.acr import hide_probability, pick_targets, srf_grid, target_cam
from wsss.methods.base import build_method

pytestmark = pytest.mark.usefixtures("one_thread")

TRAIN = {"lr": 0.05, "momentum": 0.9, "weight_decay": 1e-4, "new_layer_lr_mult": 10,
         "crop_size": 32}
LABELS = torch.tensor([[1.0, 0, 0, 1, 0], [0, 1, 0, 0, 0]])
SIZE = (32, 32)


def _cfg(training=TRAIN, depth=3, **acr):
    return {"method": "acr", "training": training,
            "backbone": {"name": "tiny", "output_stride": 8, "pretrained": "none",
                         "freeze_bn": True},
            "acr": {"projections": [2, 4, 4],
                    "unet": {"depth": depth, "width": 4, "max_width": 16}, **acr}}


def _method(seed=0, training=TRAIN, **acr):
    torch.manual_seed(seed)
    method = build_method(_cfg(training, **acr), 5)
    method.build_optimizers(training)
    method.begin(10, 5, 0)
    return method.train()


def _images(seed=0):
    return torch.randn(2, 3, *SIZE, generator=torch.Generator().manual_seed(seed))


def _state(method):
    return {k: v.detach().clone() for k, v in method.state_dict().items()}


def _trainable(method, reconstructor):
    return {k: p for k, p in method.named_parameters()
            if p.requires_grad and k.startswith("reconstructor.") == reconstructor}


# -- which network each phase trains ------------------------------------------------------------
# weight decay 0: a parameter then moves only if a gradient reached it
NO_DECAY = {**TRAIN, "weight_decay": 0.0}


def _assert_phase(method, before, trained):
    """Every entry of the other network (weights, frozen BN, running stats) bit-identical,
    every trainable parameter of `trained` moved."""
    after = method.state_dict()
    for name, value in before.items():
        if name.startswith("reconstructor.") != trained:
            assert torch.equal(after[name], value), name
    for name in _trainable(method, trained):
        assert not torch.equal(after[name], before[name]), name


def test_ru_trains_the_reconstructor_only():
    method = _method(training=NO_DECAY)
    before = _state(method)
    method._modes(classifier=False, reconstructor=True)
    torch.manual_seed(1)
    images = _images()
    hidden = srf_grid(2, 4, 0.5, SIZE)
    ru = method.ru_losses(images, LABELS, pick_targets(LABELS), hidden)
    method.optimize(ru["loss"], [method.optimizers[1]])
    _assert_phase(method, before, trained=True)
    assert all(p.grad is None for p in _trainable(method, False).values())  # A_t without grad


def test_cu_trains_the_classifier_only_and_leaves_no_gradient_in_the_reconstructor():
    """The CU loss goes through the decoder: without `no_param_grad` its parameters would
    collect gradients (not stepped by the classifier's optimizer, so only .grad shows it)."""
    method = _method(training=NO_DECAY)
    before = _state(method)
    method._modes(classifier=True, reconstructor=False)
    cu = method.cu_losses(_images(), LABELS, torch.tensor([0, 1]))
    method.optimize(cu["loss"], [method.optimizers[0]])
    _assert_phase(method, before, trained=False)
    assert all(p.grad is None for p in method.reconstructor.parameters())


def test_training_step_trains_both_networks_and_keeps_frozen_bn():
    method = _method()
    before = _state(method)
    out = method.training_step({"image": _images(), "label": LABELS}, 0)
    after = method.state_dict()
    for reconstructor in (False, True):
        for name in _trainable(method, reconstructor):
            assert not torch.equal(after[name], before[name]), name
    # frozen BN of both backbones: statistics and affine parameters
    frozen = [k for k in before if "running_" in k or "num_batches" in k] + [
        k for k, p in method.named_parameters() if not p.requires_grad]
    assert any(k.startswith("reconstructor.") for k in frozen) and any(
        k.startswith("backbone.") and k.endswith(".weight") for k in frozen)
    assert all(torch.equal(after[k], before[k]) for k in frozen)
    # the logged totals: the paper's λ (Sec. 5.2), the reference's ru_cls and ru_full
    assert out["loss"] == pytest.approx(out["cls"] + 0.8 * out["cu_t"] + 0.3 * out["cu_nt"])
    assert out["ru"] == pytest.approx(0.5 * out["ru_t"] + 0.5 * out["ru_nt"] + out["ru_cls"]
                                      + 0.2 * out["ru_full"])


# -- the adversarial terms on a decoder we control ---------------------------------------------
class Fixed(nn.Module):
    """A decoder whose output is `image + error` whatever its input (kept in the graph at
    weight 0); it records its inputs."""

    def __init__(self, image, error):
        super().__init__()
        self.image, self.error, self.inputs = image, error, []

    def forward(self, x):
        self.inputs.append(x.detach().clone())
        return self.image + self.error + 0 * x.sum()


def _a(method, images, targets):
    with torch.no_grad():
        return target_cam(method.classifier(method.backbone(images)), LABELS, targets, SIZE)


def test_cu_falls_and_ru_rises_with_the_hidden_regions_reconstruction_error():
    """With reconstruction error e, the CU terms are -mean(|e| V) (V_t = 1 - A_t, V_nt = A_t)
    and the RU terms +mean(|e| H) (H_nt = (1 - A_t) g, H_t = A_t g): the classifier gains
    from a worse reconstruction, the reconstructor loses."""
    method = _method().eval()
    images, targets = _images(), torch.tensor([3, 1])
    a = _a(method, images, targets)
    assert 0 < a.mean() < 1
    g = torch.zeros(2, 1, *SIZE)
    g[..., :, :16] = 1.0  # SRF hides the left half
    error = torch.randn(1, 3, *SIZE, generator=torch.Generator().manual_seed(2))
    last = None
    for scale in (0.0, 1.0, 2.0):
        e = scale * error
        method.reconstructor.decoder = Fixed(images, e)
        cu = method.cu_losses(images, LABELS, targets)
        ru = method.ru_losses(images, LABELS, targets, g)
        assert cu["cu_t"].item() == pytest.approx(-(e.abs() * (1 - a)).mean().item(), abs=1e-6)
        assert cu["cu_nt"].item() == pytest.approx(-(e.abs() * a).mean().item(), abs=1e-6)
        assert ru["ru_t"].item() == pytest.approx((e.abs() * (1 - a) * g).mean().item(),
                                                  abs=1e-6)
        assert ru["ru_nt"].item() == pytest.approx((e.abs() * a * g).mean().item(), abs=1e-6)
        assert ru["ru_full"].item() == pytest.approx(e.abs().mean().item(), abs=1e-6)
        if last is not None:
            assert cu["cu_t"] < last[0] and ru["ru_t"] > last[1]
        last = cu["cu_t"].item(), ru["ru_t"].item()


def test_each_term_feeds_the_decoder_the_right_part_of_x():
    """RU: X ⊙ (1 - H_nt), X ⊙ (1 - H_t), X; CU: X ⊙ A_t, X ⊙ (1 - A_t). Swapping hiding and
    feeding (the paper's g is the reference's 1 - g) would pass the loss checks above."""
    method = _method().eval()
    images, targets = _images(), torch.tensor([0, 1])
    a = _a(method, images, targets)
    g = srf_grid(2, 4, 0.5, SIZE)
    with torch.no_grad():
        _, x = method.reconstructor.encode(images)
    method.reconstructor.decoder = fixed = Fixed(images, torch.zeros(()))
    method.ru_losses(images, LABELS, targets, g)
    method.cu_losses(images, LABELS, targets)
    expected = [x * (1 - (1 - a) * g), x * (1 - a * g), x, x * a, x * (1 - a)]
    assert len(fixed.inputs) == len(expected)
    for k, (got, want) in enumerate(zip(fixed.inputs, expected, strict=True)):
        assert torch.allclose(got, want, atol=1e-6), k


def test_cu_gradient_reaches_the_classifier_only_through_the_decoders_input():
    """A decoder that ignores its input gives the classifier no gradient from cu_t or cu_nt
    (the masks V are detached; each term on its own, as their V-paths would cancel in the
    sum); the real, frozen decoder passes one on."""
    method = _method().eval()
    images, targets = _images(), torch.tensor([0, 1])
    w = method.classifier.weight
    real = method.cu_losses(images, LABELS, targets)
    for term in ("cu_t", "cu_nt"):
        (grad,) = torch.autograd.grad(real[term], w, retain_graph=True)
        assert grad.abs().sum() > 0, term
    assert all(p.grad is None for p in method.reconstructor.decoder.parameters())
    method.reconstructor.decoder = Fixed(images, torch.randn(1, 3, *SIZE))
    blind = method.cu_losses(images, LABELS, targets)
    for term in ("cu_t", "cu_nt"):
        (grad,) = torch.autograd.grad(blind[term], w, retain_graph=True)
        assert torch.equal(grad, torch.zeros_like(grad)), term


def test_ru_gradient_paths():
    """ru_full trains the decoder only (X detached); the hidden-region terms reach the
    projections and the backbone under them; ru_cls reaches the backbone and the
    reconstructor's classifier but not the decoder."""
    method = _method()
    torch.manual_seed(1)
    rec = method.reconstructor
    parts = {"backbone": rec.backbone.stem[0].weight, "classifier": rec.classifier.weight,
             "projections": rec.projections[0].weight, "decoder": rec.decoder.final[1].weight}
    ru = method.ru_losses(_images(), LABELS, pick_targets(LABELS), srf_grid(2, 4, 0.5, SIZE))
    expect = {"ru_full": {"decoder"}, "ru_t": {"backbone", "projections", "decoder"},
              "ru_nt": {"backbone", "projections", "decoder"},
              "ru_cls": {"backbone", "classifier"}}
    for term, reached in expect.items():
        grads = torch.autograd.grad(ru[term], list(parts.values()), retain_graph=True,
                                    allow_unused=True)
        got = {k for k, g in zip(parts, grads, strict=True) if g is not None and g.any()}
        assert got == reached, term


# -- SRF, its schedule, targets ---------------------------------------------------------------
def test_srf_grid_is_constant_cells_hidden_with_the_given_probability():
    torch.manual_seed(0)
    grid = srf_grid(250, 4, 0.3, (16, 16))
    assert set(grid.unique().tolist()) <= {0.0, 1.0}
    cells = grid[:, :, ::4, ::4]  # one pixel per 4x4 cell
    assert torch.equal(grid, cells.repeat_interleave(4, 2).repeat_interleave(4, 3))
    # 4000 independent cells: the standard deviation of the fraction is sqrt(.21/4000) < .0073
    assert cells.mean().item() == pytest.approx(0.3, abs=0.03)
    assert not (cells == cells[:1]).all(dim=(1, 2, 3)).all()  # a grid per image
    assert srf_grid(2, 4, 0.0, (16, 16)).sum() == 0
    assert srf_grid(2, 4, 1.0, (16, 16)).min() == 1


def test_hide_probability_rises_with_progress_not_with_epochs():
    assert hide_probability(0, 40, 0.2, 0.6) == 0.2
    assert hide_probability(39, 40, 0.2, 0.6) == pytest.approx(0.2 + 0.4 * 39 / 40)
    # the same fraction of the run gives the same p whatever the run's length
    assert hide_probability(5, 10, 0.2, 0.6) == hide_probability(50, 100, 0.2, 0.6) == \
        pytest.approx(0.4)
    assert hide_probability(30, 10, 0.2, 0.6) == 1.0
    assert hide_probability(30, 10, 0.6, 0.0) == 0.0
    method = _method()
    for per_epoch in (5, 50):  # the epoch length given to `begin` does not matter
        method.begin(100, per_epoch, 0)
        assert method.hide_p(50) == pytest.approx(0.4)


def test_training_step_draws_srf_with_the_scheduled_probability(monkeypatch):
    method = _method()
    method.begin(8, 2, 0)
    seen = []
    real = acr_module.srf_grid
    monkeypatch.setattr(acr_module, "srf_grid",
                        lambda *a, **k: seen.append(a[2]) or real(*a, **k))
    out = method.training_step({"image": _images(), "label": LABELS}, 6)
    assert seen == [out["hide_p"]] and out["hide_p"] == pytest.approx(0.2 + 0.4 * 6 / 8)


def test_without_srf_the_whole_other_segment_is_hidden(monkeypatch):
    method = _method(srf={"enabled": False})

    def no_grid(*args, **kwargs):
        raise AssertionError("srf_grid drawn with SRF disabled")

    monkeypatch.setattr(acr_module, "srf_grid", no_grid)
    hidden = []
    real = method.ru_losses
    monkeypatch.setattr(method, "ru_losses", lambda *a: hidden.append(a[3]) or real(*a))
    out = method.training_step({"image": _images(), "label": LABELS}, 3)
    assert out["hide_p"] == 1.0
    assert torch.equal(hidden[0], torch.ones(2, 1, *SIZE))


def test_pick_targets_is_uniform_among_the_labels():
    torch.manual_seed(0)
    labels = torch.tensor([[0.0, 1, 0, 1, 0]] * 2000 + [[0.0, 0, 1, 0, 0], [0.0] * 5])
    picked = pick_targets(labels)
    assert (labels[torch.arange(2000), picked[:2000]] == 1).all()
    # 2000 fair coin flips: the standard deviation of the fraction is 0.011
    assert (picked[:2000] == 1).float().mean().item() == pytest.approx(0.5, abs=0.045)
    assert picked[2000] == 2
    assert 0 <= picked[2001] < 5  # no label: any class, no crash


def test_target_cam_by_hand():
    raw = torch.zeros(2, 3, 2, 2)
    raw[0, 1] = torch.tensor([[2.0, 4.0], [6.0, 10.0]])  # target of image 0: min 2, max 10
    raw[0, 0] = torch.tensor([[9.0, 0.0], [0.0, 0.0]])  # another class, not picked
    raw[1, 2] = torch.tensor([[1.0, 2.0], [3.0, 4.0]])  # picked, but not labelled
    labels = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    a = target_cam(raw, labels, torch.tensor([1, 2]), (2, 2))
    assert torch.allclose(a[0, 0], torch.tensor([[0.0, 0.25], [0.5, 1.0]]), atol=1e-4)
    assert a[0, 0, 0, 0] == 0
    assert torch.equal(a[1], torch.zeros(1, 2, 2))


# -- parameters, init_from, config ---------------------------------------------------------------
def test_param_groups_and_optimizers():
    method = _method()
    names = {id(p): k for k, p in method.named_parameters()}
    groups = {g["name"]: [names[id(p)] for p in g["params"]] for g in method.reconstructor_groups()}
    dec = method.reconstructor.decoder
    transposed = {names[id(m.weight)] for m in dec.modules() if isinstance(m, nn.ConvTranspose2d)}
    assert len(transposed) == len(dec.ups) and set(groups["recon_transposed"]) == transposed
    listed = [k for ks in groups.values() for k in ks]
    assert len(listed) == len(set(listed))
    rec = {k for k in names.values() if k.startswith("reconstructor.")}
    assert set(listed) == rec
    assert set(groups["recon_new"]) == rec - transposed - {
        k for k in rec if k.startswith("reconstructor.backbone.")}
    # the classifier's groups are the baseline's
    baseline = build_method({**_cfg(), "method": "baseline"}, 5)
    base_names = {id(p): k for k, p in baseline.named_parameters()}
    assert [(g["name"], g["lr_mult"], [names[id(p)] for p in g["params"]])
            for g in method.classifier_groups()] == \
        [(g["name"], g["lr_mult"], [base_names[id(p)] for p in g["params"]])
         for g in baseline.param_groups()]
    # [classifier's, reconstructor's], each over its network's trainable parameters
    opt_cls, opt_rec = method.optimizers
    for opt, reconstructor in ((opt_cls, False), (opt_rec, True)):
        got = {names[id(p)] for g in opt.param_groups for p in g["params"]}
        assert got == set(_trainable(method, reconstructor)), reconstructor
    lrs = {g["name"]: g["initial_lr"] for g in opt_rec.param_groups}
    assert lrs == pytest.approx({"recon_backbone": 0.05, "recon_new": 0.05,
                                 "recon_transposed": 0.5})


def test_init_from_a_baseline_loads_the_classifier_and_leaves_the_reconstructor():
    torch.manual_seed(3)
    baseline = build_method({**_cfg(), "method": "baseline"}, 5)
    with torch.no_grad():  # away from any initialisation, running statistics included
        for value in baseline.state_dict().values():
            if value.is_floating_point():
                value.add_(0.1 * torch.randn_like(value))
    method = _method(seed=4).eval()
    before = _state(method)
    assert method.init_from(baseline.state_dict()) == len(baseline.state_dict())
    after = method.state_dict()
    for name, value in baseline.state_dict().items():
        assert torch.equal(after[name], value), name
    for name in before:
        if name.startswith("reconstructor."):
            assert torch.equal(after[name], before[name]), name
    images = _images()
    assert torch.equal(method.cams(images), baseline.eval().cams(images))


def test_a_crop_the_unet_cannot_take_names_the_depth():
    with pytest.raises(ConfigError, match=r"acr\.unet\.depth 5.*multiple of 32"):
        build_method(_cfg({**TRAIN, "crop_size": 48}, depth=5), 5)
    build_method(_cfg({**TRAIN, "crop_size": 64}, depth=5), 5)


# -- kill and resume ----------------------------------------------------------------------------
def _fit(out, stop_after=None):
    training = {**TRAINING, "epochs": 3, "crop_size": 32}  # 6 steps, checkpoints every 2
    cfg = _cfg(training, depth=4)  # depth 4 on 32 px: dropout at level 3 draws random numbers
    return fit_method(cfg, ToySet(), training, out, stop_after)


def test_resume_after_a_kill_is_bit_identical(tmp_path):
    """Both networks and both optimizers' momenta: a checkpoint without the reconstructor's
    optimizer, or targets/SRF/dropout drawn outside the checkpointed RNG, would differ."""
    full = _fit(tmp_path / "full")
    _fit(tmp_path / "resumed", stop_after=3)
    resumed = _fit(tmp_path / "resumed")
    a, b = full.state_dict(), resumed.state_dict()
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    assert len(full.optimizers) == len(resumed.optimizers) == 2
    for opt_a, opt_b in zip(full.optimizers, resumed.optimizers, strict=True):
        sa, sb = opt_a.state_dict()["state"], opt_b.state_dict()["state"]
        assert sa.keys() == sb.keys() and len(sa) > 0
        for k in sa:
            assert torch.equal(sa[k]["momentum_buffer"], sb[k]["momentum_buffer"]), k
    resumed, full = (log_rows(tmp_path / run / "train_log.csv") for run in ("resumed", "full"))
    assert resumed == full
