"""Writes onto a real full or read-only file system: a tiny tmpfs mounted in a private mount
namespace (`unshare`), so nothing outside the test's folder changes. Skipped where neither
`unshare --mount` (root) nor `unshare --user --map-root-user --mount` may mount a tmpfs."""

import functools
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from wsss.store import CamReader, CamWriter

_PREFIXES = (["unshare", "--mount"], ["unshare", "--user", "--map-root-user", "--mount"])


@functools.cache
def _unshare(probe: str) -> tuple[str, ...] | None:
    if shutil.which("unshare") is None:
        return None
    for prefix in _PREFIXES:
        cmd = f"mount -t tmpfs -o size=64k tmpfs {probe} && mount -o remount,ro {probe}"
        done = subprocess.run([*prefix, "sh", "-c", cmd], capture_output=True, timeout=30)
        if done.returncode == 0:
            return tuple(prefix)
    return None


def _in_tmpfs(tmp_path: Path, size: str, script: str, copy_to: Path) -> subprocess.CompletedProcess:
    """Run `script` (sh) with a fresh tmpfs of `size` on tmp_path/"mnt"; what it holds at the
    end is copied to `copy_to`. $MNT names the mount point, $PY this Python."""
    mnt = tmp_path / "mnt"
    mnt.mkdir(exist_ok=True)
    copy_to.mkdir()
    prefix = _unshare(str(mnt))
    if prefix is None:
        pytest.skip("cannot mount a tmpfs here: neither `unshare --mount` nor `unshare --user "
                    "--map-root-user --mount` is allowed (needed to simulate a full disk)")
    body = (f'MNT={mnt}; PY={sys.executable}; mount -t tmpfs -o size={size} tmpfs "$MNT" || '
            f'exit 99\n{script}\nrc=$?; cp -a "$MNT"/. {copy_to}/; exit $rc')
    done = subprocess.run([*prefix, "sh", "-c", body], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode != 99, done.stderr
    return done


def _fill(keep_kib: int) -> str:
    """sh: fill $MNT until only about `keep_kib` KiB stay free."""
    return (f'dd if=/dev/zero of="$MNT/filler" bs=1k count=100000 2>/dev/null; '
            f'truncate -s -{keep_kib}k "$MNT/filler"')


def _write_and_report(code: str) -> str:
    """Python that runs `code` and prints the WriteError it raises as JSON (other errors: a
    traceback and exit status 1; a crash: its signal)."""
    return f"""
import json, sys
from wsss.store import WriteError
try:
{chr(10).join('    ' + line for line in code.strip().splitlines())}
except WriteError as err:
    print(json.dumps({{"type": type(err).__name__, "errno": err.errno, "message": str(err)}}))
    sys.exit(3)
print(json.dumps({{"type": None}}))
"""


def _no_temps(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if p.name.endswith(".tmp")]


def _previous_store(path: Path) -> bytes:
    with CamWriter(path, {"classes": ["a", "b"]}) as w:
        w.add("old", np.linspace(0, 1, 32, dtype=np.float16).reshape(2, 4, 4), [0, 1])
    return path.read_bytes()


def test_a_cam_store_on_a_full_disk_leaves_the_previous_one(tmp_path):
    previous = _previous_store(tmp_path / "prev.h5")
    writer = tmp_path / "writer.py"
    writer.write_text(_write_and_report(f"""
import numpy as np
from wsss.store import CamWriter
rng = np.random.default_rng(0)
with CamWriter({str(tmp_path / 'mnt' / 'cams_train.h5')!r}, {{"classes": ["a", "b"]}}) as w:
    for k in range(64):  # incompressible: about 1 MiB in all, the disk has 96 KiB free
        w.add(f"i{{k}}", rng.random((2, 64, 64)), [0, 1], cam_lowres=rng.random((2, 8, 8)))
"""))
    out = tmp_path / "out"
    done = _in_tmpfs(tmp_path, "512k", f'cp {tmp_path}/prev.h5 "$MNT/cams_train.h5"\n'
                     f'{_fill(96)}\n"$PY" {writer}', out)
    assert done.returncode == 3, done.stderr  # a WriteError, not a crash or another error
    report = json.loads(done.stdout.strip().splitlines()[-1])
    message = report["message"]
    assert message.startswith(f"{tmp_path / 'mnt' / 'cams_train.h5'}: could not be written: "
                              "No space left on device")
    assert "the previous cams_train.h5 is unchanged" in message and "\n" not in message
    assert _no_temps(out) == []
    assert (out / "cams_train.h5").read_bytes() == previous
    with CamReader(out / "cams_train.h5") as r:
        assert r.ids == ["old"] and r.get("old")[0].shape == (2, 4, 4)


def test_a_checkpoint_on_a_full_disk_leaves_the_previous_one(tmp_path):
    (tmp_path / "prev.pt").write_bytes(b"previous checkpoint")
    writer = tmp_path / "writer.py"
    writer.write_text(_write_and_report(f"""
import torch
from wsss.store import atomic_path
with atomic_path({str(tmp_path / 'mnt' / 'last.pt')!r}) as tmp:
    torch.save({{"w": torch.randn(100_000)}}, tmp)  # 400 KB onto 64 KiB free
"""))
    out = tmp_path / "out"
    done = _in_tmpfs(tmp_path, "256k", f'cp {tmp_path}/prev.pt "$MNT/last.pt"\n{_fill(64)}\n'
                     f'"$PY" {writer}', out)
    assert done.returncode == 3, done.stderr
    message = json.loads(done.stdout.strip().splitlines()[-1])["message"]
    assert message.startswith(f"{tmp_path / 'mnt' / 'last.pt'}: could not be written: No "
                              "space left on device"), message
    assert _no_temps(out) == []
    assert (out / "last.pt").read_bytes() == b"previous checkpoint"


def test_the_inner_of_two_writers_is_named_when_it_fills_the_disk(tmp_path):
    """Two outputs written together (deeplab predict: plain and CRF labels): the error names
    the one whose write failed, not the other one around it, and neither is left."""
    writer = tmp_path / "writer.py"
    writer.write_text(_write_and_report(f"""
import numpy as np
from wsss.store import LabelWriter
rng = np.random.default_rng(0)
with LabelWriter({str(tmp_path / 'mnt' / 'a.h5')!r}, {{}}) as a:
    a.add("x", np.zeros((4, 4), np.uint8))
    with LabelWriter({str(tmp_path / 'mnt' / 'b.h5')!r}, {{}}) as b:
        for k in range(16):
            b.add(f"i{{k}}", rng.integers(0, 255, (128, 128), dtype=np.uint8))
"""))
    out = tmp_path / "out"
    done = _in_tmpfs(tmp_path, "256k", f'{_fill(64)}\n"$PY" {writer}', out)
    assert done.returncode == 3, done.stderr
    message = json.loads(done.stdout.strip().splitlines()[-1])["message"]
    assert message.startswith(f"{tmp_path / 'mnt' / 'b.h5'}: could not be written"), message
    assert sorted(p.name for p in out.iterdir()) == ["filler"]


def test_a_read_only_results_folder_fails_the_command_with_one_line(tmp_path):
    """`wsss combine` into a read-only results folder: non-zero exit, one line naming the
    folder and the reason, no traceback; the previous output stays."""
    parts = tmp_path / "shards"
    _previous_store(parts / "1-of-1.h5")
    out = tmp_path / "out"
    target = tmp_path / "mnt" / "baseline" / "cams_train.h5"
    wsss = Path(sys.executable).with_name("wsss")
    done = _in_tmpfs(tmp_path, "256k", f'mkdir "$MNT/baseline"; echo previous > {target}\n'
                     f'mount -o remount,ro "$MNT" || exit 99\n'
                     f"{wsss} combine --dataset '{{}}' --kind cams --parts {parts}/1-of-1.h5 "
                     f"--out {target}", out)
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last == (f"wsss combine: error: {target}: cannot create files in {target.parent} "
                    "(Read-only file system), so it could not be written; nothing was written, "
                    "the previous cams_train.h5 is unchanged")
    assert (out / "baseline" / "cams_train.h5").read_text() == "previous\n"
    assert _no_temps(out / "baseline") == []
