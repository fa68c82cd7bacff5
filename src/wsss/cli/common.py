"""Helpers shared by the subcommands: JSON arguments, the dataset, threads."""

from __future__ import annotations

import argparse
import json
from typing import Any


def json_arg(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise argparse.ArgumentTypeError(f"not valid JSON: {err}") from err


def dataset(cfg: dict, shard: str | None = None):
    """The dataset of a config block; with `shard` ("i-of-n") its splits list that shard's ids
    only (wsss.data.shards)."""
    from wsss.data.shards import sharded
    from wsss.data.voc import VocDataset

    # `name` only names the results folder
    return sharded(VocDataset.from_config({k: v for k, v in cfg.items() if k != "name"}), shard)


def add_shard(sp: argparse.ArgumentParser) -> None:
    """`--shard i-of-n`: a per-image stage on one of n disjoint ranges of the split's ids."""
    sp.add_argument("--shard", default=None,
                    help="run on shard i of n of the split's ids (Snakemake's i-of-n); "
                         "default: the whole split")


def threads(args) -> int:
    return max(1, args.threads)


def torch_threads(args) -> int:
    """Set torch's intra-op threads to the job's and return them."""
    import torch

    n = threads(args)
    torch.set_num_threads(n)
    return n


def stage(sub, name: str, fn, help_: str, with_dataset: bool = True) -> argparse.ArgumentParser:
    """A subcommand with the arguments every stage takes."""
    sp = sub.add_parser(name, help=help_)
    sp.set_defaults(fn=fn)
    sp.add_argument("--threads", type=int, default=1, help="CPU workers for this stage")
    if with_dataset:
        sp.add_argument("--dataset", type=json_arg, required=True, help="dataset block as JSON")
    return sp
