"""`wsss figures`: the report's figures (per-class IoU, example grid, training curves)."""

from __future__ import annotations

import logging

from wsss.cli.common import dataset, json_arg, stage

log = logging.getLogger("wsss")


def cmd_figures(args) -> None:
    from wsss.report.figures import write_figures

    counts = write_figures(dataset(args.dataset), args.evals, args.columns, args.logs,
                           args.split, args.examples, args.index, heatmap=args.heatmap,
                           grid=args.grid, curves=args.curves)
    log.info("figures: %d evaluations, %d example images, %d training logs", *counts)


def add_commands(sub) -> None:
    sp = stage(sub, "figures", cmd_figures,
               "the report's figures: per-class IoU, examples, curves")
    sp.add_argument("--evals", nargs="+", required=True, help="evaluation JSONs")
    sp.add_argument("--columns", type=json_arg, required=True,
                    help="example grid columns as JSON: [{title, kind, path, extra}, ...]")
    sp.add_argument("--logs", type=json_arg, required=True,
                    help="training logs as JSON: [[label, csv path], ...]")
    sp.add_argument("--split", required=True, help="split the example images come from")
    sp.add_argument("--examples", type=int, default=6, help="number of example images")
    sp.add_argument("--index", default=None, help="dataset index (image labels, saves reads)")
    sp.add_argument("--heatmap", required=True)
    sp.add_argument("--grid", required=True)
    sp.add_argument("--curves", required=True)
