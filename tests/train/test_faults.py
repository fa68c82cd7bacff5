"""Runs that go wrong: a loss that becomes NaN or infinite, and checkpoints that are not this
run's (another config, code, data or architecture) and so must not be resumed."""

from __future__ import annotations

import json
import logging
import math
import os
import subprocess
import sys

import pytest
import torch
from deeplab.cases import gt_store, make_cfg
from fakes import TRAINING, ToySet, log_rows
from torch import nn

from wsss import cli, registry
from wsss.classifier import train_classifier
from wsss.data.index import build_index, write_index
from wsss.data.voc import VocDataset
from wsss.deeplab.training import train as train_deeplab
from wsss.errors import CheckpointError, TrainingDiverged
from wsss.methods.base import build_method
from wsss.train import Trainable, fit
from wsss.train.resume import resume_key

CPU = torch.device("cpu")
EIGHT = {**TRAINING, "epochs": 4}  # 10 images in batches of 4: 8 steps, checkpoints every 2
CFG = {"method": "line", "training": EIGHT}


class Line(Trainable):
    """A linear map of the images' channel means onto their labels; its loss is made NaN at
    step `nan_at`, or a weight infinite after step `inf_at` (1-based steps, as in the log)."""

    def __init__(self, width: int = 2, nan_at: int | None = None, inf_at: int | None = None):
        super().__init__()
        torch.manual_seed(0)
        self.lin = nn.Linear(3, width)
        self.nan_at, self.inf_at = nan_at, inf_at

    def param_groups(self):
        return [{"params": list(self.parameters()), "lr_mult": 1.0}]

    def training_step(self, batch, step):
        out = self.lin(batch["image"].mean((2, 3)))[:, :2]
        loss = ((out - batch["label"]) ** 2).mean()
        if step + 1 == self.nan_at:
            loss = loss * math.nan
        self.optimize(loss)
        if step + 1 == self.inf_at:
            with torch.no_grad():
                self.lin.bias[1] = math.inf
        return {"loss": loss.item(), "scale": 0.5}


def _fit(out, net=None, stop_after=None, meta=None):
    net = Line() if net is None else net
    fit(net, ToySet(), EIGHT, out, meta or {"config": CFG, "variant": "v1"}, CPU,
        stop_after=stop_after)
    return net


def _checkpoint(out):
    return torch.load(out / "checkpoint.pt", weights_only=False)


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _doctor(path, shift: float = 1.0, code: str | None = None) -> None:
    """Shift a checkpoint's weights (so that resuming it shows), and give it another code
    digest (as if the code had been edited since it was written) when `code`."""
    state = torch.load(path, weights_only=False)
    state["method"] = {k: v + shift if v.is_floating_point() else v
                       for k, v in state["method"].items()}
    if code is not None:
        state["resume_key"] = {**state["resume_key"], "code": code}
    torch.save(state, path)


# -- a loss or a weight that becomes NaN or infinite ----------------------------------------------

@pytest.mark.parametrize("bad_step", [5, 6])  # 6 is a checkpoint step, 5 is not
def test_a_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path, bad_step):
    with pytest.raises(TrainingDiverged) as err:
        _fit(tmp_path / "bad", Line(nan_at=bad_step))
    message = str(err.value)
    assert "variant 'v1'" in message and f"step {bad_step} of 8" in message
    assert "loss=nan" in message and "scale=0.5" in message and "(loss)" in message
    assert "\n" not in message
    assert not (tmp_path / "bad" / "classifier.pt").exists()
    saved = _checkpoint(tmp_path / "bad")
    assert saved["step"] == 4
    stopped = _fit(tmp_path / "stopped", stop_after=4).state_dict()
    assert _same(saved["method"], stopped)
    assert all(torch.isfinite(v).all() for v in saved["method"].values())


