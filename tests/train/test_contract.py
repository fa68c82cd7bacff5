"""The training contract beyond the default run: progress hook, optimizers, schedules,
gradient clipping, EMA teacher and FIFO bank across a kill, and the second batch's order."""

import csv
import math

import pytest
import torch
import torch.nn.functional as F
from fakes import TRAINING, ToySet
from torch import nn

from wsss.errors import ConfigError
from wsss.train import EMA, FIFO, StepSampler, Trainable, fit, poly_lr
from wsss.train.trainable import lr_factor, schedule_lr

CPU = torch.device("cpu")


class Toy(Trainable):
    """A small net with BatchNorm and dropout (so the RNG matters), an EMA teacher it is pulled
    towards, and a FIFO bank of past logits whose mean it is pulled towards too."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                                 nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.3),
                                 nn.Linear(4, 2))
        self.teacher = EMA(self.net)
        self.bank = FIFO(3)
        self.begun: list[tuple[int, int, int]] = []
        self.seen: list[dict[str, list[int]]] = []

    def param_groups(self):
        return [{"params": list(self.net.parameters()), "lr_mult": 1.0}]

    def begin(self, total_steps, steps_per_epoch, start_step):
        self.begun.append((total_steps, steps_per_epoch, start_step))

    def training_step(self, batch, step):
        self.seen.append({k: batch[k].tolist() for k in ("index", "index_u") if k in batch})
        logits = self.net(batch["image"])
        loss = F.multilabel_soft_margin_loss(logits, batch["label"])
        loss = loss + 0.5 * (logits - self.teacher(batch["image"])).pow(2).mean()
        if self.bank.items:
            loss = loss + 0.5 * (logits.mean(0) - self.bank.cat().mean(0)).pow(2).sum()
        self.optimize(loss)
        self.teacher.update(self.net, 0.8)
        self.bank.push(logits)
        return {"loss": loss.item()}


class IndexedToySet(ToySet):
    def __getitem__(self, key):
        sample = {**super().__getitem__(key[:2]), "index": key[0]}
        if len(key) == 3:
            sample["index_u"] = key[2]
        return sample


def _fit(out, training=TRAINING, stop_after=None, trainset=None):
    torch.manual_seed(7)
    toy = Toy()
    fit(toy, trainset or ToySet(), training, out, {"config": training}, CPU,
        stop_after=stop_after, name="toy")
    return toy


def test_teacher_and_bank_survive_a_kill_bit_identically(tmp_path):
    training = {**TRAINING, "epochs": 3}  # 6 steps, checkpoints every 2
    full = _fit(tmp_path / "full", training)
    _fit(tmp_path / "resumed", training, stop_after=3)
    resumed = _fit(tmp_path / "resumed", training)
    a, b = full.state_dict(), resumed.state_dict()
    assert a.keys() == b.keys()
    for name in a:
        if name.endswith("_extra_state"):
            assert len(a[name]["items"]) == 3
            assert all(torch.equal(x, y) for x, y in zip(a[name]["items"], b[name]["items"],
                                                         strict=True)), name
        else:
            assert torch.equal(a[name], b[name]), name
    # the teacher is a moving average: neither the student nor its starting point
    torch.manual_seed(7)
    start = Toy().state_dict()["teacher.module.6.weight"]
    assert not torch.equal(a["teacher.module.6.weight"], a["net.6.weight"])
    assert not torch.equal(a["teacher.module.6.weight"], start)
    assert not any(p.requires_grad for p in full.teacher.parameters())


def test_teacher_stays_in_eval_mode_and_follows_the_student():
    student = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    teacher = EMA(student)
    nn.ModuleDict({"s": student, "t": teacher}).train()  # as its owner's .train() does
    assert student.training and not teacher.module.training and not teacher.module[1].training
    before = teacher.module[0].weight.clone()
    with torch.no_grad():
        student[0].weight.add_(1.0)
        student[1].running_mean.fill_(3.0)
    teacher.update(student, 0.75)
    assert torch.allclose(teacher.module[0].weight, before + 0.25)
    assert torch.equal(teacher.module[1].running_mean, torch.full((2,), 3.0))  # copied
    teacher.update(student, 0.0)
    assert torch.equal(teacher.module[0].weight, student[0].weight)


def test_fifo_keeps_the_last_items_and_reloads_them():
    bank = FIFO(2)
    for k in range(4):
        bank.push(torch.full((1, 2), float(k)))
    assert bank.cat().tolist() == [[2.0, 2.0], [3.0, 3.0]]
    other = FIFO(2)
    other.load_state_dict(bank.state_dict())
    assert torch.equal(other.cat(), bank.cat())
    with pytest.raises(ValueError):
        FIFO(3).load_state_dict(bank.state_dict())


def test_begin_sees_the_run_length_and_the_resume_step(tmp_path):
    assert _fit(tmp_path / "full").begun == [(4, 2, 0)]  # 2 epochs × 10 // 4
    assert _fit(tmp_path / "killed", stop_after=3).begun == [(4, 2, 0)]
    assert _fit(tmp_path / "killed").begun == [(4, 2, 3)]


def test_poly_schedule_by_hand():
    t = {"poly_power": 0.9}
    assert lr_factor(t, 0, 10) == 1.0
    assert lr_factor(t, 5, 10) == 0.5**0.9
    assert lr_factor(t, 9, 10) == pytest.approx(0.1**0.9)
    p = nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([{"params": [p], "initial_lr": 2.0}], lr=2.0)
    for step in (0, 3, 7, 9):  # the default schedule is poly_lr, bit for bit
        assert schedule_lr([opt], t, step, 10) == poly_lr([opt], step, 10, 0.9)


def test_cosine_and_warm_up_by_hand():
    cos = {"schedule": "cosine", "warmup": 0.2}  # 2 of 10 steps of warm-up
    assert [lr_factor(cos, s, 10) for s in (0, 1, 2)] == [0.5, 1.0, 1.0]
    assert lr_factor(cos, 6, 10) == pytest.approx(0.5)  # half way through the 8 after it
    assert lr_factor(cos, 9, 10) == pytest.approx(0.5 * (1 + math.cos(math.pi * 7 / 8)))
    poly = {"warmup": 0.25, "poly_power": 1.0}  # warm-up works with poly too
    assert [lr_factor(poly, s, 8) for s in (0, 1, 2, 5)] == [0.5, 1.0, 1.0, 0.5]
    # FSR's warm-up from a ratio: 0.1 + 0.9 (s + 1) / 4 over 4 of 10 steps, then the cosine
    fsr = {"schedule": "cosine", "warmup": 0.4, "warmup_start": 0.1}
    assert [lr_factor(fsr, s, 10) for s in (0, 1, 3, 4)] == pytest.approx(
        [0.325, 0.55, 1.0, 1.0])
    with pytest.raises(ConfigError):
        lr_factor({"schedule": "step"}, 0, 10)


def test_fit_follows_the_configured_schedule(tmp_path):
    training = {**TRAINING, "epochs": 5, "schedule": "cosine", "warmup": 0.3}  # 10 steps
    _fit(tmp_path, training)
    with open(tmp_path / "toy.log.csv") as fh:
        lrs = [float(r["lr"]) for r in csv.DictReader(fh)]
    expect = [1 / 3, 2 / 3, 1.0] + [0.5 * (1 + math.cos(math.pi * k / 7)) for k in range(7)]
    assert lrs == pytest.approx([TRAINING["lr"] * f for f in expect])


class Two(Trainable):
    """Two parameters in two groups, for hand-made gradients."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Parameter(torch.ones(1)), nn.Parameter(torch.ones(1))

    def param_groups(self):
        return [{"params": [self.a], "lr_mult": 1.0}, {"params": [self.b], "lr_mult": 1.0}]

    def training_step(self, batch, step):  # the tests call `optimize` by hand instead
        loss = self.a.sum() + self.b.sum()
        self.optimize(loss)
        return {"loss": loss.item()}


