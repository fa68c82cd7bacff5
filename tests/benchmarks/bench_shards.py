"""What `dataset.shards` costs on one machine: stage times at 1 vs N shards, view reads, combine.

A script, not a test:

    OMP_NUM_THREADS=1 .venv/bin/python tests/benchmarks/bench_shards.py \
        [--workdir /tmp/bench_shards] [--cores 2] [--variants baseline seam hsc dscnet] \
        [--refiners crf] [--settings 1 4] [--repeats 2] [--json out.json] [--keep]

1. Stage timing. In --workdir the upstream (dataset, pretrain, the classifiers of --variants) is
   built once from the repo's config.yaml with run.variants = --variants, run.refiners =
   --refiners, no variant_refiners and no DeepLab. Then, in the order 1, 4, 1, 4 (--settings
   times --repeats), the config is written with that dataset.shards and `snakemake --cores C
   --forcerun cams <targets>` is timed: --forcerun cams reruns the CAMs and everything
   downstream of them, i.e. exactly the per-image stages (a dry run before every timed run
   checks that no other rule is planned: no classifier, no pretrain). The targets are the
   default target if it holds only per-image, combine_* and summary/report rules, else every
   .eval.json of the variants (the default target also builds the failure-mode diagnostics).
   Per run: the wall time, the load average at its start (each run waits, up to --max-wait s,
   for the 1-minute load to fall to --max-load), the jobs, and per rule the sum of the `s`
   (wall) and `cpu_time` columns of the Snakemake benchmark files the run wrote (by mtime).
2. Read overhead. Each store of the last run (which must be sharded: the order ends on it) is a
   view over its shard files; it is read (open, every id's arrays, close) through CamReader /
   LabelReader and through plain h5py (for the view: HDF5 external links), against the
   single-store file of the last 1-shard run with the same content (copied aside before the
   sharded run replaced it; the arrays are checked equal).
3. Combine at scale: --scale-shards tiny shard stores holding --scale-ids images in all (1x4x4
   CAMs: COCO's 82,081 train ids by default) are written; `combine_stores` over them and the
   open of the view (the reader builds its id -> shard dict) are timed, against the open of one
   store of the same ids.

Every process started gets OMP_NUM_THREADS=1. The big files (results/, the copies, the scale
stores) are deleted at the end unless --keep; the Snakemake logs stay in --workdir/logs.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import h5py
import numpy as np
import yaml

from wsss.data.shards import shard_ids, shard_name
from wsss.store import CamReader, CamWriter, LabelReader, combine_stores

REPO = Path(__file__).resolve().parents[2]
PER_IMAGE = ("cams", "evaluate_seeds", "refine_crf", "refiner_train_labels", "refine_learned",
             "refine_direct", "evaluate_labels", "deeplab_predict", "evaluate_deeplab")
REPORT_RULES = ("summary", "report_figures", "all")


# --------------------------------------------------------------------------------------------
# helpers


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1"}


def _wait_for_load(limit: float, max_wait: float, poll: float = 5.0) -> tuple[float, float]:
    """Wait until the 1-minute load average is at most `limit` (at most `max_wait` s); return
    (the load when the run starts, the seconds waited)."""
    t0 = time.monotonic()
    while os.getloadavg()[0] > limit and time.monotonic() - t0 < max_wait:
        time.sleep(poll)
    return os.getloadavg()[0], time.monotonic() - t0


def _median(xs):
    return statistics.median(xs) if xs else float("nan")


class Workflow:
    """snakemake in the work folder, with its config file there."""

    def __init__(self, work: Path, cores: str, base_cfg: dict):
        self.work, self.cores, self.base = work, cores, base_cfg
        self.logs = work / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)

    def write_config(self, shards: int) -> None:
        cfg = json.loads(json.dumps(self.base))
        cfg["dataset"]["shards"] = shards
        (self.work / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))

    def run(self, log: str, *args: str) -> tuple[subprocess.CompletedProcess, float, str]:
        cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"),
               "--directory", str(self.work), "--configfile", str(self.work / "config.yaml"),
               "--cores", self.cores, *args]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, env=_env())
        wall = time.perf_counter() - t0
        text = proc.stdout + proc.stderr
        (self.logs / f"{log}.log").write_text(" ".join(cmd) + "\n\n" + text)
        if proc.returncode != 0:
            raise SystemExit(f"snakemake failed (log {self.logs / log}.log):\n{text[-4000:]}")
        return proc, wall, text


def _planned(text: str) -> dict[str, int]:
    """Job counts of a (dry) run's 'Job stats' table."""
    if "Job stats:" not in text:
        return {}
    table = text[text.index("Job stats:"):]
    table = table[: table.index("\n\n", table.index("total")) if "total" in table else None]
    return {m.group(1): int(m.group(2))
            for m in re.finditer(r"^(\w+)\s+(\d+)$", table, flags=re.M) if m.group(1) != "total"}


