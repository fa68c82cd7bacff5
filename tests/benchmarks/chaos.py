"""How much a method's result moves under a last-bit perturbation (a script, not a test): each
variant's classifier trained with 1 and with 2 torch threads, which changes the order of torch's
floating-point reductions, the same kind of difference as another CPU.

    .venv/bin/python tests/benchmarks/chaos.py --configfile config.yaml [overlay.yaml ...] \
        [--variants baseline seam] [--reuse-one-thread DIR] [--cores 2] [--out DIR]

Runs the seeds (and seeds + CRF) evaluation of every variant twice with Snakemake, in two working
directories under --out: `threads1` with `--set-threads train_classifier=1` (the workflow's own
setting) and `threads2` with `train_classifier=2`; everything else (dataset, pretrained weights,
CAM extraction, CRF) is the same. `--reuse-one-thread DIR` takes a finished run's folder as the
1-thread arm (e.g. the default run). Prints, per variant, seeds mIoU and CRF mIoU of both arms
and their differences, and the mean absolute difference.
"""

from __future__ import annotations

import argparse
import copy
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from snakemake.settings.types import ConfigSettings

from wsss.schema import resolve_like

REPO = Path(__file__).resolve().parents[2]


def _config(files: list[Path]) -> dict:
    """The config the Snakefile sees with `--configfile *files`: Snakemake's own merge of the
    layers (ConfigSettings), `like:` resolved."""
    return resolve_like(copy.deepcopy(ConfigSettings(configfiles=files).overwrite_config))


def _snakemake(work: Path, files: list[Path], targets: list[str], threads: int,
               cores: str) -> None:
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"),
           "--directory", str(work), "--cores", cores,
           *targets, "--set-threads", f"train_classifier={threads}",
           "--configfile", *map(str, files)]
    subprocess.run(cmd, check=True)


def _miou(path: Path) -> float:
    return float(json.loads(path.read_text())["miou"]) * 100


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--configfile", nargs="+", type=Path, default=[REPO / "config.yaml"])
    p.add_argument("--variants", nargs="*", default=None, help="default: run.variants")
    p.add_argument("--reuse-one-thread", type=Path, default=None,
                   help="a finished run's working directory, used as the 1-thread arm")
    p.add_argument("--cores", default="2")
    p.add_argument("--out", type=Path, default=None, help="default: a temporary folder")
    args = p.parse_args()
    files = [f.resolve() for f in args.configfile]
    cfg = _config(files)
    variants = args.variants or cfg["run"]["variants"]
    split = cfg["run"].get("splits", ["train"])[0]
    results = f"results/{cfg['dataset']['name']}"
    targets = [t for v in variants for t in (f"{results}/{v}/cams/{split}.eval.json",
                                             f"{results}/{v}/crf/labels/{split}.eval.json")]
    out = args.out or Path(tempfile.mkdtemp(prefix="wsss-chaos-"))
    arms = {1: args.reuse_one_thread or out / "threads1", 2: out / "threads2"}
    for threads, work in arms.items():
        if threads == 1 and args.reuse_one_thread is not None:
            continue
        work.mkdir(parents=True, exist_ok=True)
        # the dataset and the pretrained weights do not depend on the training threads: share
        # the first arm's (copied with their times, so Snakemake keeps them)
        first = arms[1]
        for shared in ("results/pretrained", f"{results}/data"):
            if (first / shared).exists() and not (work / shared).exists() and first != work:
                shutil.copytree(first / shared, work / shared, symlinks=True)
        _snakemake(work, files, targets, threads, args.cores)
    print(f"{'variant':14s} {'seeds 1t':>9s} {'seeds 2t':>9s} {'diff':>6s} "
          f"{'crf 1t':>7s} {'crf 2t':>7s} {'diff':>6s}")
    diffs = []
    for v in variants:
        s = [_miou(arms[t] / f"{results}/{v}/cams/{split}.eval.json") for t in (1, 2)]
        c = [_miou(arms[t] / f"{results}/{v}/crf/labels/{split}.eval.json") for t in (1, 2)]
        diffs.append((abs(s[1] - s[0]), abs(c[1] - c[0])))
        print(f"{v:14s} {s[0]:9.2f} {s[1]:9.2f} {s[1] - s[0]:+6.2f} "
              f"{c[0]:7.2f} {c[1]:7.2f} {c[1] - c[0]:+6.2f}")
    n = len(diffs)
    print(f"mean |diff|: seeds {sum(d[0] for d in diffs) / n:.2f}, "
          f"crf {sum(d[1] for d in diffs) / n:.2f} (working directories: {out})")


if __name__ == "__main__":
    main()
