"""Kill trials: does the plain `snakemake` command survive being killed at any moment? (a script,
not a test)

    OMP_NUM_THREADS=1 .venv/bin/python tests/benchmarks/kill_trials.py \
        [--preset small|default|tiny] [--trials 24] [--seed 0] [--out /tmp/kill_trials] \
        [--json PATH] [--num-train N] [--num-val N] [--epochs N] [--quick-pretrain] \
        [--signals kill=0.65,term=0.2,int=0.15] [--max-kills-per-chain 8] [--max-minutes 45]

What it does, in working directories under --out (never inside the repository's results/):

1. Reference: one uninterrupted run of the workflow (the Snakefile at the repository root, the
   preset's config written to <workdir>/config.yaml), with the command every later run uses:
   `snakemake --snakefile Snakefile --directory <workdir> --cores 2 --configfile
   <workdir>/config.yaml`, in its own process group, its stdout/stderr in a log per run. The
   harness reads the log as it grows: every job block ("rule X:" / "localrule X:", its
   `output:` and `jobid:`) and every "Finished jobid: N" line, stamped with the harness's own
   clock, give each job's start, end and duration. Its summary (summary.csv, summary.md) and
   every `*.eval.json` (mIoU, per-class IoU, the rest of the file but its `versions`) are the
   expected results.
2. Chains of trials, each in a fresh working directory: the run is started, killed at a chosen
   moment, the *same plain command* started again (no --unlock, no --rerun-incomplete added
   here: what is measured is whether the plain command recovers), killed again at the next
   moment, and so on until a rerun completes. A kill moment targets a stage: the harness picks
   a rule (every rule of the reference's DAG, plus "startup", Snakemake's parse and DAG phase,
   least-hit first, seeded), waits for a job of that rule to start in the current run and then
   for a random fraction (5-95 %) of that job's reference duration, and signals:
     kill  SIGKILL to the whole process group (Snakemake and every job process);
     term  SIGTERM to the Snakemake process only (its own cleanup: it lets the running jobs
           finish, then exits);
     int   SIGINT to the whole process group (Ctrl-C in a terminal: Snakemake kills the jobs
           and removes their outputs).
   The kill point of a trial is the set of rules whose jobs were running at that moment
   ("startup" before the first job, "scheduler" between jobs). A target whose jobs all end
   before the drawn moment (moments come from the reference's durations, which a loaded
   machine overstates) is dropped for the next one and listed as missed.
   A rerun that Snakemake refuses (a lock left behind, incomplete files) is counted with its
   reason; so that the chain can go on, the harness then does what a user would (`--unlock`,
   or the command with `--rerun-incomplete` once) and counts that as a recovery.
3. Checks, per chain:
   - finished jobs rerun: the outputs of every job whose "Finished jobid" line was printed
     before a kill are recorded as (inode, mtime_ns, size); after each later run none may have
     changed, and no later job block may name one of them as output;
   - results: the chain's summary.csv / summary.md and every .eval.json equal the reference's
     (every number; differences are listed with the file and both values);
   - stores: every .h5 under results/ opened with wsss.store's readers (CamReader or
     LabelReader by its `kind` attr), its contract checked: `format_version`, `ids` unique and
     equal to the top-level names present and to the dataset index's split of the same name,
     every id's arrays read fully, dtypes and ranks as wsss.store writes them (cams: `cam`,
     `cam_lowres`, `seg` float16 K x H x W, `keys` int64 of length K; labels: uint8 H x W);
   - leftover temporary files (`.<name>.*.tmp` of wsss.store.atomic_path) and Snakemake's
     incomplete markers at the end of the chain;
   - stray processes: none of a killed run's processes may outlive it (checked through /proc).
4. Output: a table on stdout and, with --json, every figure and every trial (signal, target,
   kill point, delay, log paths) as JSON.

Presets (sizes measured on a 2-core machine shared with other work):
  small    the issue's small workflow: run.variants [baseline], run.refiners [crf, psa],
           DeepLab on (baseline, psa), summary and report on; by default at a reduced size
           (150 train / 50 val images, networks at 6 epochs, pretraining at a smaller corpus)
           so that one run takes 2-4.5 minutes (119-261 s measured, by the machine's other
           load) and stages last from under a second to a minute or two (the full-size
           small run spent over 3 minutes in pretraining alone); 24 trials and the reference
           took about 40 minutes;
  default  config.yaml as it is (about 20 minutes a run on 2 cores: for a long measurement);
  tiny     the small workflow at the test suite's sizes (24 / 8 images, 1 epoch,
           conftest.QUICK_PRETRAIN): about a minute a run, for developing the harness.
--num-train, --num-val, --epochs and --quick-pretrain override a preset's sizes.

The workflow is seeded and runs on one machine, so an interrupted chain is expected to give
the reference's numbers exactly; any difference is reported, not hidden.

The code: this file (the command line, the measurement's loop and its report),
kill_trials_runs.py (starting, watching and signalling runs), kill_trials_chains.py (presets'
configs, the reference, chains of trials) and kill_trials_checks.py (the checks).
"""

