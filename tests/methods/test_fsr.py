"""FSR (wsss.methods.fsr): the teacher's schedule and EMA without gradients, the run-fraction
switches (segmentation start, random-then-uncertain masking, the end of reinforcement), the
base row without a teacher, a kill and resume, and the config checks."""

import copy

import pytest
import torch
from fakes import TRAINING, ToySet, fit_method, log_rows

import wsss.methods.fsr as fsr_module
from wsss.errors import ConfigError
from wsss.methods.base import build_method
from wsss.methods.fsr_targets import teacher_momentum

pytestmark = pytest.mark.usefixtures("one_thread")

TRAIN = {"optimizer": "adamw", "lr": 1e-3, "weight_decay": 0.05, "momentum": 0.9,
         "new_layer_lr_mult": 10, "crop_size": 32, "views": 2}
SMALL = {"dino": {"out_dim": 32, "hidden": 16, "bottleneck": 8}, "decoder": {"width": 8},
         "masking": {"block": 2}, "cam_scales": [1.0], "energy": {"scale": 0.5}}


def _cfg(training=TRAIN, **fsr):
    block = copy.deepcopy(SMALL)
    for key, value in fsr.items():
        block[key] = {**block.get(key, {}), **value} if isinstance(value, dict) else value
    return {"method": "fsr", "training": training, "fsr": block,
            "backbone": {"name": "vit_tiny", "output_stride": 8, "pretrained": "none"}}


def _method(total=10, **fsr):
    torch.manual_seed(0)
    method = build_method(_cfg(**fsr), 2)
    method.build_optimizers(TRAIN)
    method.begin(total, 5, 0)
    return method


def _batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"views": torch.randn(2, 2, 3, 32, 32, generator=g),
            "label": torch.tensor([[1.0, 0.0], [1.0, 1.0]])}


