"""Snakemake's directory lock after a kill: cleared when its owner is gone, kept while it lives.

Snakemake locks a working directory with files in `.snakemake/locks/` and removes them when it
exits, but a SIGKILL (a lost login, an OOM kill, a preempted node) leaves them behind, and every
later run stops with "Directory cannot be locked" until `snakemake --unlock`. `check_lock` runs at
parse time (workflow/rules/common.smk), before Snakemake takes its lock, in the main process only:

- no lock files: nothing to do; this run records itself as the owner (`.snakemake/wsss-owner.json`:
  host, pid) so that a later run on another host knows whose lock it would see;
- lock files and a live process in this directory (a Snakemake, or a `wsss` job a killed Snakemake
  left running): the lock is kept, Snakemake refuses the run as before, and the message names the
  process;
- lock files recorded by a run on another host (a cluster login node sharing the file system):
  kept, because processes there cannot be seen from here; the message names the host and says to
  run `snakemake --unlock` once that run is known to be gone;
- otherwise the lock is stale: its files are removed and the run goes on.

Torch-free and fast: it reads /proc through psutil, which Snakemake itself depends on.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import socket
from pathlib import Path

import psutil

LOCK_DIR = Path(".snakemake") / "locks"
OWNER = Path(".snakemake") / "wsss-owner.json"


def _is_ours(cmdline: list[str]) -> bool:
    """A Snakemake (`snakemake ...`, `python -m snakemake ...`) or a stage command (`wsss ...`,
    `python -m wsss ...`)."""
    # argv[0], or argv[1] after the interpreter when a script is run through its shebang
    if any(Path(a).name in ("snakemake", "wsss") for a in cmdline[:2]):
        return True
    return any(a == "-m" and b in ("snakemake", "wsss") for a, b in itertools.pairwise(cmdline))


def live_runs(workdir: str | os.PathLike, exclude: set[int] | None = None) -> list[str]:
    """Processes on this host running Snakemake or a stage command in `workdir`, as
    'pid N: command' (processes whose folder cannot be read are not ours to judge)."""
    here = os.path.realpath(workdir)
    skip = {os.getpid()} | (exclude or set())
    found = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        cmd = proc.info.get("cmdline") or []
        if proc.info["pid"] in skip or not cmd or not _is_ours(cmd):
            continue
        with contextlib.suppress(psutil.Error, OSError):
            if os.path.realpath(proc.cwd()) == here:
                found.append(f"pid {proc.info['pid']}: {' '.join(cmd)[:160]}")
    return found


def _owner(workdir: Path) -> dict:
    with contextlib.suppress(OSError, ValueError):
        return json.loads((workdir / OWNER).read_text())
    return {}


def _record_owner(workdir: Path) -> None:
    path = workdir / OWNER
    with contextlib.suppress(OSError):  # best effort: the record only sharpens a later message
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        tmp.write_text(json.dumps({"host": socket.gethostname(), "pid": os.getpid()}) + "\n")
        os.replace(tmp, path)


def check_lock(workdir: str | os.PathLike = ".") -> str | None:
    """Clear a stale Snakemake lock on `workdir`; return a line saying what was found (None when
    there was no lock). Never removes a lock whose owner may still run."""
    workdir = Path(workdir)
    locks = sorted((workdir / LOCK_DIR).glob("*.lock"))
    if not locks:
        _record_owner(workdir)
        return None
    live = live_runs(workdir)
    if live:
        return ("this directory is locked by a run that is still going ("
                + "; ".join(live) + "); wait for it or stop it")
    host = _owner(workdir).get("host")
    if host and host != socket.gethostname():
        return (f"this directory is locked by a run started on host {host}, which cannot be "
                "checked from here; once it is known to be gone, run `snakemake --unlock`")
    for path in locks:
        path.unlink(missing_ok=True)
    _record_owner(workdir)
    return (f"cleared a stale lock ({len(locks)} file(s) in {LOCK_DIR}) left by a run that no "
            "longer runs on this host")
