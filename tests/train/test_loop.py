import csv

import numpy as np
import torch

from wsss.methods.base import build_method
from wsss.train import StepSampler, fit, poly_lr

TRAINING = {
    "seed": 3, "epochs": 2, "batch_size": 4, "lr": 0.05, "momentum": 0.9, "nesterov": False,
    "weight_decay": 1e-4, "poly_power": 0.9, "new_layer_lr_mult": 10, "checkpoint_every": 2,
}
CFG = {"method": "baseline", "training": TRAINING,
       "backbone": {"name": "tiny", "output_stride": 8, "pretrained": "none"}}


class ToySet(torch.utils.data.Dataset):
    """Class k is a bright square in quadrant k; augmentation noise seeded by (epoch, index)."""

    def __len__(self):
        return 10

    def __getitem__(self, key):
        index, epoch = key
        rng = np.random.default_rng([index, epoch])
        image = rng.normal(0, 0.1, (3, 32, 32)).astype(np.float32)
        label = np.zeros(2, dtype=np.float32)
        for k in (index % 2, (index // 2) % 2):
            label[k] = 1
            image[:, 16 * k : 16 * k + 8, 4:12] += 2.0
        return {"image": torch.from_numpy(image), "label": torch.from_numpy(label)}


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
