import os
import signal
import stat
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from wsss.atomic import atomic_path, remove_stale_temps
from wsss.data import synthetic
from wsss.data.voc import save_mask
from wsss.store import CamReader, CamWriter, LabelWriter, combine_stores, write_json


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture(params=[0o022, 0o027], ids=["umask022", "umask027"])
def umask(request):
    old = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(old)


def test_outputs_get_the_mode_open_would_give_them(tmp_path, umask):
    """Results on a shared project folder must be readable by the group (not mkstemp's 0600);
    a file that existed before is replaced, its old mode not kept."""
    file_mode, dir_mode = 0o666 & ~umask, 0o777 & ~umask
    cams, labels = tmp_path / "res" / "cams.h5", tmp_path / "res" / "labels.h5"
    with CamWriter(cams, {"classes": ["a"]}) as w:
        w.add("x", np.zeros((1, 4, 4)), [0])
    with LabelWriter(labels, {"classes": ["a"]}) as w:
        w.add("x", np.zeros((4, 4), np.uint8))
    combine_stores(tmp_path / "res" / "view.h5", [cams], "cams")
    write_json(tmp_path / "res" / "metrics.json", {"miou": 0.5})
    ckpt = tmp_path / "res" / "ckpt.pt"
    ckpt.write_bytes(b"old")
    os.chmod(ckpt, 0o600)
    with atomic_path(ckpt) as tmp:
        torch.save({"w": torch.zeros(3)}, tmp)
    save_mask(tmp_path / "masks" / "x.png", np.zeros((4, 4), np.uint8))
    for name in ("res/cams.h5", "res/labels.h5", "res/view.h5", "res/metrics.json",
                 "res/ckpt.pt", "masks/x.png"):
        assert oct(_mode(tmp_path / name)) == oct(file_mode), name
    assert oct(_mode(tmp_path / "res")) == oct(dir_mode)


def test_a_generated_dataset_gets_the_umask_modes(tmp_path, umask):
    root = tmp_path / "syn"
    synthetic.generate(root, {"num_train": 2, "num_val": 1, "min_side": 32, "max_side": 40})
    files = [p for p in root.rglob("*") if p.is_file()]
    dirs = [root, *(p for p in root.rglob("*") if p.is_dir())]
    assert any(p.suffix == ".png" for p in files) and any(p.suffix == ".jpg" for p in files)
    assert {oct(_mode(p)) for p in files} == {oct(0o666 & ~umask)}
    assert {oct(_mode(p)) for p in dirs} == {oct(0o777 & ~umask)}


def _kill_while_writing(path) -> None:
    """A CAM writer SIGKILLed in the middle: its temp file stays behind."""
    script = f"""
import numpy as np, time
from wsss.store import CamWriter
with CamWriter({str(path)!r}, {{"classes": ["a"]}}) as w:
    w.add("a", np.zeros((1, 4, 4)), [0])
    print("writing", flush=True)
    time.sleep(60)
"""
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "writing"
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
    time.sleep(0.1)


def test_the_next_write_removes_the_temp_of_a_killed_writer(tmp_path):
    path = tmp_path / "cams.h5"
    _kill_while_writing(path)
    stale = [p.name for p in tmp_path.iterdir()]
    assert len(stale) == 1 and stale[0].startswith(".cams.h5.") and stale[0].endswith(".h5.tmp")
    # temps of other targets, and files that only look alike, are not this target's
    others = [".cams.h5.old.h5.tmp", ".cams.h5.abcd1234.h5.tmp.keep", ".xcams.h5.abcd1234.h5.tmp",
              ".cams.h5.abcd1234.tmp", ".cams.h5.abcd12345.h5.tmp", ".1-of-2.h5.abcd1234.h5.tmp"]
    for name in others:
        (tmp_path / name).write_bytes(b"x")
    with CamWriter(path, {"classes": ["a"]}) as w:
        w.add("b", np.zeros((1, 2, 2)), [0])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["cams.h5", *others])
    with CamReader(path) as r:
        assert r.ids == ["b"]


def test_stale_temps_of_an_earlier_version_are_removed_too(tmp_path):
    """Temps made by tempfile.mkstemp (8 characters of [a-z0-9_]) before this version."""
    target = tmp_path / "model.pt"
    (tmp_path / ".model.pt.k_9zq0_a.tmp").write_bytes(b"x")
    (tmp_path / ".model.pt.k_9zq0_a.pt.tmp").write_bytes(b"x")  # another suffix: not matched
    assert [p.name for p in remove_stale_temps(target)] == [".model.pt.k_9zq0_a.tmp"]
    assert [p.name for p in tmp_path.iterdir()] == [".model.pt.k_9zq0_a.pt.tmp"]


def test_an_error_that_is_not_a_failed_write_passes_unchanged(tmp_path):
    with pytest.raises(FileNotFoundError), atomic_path(tmp_path / "x.json") as tmp:
        tmp.write_text("{}")
        (tmp_path / "missing-input").read_text()
    with pytest.raises(ValueError, match="bad value"), atomic_path(tmp_path / "x.json"):
        raise ValueError("bad value")
    assert list(tmp_path.iterdir()) == []