def test_an_infinite_weight_is_never_checkpointed(tmp_path):
    # step 4's loss is finite, its update leaves an infinite bias: step 4's checkpoint is due
    with pytest.raises(TrainingDiverged, match=r"step 4 of 8: non-finite weights \(lin\.bias\)"):
        _fit(tmp_path, Line(inf_at=4))
    assert _checkpoint(tmp_path)["step"] == 2
    assert not (tmp_path / "classifier.pt").exists()


def _baseline(lr: float) -> dict:
    """A baseline classifier block on the tiny ResNet: 2 epochs of the tiny VOC fixture."""
    training = {"seed": 0, "epochs": 2, "batch_size": 2, "lr": lr, "momentum": 0.9,
                "nesterov": False, "weight_decay": 1e-4, "poly_power": 0.9,
                "new_layer_lr_mult": 10, "crop_size": 32, "resize_long": [32, 48],
                "hflip": True, "color_jitter": 0.0, "num_workers": 0, "checkpoint_every": 10,
                "cache_max_images": 100}
    return {"method": "baseline", "training": training,
            "backbone": {"name": "tiny", "output_stride": 8, "pretrained": "none"}}


def test_the_cli_reports_a_diverging_classifier_in_one_line(tmp_path, tiny_voc_config, capsys):
    ds = VocDataset.from_config(tiny_voc_config)
    write_index(tmp_path / "index.json", build_index(ds, ["train"]))
    cfg = _baseline(lr=1e30)
    out = tmp_path / "out"
    code = cli.main(["train", "--dataset", json.dumps(tiny_voc_config), "--index",
                     str(tmp_path / "index.json"), "--variant", "huge_lr", "--config",
                     json.dumps(cfg), "--device", "cpu", "--out", str(out)])
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("wsss train:")]
    assert code == 1 and len(lines) == 1 and "Traceback" not in err
    assert "variant 'huge_lr'" in lines[0] and "diverged at step" in lines[0]
    assert not (out / "classifier.pt").exists()


# -- checkpoints of another run -------------------------------------------------------------------

def test_a_checkpoint_of_other_code_is_not_resumed(tmp_path, caplog):
    fresh = _fit(tmp_path / "fresh").state_dict()
    # control: with its own key the (shifted) checkpoint is resumed, and that shows
    _fit(tmp_path / "same", stop_after=4)
    _doctor(tmp_path / "same" / "checkpoint.pt")
    assert not _same(_fit(tmp_path / "same").state_dict(), fresh)

    _fit(tmp_path / "edited", stop_after=4)
    _doctor(tmp_path / "edited" / "checkpoint.pt", code="0" * 64)
    with caplog.at_level(logging.WARNING, logger="wsss.train.loop"):
        assert _same(_fit(tmp_path / "edited").state_dict(), fresh)
    assert "checkpoint.pt" in caplog.text and "code changed" in caplog.text
    assert [r["step"] for r in log_rows(tmp_path / "edited" / "train_log.csv")] == [
        str(s) for s in range(1, 9)]


def test_a_finished_checkpoint_of_other_code_is_not_the_result(tmp_path):
    fresh = _fit(tmp_path / "fresh").state_dict()
    out = tmp_path / "rerun"
    _fit(out)  # a whole run: its checkpoint is of step 8, the last
    (out / "classifier.pt").unlink()  # as Snakemake does before rerunning the job
    _doctor(out / "checkpoint.pt", code="0" * 64)
    _fit(out)
    assert _same(torch.load(out / "classifier.pt", weights_only=False)["method"], fresh)
    assert len(log_rows(out / "train_log.csv")) == 8  # every step trained again


def test_the_warning_names_the_config_keys_that_differ(tmp_path, caplog):
    _fit(tmp_path, stop_after=2)
    other = {**CFG, "training": {**EIGHT, "lr": 0.01}, "extra": 1}
    with caplog.at_level(logging.WARNING, logger="wsss.train.loop"):
        _fit(tmp_path, stop_after=1, meta={"config": other})
    assert "another config (extra, training.lr)" in caplog.text
    assert _checkpoint(tmp_path)["step"] == 1  # started afresh, replaced at its checkpoint