def _params(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def test_teacher_momentum_is_the_references_at_its_length_and_scales_with_the_run():
    """Window 0.1 of 20,000 steps is the reference's 0.9995; the cosine reaches 1 at `until`;
    the same block on a 200-step run starts at 1 - 1/20, not at 0.9995."""
    assert teacher_momentum(0, 20000, 0.1, 1.0) == pytest.approx(0.9995)
    assert teacher_momentum(10000, 20000, 0.1, 1.0) == pytest.approx((0.9995 + 1) / 2)
    assert teacher_momentum(0, 200, 0.1, 1.0) == pytest.approx(0.95)
    assert teacher_momentum(100, 200, 0.1, 0.5) == 1.0  # after `until`: frozen


def test_the_teacher_takes_no_gradient_and_is_an_ema_of_the_student():
    method = _method()
    before = _params(method.teacher.module)
    out = method.training_step(_batch(), 0)
    teacher = method.teacher.module
    assert all(not p.requires_grad and p.grad is None for p in teacher.parameters())
    m = out["momentum"]
    name = "backbone.blocks.0.mlp.fc1.weight"
    student = dict(method.student().named_parameters())
    expected = m * before[name] + (1 - m) * student[name].detach()
    after = dict(teacher.named_parameters())[name]
    torch.testing.assert_close(after, expected)
    assert not torch.equal(after, before[name])  # it moved (a frozen teacher would not)


def test_the_base_row_has_no_mask_no_teacher_update_and_no_reinforcement_terms():
    """Table 4's first row (both FSR weights 0): no view is masked and the teacher is left
    as it is (its forward is skipped altogether)."""
    method = _method(weights={"fsr_cls": 0.0, "fsr_patch": 0.0})
    before = _params(method.teacher.module)
    calls = []
    method.teacher.module["backbone"].encode = lambda *a, **k: calls.append(1)
    out = method.training_step(_batch(), 0)
    assert out["fsr_cls"] == out["fsr_patch"] == out["masked"] == 0.0
    assert not calls
    for name, value in _params(method.teacher.module).items():
        assert torch.equal(value, before[name]), name


def test_segmentation_and_energy_start_at_seg_start():
    """Before `seg_start` of the run the decoder takes no step (AdamW skips parameters
    without gradient); from it on it does, and the logged terms say so."""
    method = _method(total=10, seg_start=0.5)
    decoder = _params(method.decoder)
    out = method.training_step(_batch(), 4)  # progress 0.4
    assert out["seg"] == out["reg"] == 0.0
    for name, value in _params(method.decoder).items():
        assert torch.equal(value, decoder[name]), name
    out = method.training_step(_batch(), 5)  # progress 0.5
    assert out["seg"] > 0 and out["reg"] != 0.0
    assert any(not torch.equal(v, decoder[k]) for k, v in _params(method.decoder).items())


def test_masking_is_random_first_then_uncertain_and_reinforcement_stops_at_until(monkeypatch):
    seen = []
    real = fsr_module.block_mask

    def spy(*args):
        seen.append(args[-1])
        return real(*args)

    monkeypatch.setattr(fsr_module, "block_mask", spy)
    method = _method(total=10, masking={"random_until": 0.3}, teacher={"until": 0.8})
    logged = [method.training_step(_batch(s), s) for s in (0, 2, 3, 7, 8)]
    assert seen == [False, False, True, True]  # step 8 (progress 0.8): no mask at all
    assert all(r["masked"] > 0 for r in logged[:4]) and logged[4]["masked"] == 0.0
    assert logged[4]["fsr_cls"] == logged[4]["fsr_patch"] == 0.0
    assert logged[4]["momentum"] == 1.0


def test_uncertain_blocks_are_masked_in_the_second_view_only(monkeypatch):
    """The mask given to the encoder: view 1 unmasked, view 2 with ratio of its blocks."""
    masks = []
    method = _method(masking={"ratio": 0.5, "random_until": 0.0})
    encode = method.backbone.encode

    def spy(images, mask=None, **kw):
        if torch.is_grad_enabled():
            masks.append(mask)
        return encode(images, mask=mask, **kw)

    monkeypatch.setattr(method.backbone, "encode", spy)
    method.training_step(_batch(), 0)
    (mask,) = [m for m in masks if m is not None]
    assert not mask[:2].any()
    # a 4 x 4 token grid in 2 x 2 blocks: 4 blocks, 2 of them (8 tokens) masked per image
    assert mask[2:].flatten(1).sum(dim=1).tolist() == [8, 8]


# -- kill and resume ----------------------------------------------------------------------------
class ViewSet(ToySet):
    """ToySet's first 4 images, each with a second view (its image at another epoch's noise)."""

    def __len__(self):
        return 4

    def __getitem__(self, key):
        index, epoch = key[:2]
        first = super().__getitem__((index, epoch))
        second = super().__getitem__((index, epoch + 100))
        return {**first, "index": index,
                "views": torch.stack([first["image"], second["image"]])}


def _fit(out, stop_after=None):
    training = {**TRAINING, **TRAIN, "epochs": 3, "batch_size": 2, "checkpoint_every": 2}
    cfg = _cfg(training, seg_start=0.3)
    return fit_method(cfg, ViewSet(), training, out, stop_after)


def test_resume_after_a_kill_is_bit_identical(tmp_path):
    """Student, teacher, the two DINO centres and the AdamW moments: a checkpoint without the
    centres or the teacher, or masks drawn outside the checkpointed RNG, would differ."""
    full = _fit(tmp_path / "full")
    _fit(tmp_path / "resumed", stop_after=3)
    resumed = _fit(tmp_path / "resumed")
    a, b = full.state_dict(), resumed.state_dict()
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    assert a["dino_patch.center"].abs().sum() > 0 and a["dino_cls.center"].abs().sum() > 0
    for opt_a, opt_b in zip(full.optimizers, resumed.optimizers, strict=True):
        sa, sb = opt_a.state_dict()["state"], opt_b.state_dict()["state"]
        assert sa.keys() == sb.keys() and len(sa) > 0
        for k in sa:
            assert torch.equal(sa[k]["exp_avg"], sb[k]["exp_avg"]), k
    assert log_rows(tmp_path / "resumed" / "train_log.csv") == log_rows(
        tmp_path / "full" / "train_log.csv")


# -- config checks -------------------------------------------------------------------------------
def test_one_view_is_refused_naming_the_key():
    with pytest.raises(ConfigError, match="training.views"):
        build_method(_cfg({**TRAIN, "views": 1}), 2)


def test_thresholds_must_be_ordered():
    with pytest.raises(ConfigError, match="fsr.masking.low"):
        build_method(_cfg(masking={"low": 0.7, "high": 0.2}), 2)


def test_a_resnet_backbone_is_refused():
    cfg = _cfg()
    cfg["backbone"] = {"name": "tiny", "output_stride": 8, "pretrained": "none"}
    with pytest.raises(ConfigError, match="ViT backbone"):
        build_method(cfg, 2)
