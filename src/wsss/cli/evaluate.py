"""`wsss eval-seeds`, `wsss eval-labels`: mIoU of CAM seeds and of label stores."""

from __future__ import annotations

import logging

from wsss.cli.common import dataset, json_arg, stage, threads

log = logging.getLogger("wsss")


def cmd_eval_seeds(args) -> None:
    from wsss.evaluate import seeds_report
    from wsss.store import write_json

    result = seeds_report(args.cams, dataset(args.dataset), args.split, args.variant,
                          args.evaluation, threads=threads(args))
    write_json(args.out, result)
    log.info("seeds %s: mIoU %.4f at threshold %.2f", args.split, result["miou"],
             result["best_threshold"])


def cmd_eval_labels(args) -> None:
    from wsss.evaluate import labels_report
    from wsss.store import write_json

    result = labels_report(args.labels, dataset(args.dataset), args.split, args.variant,
                           args.stage, threads=threads(args))
    write_json(args.out, result)
    log.info("%s %s: mIoU %.4f", args.stage, args.split, result["miou"])


def add_commands(sub) -> None:
    sp = stage(sub, "eval-seeds", cmd_eval_seeds, "background-threshold sweep of CAM seeds")
    sp.add_argument("--cams", required=True)
    sp.add_argument("--split", required=True)
    sp.add_argument("--variant", required=True)
    sp.add_argument("--evaluation", type=json_arg, required=True, help="evaluation block as JSON")
    sp.add_argument("--out", required=True)

    sp = stage(sub, "eval-labels", cmd_eval_labels, "mIoU of a pseudo-label file")
    sp.add_argument("--labels", required=True)
    sp.add_argument("--split", required=True)
    sp.add_argument("--variant", required=True)
    sp.add_argument("--stage", required=True, help="name of the refiner that made the labels")
    sp.add_argument("--out", required=True)
