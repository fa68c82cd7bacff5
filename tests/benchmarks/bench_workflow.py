"""Wall time of the default workflow from an empty results/ folder, and per-rule times.

    .venv/bin/python tests/benchmarks/bench_workflow.py [--cores 2] [--configfile config.yaml]

Runs `snakemake --cores N` in a temporary working directory with the given config and prints
the total wall time and the seconds of every job from Snakemake's benchmark files.
"""

from __future__ import annotations

import argparse
import csv
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cores", default="2")
    p.add_argument("--configfile", default=str(REPO / "config.yaml"))
    p.add_argument("--keep", action="store_true", help="keep the working directory")
    args = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="wsss-bench-"))
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"),
           "--directory", str(work), "--configfile", str(Path(args.configfile).resolve()),
           "--cores", args.cores, "--quiet", "all"]
    t0 = time.time()
    subprocess.run(cmd, check=True)
    wall = time.time() - t0
    print(f"workflow wall time: {wall:.1f} s (cores={args.cores}, workdir {work})")
    for tsv in sorted(work.glob("results/*/benchmarks/**/*.tsv")):
        with open(tsv) as fh:
            row = next(csv.DictReader(fh, delimiter="\t"))
        job = tsv.relative_to(tsv.parents[len(tsv.relative_to(work).parts) - 3]).with_suffix("")
        print(f"  {str(job):55s} {float(row['s']):7.1f} s  max RSS {float(row['max_rss']):7.0f} MB")
    if not args.keep:
        subprocess.run(["rm", "-rf", str(work)], check=False)


if __name__ == "__main__":
    main()