def _benchmark_rules(text: str) -> dict[str, str]:
    """benchmark file -> rule, from the job blocks Snakemake prints."""
    out, rule = {}, None
    for line in text.splitlines():
        m = re.match(r"^(?:local)?rule (\w+):\s*$", line)
        if m:
            rule = m.group(1)
            continue
        m = re.match(r"^\s+benchmark: (.+?)\s*$", line)
        if m and rule:
            out[m.group(1)] = rule
    return out


def _is_per_image_or_combine(rule: str) -> bool:
    return rule in PER_IMAGE or rule.startswith("combine_")


def _written_benchmarks(work: Path, since: float, rules: dict[str, str]) -> list[dict]:
    """Rows of the Snakemake benchmark files written since `since` (one per job)."""
    rows = []
    for tsv in sorted(work.glob("results/**/benchmarks/**/*.tsv")):
        if tsv.stat().st_mtime < since:
            continue
        rel = str(tsv.relative_to(work))
        with open(tsv) as fh:
            row = next(csv.DictReader(fh, delimiter="\t"))
        rows.append({"file": rel, "rule": rules.get(rel, "?"), "s": float(row["s"]),
                     "cpu_time": float(row.get("cpu_time") or "nan")})
    return rows


def _evals(work: Path, targets: list[str]) -> dict[str, float]:
    return {t: json.loads((work / t).read_text())["miou"] for t in targets}


def _time_cmd(cmd: list[str], n: int = 3) -> float:
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True, env=_env())
        times.append(time.perf_counter() - t0)
    return _median(times)


# --------------------------------------------------------------------------------------------
# 1. stage timing