PLAIN = {"lr": 1.0, "momentum": 0.0, "weight_decay": 0.0}


def test_grad_clip_caps_the_global_norm():
    for clip, step in ((None, (3.0, 4.0)), (1.0, (0.6, 0.8)), (10.0, (3.0, 4.0))):
        net = Two()
        net.build_optimizers({**PLAIN, "grad_clip": clip})
        net.optimize(3 * net.a.sum() + 4 * net.b.sum())  # gradient (3, 4): norm 5 over groups
        assert (1 - net.a.item(), 1 - net.b.item()) == pytest.approx(step), clip


def test_default_optimizer_is_todays_sgd_and_adamw_can_be_chosen():
    training = {"lr": 0.1, "momentum": 0.9, "weight_decay": 0.5, "nesterov": True}
    (opt,) = Two().build_optimizers(training)
    assert type(opt) is torch.optim.SGD
    g = opt.param_groups[0]
    assert (g["momentum"], g["nesterov"], g["weight_decay"], g["initial_lr"]) == (0.9, True,
                                                                                 0.5, 0.1)
    net = Two()
    (opt,) = net.build_optimizers({**training, "optimizer": "adamw", "betas": [0.8, 0.95]})
    assert type(opt) is torch.optim.AdamW and opt.param_groups[0]["betas"] == (0.8, 0.95)
    net.optimize(100 * net.a.sum())
    # AdamW's first step is lr whatever the gradient's size, after decoupled decay lr × wd
    assert net.a.item() == pytest.approx(1 - 0.1 * 0.5 - 0.1, abs=1e-6)
    assert net.b.item() == 1.0  # no gradient: not stepped, not even decayed
    with pytest.raises(ConfigError):
        Two().build_optimizers({**training, "optimizer": "lamb"})


