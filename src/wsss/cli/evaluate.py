"""`wsss eval-seeds`, `wsss eval-labels`: mIoU of CAM seeds and of label stores."""

from __future__ import annotations

import logging

from wsss.cli.common import add_shard, dataset, json_arg, stage, threads

log = logging.getLogger("wsss")


def cmd_eval_seeds(args) -> None:
    from wsss.evaluate import seeds_report
    from wsss.store import write_json

    ds = dataset(args.dataset, args.shard)
    if args.partial:
        from wsss.eval_partials import seeds_partial, write_partial

        meta, arrays = seeds_partial(args.cams, ds, args.split, args.variant, args.evaluation,
                                     threads=threads(args))
        write_partial(args.out, meta, arrays)
        log.info("seeds %s, shard %s: %d images", args.split, meta["shard"], meta["num_images"])
        return
    result = seeds_report(args.cams, ds, args.split, args.variant, args.evaluation,
                          threads=threads(args))
    write_json(args.out, result)
    log.info("seeds %s: mIoU %.4f at threshold %.2f", args.split, result["miou"],
             result["best_threshold"])


def cmd_eval_labels(args) -> None:
    from wsss.evaluate import labels_report
    from wsss.store import write_json

    ds = dataset(args.dataset, args.shard)
    if args.partial:
        from wsss.eval_partials import labels_partial, write_partial

        meta, arrays = labels_partial(args.labels, ds, args.split, args.variant, args.stage,
                                      threads=threads(args))
        write_partial(args.out, meta, arrays)
        log.info("%s %s, shard %s: %d images", args.stage, args.split, meta["shard"],
                 meta["num_images"])
        return
    result = labels_report(args.labels, ds, args.split, args.variant, args.stage,
                           threads=threads(args))
    write_json(args.out, result)
    log.info("%s %s: mIoU %.4f", args.stage, args.split, result["miou"])


def cmd_eval_combine(args) -> None:
    from wsss.eval_partials import combine_partials
    from wsss.store import write_json

    result = combine_partials(args.parts, dataset(args.dataset))
    write_json(args.out, result)
    log.info("%s %s: mIoU %.4f over %d shards", result["stage"], result["split"],
             result["miou"], len(args.parts))


_PARTIAL = ("write this shard's confusions (.npz) for eval-combine instead of the report")


def add_commands(sub) -> None:
    sp = stage(sub, "eval-seeds", cmd_eval_seeds, "background-threshold sweep of CAM seeds")
    sp.add_argument("--cams", required=True)
    sp.add_argument("--split", required=True)
    sp.add_argument("--variant", required=True)
    sp.add_argument("--evaluation", type=json_arg, required=True, help="evaluation block as JSON")
    sp.add_argument("--out", required=True)
    add_shard(sp)
    sp.add_argument("--partial", action="store_true", help=_PARTIAL)

    sp = stage(sub, "eval-labels", cmd_eval_labels, "mIoU of a pseudo-label file")
    sp.add_argument("--labels", required=True)
    sp.add_argument("--split", required=True)
    sp.add_argument("--variant", required=True)
    sp.add_argument("--stage", required=True, help="name of the refiner that made the labels")
    sp.add_argument("--out", required=True)
    add_shard(sp)
    sp.add_argument("--partial", action="store_true", help=_PARTIAL)

    sp = stage(sub, "eval-combine", cmd_eval_combine,
               "the evaluation report of a split from its shards' partial evaluations")
    sp.add_argument("--parts", nargs="+", required=True, help="the shards' .npz files")
    sp.add_argument("--out", required=True)
