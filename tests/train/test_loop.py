import csv

import numpy as np
import torch
from fakes import CFG, TRAINING, ToySet

from wsss.methods.base import build_method
from wsss.train import StepSampler, fit, poly_lr


def _train(out, stop_after=None):
    torch.manual_seed(123)  # a different global seed must not matter: fit seeds itself
    method = build_method(CFG, 2)
    fit(method, ToySet(), TRAINING, out, {"config": CFG}, torch.device("cpu"),
        stop_after=stop_after)
    return method


def test_resume_gives_the_same_weights_as_an_uninterrupted_run(tmp_path):
    full = _train(tmp_path / "full")
    _train(tmp_path / "resumed", stop_after=3)  # stops after step 3 (checkpoint at 2 and 3)
    assert not (tmp_path / "resumed" / "classifier.pt").exists()
    resumed = _train(tmp_path / "resumed")
    for (name, a), b in zip(full.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    with open(tmp_path / "resumed" / "train_log.csv") as fh:
        steps = [int(r["step"]) for r in csv.DictReader(fh)]
    assert steps == list(range(1, 5))  # 2 epochs × 10 // 4 batches, each step logged once
    saved = torch.load(tmp_path / "full" / "classifier.pt", weights_only=False)
    assert saved["config"] == CFG and "torch" in saved["versions"]
    # the trunk on its own, for the refiners: exactly the method's backbone.* weights
    trunk = {k[len("backbone."):]: v for k, v in saved["method"].items()
             if k.startswith("backbone.")}
    assert saved["backbone"].keys() == trunk.keys()
    assert all(torch.equal(saved["backbone"][k], v) for k, v in trunk.items())


def test_training_lowers_the_loss(tmp_path):
    training = {**TRAINING, "epochs": 6}
    method = build_method({**CFG, "training": training}, 2)
    fit(method, ToySet(), training, tmp_path, {"config": CFG}, torch.device("cpu"))
    with open(tmp_path / "train_log.csv") as fh:
        losses = [float(r["loss"]) for r in csv.DictReader(fh)]
    assert np.mean(losses[-3:]) < 0.8 * np.mean(losses[:3])


def test_sampler_is_independent_of_the_start_step():
    full = list(StepSampler(10, 3, seed=0, start=0, stop=9))
    assert list(StepSampler(10, 3, seed=0, start=4, stop=9)) == full[4:]
    epoch0 = sorted(i for batch in full[:3] for i, _ in batch)
    assert len(set(epoch0)) == 9  # no repeats within an epoch


def test_poly_schedule():
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([{"params": [p], "initial_lr": 1.0}], lr=1.0)
    assert poly_lr([opt], 0, 10, 0.9) == 1.0
    poly_lr([opt], 5, 10, 0.9)
    assert opt.param_groups[0]["lr"] == np.float64(0.5) ** 0.9