def stage_timing(args, work: Path, base: dict, out: dict) -> tuple[list[str], str]:
    name, splits = base["dataset"]["name"], base["run"]["splits"]
    results = f"results/{name}"
    wf = Workflow(work, args.cores, base)

    # start-up floor of a job: the interpreter and its imports, outside Snakemake
    py = sys.executable
    wsss_bin = str(Path(sys.executable).parent / "wsss")
    load0, _ = _wait_for_load(args.max_load, args.max_wait)
    startup = {
        "python -c pass": _time_cmd([py, "-c", "pass"]),
        "wsss --help (the CLI, lazy imports)": _time_cmd([wsss_bin, "--help"]),
        "import numpy, h5py, wsss.store": _time_cmd([py, "-c", "import numpy, h5py, wsss.store"]),
        "import torch": _time_cmd([py, "-c", "import torch"]),
        "import torch, wsss.cams, wsss.methods": _time_cmd(
            [py, "-c", "import torch, wsss.cams, wsss.methods"]),
    }
    out["startup_s"], out["startup_load"] = startup, load0
    print(f"\nstart-up of one process (median of 3, load {load0:.2f} at start):")
    for k, v in startup.items():
        print(f"  {k:42s} {v:6.2f} s")

    # the upstream, once
    wf.write_config(1)
    upstream = [f"{results}/{v}/classifier.pt" for v in args.variants]
    load, waited = _wait_for_load(args.max_load, args.max_wait)
    _, wall, text = wf.run("upstream", *upstream)
    out["upstream"] = {"wall_s": wall, "load": load, "jobs": _planned(text)}
    print(f"\nupstream (dataset, pretrain, {len(args.variants)} classifiers): {wall:.1f} s, "
          f"jobs {_planned(text)}", flush=True)

    # the targets: the default one if it holds only per-image, combine and report rules
    _, _, text = wf.run("dry_default", "-n", "--forcerun", "cams")
    extra = sorted(r for r in _planned(text)
                   if not _is_per_image_or_combine(r) and r not in REPORT_RULES)
    if extra:
        targets = []
        for v in args.variants:
            targets += [f"{results}/{v}/cams/{s}.eval.json" for s in splits]
            targets += [f"{results}/{v}/{r}/labels/{s}.eval.json"
                        for r in args.refiners for s in splits]
        why = f"explicit .eval.json targets (the default target also plans {extra})"
        allowed = lambda r: _is_per_image_or_combine(r)  # noqa: E731
    else:
        targets, why = [], "the default target"
        allowed = lambda r: _is_per_image_or_combine(r) or r in REPORT_RULES  # noqa: E731
    eval_targets = [f"{results}/{v}/cams/{s}.eval.json" for v in args.variants for s in splits]
    eval_targets += [f"{results}/{v}/{r}/labels/{s}.eval.json" for v in args.variants
                     for r in args.refiners for s in splits]
    print(f"targets: {why}", flush=True)
    out["targets"], out["targets_why"] = targets, why

    runs = []
    order = [n for _ in range(args.repeats) for n in args.settings]
    for k, shards in enumerate(order):  # targets before --forcerun, which takes a list
        wf.write_config(shards)
        _, dry_wall, text = wf.run(f"dry_{k + 1}_{shards}", "-n", *targets, "--forcerun", "cams")
        planned = _planned(text)
        bad = sorted(r for r in planned if not allowed(r))
        if bad:
            raise SystemExit(f"run {k + 1} ({shards} shards): the dry run plans {bad} as well "
                             f"({planned}); not only the per-image stages would be timed")
        load, waited = _wait_for_load(args.max_load, args.max_wait)
        since = time.time()
        _, wall, text = wf.run(f"run_{k + 1}_{shards}", *targets, "--forcerun", "cams")
        rows = _written_benchmarks(work, since, _benchmark_rules(text))
        runs.append({"run": k + 1, "shards": shards, "cores": args.cores, "load": load,
                     "waited_s": waited, "wall_s": wall, "dry_run_s": dry_wall, "planned": planned,
                     "jobs": len(rows), "benchmarks": rows, "evals": _evals(work, eval_targets)})
        print(f"  run {k + 1}: {shards} shard(s): {wall:7.1f} s wall, {len(rows)} jobs, "
              f"sum of job s {sum(r['s'] for r in rows):7.1f}, load {load:.2f} "
              f"(waited {waited:.0f} s)", flush=True)
        if shards == 1:  # the single stores, for the read comparison after a sharded run
            for t in _store_paths(results, args.variants, args.refiners, splits):
                dst = work / "single" / t
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(work / t, dst)
    out["runs"] = runs
    _print_timing(runs, args.settings)
    return _store_paths(results, args.variants, args.refiners, splits), order[-1]


def _store_paths(results: str, variants, refiners, splits) -> list[str]:
    paths = [f"{results}/{v}/cams/{s}.h5" for v in variants for s in splits]
    return paths + [f"{results}/{v}/{r}/labels/{s}.h5" for v in variants for r in refiners
                    for s in splits]


