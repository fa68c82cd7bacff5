"""The workflow side of the kill-trial harness (kill_trials.py): a preset's config (config.yaml
restricted and shrunk), the reference run that gives every job's duration and the expected
results, and the chains of trials: a fresh working directory whose run is signalled at a moment
aimed at a chosen stage, rerun with the same plain command (and, when Snakemake refuses, the
recovery a user would do) until a rerun completes, every run recorded with its kill point and
the finished jobs it must not rerun; with the seeded choice of signals and least-hit targets."""

from __future__ import annotations

import copy
import json
import random
import shutil
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from kill_trials_checks import collect_results, file_state
from kill_trials_runs import REPO, SCHEDULER, STARTUP, Job, Run, RunResult, classify

SMALL_SIZES = {"num_train": 150, "num_val": 50, "epochs": 6}
# a smaller pretrain corpus than the default (32 classes x 200 images, 12 epochs), larger than
# the tests' QUICK_PRETRAIN: tens of seconds, so that a kill lands inside it
SMALL_PRETRAIN = {"corpus": {"classes": 16, "train_per_class": 64, "held_out_per_class": 16},
                  "training": {"epochs": 4}}


# ---------------------------------------------------------------------------------------------
# configs


def build_config(preset: str, num_train: int | None = None, num_val: int | None = None,
                 epochs: int | None = None, quick_pretrain: bool = False) -> dict[str, Any]:
    """The workflow config of a preset (config.yaml, restricted and shrunk as documented)."""
    cfg = yaml.safe_load((REPO / "config.yaml").read_text())
    if preset == "default":
        sizes: dict[str, Any] = {}
    elif preset in ("small", "tiny"):
        cfg["run"].update(variants=["baseline"], refiners=["crf", "psa"], variant_refiners={},
                          deeplab=[["baseline", "psa"]])
        sizes = (dict(SMALL_SIZES, pretrain=SMALL_PRETRAIN) if preset == "small" else
                 {"num_train": 24, "num_val": 8, "epochs": 1, "quick": True})
    else:
        raise SystemExit(f"unknown preset {preset!r} (small, default, tiny)")
    num_train = num_train or sizes.get("num_train")
    num_val = num_val or sizes.get("num_val")
    epochs = epochs or sizes.get("epochs")
    synthetic = cfg["dataset"].setdefault("synthetic", {})
    if num_train:
        synthetic["num_train"] = num_train
    if num_val:
        synthetic["num_val"] = num_val
    if epochs:
        blocks = [*cfg["methods"].values(), *cfg["refiners"].values(), cfg["deeplab"]]
        for block in blocks:
            if isinstance(block.get("training"), dict) and "epochs" in block["training"]:
                block["training"]["epochs"] = epochs
    if quick_pretrain or sizes.get("quick"):
        from conftest import QUICK_PRETRAIN

        cfg["pretrain"] = copy.deepcopy(QUICK_PRETRAIN)
    elif sizes.get("pretrain"):
        merged = cfg.setdefault("pretrain", {})
        for key, value in sizes["pretrain"].items():
            merged.setdefault(key, {}).update(value)
    return cfg


# ---------------------------------------------------------------------------------------------
# the reference


@dataclass
class Reference:
    work: Path
    wall_s: float
    startup_s: float
    durations: dict[tuple[str, ...], float]  # job outputs -> seconds
    rule_durations: dict[str, float]  # rule -> median job seconds
    rule_order: list[str]  # rules by first start
    job_rules: dict[tuple[str, ...], str]  # job outputs -> rule
    results: dict[str, Any]
    profile_used: bool


def job_key(job: Job) -> tuple[str, ...]:
    return tuple(sorted(job.outputs))


