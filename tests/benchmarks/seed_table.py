r"""Mean and spread over training seeds, from finished runs' evaluation files (a script, not a
test).

    .venv/bin/python tests/benchmarks/seed_table.py DIR [DIR ...] [--split train]
        [--stages seghead/labels/train seghead/labels/val ...] [--seed-suffix REGEX]

Reads every `results/<dataset>/<variant>/cams/<split>.eval.json` (seeds) and
`.../crf/labels/<split>.eval.json` (seeds + CRF) under the given working directories. Variants
are grouped by their name without a trailing `_s<seed>` (the seeds overlays' convention; the main
config's variant is seed 0), e.g. baseline, baseline_s1 and baseline_s2 form one row. Prints per
group: the number of seeds, each seed's seeds mIoU, the mean and sample standard deviation of
seeds mIoU and of CRF mIoU (and each seed's CRF mIoU), and below that table the seeds'
foreground precision and recall (`fg_precision`, `fg_recall` of the seeds' evaluation: all
object pixels as one class, at the seeds' best threshold) per seed with their means.
`--stages` adds a table of further evaluations per group, each a path under the variant's
folder without `.eval.json` (a single-stage method's head on train and val, a DeepLab's
predictions: `seghead/deeplab/pred/val`). `--seed-suffix` is the regular expression of the
seed suffix (default `_s(\d+)$`; `_s?(\d+)$` also groups `csrm_u_1` with `csrm_u`).
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
from collections import defaultdict
from pathlib import Path

SEED = re.compile(r"_s(\d+)$")


def _miou(path: Path) -> float | None:
    return float(json.loads(path.read_text())["miou"]) * 100 if path.is_file() else None


def _fg(path: Path) -> tuple[float, float]:
    ev = json.loads(path.read_text())
    return float(ev["fg_precision"]) * 100, float(ev["fg_recall"]) * 100


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("dirs", nargs="+", type=Path)
    p.add_argument("--split", default="train")
    p.add_argument("--stages", nargs="*", default=[])
    p.add_argument("--seed-suffix", default=SEED.pattern)
    args = p.parse_args()
    seed_re = re.compile(args.seed_suffix)
    extra: dict[str, dict[int, list[float | None]]] = defaultdict(dict)
    rows: dict[str, dict[int, tuple[float, float | None]]] = defaultdict(dict)
    fg: dict[str, dict[int, tuple[float, float]]] = defaultdict(dict)
    for work in args.dirs:
        for seeds in sorted(work.glob(f"results/*/*/cams/{args.split}.eval.json")):
            variant_dir = seeds.parents[1]
            m = seed_re.search(variant_dir.name)
            group = seed_re.sub("", variant_dir.name)
            seed = int(m.group(1)) if m else 0
            crf = _miou(variant_dir / "crf" / "labels" / f"{args.split}.eval.json")
            rows[group][seed] = (_miou(seeds), crf)
            fg[group][seed] = _fg(seeds)
            extra[group][seed] = [_miou(variant_dir / f"{st}.eval.json") for st in args.stages]

    def fmt(values: list[float]) -> str:
        if not values:
            return "-"
        spread = statistics.stdev(values) if len(values) > 1 else 0.0
        return f"{statistics.mean(values):5.1f} ± {spread:4.1f}"

    print(f"{'variant':22s} {'n':>2s} {'seeds mIoU per seed':24s} {'seeds mean ± sd':>15s} "
          f"{'CRF per seed':24s} {'CRF mean ± sd':>15s}")
    for group in sorted(rows):
        per_seed = [rows[group][s] for s in sorted(rows[group])]
        seeds = [s for s, _ in per_seed]
        crfs = [c for _, c in per_seed if c is not None]
        listed = " / ".join(f"{s:.1f}" for s in seeds)
        listed_crf = " / ".join(f"{c:.1f}" for c in crfs)
        print(f"{group:22s} {len(seeds):2d} {listed:24s} {fmt(seeds):>15s} {listed_crf:24s} "
              f"{fmt(crfs):>15s}")
    print(f"\n{'variant':22s} {'fg precision per seed':24s} {'mean ± sd':>15s} "
          f"{'fg recall per seed':24s} {'mean ± sd':>15s}")
    for group in sorted(fg):
        per_seed = [fg[group][s] for s in sorted(fg[group])]
        prec = [p for p, _ in per_seed]
        rec = [r for _, r in per_seed]
        print(f"{group:22s} {' / '.join(f'{v:.1f}' for v in prec):24s} {fmt(prec):>15s} "
              f"{' / '.join(f'{v:.1f}' for v in rec):24s} {fmt(rec):>15s}")
    for i, stage in enumerate(args.stages):
        print(f"\n{'variant':22s} {stage + ' per seed':32s} {'mean ± sd':>15s}")
        for group in sorted(extra):
            vals = [extra[group][s][i] for s in sorted(extra[group])]
            got = [v for v in vals if v is not None]
            if got:
                print(f"{group:22s} {' / '.join(f'{v:.1f}' for v in got):32s} {fmt(got):>15s}")


if __name__ == "__main__":
    main()