def _print_timing(runs: list[dict], settings: list[int]) -> None:
    print("\nwall time of `snakemake --forcerun cams` (per-image stages only):")
    print(f"{'run':>4s} {'shards':>7s} {'load':>6s} {'waited s':>9s} {'wall s':>8s} {'jobs':>5s} "
          f"{'sum job s':>10s} {'sum cpu s':>10s} {'job s/wall':>11s} {'dry run s':>10s}")
    for r in runs:
        s = sum(b["s"] for b in r["benchmarks"])
        c = sum(b["cpu_time"] for b in r["benchmarks"])
        print(f"{r['run']:4d} {r['shards']:7d} {r['load']:6.2f} {r['waited_s']:9.0f} "
              f"{r['wall_s']:8.1f} {r['jobs']:5d} {s:10.1f} {c:10.1f} {s / r['wall_s']:11.2f} "
              f"{r['dry_run_s']:10.1f}")
    med = {n: _median([r["wall_s"] for r in runs if r["shards"] == n]) for n in settings}
    print("\nmedian wall per setting:")
    for n in settings:
        walls = ", ".join(f"{r['wall_s']:.1f}" for r in runs if r["shards"] == n)
        print(f"  {n} shard(s): {med[n]:7.1f} s   ({walls})")
    ref = settings[0]
    for n in settings[1:]:
        print(f"  ratio {n}-shard / {ref}-shard: {med[n] / med[ref]:.3f}")

    print("\nper rule, mean over the repeats of one run (jobs; sum of the benchmark files' "
          "s and cpu_time):")
    rules = sorted({b["rule"] for r in runs for b in r["benchmarks"]},
                   key=lambda x: (x.startswith("combine_"), PER_IMAGE.index(x)
                                  if x in PER_IMAGE else 99, x))
    head = "".join(f" | {f'{n} shard(s)':^28s}" for n in settings)
    print(f"{'rule':22s}{head}")
    print(f"{'':22s}" + "".join(f" | {'jobs':>6s} {'s':>8s} {'cpu s':>8s} {'s/job':>5s}"
                                 for _ in settings))

    def agg(n, pick):
        rs = [r for r in runs if r["shards"] == n]
        jobs = sum(1 for r in rs for b in r["benchmarks"] if pick(b["rule"])) / max(1, len(rs))
        s = sum(b["s"] for r in rs for b in r["benchmarks"] if pick(b["rule"])) / max(1, len(rs))
        c = sum(b["cpu_time"] for r in rs for b in r["benchmarks"]
                if pick(b["rule"])) / max(1, len(rs))
        return jobs, s, c

    def line(label, pick):
        cells = ""
        for n in settings:
            jobs, s, c = agg(n, pick)
            per = f"{s / jobs:5.1f}" if jobs else f"{'-':>5s}"
            cells += f" | {jobs:6.0f} {s:8.1f} {c:8.1f} {per}"
        print(f"{label:22s}{cells}")

    for rule in rules:
        line(rule, lambda x, rule=rule: x == rule)
    line("= per-image rules", lambda x: x in PER_IMAGE)
    line("= combine_* rules", lambda x: x.startswith("combine_"))
    line("= all", lambda x: True)
    print("  (cpu_time: Snakemake samples a job's processes about once a second, so jobs of "
          "under a second read 0)")
    cores = int(runs[0]["cores"])
    print(f"\nwhere the time goes (means over the repeats; {cores} cores):")
    for n in settings:
        rs = [r for r in runs if r["shards"] == n]
        wall = _median([r["wall_s"] for r in rs])
        jobs = sum(r["jobs"] for r in rs) / len(rs)
        s = sum(b["s"] for r in rs for b in r["benchmarks"]) / len(rs)
        print(f"  {n} shard(s): {jobs:.0f} jobs, {s:.1f} job-s = {s / jobs:.2f} s/job; "
              f"{cores} x wall - job-s = {cores * wall - s:.1f} core-s outside jobs (Snakemake's "
              f"own start-up and scheduling, idle cores)")
    ref = settings[0]
    r0 = [r for r in runs if r["shards"] == ref]
    for n in settings[1:]:
        rn = [r for r in runs if r["shards"] == n]
        rules = sorted({b["rule"] for r in rn for b in r["benchmarks"] if b["rule"] in PER_IMAGE},
                       key=PER_IMAGE.index)
        for label, pick in (*((rule, lambda x, rule=rule: x == rule) for rule in rules),
                            ("per-image", lambda x: x in PER_IMAGE),
                            ("combine_*", lambda x: x.startswith("combine_")),
                            ("all", lambda x: True)):
            def tot(rs, pick=pick):
                jobs = sum(1 for r in rs for b in r["benchmarks"] if pick(b["rule"])) / len(rs)
                return jobs, sum(b["s"] for r in rs for b in r["benchmarks"]
                                 if pick(b["rule"])) / len(rs)
            (j0, s0), (j1, s1) = tot(r0), tot(rn)
            per = f" = {(s1 - s0) / (j1 - j0):.2f} s per extra job" if j1 != j0 else ""
            print(f"  {n} vs {ref} shard(s), {label} jobs: +{j1 - j0:.0f} jobs, "
                  f"{s1 - s0:+.1f} job-s{per}")
        dw = _median([r["wall_s"] for r in rn]) - _median([r["wall_s"] for r in r0])
        extra = (sum(b["s"] for r in rn for b in r["benchmarks"]) / len(rn)
                 - sum(b["s"] for r in r0 for b in r["benchmarks"]) / len(r0))
        print(f"  {n} vs {ref} shard(s): wall {dw:+.1f} s (median); the extra job-s over the "
              f"{cores} cores: {extra / cores:+.1f} s")
    evals = [json.dumps(r["evals"], sort_keys=True) for r in runs]
    print(f"\nevery run's mIoUs identical: {len(set(evals)) == 1} "
          f"({len(runs[0]['evals'])} evaluations)")


