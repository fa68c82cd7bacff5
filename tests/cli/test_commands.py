"""The stage commands as the workflow runs them: real processes, real files."""

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from wsss.store import CamReader

METHOD = {
    "method": "baseline",
    "backbone": {"name": "tiny", "output_stride": 8, "pretrained": "none", "freeze_bn": False},
    "training": {"seed": 0, "epochs": 40, "batch_size": 2, "lr": 0.05, "momentum": 0.9,
                 "nesterov": False, "weight_decay": 1e-4, "poly_power": 0.9,
                 "new_layer_lr_mult": 10, "crop_size": 64, "resize_long": [48, 80], "hflip": True,
                 "color_jitter": 0.2, "num_workers": 0, "checkpoint_every": 1,
                 "cache_max_images": 100},
    "inference": {"scales": [1.0, 0.5], "flip": True, "batch_size": 3},
}


def wsss(*args, check=True):
    proc = subprocess.run([sys.executable, "-m", "wsss", *args], capture_output=True, text=True,
                          timeout=300)
    if check and proc.returncode != 0:
        raise AssertionError(proc.stderr[-3000:])
    return proc


@pytest.fixture
def indexed(tmp_path, tiny_voc_config):
    index = tmp_path / "index.json"
    wsss("index", "--dataset", json.dumps(tiny_voc_config), "--splits", "train", "val",
         "--out", str(index))
    return tiny_voc_config, index


def _train_args(dataset, index, out):
    return ["train", "--dataset", json.dumps(dataset), "--index", str(index), "--split", "train",
            "--variant", "v", "--config", json.dumps(METHOD), "--out", str(out)]


def test_train_killed_and_rerun_ends_with_the_same_weights(tmp_path, indexed):
    dataset, index = indexed
    wsss(*_train_args(dataset, index, tmp_path / "full"))
    killed = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "wsss", *_train_args(dataset, index, killed)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (killed / "checkpoint.pt").exists() and time.time() < deadline:
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert (killed / "checkpoint.pt").exists()
    assert not (killed / "classifier.pt").exists(), "the run ended before it could be killed"
    step = torch.load(killed / "checkpoint.pt", weights_only=False)["step"]
    assert 0 < step < 80
    wsss(*_train_args(dataset, index, killed))
    full = torch.load(tmp_path / "full" / "classifier.pt", weights_only=False)["method"]
    resumed = torch.load(killed / "classifier.pt", weights_only=False)["method"]
    for key, value in full.items():
        assert torch.equal(value, resumed[key]), key


def test_cams_of_labelled_classes_normalised_at_two_resolutions(tmp_path, indexed):
    dataset, index = indexed
    method = {**METHOD, "training": {**METHOD["training"], "epochs": 2}}
    wsss("train", "--dataset", json.dumps(dataset), "--index", str(index), "--split", "train",
         "--variant", "v", "--config", json.dumps(method), "--out", str(tmp_path))
    out = tmp_path / "cams" / "val.h5"
    wsss("cams", "--dataset", json.dumps(dataset), "--index", str(index), "--split", "val",
         "--variant", "v", "--config", json.dumps(method), "--checkpoint",
         str(tmp_path / "classifier.pt"), "--out", str(out))
    labels = json.loads(index.read_text())["splits"]["val"]
    fired = []
    with CamReader(out) as cams:
        assert cams.ids == labels["ids"]
        assert cams.attr("config") == method and cams.attr("scales") == [1.0, 0.5]
        for image_id in cams.ids:
            cam, keys = cams.get(image_id)
            low, _ = cams.get(image_id, lowres=True)
            h, w = labels["sizes"][image_id]
            assert keys.tolist() == labels["labels"][image_id]
            assert cam.shape == (len(keys), h, w)
            assert low.shape == (len(keys), math.ceil(h / 4), math.ceil(w / 4))
            peaks = cam.reshape(len(keys), -1).max(1)  # 1, or 0 where a class never fires
            assert cam.min() >= 0 and np.all((np.abs(peaks - 1) < 1e-2) | (peaks == 0))
            fired.append(peaks.max())
    assert max(fired) > 0.99


def test_missing_dataset_root_is_named_and_nothing_written(tmp_path, tiny_voc_config):
    bad = {**tiny_voc_config, "root": str(tmp_path / "no_such_voc")}
    out = tmp_path / "index.json"
    proc = wsss("index", "--dataset", json.dumps(bad), "--splits", "train", "--out", str(out),
                check=False)
    assert proc.returncode != 0 and "no_such_voc" in proc.stderr
    assert not out.exists()


def test_corrupt_image_is_named_by_id(tmp_path, tiny_voc_config):
    root = Path(tiny_voc_config["root"])
    image_id = (root / "ImageSets/Segmentation/train.txt").read_text().split()[0]
    image = next((root / "JPEGImages").glob(f"{image_id}.*"))
    image.write_bytes(b"not an image")
    out = tmp_path / "index.json"
    proc = wsss("index", "--dataset", json.dumps(tiny_voc_config), "--splits", "train",
                "--threads", "2", "--out", str(out), check=False)
    assert proc.returncode != 0 and image_id in proc.stderr
    assert not out.exists()