def test_second_batch_order_is_its_own_seeded_permutation():
    plain = list(StepSampler(12, 4, seed=1, start=0, stop=6))
    both = list(StepSampler(12, 4, seed=1, start=0, stop=6, unaugmented=True))
    assert [[k[:2] for k in b] for b in both] == plain  # the first batch is unchanged
    assert list(StepSampler(12, 4, seed=1, start=2, stop=6, unaugmented=True)) == both[2:]
    for epoch in (0, 1):
        first = [k[0] for b in both[3 * epoch: 3 * epoch + 3] for k in b]
        second = [k[2] for b in both[3 * epoch: 3 * epoch + 3] for k in b]
        assert sorted(second) == list(range(12)) and second != first
    assert [k[2] for k in both[0]] != [k[2] for k in both[3]]  # a new order each epoch
    other = list(StepSampler(12, 4, seed=2, start=0, stop=3, unaugmented=True))
    assert [k[2] for b in other for k in b] != [k[2] for b in both[:3] for k in b]


def test_fit_hands_the_second_batch_to_the_method(tmp_path):
    toy = _fit(tmp_path, {**TRAINING, "unaugmented_batch": True}, trainset=IndexedToySet())
    epoch0 = toy.seen[:2]  # 2 batches of 4 of the 10 images
    assert all(len(s["index_u"]) == 4 for s in toy.seen)
    assert [s["index"] for s in epoch0] != [s["index_u"] for s in epoch0]
    assert len({i for s in epoch0 for i in s["index_u"]}) == 8
    assert all("index_u" not in s for s in _fit(tmp_path / "plain", trainset=IndexedToySet())
               .seen)


def test_short_epochs_take_the_first_batches_of_each_epochs_permutation(tmp_path):
    """`steps_per_epoch` (CSRM's 46-step epochs of train_aug): each epoch is the first batches
    of its own permutation, so a short epoch is a prefix of the full one, the next epoch starts
    a new permutation, and the run (and its epoch column) has epochs x steps_per_epoch steps."""
    full = list(StepSampler(12, 2, seed=3, start=0, stop=12))  # 6 batches per epoch
    short = list(StepSampler(12, 2, seed=3, start=0, stop=4, per_epoch=2))
    assert short == full[0:2] + full[6:8]
    assert list(StepSampler(12, 2, seed=3, start=3, stop=4, per_epoch=2)) == short[3:]
    toy = _fit(tmp_path, {**TRAINING, "epochs": 3, "steps_per_epoch": 1},
               trainset=IndexedToySet())
    assert len(toy.seen) == 3  # 3 epochs of 1 step, not of the 2 the 10 images allow
    rows = (tmp_path / "toy.log.csv").read_text().splitlines()[1:]
    assert [r.split(",")[1] for r in rows] == ["0", "1", "2"]


def test_a_trainable_without_its_hooks_cannot_be_built():
    """The contract's hooks are abstract: a network missing one fails when it is built, not
    halfway through a run."""

    class NoStep(Trainable):
        def param_groups(self):
            return []

    with pytest.raises(TypeError, match="training_step"):
        NoStep()