# --------------------------------------------------------------------------------------------
# 2. read overhead of a combined view


def _has_lowres(path: Path) -> bool:
    with h5py.File(path, "r", locking=False) as f:
        ids = json.loads(f.attrs["ids"])
        return bool(ids) and "cam_lowres" in f[ids[0]]


def _read_reader(path: Path, kind: str, lowres: bool) -> int:
    n = 0
    if kind == "cams":
        with CamReader(path) as r:
            for i in r.ids:
                r.get(i)
                if lowres:
                    r.get(i, lowres=True)
                n += 1
    else:
        with LabelReader(path) as r:
            for i in r.ids:
                r.get(i)
                n += 1
    return n


def _read_h5py(path: Path, kind: str, lowres: bool) -> int:
    with h5py.File(path, "r", locking=False) as f:
        ids = json.loads(f.attrs["ids"])
        for i in ids:
            if kind == "cams":
                g = f[i]
                g["cam"][()]
                g["keys"][()]
                if lowres:
                    g["cam_lowres"][()]
            else:
                f[i][()]
    return len(ids)


def _same_content(a: Path, b: Path, kind: str, lowres: bool) -> bool:
    reader = CamReader if kind == "cams" else LabelReader
    with reader(a) as ra, reader(b) as rb:
        if ra.ids != rb.ids:
            return False
        for i in ra.ids:
            if kind == "cams":
                xa = [*ra.get(i), *(ra.get(i, lowres=True) if lowres else ())]
                xb = [*rb.get(i), *(rb.get(i, lowres=True) if lowres else ())]
            else:
                xa, xb = [ra.get(i)], [rb.get(i)]
            if any(x.tobytes() != y.tobytes() or x.shape != y.shape
                   for x, y in zip(xa, xb, strict=True)):
                return False
    return True


def read_overhead(args, work: Path, stores: list[str], out: dict) -> None:
    rows = []
    for rel in stores:
        view, single = work / rel, work / "single" / rel
        with h5py.File(view, "r", locking=False) as f:
            kind, parts = f.attrs["kind"], json.loads(f.attrs.get("shards", "[]"))
        if not parts or not single.is_file():
            print(f"  {rel}: not a view, or no single copy; skipped")
            continue
        lowres = kind == "cams" and _has_lowres(single)
        same = _same_content(view, single, kind, lowres)
        timings: dict[str, list[float]] = defaultdict(list)
        modes = {"reader single": (_read_reader, single), "reader view": (_read_reader, view),
                 "h5py single": (_read_h5py, single), "h5py view (ext. links)": (_read_h5py, view)}
        n = 0
        for rep in range(args.read_repeats + 1):  # the first pass warms the page cache
            order = list(modes.items())
            for mode, (fn, path) in order if rep % 2 else order[::-1]:  # no order effect
                t0 = time.perf_counter()
                n = fn(path, kind, lowres)
                if rep:
                    timings[mode].append(time.perf_counter() - t0)
        med = {m: _median(t) / n * 1e6 for m, t in timings.items()}
        rows.append({"store": rel, "kind": kind, "ids": n, "shards": len(parts),
                     "lowres": lowres, "same_content": same, "us_per_image": med,
                     "times_s": dict(timings)})
    out["read"] = rows
    print(f"\nreading every id (open + read all + close), median of {args.read_repeats}, "
          "µs per image (CAMs: cam + keys, and cam_lowres where present):")
    print(f"{'store':42s} {'ids':>4s} {'same':>5s} | {'reader 1 file':>13s} {'reader view':>11s} "
          f"{'overhead':>8s} {'ms/pass':>7s} | {'h5py 1 file':>11s} {'h5py links':>10s} "
          f"{'ratio':>6s}")
    for r in rows:
        m = r["us_per_image"]
        print(f"{r['store'].split('/', 2)[2]:42s} {r['ids']:4d} {str(r['same_content']):>5s} | "
              f"{m['reader single']:13.1f} {m['reader view']:11.1f} "
              f"{m['reader view'] / m['reader single'] - 1:+8.1%} "
              f"{(m['reader view'] - m['reader single']) * r['ids'] / 1e3:+7.1f} | "
              f"{m['h5py single']:11.1f} {m['h5py view (ext. links)']:10.1f} "
              f"{m['h5py view (ext. links)'] / m['h5py single']:6.2f}x")
    for kind in ("cams", "labels"):
        ks = [r for r in rows if r["kind"] == kind]
        if ks:
            over = [r["us_per_image"]["reader view"] / r["us_per_image"]["reader single"] - 1
                    for r in ks]
            print(f"  {kind}: median reader overhead of the view {_median(over):+.1%} "
                  f"(range {min(over):+.1%} .. {max(over):+.1%})")
    print("  (ms/pass: the view's extra time of one open + read-all + close, which holds the "
          "opening of its shard files)")


