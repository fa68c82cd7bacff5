"""The classifier stage: `init_from` another variant's classifier.pt, and resume over it."""

import numpy as np
import pytest
import torch
from torch import nn

import wsss.classifier
from wsss.classifier import train_classifier
from wsss.data.index import build_index, write_index
from wsss.data.voc import VocDataset, save_mask
from wsss.errors import ConfigError

TRAINING = {"seed": 0, "epochs": 2, "batch_size": 2, "lr": 0.05, "momentum": 0.9,
            "nesterov": False, "weight_decay": 1e-4, "poly_power": 0.9, "new_layer_lr_mult": 10,
            "crop_size": 32, "resize_long": [32, 48], "hflip": True, "color_jitter": 0.0,
            "num_workers": 0, "checkpoint_every": 10, "cache_max_images": 100}
CFG = {"method": "baseline", "training": TRAINING,
       "backbone": {"name": "tiny", "output_stride": 8, "pretrained": "none"}}
CPU = torch.device("cpu")


@pytest.fixture
def tiny(tmp_path, tiny_voc_config):
    ds = VocDataset.from_config(tiny_voc_config)
    write_index(tmp_path / "index.json", build_index(ds, ["train"]))
    return ds, tmp_path / "index.json"


def _train(tiny, out, cfg=CFG, **kw):
    ds, index = tiny
    return train_classifier(ds, index, "train", "v", cfg, out, CPU, **kw)


def _weights(path):
    return torch.load(path, weights_only=False)["method"]


def _captured(monkeypatch):
    """Stop train_classifier at fit and keep the method it would train."""
    seen = []
    monkeypatch.setattr(wsss.classifier, "fit", lambda method, *a, **k: seen.append(method))
    return seen


def test_init_from_starts_from_the_other_classifier(tiny, tmp_path, monkeypatch):
    source = _train(tiny, tmp_path / "a")
    other = {**CFG, "training": {**TRAINING, "seed": 1}}  # its own initialisation differs
    seen = _captured(monkeypatch)
    _train(tiny, tmp_path / "b", other)
    fresh = seen.pop().state_dict()
    _train(tiny, tmp_path / "b", other, init_from=source)
    started = seen.pop().state_dict()
    trained = _weights(source)
    assert started.keys() == trained.keys()
    for name, value in trained.items():
        assert torch.equal(started[name], value), name
    assert not torch.equal(fresh["classifier.weight"], trained["classifier.weight"])


def test_init_from_a_network_that_shares_nothing_names_the_file(tiny, tmp_path, monkeypatch):
    _captured(monkeypatch)
    path = tmp_path / "other.pt"
    torch.save({"method": nn.Sequential(nn.Linear(3, 4)).state_dict()}, path)
    with pytest.raises(ConfigError, match="other.pt"):
        _train(tiny, tmp_path / "b", init_from=path)
    # the same names with other shapes (another class count) match nothing either
    torch.save({"method": {"classifier.weight": torch.zeros(5, 7, 1, 1)}}, path)
    with pytest.raises(ConfigError, match="other.pt"):
        _train(tiny, tmp_path / "b", init_from=path)


def test_a_partial_match_loads_what_matches(tiny, tmp_path, monkeypatch):
    source = _train(tiny, tmp_path / "a")
    seen = _captured(monkeypatch)
    _train(tiny, tmp_path / "b", {**CFG, "training": {**TRAINING, "seed": 1}})
    fresh = seen.pop()
    fresh.classifier = nn.Conv2d(fresh.backbone.out_channels, 3, 1, bias=False)  # 3 classes
    mine = fresh.classifier.weight.detach().clone()
    src = _weights(source)
    assert any(not torch.equal(v, src["backbone." + k])
               for k, v in fresh.backbone.state_dict().items())
    assert fresh.init_from(src, source="a") == len(src) - 1  # all but the classifier
    assert torch.equal(fresh.classifier.weight, mine)
    for name, value in fresh.backbone.state_dict().items():
        assert torch.equal(value, src["backbone." + name]), name


def test_resume_over_init_from_matches_an_uninterrupted_run(tiny, tmp_path):
    source = _train(tiny, tmp_path / "a")
    other = {**CFG, "training": {**TRAINING, "seed": 1}}
    full = _weights(_train(tiny, tmp_path / "full", other, init_from=source))
    _train(tiny, tmp_path / "killed", other, init_from=source, stop_after=3)
    resumed = _weights(_train(tiny, tmp_path / "killed", other, init_from=source))
    for name, value in full.items():
        assert torch.equal(resumed[name], value), name
    assert not torch.equal(full["classifier.weight"], _weights(source)["classifier.weight"])


def test_images_without_foreground_are_dropped_from_training_and_counted(tmp_path,
                                                                         tiny_voc_config):
    """As the papers train: an image with no foreground class has no image-level label to
    learn from, so it leaves the training set (not the split: its CAMs are still made)."""
    ds = VocDataset.from_config(tiny_voc_config)
    save_mask(ds.mask_path("2011_003276"), np.zeros((52, 44), np.uint8))  # background only
    write_index(tmp_path / "index.json", build_index(ds, ["train"]))
    state = torch.load(_train((ds, tmp_path / "index.json"), tmp_path / "c"), weights_only=False)
    assert state["skipped_no_foreground"] == 1
    # 3 images in batches of 2: one step per epoch (the 4 of the split would make two)
    assert state["steps"] == TRAINING["epochs"] * 1