from __future__ import annotations

import argparse
import json
import random
import signal
import subprocess
import time
from collections import Counter
from dataclasses import asdict
from pathlib import Path
from typing import Any

import yaml
from kill_trials_chains import (
    Chain,
    Plan,
    Reference,
    build_config,
    choose_targets,
    load_reference,
    run_chain,
    run_reference,
    save_reference,
)
from kill_trials_checks import check_stores, collect_results, compare_results, leftovers
from kill_trials_runs import REPO, SCHEDULER, SIGNALS, STARTUP, RunResult, snakemake_cmd

DEFAULT_SIGNALS = "kill=0.65,term=0.2,int=0.15"


# ---------------------------------------------------------------------------------------------
# the whole measurement


def parse_signals(text: str) -> dict[str, float]:
    weights = {}
    for part in text.split(","):
        name, _, w = part.partition("=")
        if name.strip() not in SIGNALS:
            raise SystemExit(f"--signals: unknown signal {name!r} ({', '.join(SIGNALS)})")
        weights[name.strip()] = float(w or 1)
    return weights


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].replace("\n", " "))
    p.add_argument("--preset", default="small", choices=["small", "default", "tiny"])
    p.add_argument("--trials", type=int, default=24, help="kills to land, at least")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("/tmp/kill_trials"))
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--num-train", type=int, default=None)
    p.add_argument("--num-val", type=int, default=None)
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--quick-pretrain", action="store_true")
    p.add_argument("--signals", default=DEFAULT_SIGNALS, help="name=weight,...")
    p.add_argument("--max-kills-per-chain", type=int, default=8)
    p.add_argument("--max-minutes", type=float, default=60.0,
                   help="start no new chain after this long (the running one finishes)")
    p.add_argument("--max-chains", type=int, default=None,
                   help="default: enough to land --trials and hit every stage")
    p.add_argument("--reuse-reference", action="store_true",
                   help="take <out>/reference as it is if it holds a completed run")
    args = p.parse_args()
    # a shell starts background jobs with SIGINT ignored, and an ignored signal stays ignored
    # through exec: Snakemake would never see the Ctrl-C trials. Ours is Python's handler
    # again, so the runs start with the default disposition.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    out = args.out.resolve()
    if out == REPO or REPO in out.parents and (REPO / "results") in [out, *out.parents]:
        raise SystemExit("--out must not be inside the repository's results/")
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.monotonic()
    cfg = build_config(args.preset, args.num_train, args.num_val, args.epochs,
                       args.quick_pretrain)
    plan = Plan(random.Random(args.seed), parse_signals(args.signals))

    print(f"reference run of preset {args.preset} in {out / 'reference'} ...", flush=True)
    ref = load_reference(out / "reference") if args.reuse_reference else None
    if ref is None or yaml.safe_load((out / "reference" / "config.yaml").read_text()) != cfg:
        ref = run_reference(out / "reference", cfg, timeout=6 * 3600)
        save_reference(ref, out / "reference" / "reference.json")
    print(f"reference: {ref.wall_s:.0f} s, {len(ref.durations)} jobs, startup "
          f"{ref.startup_s:.1f} s; workflow profile picked up: {ref.profile_used}", flush=True)
    for rule in ref.rule_order:
        print(f"  {rule:24s} {ref.rule_durations[rule]:7.1f} s", flush=True)

    stages = [STARTUP, *ref.rule_order]
    max_chains = (args.max_chains if args.max_chains is not None
                  else 2 * -(-args.trials // args.max_kills_per_chain) + 2)
    chains: list[Chain] = []
    chain_reports: list[dict[str, Any]] = []

    def log(chain: Chain, r: RunResult) -> None:
        what = (f"{r.signal} at {r.target} +{r.delay_s}s -> {','.join(r.kill_point)}"
                if r.signal else (r.recovery or "plain"))
        print(f"  chain {chain.index} run {len(chain.runs) - 1:2d}: {r.status:18s} "
              f"{r.wall_s:6.1f} s  {what}"
              + (f"  (missed {','.join(r.missed_targets)})" if r.missed_targets else "")
              + (f"  STRAYS {r.stray_processes}" if r.stray_processes else ""), flush=True)
        if r.error:
            print("    " + r.error.replace("\n", "\n    "), flush=True)

    def trials_run() -> int:
        return sum(1 for c in chains for r in c.runs if r.signal)

    while True:
        uncovered = [s for s in stages if plan.coverage[s] == 0]
        if trials_run() >= args.trials and not uncovered:
            break
        if chains and (time.monotonic() - t_start) / 60 > args.max_minutes:
            print("time limit reached: no new chain", flush=True)
            break
        if len(chains) >= max_chains:
            break
        k = min(args.max_kills_per_chain, max(1, args.trials - trials_run()),
                len(stages)) if trials_run() < args.trials else max(1, len(uncovered))
        targets = choose_targets(plan, stages, k)
        chain = Chain(len(chains), out / f"chain-{len(chains):02d}", cfg, ref, plan)
        chains.append(chain)
        print(f"chain {chain.index}: targets {targets}", flush=True)
        run_chain(chain, targets, plan, log)
        chain_reports.append(finish_chain(chain, ref))
        c = chain_reports[-1]
        print(f"  chain {chain.index}: completed={c['completed']} identical={c['identical']} "
              f"stores={c['stores']} corrupt={len(c['corrupt_stores'])} "
              f"rerun={len(c['finished_jobs_rerun'])} temp={len(c['leftovers']['temp_files'])}",
              flush=True)
        for d in c["differences"][:10]:
            print(f"    DIFF {d}", flush=True)
        for name, problems in c["corrupt_stores"].items():
            print(f"    CORRUPT {name}: {problems[:3]}", flush=True)

    report = summarise(args, ref, chains, chain_reports, time.monotonic() - t_start)
    print_table(report)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
        print(f"JSON: {args.json}")


def finish_chain(chain: Chain, ref: Reference) -> dict[str, Any]:
    completed = bool(chain.runs) and chain.runs[-1].status == "completed"
    diffs = compare_results(ref.results, collect_results(chain.work)) if completed else []
    n_stores, corrupt = check_stores(chain.work)
    return {
        "chain": chain.index,
        "workdir": str(chain.work),
        "completed": completed,
        "identical": completed and not diffs,
        "differences": diffs,
        "stores": n_stores,
        "corrupt_stores": corrupt,
        "finished_jobs_rerun": chain.rewritten,
        "leftovers": leftovers(chain.work),
        "runs": [asdict(r) for r in chain.runs],
    }


def workflow_state() -> dict[str, Any]:
    """What of the workflow's kill handling is in the tree measured: the default profile
    (rerun-incomplete) and stale-lock clearing at parse time, and the commit."""
    profile = REPO / "profiles" / "default" / "config.yaml"
    common = (REPO / "workflow" / "rules" / "common.smk").read_text()
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                          capture_output=True, text=True).stdout.strip()
    return {"commit": head,
            "default_profile": profile.is_file(),
            "profile_rerun_incomplete": profile.is_file()
            and "rerun-incomplete: true" in profile.read_text(),
            "stale_lock_clearing": "check_lock(" in common}


def summarise(args: argparse.Namespace, ref: Reference, chains: list[Chain],
              reports: list[dict[str, Any]], wall: float) -> dict[str, Any]:
    runs = [r for c in chains for r in c.runs]
    trials = [r for r in runs if r.signal]
    # a rerun: any run after the first of its chain that is not a recovery; one the harness
    # killed in turn is a trial of its own, every other one had to complete
    reruns = [r for c in chains for r in c.runs[1:] if r.recovery is None]
    unkilled = [r for r in reruns if r.status != "killed"]
    refused = [r for r in runs if r.status.startswith("refused")]
    stage_counts = Counter(s for r in trials for s in r.kill_point)
    return {
        "preset": args.preset,
        "seed": args.seed,
        "command": " ".join(snakemake_cmd(Path("<workdir>"))),
        "workflow_profile_used": ref.profile_used,
        "workflow_state": workflow_state(),
        "reference": {"workdir": str(ref.work), "wall_s": round(ref.wall_s, 1),
                      "startup_s": round(ref.startup_s, 1), "jobs": len(ref.durations),
                      "rule_seconds": {k: round(v, 1) for k, v in ref.rule_durations.items()}},
        "chains": len(chains),
        "trials_run": len(trials),
        "signals": dict(Counter(r.signal for r in trials)),
        "targets_hit": sum(r.target_hit for r in trials),
        "signals_escalated_to_sigkill": sum(r.escalated for r in trials),
        "kill_points_per_stage": {s: stage_counts.get(s, 0)
                                  for s in [STARTUP, *ref.rule_order, SCHEDULER]},
        "stages_never_hit": [s for s in [STARTUP, *ref.rule_order] if not stage_counts.get(s)],
        "reruns": len(reruns),
        "reruns_killed_again": len(reruns) - len(unkilled),
        "reruns_left_to_finish": len(unkilled),
        "reruns_completed": sum(r.status == "completed" for r in unkilled),
        "reruns_refused": len(refused),
        "reruns_refused_why": dict(Counter(r.status for r in refused)),
        "refusals": [{"log": r.log, "status": r.status, "error": r.error} for r in refused],
        "recoveries": dict(Counter(r.recovery for r in runs if r.recovery)),
        "reruns_failed": [{"log": r.log, "status": r.status, "error": r.error}
                          for r in runs if r.status in ("failed", "hung")],
        "chains_completed": sum(c["completed"] for c in reports),
        "chains_identical": sum(c["identical"] for c in reports),
        "differences": {c["chain"]: c["differences"] for c in reports if c["differences"]},
        "stores_checked": sum(c["stores"] for c in reports),
        "corrupt_stores": sum(len(c["corrupt_stores"]) for c in reports),
        "finished_jobs_rerun": sum(len(c["finished_jobs_rerun"]) for c in reports),
        "leftover_temp_files": sum(len(c["leftovers"]["temp_files"]) for c in reports),
        "leftover_incomplete_markers": sum(len(c["leftovers"]["incomplete_markers"])
                                           for c in reports),
        "stray_processes": sum(len(r.stray_processes) for r in runs),
        "wall_s": round(wall, 1),
        "chain_reports": reports,
    }


def print_table(r: dict[str, Any]) -> None:
    rows = [
        ("preset", r["preset"]),
        ("workflow profile picked up", r["workflow_profile_used"]),
        ("stale-lock clearing in common.smk", r["workflow_state"]["stale_lock_clearing"]),
        ("reference run", f"{r['reference']['wall_s']} s, {r['reference']['jobs']} jobs"),
        ("chains", r["chains"]),
        ("trials run", r["trials_run"]),
        ("signals", ", ".join(f"{k} {v}" for k, v in sorted(r["signals"].items()))),
        ("targets hit (target job running)", r["targets_hit"]),
        ("signals escalated to SIGKILL", r["signals_escalated_to_sigkill"]),
        ("reruns (same plain command)", r["reruns"]),
        ("  killed again by the harness", r["reruns_killed_again"]),
        ("  left to finish / completed", f"{r['reruns_left_to_finish']} / "
                                         f"{r['reruns_completed']}"),
        ("reruns refused", f"{r['reruns_refused']} {r['reruns_refused_why'] or ''}".rstrip()),
        ("recoveries (unlock / rerun-incomplete)", r["recoveries"] or 0),
        ("runs failed or hung", len(r["reruns_failed"])),
        ("chains completed", r["chains_completed"]),
        ("chains with identical results", f"{r['chains_identical']} of {r['chains']}"),
        ("stores checked", r["stores_checked"]),
        ("corrupt stores", r["corrupt_stores"]),
        ("finished jobs rerun", r["finished_jobs_rerun"]),
        ("leftover temp files", r["leftover_temp_files"]),
        ("leftover incomplete markers", r["leftover_incomplete_markers"]),
        ("stray processes", r["stray_processes"]),
        ("wall time", f"{r['wall_s'] / 60:.1f} min"),
    ]
    width = max(len(k) for k, _ in rows)
    print("\nkill trials")
    for key, value in rows:
        print(f"  {key:<{width}}  {value}")
    print("\nkill points per stage")
    for stage, n in r["kill_points_per_stage"].items():
        print(f"  {stage:<{width}}  {n}")
    if r["stages_never_hit"]:
        print(f"  never hit: {', '.join(r['stages_never_hit'])}")


if __name__ == "__main__":
    main()