def test_a_checkpoint_of_another_architecture_is_named(tmp_path):
    _fit(tmp_path, stop_after=2)
    with pytest.raises(CheckpointError, match=r"checkpoint\.pt.*lin\.weight \[2, 3\] in the "
                       r"file, \[3, 3\] here; lin\.bias \[2\] in the file, \[3\] here"):
        _fit(tmp_path, Line(width=3))


def test_an_edited_plugin_changes_the_code_digest(tmp_path):
    path = tmp_path / "myline.py"
    path.write_text("from torch import nn\n\nclass Net(nn.Module):\n    pass\n")
    module = registry.load(registry.Component("method", "myline", f"file:{path}", path))
    net = module.Net()
    before = resume_key(net)["code"]
    assert resume_key(net)["code"] == before
    path.write_text(path.read_text() + "# the loss fixed\n")
    assert resume_key(net)["code"] != before


def test_the_code_digest_is_the_same_in_another_process(tmp_path):
    # a killed job resumes in a new process: a digest that varied with the process (string
    # hashing, import order) would start every rerun afresh
    cfg = {"method": "baseline", "training": EIGHT,
           "backbone": {"name": "tiny", "output_stride": 8, "pretrained": "none"}}
    script = ("import json, sys\nfrom wsss.methods.base import build_method\n"
              "from wsss.train.resume import resume_key\n"
              "print(resume_key(build_method(json.loads(sys.argv[1]), 2))['code'])")
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    proc = subprocess.run([sys.executable, "-c", script, json.dumps(cfg)], capture_output=True,
                          text=True, env=env, timeout=120, check=True)
    here = resume_key(build_method(cfg, 2))
    assert proc.stdout.strip() == here["code"]
    assert here["code"] != resume_key(Line())["code"]  # the baseline's modules are in it


def test_a_regenerated_index_is_not_resumed_by_the_classifier(tmp_path, tiny_voc_config, caplog):
    ds = VocDataset.from_config(tiny_voc_config)
    index = tmp_path / "index.json"
    write_index(index, build_index(ds, ["train"]))
    cfg = _baseline(lr=0.05)

    def run(out, **kw):
        path = train_classifier(ds, index, "train", "v", cfg, out, CPU, **kw)
        return None if kw else torch.load(path, weights_only=False)["method"]

    fresh = run(tmp_path / "fresh")
    run(tmp_path / "same", stop_after=2)
    _doctor(tmp_path / "same" / "checkpoint.pt")
    assert not _same(run(tmp_path / "same"), fresh)  # control: the same index resumes
    run(tmp_path / "new", stop_after=2)
    _doctor(tmp_path / "new" / "checkpoint.pt")
    write_index(index, build_index(ds, ["train", "val"]))  # regenerated: other bytes
    with caplog.at_level(logging.WARNING, logger="wsss.train.loop"):
        assert _same(run(tmp_path / "new"), fresh)
    assert f"data changed: index ({index})" in caplog.text


def test_deeplab_on_regenerated_labels_is_not_the_old_network(tmp_path, tiny_voc_config):
    ds = VocDataset.from_config(tiny_voc_config)
    first = ds.ids("train")[0]

    def relabelled(image_id, mask):  # the refiner's labels of one image changed
        return mask * 0 if image_id == first else mask

    fresh = tmp_path / "fresh"
    train_deeplab(ds, "train", gt_store(ds, "train", tmp_path / "new.h5", edit=relabelled),
                  make_cfg(), fresh, "cpu")
    labels = gt_store(ds, "train", tmp_path / "labels.h5")
    out = tmp_path / "rerun"
    train_deeplab(ds, "train", labels, make_cfg(), out, "cpu")
    (out / "deeplab.pt").unlink()
    gt_store(ds, "train", labels, edit=relabelled)
    train_deeplab(ds, "train", labels, make_cfg(), out, "cpu")
    got = torch.load(out / "deeplab.pt", weights_only=False)["method"]
    assert _same(got, torch.load(fresh / "deeplab.pt", weights_only=False)["method"])
