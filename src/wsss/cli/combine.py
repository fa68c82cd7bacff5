"""`wsss combine`: one store over the per-shard stores of a sharded stage, arrays not copied."""

from __future__ import annotations

import logging

from wsss.cli.common import dataset, stage

log = logging.getLogger("wsss")


def cmd_combine(args) -> None:
    from wsss.store import combine_stores

    ids = dataset(args.dataset).ids(args.split) if args.split else None
    n = combine_stores(args.out, args.parts, args.kind, ids)
    log.info("%s: %d images in %d shards", args.out, n, len(args.parts))


def add_commands(sub) -> None:
    sp = stage(sub, "combine", cmd_combine,
               "one store over per-shard stores (a view: the arrays stay in the shards)")
    sp.add_argument("--kind", required=True, choices=["cams", "labels"])
    sp.add_argument("--parts", nargs="+", required=True, help="the shards' stores, in order")
    sp.add_argument("--split", default=None,
                    help="check that the shards cover exactly this split's ids, in order")
    sp.add_argument("--out", required=True)
