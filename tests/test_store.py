import json
import os
import pickle
import signal
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest

from wsss.store import (
    CamReader,
    CamWriter,
    LabelMap,
    LabelReader,
    LabelWriter,
    StoreError,
    write_json,
)


def test_cam_store_round_trip(tmp_path):
    path = tmp_path / "cams" / "train.h5"
    cam = np.random.default_rng(0).random((2, 5, 7)).astype(np.float32)
    with CamWriter(path, {"classes": ["a", "b", "c"], "config": {"x": 1}}) as w:
        w.add("2007_000032", cam, [0, 2], cam_lowres=cam[:, ::4, ::4])
        w.add("empty", np.zeros((0, 3, 3)), [])
    with CamReader(path) as r:
        assert r.ids == ["2007_000032", "empty"]
        assert r.classes == ["a", "b", "c"]
        assert r.attr("config") == {"x": 1}
        assert "torch" in r.attr("versions") or "numpy" in r.attr("versions")
        got, keys = r.get("2007_000032")
        np.testing.assert_allclose(got, cam, atol=1e-3)  # float16 storage
        assert keys.tolist() == [0, 2]
        low, _ = r.get("2007_000032", lowres=True)
        assert low.shape == (2, 2, 2)
        assert r.get("empty")[0].shape == (0, 3, 3)
        r.check(["empty"], ["a", "b", "c"])
        with pytest.raises(StoreError, match="'missing_id' is missing"):
            r.check(["empty", "missing_id"])
        with pytest.raises(StoreError, match="class list"):
            r.check(["empty"], ["a", "b"])


def test_label_store_round_trip_and_kind_check(tmp_path):
    path = tmp_path / "labels.h5"
    lab = np.array([[0, 1], [255, 2]], dtype=np.uint8)
    with LabelWriter(path, {"classes": ["a", "b"]}) as w:
        w.add("x", lab)
    with LabelReader(path) as r:
        np.testing.assert_array_equal(r.get("x"), lab)
    with pytest.raises(StoreError, match="expected a 'cams' store"):
        CamReader(path)
    with pytest.raises(StoreError, match="no such"):
        LabelReader(tmp_path / "nope.h5")


def test_exception_inside_writer_leaves_nothing(tmp_path):
    path = tmp_path / "cams.h5"
    with pytest.raises(RuntimeError), CamWriter(path, {"classes": ["a"]}) as w:
        w.add("a", np.zeros((1, 2, 2)), [0])
        raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []


def test_killed_writer_leaves_no_valid_looking_file(tmp_path):
    """SIGKILL in the middle of writing: the target path never exists."""
    path = tmp_path / "cams.h5"
    script = f"""
import numpy as np, time, sys
from wsss.store import CamWriter
with CamWriter({str(path)!r}, {{"classes": ["a"]}}) as w:
    w.add("a", np.zeros((1, 4, 4)), [0])
    print("writing", flush=True)
    time.sleep(60)
"""
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "writing"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    time.sleep(0.1)
    assert not path.exists()
    leftovers = list(tmp_path.iterdir())
    assert all(p.name.startswith(".") and p.name.endswith(".tmp") for p in leftovers)
    for p in leftovers:  # the temp file is not a complete store either: unreadable or no ids
        try:
            with h5py.File(p, "r", locking=False) as f:
                assert "ids" not in f.attrs
        except OSError:
            pass


def test_write_json_atomic(tmp_path):
    path = tmp_path / "a" / "b.json"
    write_json(path, {"miou": 0.5})
    assert json.loads(path.read_text()) == {"miou": 0.5}
    assert [p.name for p in path.parent.iterdir()] == ["b.json"]


def test_label_map_survives_pickling(tmp_path):
    path = tmp_path / "labels.h5"
    with LabelWriter(path, {"classes": ["cat", "dog"]}) as writer:
        writer.add("a", np.full((3, 4), 2, np.uint8))
    labels = LabelMap(path, ["a"])
    assert labels["a"].sum() == 24
    copy = pickle.loads(pickle.dumps(labels))
    np.testing.assert_array_equal(copy["a"], labels["a"])
    labels.close()
    copy.close()
