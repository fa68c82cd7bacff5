"""`wsss index`: validate a dataset and write its index."""

from __future__ import annotations

import logging

from wsss.cli.common import dataset, stage, threads

log = logging.getLogger("wsss")


def cmd_index(args) -> None:
    from wsss.data.index import build_index, write_index

    index = build_index(dataset(args.dataset), args.splits, threads=threads(args))
    for split, info in index["splits"].items():
        log.info("%s: %d images, %d without foreground labels", split, len(info["ids"]),
                 len(info["no_foreground"]))
    write_index(args.out, index)


def add_commands(sub) -> None:
    sp = stage(sub, "index", cmd_index, "validate a dataset and write its index (ids, labels)")
    sp.add_argument("--splits", nargs="+", required=True)
    sp.add_argument("--out", required=True)
