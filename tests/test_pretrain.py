"""The pretrain stage: a short real run writes weights that backbones load, with a held-out
accuracy it really measured; resume, augmentation and config errors."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from wsss.data.synthetic.corpus import corpus
from wsss.data.transforms import normalize
from wsss.errors import BackboneError, ConfigError
from wsss.models.backbones import build_backbone
from wsss.pretrain import CorpusSet, augment_batch, pretrain, pretrain_config, side_paths
from wsss.schema import validate_config

REPO = Path(__file__).resolve().parents[1]
CPU = torch.device("cpu")
# four shapes, enough images and epochs to learn them in a few seconds on one thread
RUN = {"corpus": {"classes": 4, "train_per_class": 128, "held_out_per_class": 32, "size": 48},
       "training": {"epochs": 4, "batch_size": 16, "optimizer": "adamw", "lr": 0.002,
                    "weight_decay": 1.0e-4, "checkpoint_every": 16}}
QUICK = {"corpus": {"classes": 2, "train_per_class": 24, "held_out_per_class": 4, "size": 32},
         "training": {"epochs": 2, "batch_size": 8, "checkpoint_every": 2}}


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    torch.set_num_threads(1)
    return pretrain("tiny", RUN, tmp_path_factory.mktemp("pre") / "tiny.pt", CPU)


def test_the_file_loads_strictly_at_both_strides_with_the_trained_weights(trained):
    payload = torch.load(trained, map_location="cpu", weights_only=True)
    assert payload["backbone"] == "tiny"
    assert not [k for k in payload["state_dict"] if k.startswith("fc.")]
    for stride in (8, 16):
        loaded = build_backbone("tiny", stride, str(trained)).net_state_dict()
        assert loaded.keys() == payload["state_dict"].keys()
        for key, value in payload["state_dict"].items():
            assert torch.equal(loaded[key], value), (stride, key)
    fresh = build_backbone("tiny", 8, "none").net_state_dict()
    assert not torch.equal(fresh["layer3.0.conv1.weight"],
                           payload["state_dict"]["layer3.0.conv1.weight"])


def test_held_out_accuracy_is_measured_and_training_raises_it(trained):
    """The recorded accuracy is the held-out part's under the file's own trunk and head
    (recomputed here with the benchmark's per-image normalisation), and training moved it far
    from the chance-level network at init: a no-op optimiser fails here."""
    payload = torch.load(trained, map_location="cpu", weights_only=True)
    cfg = pretrain_config(RUN)
    images, labels = corpus(cfg["corpus"], "held_out")
    trunk = build_backbone("tiny", 8, str(trained)).eval()
    head = torch.nn.Linear(trunk.out_channels, 4)
    head.load_state_dict(payload["head"])
    with torch.no_grad():
        x = torch.from_numpy(np.stack([normalize(im) for im in images]))
        pred = head(trunk(x).mean(dim=(2, 3))).argmax(1).numpy()
    accuracy = float((pred == labels).mean())
    assert payload["held_out_accuracy"] == pytest.approx(accuracy, abs=1.5 / len(labels))
    assert payload["held_out_accuracy"] >= 0.45  # chance: 0.25
    assert payload["held_out_accuracy"] >= payload["initial_held_out_accuracy"] + 0.2
    curve = payload["curve"]
    assert [r["epoch"] for r in curve] == [1, 2, 3, 4]
    assert curve[-1]["held_out_accuracy"] == payload["held_out_accuracy"]
    assert curve[-1]["loss"] < curve[0]["loss"]
    summary = json.loads(side_paths(trained)["json"].read_text())
    assert summary["held_out_accuracy"] == payload["held_out_accuracy"]
    rows = side_paths(trained)["curve"].read_text().splitlines()
    assert rows[0] == "epoch,loss,train_accuracy,held_out_accuracy" and len(rows) == 5


def test_another_architecture_refuses_the_file_by_name(trained):
    with pytest.raises(BackboneError, match=re.escape(str(trained))):
        build_backbone("resnet50", 16, str(trained))


def test_killed_and_rerun_ends_with_the_same_file(tmp_path):
    torch.set_num_threads(1)
    whole = pretrain("tiny", QUICK, tmp_path / "a" / "tiny.pt", CPU)
    cut = tmp_path / "b" / "tiny.pt"
    pretrain("tiny", QUICK, cut, CPU, stop_after=8)  # 6 steps an epoch: mid-way through the 2nd
    assert not cut.exists()
    pretrain("tiny", QUICK, cut, CPU)
    a, b = (torch.load(p, map_location="cpu", weights_only=True) for p in (whole, cut))
    assert a["curve"] == b["curve"] and len(a["curve"]) == 2
    for key, value in a["state_dict"].items():
        assert torch.equal(value, b["state_dict"][key]), key


def test_augmentation_known_cases():
    image = torch.arange(2 * 3 * 4 * 6, dtype=torch.float32).view(2, 3, 4, 6)
    keep = torch.tensor([[1.0, 1.0, 0.0, 0.0], [1.0, -1.0, 0.0, 0.0]])
    out = augment_batch(image, keep)
    torch.testing.assert_close(out[0], image[0])
    torch.testing.assert_close(out[1], image[1].flip(-1))
    # zooming out by 2 shrinks a constant image into the middle half, zero (the mean) around
    shrunk = augment_batch(torch.full((1, 3, 8, 8), 5.0), torch.tensor([[0.5, 1.0, 0.0, 0.0]]))
    torch.testing.assert_close(shrunk[0, :, 3:5, 3:5], torch.full((3, 2, 2), 5.0))
    assert float(shrunk[0, :, 0, 0].abs().max()) == 0.0


def test_augmentation_is_drawn_per_index_and_epoch_within_range():
    images = np.zeros((4, 8, 8, 3), np.uint8)
    training = {"seed": 0, "scale": [0.8, 1.25], "hflip": True}
    ds = CorpusSet(images, np.arange(4), training)
    assert torch.equal(ds[(1, 0)]["augment"], ds[(1, 0)]["augment"])
    draws = torch.stack([ds[(i, e)]["augment"] for i in range(4) for e in range(8)])
    assert len({tuple(r.tolist()) for r in draws}) == len(draws)
    assert float(draws[:, 0].min()) >= 0.8 and float(draws[:, 0].max()) <= 1.25
    assert set(draws[:, 1].tolist()) == {-1.0, 1.0}
    slack = (1 - 1 / draws[:, 0]).abs()
    assert bool((draws[:, 2].abs() <= slack + 1e-6).all())
    no_flip = CorpusSet(images, np.arange(4), {**training, "hflip": False})
    assert {no_flip[(i, 0)]["augment"][1].item() for i in range(4)} == {1.0}


def test_a_misspelt_or_bad_key_is_named():
    with pytest.raises(ConfigError, match=r"config key pretrain\.corpus:.*'clases'"):
        pretrain_config({"corpus": {"clases": 3}})
    with pytest.raises(ConfigError, match=r"config key pretrain\.training\.epochs"):
        pretrain_config({"training": {"epochs": 0}})
    cfg = yaml.safe_load((REPO / "config.yaml").read_text())
    cfg["pretrain"] = {"corpus": {"classes": 40}}
    with pytest.raises(ConfigError, match=r"config key pretrain\.corpus\.classes"):
        validate_config(cfg)


def test_the_command_names_a_bad_key_and_writes_nothing(tmp_path, capsys):
    from wsss.cli import main

    out = tmp_path / "tiny.pt"
    rc = main(["pretrain", "--backbone", "tiny", "--config", '{"training": {"epoch": 3}}',
               "--out", str(out), "--device", "cpu"])
    assert rc == 1
    assert "'epoch'" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_the_workflow_and_a_hand_run_fill_the_same_defaults():
    """validate_config fills the block the workflow passes; pretrain_config fills a block
    given by hand: the same run either way."""
    base = yaml.safe_load((REPO / "config.yaml").read_text())
    for block in ({}, {"corpus": {"classes": 8}, "training": {"epochs": 3}}):
        cfg = copy.deepcopy(base)
        cfg["pretrain"] = copy.deepcopy(block)
        resolved = validate_config(cfg)["pretrain"]
        assert resolved.pop("backbones") == {}
        assert resolved == pretrain_config(block)
    assert pretrain_config(None) == pretrain_config({})


def test_a_backbone_entry_changes_that_backbones_recipe_only():
    """`backbones: {vit_tiny: {training: ...}}` is merged for vit_tiny, key by key, and the
    other backbones train with the shared block unchanged (so their weights do not rerun)."""
    from wsss.pretrain import for_backbone

    block = {"training": {"epochs": 3, "lr": 0.05},
             "backbones": {"vit_tiny": {"training": {"optimizer": "adamw", "lr": 0.001}}}}
    assert for_backbone(block, "tiny") == {"training": {"epochs": 3, "lr": 0.05}}
    assert for_backbone(block, "vit_tiny") == {
        "training": {"epochs": 3, "lr": 0.001, "optimizer": "adamw"}}
    assert pretrain_config(for_backbone(block, "tiny")) == pretrain_config(
        {"training": {"epochs": 3, "lr": 0.05}})