# --------------------------------------------------------------------------------------------
# 3. combine at COCO's scale


def combine_scale(args, work: Path, out: dict) -> None:
    folder = work / "scale"
    if folder.exists():
        shutil.rmtree(folder)
    n, k = args.scale_ids, args.scale_shards
    ids = [f"COCO_train2014_{i:012d}" for i in range(n)]
    classes = [f"class{c:02d}" for c in range(80)]
    attrs = {"classes": classes, "method": "baseline", "variant": "baseline", "split": "train",
             "scales": [1.0], "flip": True, "cam_norm": "max"}
    cam = np.linspace(0, 1, 16, dtype=np.float16).reshape(1, 4, 4)
    t0 = time.perf_counter()
    parts = []
    for i in range(1, k + 1):
        part = folder / "train.shards" / f"{shard_name(i, k)}.h5"
        with CamWriter(part, {**attrs, "shard": shard_name(i, k)}) as w:
            for image_id in shard_ids(ids, shard_name(i, k)):
                w.add(image_id, cam, [int(image_id[-2:]) % 80])
        parts.append(part)
    write_shards = time.perf_counter() - t0
    single = folder / "single.h5"
    t0 = time.perf_counter()
    with CamWriter(single, attrs) as w:
        for image_id in ids:
            w.add(image_id, cam, [int(image_id[-2:]) % 80])
    write_single = time.perf_counter() - t0
    os.sync()  # the stores' dirty pages written back, not flushed during the timings
    view = folder / "train.h5"
    combine = []
    for _ in range(args.scale_repeats):
        t0 = time.perf_counter()
        assert combine_stores(view, parts, "cams", ids) == n
        combine.append(time.perf_counter() - t0)

    def open_close(path):
        ts = []
        for _ in range(args.scale_repeats + 2):
            t0 = time.perf_counter()
            CamReader(path).close()
            ts.append(time.perf_counter() - t0)
        return _median(ts[1:])

    def read_all(path):
        t0 = time.perf_counter()
        with CamReader(path) as r:
            for image_id in r.ids:
                r.get(image_id)
        return time.perf_counter() - t0

    res = {"ids": n, "shards": k, "write_shards_s": write_shards, "write_single_s": write_single,
           "combine_s": combine, "combine_median_s": _median(combine),
           "view_bytes": view.stat().st_size,
           "shard_bytes": sum(p.stat().st_size for p in parts),
           "single_bytes": single.stat().st_size,
           "open_view_s": open_close(view), "open_single_s": open_close(single)}
    if args.scale_read:  # a warm-up pass each, then alternating, the median
        reads: dict[str, list[float]] = {"view": [], "single": []}
        for rep in range(args.scale_repeats + 1):
            for name, path in (("view", view), ("single", single))[:: 1 if rep % 2 else -1]:
                t = read_all(path)
                if rep:
                    reads[name].append(t)
        res["read_all_s"] = reads
        res["read_all_view_s"] = _median(reads["view"])
        res["read_all_single_s"] = _median(reads["single"])
    out["scale"] = res
    print(f"\ncombine at scale: {n:,} ids in {k} shard stores (1x4x4 float16 CAMs, keys):")
    print(f"  writing the {k} shards {write_shards:.1f} s, one single store {write_single:.1f} s "
          f"(setup, not the combine)")
    print(f"  combine_stores (index + {n:,} external links, ids checked): median "
          f"{res['combine_median_s']:.2f} s of {', '.join(f'{c:.2f}' for c in combine)}; "
          f"view {res['view_bytes'] / 2**20:.1f} MiB (shards {res['shard_bytes'] / 2**20:.0f} "
          f"MiB)")
    print(f"  open + close: view {res['open_view_s'] * 1e3:.1f} ms (id -> shard dict), "
          f"single store {res['open_single_s'] * 1e3:.1f} ms")
    if args.scale_read:
        print(f"  read every id (warm, median of {args.scale_repeats}): view "
              f"{res['read_all_view_s']:.2f} s "
              f"({res['read_all_view_s'] / n * 1e6:.0f} µs/image), single "
              f"{res['read_all_single_s']:.2f} s ({res['read_all_single_s'] / n * 1e6:.0f} "
              f"µs/image): {res['read_all_view_s'] / res['read_all_single_s'] - 1:+.1%}")