def run_reference(work: Path, cfg: dict[str, Any], timeout: float) -> Reference:
    fresh_workdir(work, cfg)
    run = Run(work, work / "run-reference.log")
    while run.alive():
        run.watch.poll()
        time.sleep(0.2)
        if run.elapsed() > timeout:
            break
    rc = run.wait(1.0)
    wall = run.elapsed()
    status, err = classify(rc, run.watch.text())
    if status != "completed":
        raise SystemExit(f"reference run did not complete ({status}), {run.log}:\n{err}")
    jobs = [j for j in run.watch.jobs.values() if j.rule != "all"]
    durations = {job_key(j): (j.end or j.start) - j.start for j in jobs}
    by_rule: dict[str, list[float]] = {}
    for j in sorted(jobs, key=lambda j: j.start):
        by_rule.setdefault(j.rule, []).append(durations[job_key(j)])
    rule_durations = {r: sorted(d)[len(d) // 2] for r, d in by_rule.items()}
    startup = (run.watch.first_job_at or run.t0) - run.t0
    profile = "Using workflow specific profile" in run.watch.text()
    return Reference(work, wall, startup, durations, rule_durations, list(by_rule),
                     {job_key(j): j.rule for j in jobs}, collect_results(work), profile)


def save_reference(ref: Reference, path: Path) -> None:
    data = {"wall_s": ref.wall_s, "startup_s": ref.startup_s,
            "jobs": [{"outputs": list(k), "rule": ref.job_rules[k], "seconds": d}
                     for k, d in ref.durations.items()],
            "rule_durations": ref.rule_durations, "rule_order": ref.rule_order,
            "profile_used": ref.profile_used}
    path.write_text(json.dumps(data, indent=1) + "\n")


def load_reference(work: Path) -> Reference | None:
    """A reference saved by an earlier invocation (--reuse-reference), if any."""
    path = work / "reference.json"
    if not path.is_file():
        return None
    d = json.loads(path.read_text())
    keys = [tuple(j["outputs"]) for j in d["jobs"]]
    return Reference(work, d["wall_s"], d["startup_s"],
                     {k: j["seconds"] for k, j in zip(keys, d["jobs"], strict=True)},
                     d["rule_durations"], d["rule_order"],
                     {k: j["rule"] for k, j in zip(keys, d["jobs"], strict=True)},
                     collect_results(work), d["profile_used"])


def fresh_workdir(work: Path, cfg: dict[str, Any]) -> None:
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    (work / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))


# ---------------------------------------------------------------------------------------------
# chains of trials


@dataclass
class Plan:
    rng: random.Random
    signal_weights: dict[str, float]
    coverage: Counter = field(default_factory=Counter)  # stage -> kill points landed there


class Chain:
    """A fresh working directory, killed and rerun until a rerun completes."""

    def __init__(self, index: int, work: Path, cfg: dict[str, Any], ref: Reference,
                 plan: Plan):
        self.index, self.work, self.ref, self.plan = index, work, ref, plan
        fresh_workdir(work, cfg)
        self.runs: list[RunResult] = []
        self.finished: dict[str, tuple[int, int, int] | None] = {}  # output -> state
        self.finished_by: dict[str, str] = {}  # output -> log of the run that made it
        self.finished_keys: set[tuple[str, ...]] = set()
        self.rewritten: list[dict[str, str]] = []
        self.done_rules: set[str] = set()

    # a run's limit: the reference's wall time twice over, plus a margin
    def _limit(self) -> float:
        return 2.0 * self.ref.wall_s + 120.0

    def pending_rules(self) -> list[str]:
        return [r for r in self.ref.rule_order if r not in self.done_rules]

    def _start(self, extra: list[str] | None = None) -> Run:
        log = self.work / f"run-{len(self.runs):02d}.log"
        return Run(self.work, log, extra)

    def _pending_in(self, rule: str, run: Run) -> bool:
        """Whether a job of `rule` is still to finish (in this chain, counting `run`)."""
        done = self.finished_keys | {job_key(j) for j in run.watch.finished()}
        return any(r == rule and k not in done for k, r in self.ref.job_rules.items())

    def execute(self, queue: list[str] | None, sig: str | None,
                extra: list[str] | None = None, recovery: str | None = None) -> RunResult:
        """Start the command; with a queue of targets, signal it at the first one still to
        come (a target whose jobs all finish in this run before the moment is dropped for the
        next); return how the run ended."""
        queue = queue if queue is not None else []
        run = self._start(extra)
        target = None
        delay = None
        fired_at = None
        hit = False
        kill_point: list[str] = []
        missed: list[str] = []
        armed_job: int | None = None
        deadline = None
        while run.alive() and run.elapsed() < self._limit():
            run.watch.poll()
            if fired_at is None and (queue or target):
                if target is None:
                    target = queue.pop(0)
                    if target == STARTUP:
                        if run.watch.jobs:  # too late for this one
                            missed.append(target)
                            target = None
                            continue
                        delay = self.plan.rng.uniform(0.1, 0.95) * max(self.ref.startup_s, 1.0)
                        deadline = run.elapsed() + delay
                    elif not self._pending_in(target, run):
                        missed.append(target)
                        target = None
                        continue
                if target != STARTUP and armed_job is not None and \
                        self.armed_finished(run, armed_job):
                    # the job ended before the moment: the next job of the rule, or the next
                    # target
                    armed_job, deadline = None, None
                    if not self._pending_in(target, run):
                        missed.append(target)
                        target = None
                        continue
                if deadline is None:
                    done = self.finished_keys
                    for job in run.watch.running():
                        if job.rule == target and job.outputs and job_key(job) not in done:
                            armed_job = job.jobid
                            dur = self.ref.durations.get(job_key(job),
                                                         self.ref.rule_durations[target])
                            delay = self.plan.rng.uniform(0.05, 0.95) * dur
                            deadline = (job.start - run.t0) + delay
                            break
                if deadline is not None and run.elapsed() >= deadline:
                    running = run.watch.running()
                    kill_point = sorted({j.rule for j in running if j.rule != "all"})
                    if not kill_point:
                        kill_point = [STARTUP if not run.watch.jobs else SCHEDULER]
                    hit = (target == STARTUP and kill_point == [STARTUP]) or any(
                        j.jobid == armed_job for j in running)
                    run.signal(sig or "kill")
                    fired_at = run.elapsed()
                    break
            time.sleep(0.05)
        if fired_at is None and run.alive():  # ran past its limit: a hang
            rc = run.wait(0)
            return self._record(run, rc, "hung", None, target, [], None, False, recovery,
                                missed)
        # SIGKILL: the group is gone at once; SIGINT: Snakemake kills its jobs and removes
        # their outputs; SIGTERM: it waits for the running jobs (as long as a whole run may)
        grace = {"kill": 10.0, "int": 60.0}.get(sig or "", self._limit())
        rc = run.wait(grace if fired_at is not None else self._limit())
        status, _ = classify(rc, run.watch.text())
        if fired_at is not None and status != "completed":
            status = "killed"
        if recovery == "unlock":
            status = "unlocked" if rc == 0 else "failed"
        return self._record(run, rc, status, sig if fired_at is not None else None,
                            target if fired_at is not None else None, kill_point,
                            delay if fired_at is not None else None, hit, recovery, missed)

    @staticmethod
    def armed_finished(run: Run, jobid: int) -> bool:
        job = run.watch.jobs.get(jobid)
        return job is not None and (job.end is not None or job.failed)

    def _record(self, run: Run, rc: int | None, status: str, sig: str | None,
                target: str | None, kill_point: list[str], delay: float | None, hit: bool,
                recovery: str | None, missed: list[str]) -> RunResult:
        strays = run.strays()
        text = run.watch.text()
        error = ""
        if status not in ("completed", "killed", "unlocked"):
            status2, error = classify(rc, text) if status != "hung" else ("hung", "")
            status = status2 if status != "hung" else status
        elif status == "killed":
            # a signal that reached a rerun Snakemake refused is still a refusal
            refused, err = classify(rc, text)
            if refused.startswith("refused"):
                status, error = refused, err
        # finished jobs of earlier runs: none may be rerun or rewritten
        for job in run.watch.jobs.values():
            for out in job.outputs:
                if out in self.finished:
                    self.rewritten.append({"output": out, "rerun_in": str(run.log),
                                           "finished_in": self.finished_by[out],
                                           "evidence": f"job block of rule {job.rule}"})
        for out, state in self.finished.items():
            now = file_state(self.work / out)
            if now != state and not any(r["output"] == out for r in self.rewritten):
                self.rewritten.append({"output": out, "rerun_in": str(run.log),
                                       "finished_in": self.finished_by[out],
                                       "evidence": f"state {state} -> {now}"})
        for job in run.watch.finished():
            if job.rule == "all":
                continue
            self.finished_keys.add(job_key(job))
            for out in job.outputs:
                self.finished[out] = file_state(self.work / out)
                self.finished_by[out] = str(run.log)
        self.done_rules = self._rules_done()
        if sig is not None:
            for stage in kill_point:
                self.plan.coverage[stage] += 1
        result = RunResult(str(run.log), rc, round(run.elapsed(), 2), status, sig, target,
                           kill_point, None if delay is None else round(delay, 2), hit,
                           strays, error, recovery, missed, run.escalated)
        self.runs.append(result)
        return result

    def _rules_done(self) -> set[str]:
        """Rules all of whose reference jobs have finished in this chain."""
        pending = {rule for key, rule in self.ref.job_rules.items()
                   if key not in self.finished_keys}
        return set(self.ref.rule_order) - pending


def pick_signal(plan: Plan) -> str:
    names = list(plan.signal_weights)
    return plan.rng.choices(names, weights=[plan.signal_weights[n] for n in names])[0]


def choose_targets(plan: Plan, stages: list[str], k: int) -> list[str]:
    """k stages to aim at in one chain: least-hit first (seeded ties), in DAG order."""
    order = {s: i for i, s in enumerate(stages)}
    ranked = sorted(stages, key=lambda s: (plan.coverage[s], plan.rng.random()))
    return sorted(ranked[:k], key=order.__getitem__)


def run_chain(chain: Chain, targets: list[str], plan: Plan, log: Any) -> None:
    """Kill at each target in turn (skipping targets already finished), then let it finish."""
    queue = list(targets)
    while True:
        queue[:] = [t for t in queue if t == STARTUP or t in chain.pending_rules()]
        sig = pick_signal(plan) if queue else None
        result = chain.execute(queue, sig)
        log(chain, result)
        if result.status == "completed":
            return
        if result.status == "refused_lock":
            recovery = chain.execute(None, None, ["--unlock"], recovery="unlock")
            log(chain, recovery)
        elif result.status == "refused_incomplete":
            recovery = chain.execute(None, None, ["--rerun-incomplete"],
                                     recovery="rerun-incomplete")
            log(chain, recovery)
            if recovery.status == "completed":
                return
        elif result.status in ("failed", "hung"):
            # a genuine failure: one plain retry, then give up on this chain
            retry = chain.execute(None, None)
            log(chain, retry)
            return
        if len(chain.runs) > 4 * len(targets) + 8:
            return

