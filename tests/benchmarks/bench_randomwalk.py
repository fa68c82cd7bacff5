"""Random walk time and peak memory, dense vs sparse path (run as a script; not a pytest test).

python tests/benchmarks/bench_randomwalk.py [--threads 1] [--repeats 3] [--dense-max-nodes 4096]

Each (grid, path) case runs twice, each time in a fresh subprocess:

* time: the median wall and CPU time of up to --repeats walks (fewer once 20 s went into the
  case), with --threads torch threads. One thread is the default: on a shared machine more
  threads than free cores make every one of the 256 small sparse products wait at a barrier
  (seen here: 128x128 sparse 0.35 s with 1 thread, 5.9 s with 2 while other jobs ran);
* memory: one walk, with glibc's malloc told to serve every block over 64 kB by mmap
  (MALLOC_MMAP_THRESHOLD_) so that freed buffers leave the resident set at once; the peak RSS
  delta is then ru_maxrss after the walk minus the RSS just before it, i.e. the peak of live
  memory the walk added, shown next to the `walk_memory_bytes` bound. That malloc setting makes
  every per-step allocation page-fault afresh, which is why it is not used for timing.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import torch

from wsss.refine.randomwalk import pair_indices, random_walk, walk_memory_bytes

RADIUS, BETA, LOGT, LABELS = 5, 8.0, 8, 4
CASES = [  # (description, grid h, grid w)
    ("~100x100 synthetic, stride 4", 25, 25),
    ("512x512, stride 8", 64, 64),
    ("512x512, stride 4", 128, 128),
]
TIME_BUDGET_S = 20.0  # dense 64x64 takes several seconds a call on 2 cores


def _current_rss_bytes() -> int:
    with open("/proc/self/statm") as statm:  # Linux: second field = resident pages
        return int(statm.read().split()[1]) * resource.getpagesize()


def _child(h: int, w: int, path: str, mode: str, repeats: int, threads: int) -> None:
    """Measure one case and print the result as JSON (runs in a fresh interpreter)."""
    torch.set_num_threads(threads)
    max_dense = h * w if path == "dense" else 0
    generator = torch.Generator().manual_seed(0)
    start = time.perf_counter()
    src, dst = pair_indices(h, w, RADIUS)
    pairs_ms = 1e3 * (time.perf_counter() - start)
    src_t, dst_t = torch.from_numpy(src), torch.from_numpy(dst)
    affinity = torch.rand(len(src), generator=generator)
    probs = torch.rand(LABELS, h, w, generator=generator)
    # Warm up both paths on a tiny grid: thread pools and lazy kernels are not the walk's cost.
    tiny_src, tiny_dst = pair_indices(4, 4, RADIUS)
    tiny_affinity, tiny_probs = torch.rand(len(tiny_src)), torch.rand(LABELS, 4, 4)
    for tiny_max in (16, 0):
        random_walk(tiny_probs, tiny_src, tiny_dst, tiny_affinity, BETA, LOGT, tiny_max)
    before = _current_rss_bytes()
    times: list[float] = []
    cpu_start = time.process_time()
    while len(times) < (1 if mode == "memory" else repeats) and sum(times) < TIME_BUDGET_S:
        start = time.perf_counter()
        random_walk(probs, src_t, dst_t, affinity, BETA, LOGT, max_dense)
        times.append(time.perf_counter() - start)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kB on Linux
    result = {
        "pairs": len(src),
        "pairs_ms": pairs_ms,
        "seconds": statistics.median(times),
        "calls": len(times),
        "cpu_seconds": (time.process_time() - cpu_start) / len(times),
        "peak_delta": max(0, peak - before),
        "threads": torch.get_num_threads(),
    }
    print(json.dumps(result))


def _run_child(h: int, w: int, path: str, mode: str, repeats: int, threads: int) -> dict:
    command = [sys.executable, __file__, "--repeats", str(repeats), "--threads", str(threads)]
    command += ["--child", str(h), str(w), path, mode]
    env = dict(os.environ)
    if mode == "memory":
        env["MALLOC_MMAP_THRESHOLD_"] = str(64 * 1024)
    out = subprocess.run(command, check=True, capture_output=True, text=True, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _mib(n_bytes: float) -> str:
    return f"{n_bytes / 2**20:.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per walk")
    parser.add_argument("--repeats", type=int, default=3, help="walks timed per case (median)")
    parser.add_argument(
        "--dense-max-nodes",
        type=int,
        default=4096,
        help="skip the dense path above this many grid cells (16384 cells: 1 GiB per n×n copy)",
    )
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)  # H W PATH MODE
    args = parser.parse_args()
    if args.child:
        h, w, path, mode = args.child
        _child(int(h), int(w), path, mode, args.repeats, args.threads)
        return
    print(
        f"radius {RADIUS}, beta {BETA}, logt {LOGT} ({2**LOGT} steps), {LABELS} labels, "
        f"float32, CPU ({args.threads} torch thread(s)), random affinities"
    )
    row = "{:29s} {:>7s} {:>6s} {:>6s} {:>8s} {:>8s} {:>5s} {:>12s} {:>9s}"
    header = row.format("case", "grid", "pairs", "path", "s/image", "CPU s", "calls",
                        "peak RSS MiB", "bound MiB")  # fmt: skip
    print(header)
    print("-" * len(header))
    for name, h, w in CASES:
        for path in ("dense", "sparse"):
            grid = f"{h}x{w}"
            if path == "dense" and h * w > args.dense_max_nodes:
                bound = walk_memory_bytes(h, w, RADIUS, LABELS, h * w)
                cells = (name, grid, "", path, "skipped", "", "", "", _mib(bound))
                print(row.format(*cells) + "  (logt n×n products of n = 16384: infeasible)")
                continue
            timed = _run_child(h, w, path, "time", args.repeats, args.threads)
            memory = _run_child(h, w, path, "memory", args.repeats, args.threads)
            bound = walk_memory_bytes(h, w, RADIUS, LABELS, h * w if path == "dense" else 0)
            seconds, cpu = f"{timed['seconds']:.3f}", f"{timed['cpu_seconds']:.3f}"
            cells = (name, grid, str(timed["pairs"]), path, seconds, cpu, str(timed["calls"]),
                     _mib(memory["peak_delta"]), _mib(bound))  # fmt: skip
            print(row.format(*cells))
    print(f"pair_indices for the largest grid: {timed['pairs_ms']:.1f} ms")


if __name__ == "__main__":
    main()