# --------------------------------------------------------------------------------------------


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workdir", default="/tmp/bench_shards")
    p.add_argument("--cores", default="2")
    p.add_argument("--configfile", default=str(REPO / "config.yaml"))
    p.add_argument("--variants", nargs="+", default=["baseline", "seam", "hsc", "dscnet"],
                   help="run.variants (CSRM, FSR and ACR train for minutes: left out)")
    p.add_argument("--refiners", nargs="+", default=["crf"])
    p.add_argument("--settings", type=int, nargs="+", default=[1, 4],
                   help="dataset.shards values; the first is the reference of the ratio, the "
                        "last must be > 1 for the read comparison")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--max-load", type=float, default=0.7)
    p.add_argument("--max-wait", type=float, default=180.0)
    p.add_argument("--read-repeats", type=int, default=7)
    p.add_argument("--scale-ids", type=int, default=82081)
    p.add_argument("--scale-shards", type=int, default=16)
    p.add_argument("--scale-repeats", type=int, default=3)
    p.add_argument("--no-scale-read", dest="scale_read", action="store_false",
                   help="skip reading every id of the scale view")
    p.add_argument("--quick", action="store_true",
                   help="smoke test: 24 images, one epoch, quick pretrain, 2000 scale ids")
    p.add_argument("--json", help="write every figure here")
    p.add_argument("--keep", action="store_true", help="keep results/ and the scale stores")
    args = p.parse_args()
    os.environ["OMP_NUM_THREADS"] = "1"

    work = Path(args.workdir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    base = yaml.safe_load(Path(args.configfile).read_text())
    base["run"].update(variants=args.variants, refiners=args.refiners, variant_refiners={},
                       deeplab=[])
    if args.quick:
        base["dataset"].setdefault("synthetic", {}).update(num_train=24, num_val=8)
        base["methods"]["baseline"]["training"].update(epochs=1, batch_size=8)
        base["methods"]["baseline"]["inference"].update(scales=[1.0])
        base["pretrain"] = {"corpus": {"classes": 4, "train_per_class": 64,
                                       "held_out_per_class": 16, "size": 48},
                            "training": {"epochs": 3, "batch_size": 16, "optimizer": "adamw",
                                         "lr": 0.002, "weight_decay": 1.0e-4}}
        args.scale_ids = min(args.scale_ids, 2000)
    out: dict = {"args": vars(args), "cpus": os.cpu_count(),
                 "command": " ".join([sys.executable, *sys.argv])}
    print(f"work folder {work}; {os.cpu_count()} CPUs; --cores {args.cores}; variants "
          f"{args.variants}; refiners {args.refiners}; order "
          f"{[n for _ in range(args.repeats) for n in args.settings]}", flush=True)
    try:
        stores, last = stage_timing(args, work, base, out)
        if last > 1:
            read_overhead(args, work, stores, out)
        else:
            print("\nthe last run had 1 shard: no views to read (end --settings on N > 1)")
        combine_scale(args, work, out)
    finally:
        if args.json:
            Path(args.json).write_text(json.dumps(out, indent=1, default=str) + "\n")
        if not args.keep:
            for sub in ("results", "single", "scale", ".snakemake"):
                shutil.rmtree(work / sub, ignore_errors=True)


if __name__ == "__main__":
    main()
