"""Starting, watching and signalling the runs of the kill-trial harness (kill_trials.py): the
one Snakemake command every run uses, a parser that reads a run's log as it grows (job blocks,
"Finished jobid" lines, errors) and stamps each job's start and end with the harness's clock,
a run in its own process group with the signals the trials send (SIGKILL or SIGINT to the group,
SIGTERM to Snakemake alone), the scan of /proc for processes that outlive a run, and the
classification of how a finished run ended (completed, refused for a lock or incomplete files,
failed). It also puts the repository's src/ and tests/ on sys.path for the sibling modules."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "tests"))

STARTUP = "startup"  # pseudo-stage: Snakemake parsing the Snakefile and building the DAG
SCHEDULER = "scheduler"  # kill point between jobs (none running)
SIGNALS = {"kill": signal.SIGKILL, "term": signal.SIGTERM, "int": signal.SIGINT}

_JOB_HEAD = re.compile(r"^(?:local)?rule (\w+):\s*$")
_FIELD = re.compile(r"^\s+(\w+): (.*)$")
_FINISHED = re.compile(r"^Finished jobid: (\d+) \(Rule: (\w+)\)")
_ERROR_RULE = re.compile(r"^Error in rule (\w+):")
_LOCK = "Directory cannot be locked"
_INCOMPLETE = "seem to be incomplete"
_COMPLETE = re.compile(r"^\d+ of \d+ steps \(100%\) done|^Nothing to be done")


def snakemake_cmd(work: Path) -> list[str]:
    """The one command every run of every chain uses (plus recovery flags, counted apart)."""
    exe = REPO / ".venv" / "bin" / "snakemake"
    head = [str(exe)] if exe.exists() else [sys.executable, "-m", "snakemake"]
    return [*head, "--snakefile", str(REPO / "Snakefile"), "--directory", str(work),
            "--cores", "2", "--configfile", str(work / "config.yaml")]


# ---------------------------------------------------------------------------------------------
# reading a run's log as it grows


@dataclass
class Job:
    jobid: int
    rule: str
    outputs: list[str]
    start: float
    end: float | None = None
    failed: bool = False


class LogWatcher:
    """Parses a Snakemake log incrementally: job blocks, finished jobs, errors."""

    def __init__(self, path: Path):
        self.path = path
        self._offset = 0
        self._partial = ""
        self.jobs: dict[int, Job] = {}
        self._block: dict[str, Any] | None = None
        self.lines: list[str] = []
        self.first_job_at: float | None = None

    def poll(self) -> None:
        try:
            with open(self.path, errors="replace") as f:
                f.seek(self._offset)
                data = f.read()
                self._offset = f.tell()
        except FileNotFoundError:
            return
        now = time.monotonic()
        text = self._partial + data
        *complete, self._partial = text.split("\n")
        for line in complete:
            self._line(line, now)

    def close(self) -> None:
        self.poll()
        if self._partial:
            self._line(self._partial, time.monotonic())
            self._partial = ""
        self._end_block()

    def _end_block(self) -> None:
        self._block = None

    def _line(self, line: str, now: float) -> None:
        self.lines.append(line)
        head = _JOB_HEAD.match(line)
        if head:
            self._end_block()
            self._block = {"rule": head.group(1), "outputs": [], "start": now}
            return
        if self._block is not None:
            m = _FIELD.match(line)
            if m:
                key, value = m.groups()
                if key == "output":
                    self._block["outputs"] = [p.strip() for p in value.split(",") if p.strip()]
                elif key == "jobid":
                    # the job is running from here on: the block's next lines come later
                    # (the one after `resources:` only when the job has ended)
                    b = self._block
                    jobid = int(value.strip())
                    self.jobs[jobid] = Job(jobid, b["rule"], b["outputs"], b["start"])
                    if self.first_job_at is None:
                        self.first_job_at = b["start"]
                return
            self._end_block()
        m = _FINISHED.match(line)
        if m and int(m.group(1)) in self.jobs:
            self.jobs[int(m.group(1))].end = now
            return
        m = _ERROR_RULE.match(line)
        if m:
            for job in self.jobs.values():
                if job.rule == m.group(1) and job.end is None:
                    job.failed = True

    def running(self) -> list[Job]:
        return [j for j in self.jobs.values() if j.end is None and not j.failed]

    def finished(self) -> list[Job]:
        return [j for j in self.jobs.values() if j.end is not None]

    def text(self) -> str:
        return "\n".join(self.lines)


# ---------------------------------------------------------------------------------------------
# one run of the command


@dataclass
class RunResult:
    log: str
    rc: int | None
    wall_s: float
    status: str  # completed | killed | refused_lock | refused_incomplete | failed | hung
    signal: str | None = None
    target: str | None = None
    kill_point: list[str] = field(default_factory=list)
    delay_s: float | None = None
    target_hit: bool = False
    stray_processes: list[str] = field(default_factory=list)
    error: str = ""
    recovery: str | None = None
    missed_targets: list[str] = field(default_factory=list)
    escalated: bool = False


class Run:
    """One Snakemake process group, its log watched."""

    def __init__(self, work: Path, log: Path, extra: list[str] | None = None):
        self.work, self.log = work, log
        self.cmd = snakemake_cmd(work) + (extra or [])
        self.handle = open(log, "w")  # noqa: SIM115 (closed in wait)
        self.t0 = time.monotonic()
        self.proc = subprocess.Popen(self.cmd, cwd=work, stdout=self.handle,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     start_new_session=True)
        self.pgid = self.proc.pid
        self.watch = LogWatcher(log)
        self.escalated = False  # the signal did not end it in its grace: SIGKILLed

    def alive(self) -> bool:
        return self.proc.poll() is None

    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    def signal(self, name: str) -> None:
        sig = SIGNALS[name]
        try:
            if name == "term":
                self.proc.send_signal(sig)  # Snakemake itself: its graceful shutdown
            else:
                os.killpg(self.pgid, sig)
        except ProcessLookupError:
            pass

    def wait(self, timeout: float) -> int | None:
        """Wait for the main process; past `timeout`, SIGKILL the group. Returns rc or None."""
        try:
            rc = self.proc.wait(timeout=max(timeout, 0.1))
        except subprocess.TimeoutExpired:
            self.signal("kill")
            self.escalated = True
            rc = None
            self.proc.wait()
        self.handle.close()
        self.watch.close()
        return rc

    def strays(self) -> list[str]:
        """Processes of this run still alive a moment after its main process ended: members of
        its process group, or processes whose working directory is the run's. Each is listed
        as "pid state cmdline" and then killed (by id)."""
        found = self._scan()
        if found:  # a process killed a moment ago may still be on its way out
            time.sleep(2.0)
            found = self._scan()
        for pid in found:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        return [f"{pid} {state} {cmd}" for pid, (state, cmd) in found.items()]

    def _scan(self) -> dict[int, tuple[str, str]]:
        found = {}
        work = str(self.work.resolve())
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) == os.getpid():
                continue
            try:
                pgid = os.getpgid(int(entry.name))
                cwd = os.readlink(entry / "cwd")
                state = (entry / "stat").read_text().rsplit(")", 1)[-1].split()[0]
                cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()[:160]
            except OSError:
                continue
            if state == "Z":
                continue  # a zombie holds nothing
            if pgid == self.pgid or cwd == work or cwd.startswith(work + "/"):
                found[int(entry.name)] = (state, cmd)
        return found


def classify(rc: int | None, text: str) -> tuple[str, str]:
    """A finished run's status and, for a refused or failed one, its error text."""
    if rc == 0 and any(_COMPLETE.match(line) for line in text.splitlines()):
        return "completed", ""
    lines = text.splitlines()
    for needle, status in ((_LOCK, "refused_lock"), (_INCOMPLETE, "refused_incomplete")):
        for i, line in enumerate(lines):
            if needle in line:
                return status, "\n".join(lines[max(0, i - 1):i + 8])
    errors = [i for i, line in enumerate(lines) if "Error" in line or "Exception" in line]
    tail = "\n".join(lines[errors[0]:errors[0] + 15]) if errors else "\n".join(lines[-15:])
    return "failed", tail

