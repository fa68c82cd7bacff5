"""`wsss failure-modes`: partial activation and co-occurrence leakage (synthetic benchmark)."""

from __future__ import annotations

import logging

from wsss.cli.common import dataset, stage

log = logging.getLogger("wsss")


def cmd_failure_modes(args) -> None:
    from wsss.diagnostics import diagnose
    from wsss.store import write_json

    result = diagnose(dataset(args.dataset), args.split, args.variant, args.stage,
                      cams=args.cams, seeds_eval=args.seeds_eval, labels=args.labels)
    write_json(args.out, result)
    log.info("object recall %.3f, background false-positive rate %s", result["mean_object_recall"],
             {k: round(v, 4) for k, v in result["background_false_positive_rate"].items()})


def add_commands(sub) -> None:
    sp = stage(sub, "failure-modes", cmd_failure_modes,
               "partial activation and co-occurrence leakage (synthetic benchmark)")
    sp.add_argument("--cams", help="CAM store: judge the seeds at the best threshold")
    sp.add_argument("--seeds-eval", help="seed evaluation JSON (its best threshold)")
    sp.add_argument("--labels", help="label store: judge pseudo-labels instead")
    sp.add_argument("--split", required=True)
    sp.add_argument("--variant", required=True)
    sp.add_argument("--stage", default="seeds", help="seeds or the refiner's name")
    sp.add_argument("--out", required=True)
