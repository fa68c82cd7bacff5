"""A killed run's lock: the same command clears it when no run is alive, and refuses while one is.

The workflow test kills a real Snakemake run of the workflow (the whole process group, as a lost
login or a preemption does) and runs the same command again, with nothing but the default profile.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_workflow import _tiny_config, _write_config

from wsss.locks import LOCK_DIR, OWNER, check_lock, live_runs

REPO = Path(__file__).resolve().parents[1]


def _lock(workdir: Path) -> Path:
    (workdir / LOCK_DIR).mkdir(parents=True)
    path = workdir / LOCK_DIR / "0.output.lock"
    path.write_text(str(workdir / "results/x") + "\n")
    return path


def test_a_lock_nobody_holds_is_cleared_and_the_run_records_itself(tmp_path):
    lock = _lock(tmp_path)
    note = check_lock(tmp_path)
    assert "cleared a stale lock" in note and not lock.exists()
    owner = json.loads((tmp_path / OWNER).read_text())
    assert owner == {"host": socket.gethostname(), "pid": os.getpid()}
    assert check_lock(tmp_path) is None  # nothing left to clear


def test_a_lock_recorded_by_another_host_is_kept_and_named(tmp_path):
    lock = _lock(tmp_path)
    (tmp_path / OWNER).write_text(json.dumps({"host": "login-7.elsewhere", "pid": 1}))
    note = check_lock(tmp_path)
    assert "login-7.elsewhere" in note and "snakemake --unlock" in note
    assert lock.exists()


def test_a_stage_command_still_running_in_the_directory_keeps_the_lock(tmp_path):
    """A `wsss` job that outlived its killed Snakemake is still writing: not stale (a real
    stage command, writing a dataset far too big to finish during the test)."""
    lock = _lock(tmp_path)
    synthetic = {**_tiny_config()["dataset"]["synthetic"], "num_train": 100000}
    job = subprocess.Popen([str(Path(sys.executable).with_name("wsss")), "synthetic", "--threads",
                            "1", "--config", json.dumps(synthetic), "--out", "data"],
                           cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 30
        while not live_runs(tmp_path) and time.time() < deadline:
            time.sleep(0.2)
        note = check_lock(tmp_path)
        assert f"pid {job.pid}" in note and lock.exists()
        assert live_runs(tmp_path / "results") == []  # another folder is another run
    finally:
        job.kill()
        job.wait()
    assert "cleared" in check_lock(tmp_path) and not lock.exists()


def _start(workdir: Path, target: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"),
           "--directory", str(workdir), "--configfile", str(workdir / "config.yaml"),
           "--cores", "2", target]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


@pytest.mark.workflow
def test_kill_then_the_same_command_finishes_and_a_live_run_is_refused(tmp_path):
    cfg = _tiny_config()
    # 180 steps of about 0.1 s: long enough to be caught running, twice
    cfg["methods"]["baseline"]["training"]["epochs"] = 60
    _write_config(tmp_path, cfg)
    target = "results/synthetic/baseline/classifier.pt"
    first = _start(tmp_path, target)
    steps = tmp_path / "results/synthetic/baseline/train_log.csv"
    deadline = time.time() + 600
    while not (steps.exists() and len(steps.read_text().splitlines()) > 3):
        assert first.poll() is None, first.stdout.read()
        assert time.time() < deadline
        time.sleep(0.5)
    # a second run of the same command while the first is alive: refused, the first named
    second = _start(tmp_path, target)
    out2 = second.communicate(timeout=300)[0]
    assert second.returncode != 0 and "cannot be locked" in out2
    assert f"pid {first.pid}" in out2
    assert first.poll() is None  # untouched
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    assert list((tmp_path / LOCK_DIR).glob("*.lock")), "the kill must leave the lock behind"
    assert not (tmp_path / target).exists()
    # the same command again: the stale lock is cleared, the killed job redone, the run ends
    third = _start(tmp_path, target)
    out3 = third.communicate(timeout=900)[0]
    assert third.returncode == 0, out3[-4000:]
    assert "cleared a stale lock" in out3
    assert (tmp_path / target).exists()
    assert not list((tmp_path / LOCK_DIR).glob("*.lock"))
