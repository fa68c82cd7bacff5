"""`wsss cams`: multi-scale + flip CAMs of a split to HDF5."""

from __future__ import annotations

import logging

from wsss.cli.common import add_shard, dataset, json_arg, stage, torch_threads

log = logging.getLogger("wsss")


def cmd_cams(args) -> None:
    from wsss.cams import extract_cams
    from wsss.data.index import read_index
    from wsss.data.shards import WHOLE, shard_ids
    from wsss.methods.base import load_method
    from wsss.train import pick_device

    torch_threads(args)
    ds = dataset(args.dataset)
    split = read_index(args.index)["splits"][args.split]
    cfg = args.config
    method = load_method(args.checkpoint, cfg, ds.num_classes, pick_device(args.device))
    attrs = {"classes": list(ds.classes), "method": cfg["method"], "variant": args.variant,
             "config": cfg, "split": args.split, "dataset": args.dataset.get("name", "")}
    ids = shard_ids(split["ids"], args.shard or WHOLE)
    speed = extract_cams(method, ds, ids, split["labels"], cfg["inference"], args.out, attrs)
    log.info("CAMs of %d images in %.1f s (%.1f images/s)", speed["images"], speed["seconds"],
             speed["images_per_second"])


def add_commands(sub) -> None:
    sp = stage(sub, "cams", cmd_cams, "multi-scale + flip CAMs of a split to HDF5")
    sp.add_argument("--index", required=True)
    sp.add_argument("--split", required=True)
    sp.add_argument("--variant", required=True)
    sp.add_argument("--config", type=json_arg, required=True, help="variant block as JSON")
    sp.add_argument("--checkpoint", required=True)
    sp.add_argument("--out", required=True)
    sp.add_argument("--device", default="auto")
    add_shard(sp)
