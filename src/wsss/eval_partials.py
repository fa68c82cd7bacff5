"""Sharded evaluation: each shard's summed confusions in a small .npz, reduced to the report.

A sharded evaluation job scores one shard's ids and writes its confusion matrices (the seeds'
whole threshold sweep, or one matrix for labels) with what it judged; `combine_partials` sums
them and builds the same report the unsharded evaluation writes. Integer sums do not depend on
the order or the cut, so 1 and N shards give identical numbers. A job holds one shard's
matrices, never the split's CAMs or masks.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from wsss.data.shards import WHOLE, parse_shard, shard_name
from wsss.evaluate import (
    label_confusion,
    labels_result,
    seed_confusion,
    seed_sweep,
    seeds_result,
    threshold_grid,
)
from wsss.store import CamReader, LabelReader, StoreError, atomic_path, versions

if TYPE_CHECKING:
    from wsss.data.voc import VocDataset

# what every shard of one evaluation must agree on
_SAME = ("kind", "split", "variant", "stage", "evaluation", "config", "store")


def seeds_partial(cam_path: str | os.PathLike, ds: VocDataset, split: str, variant: str,
                  evaluation: dict[str, Any], threads: int = 1) -> tuple[dict, dict]:
    """(meta, arrays) of one shard's seed evaluation."""
    sweep = seed_sweep(threshold_grid(evaluation), evaluation["default_threshold"])
    total, n = seed_confusion(cam_path, ds, split, sweep, threads)
    with CamReader(cam_path) as cams:
        config = cams.attr("config")
    meta = {"kind": "seeds", "split": split, "variant": variant, "stage": "seeds",
            "evaluation": evaluation, "config": config, "store": str(cam_path),
            "shard": getattr(ds, "shard", WHOLE), "num_images": n}
    return meta, {"confusion": total, "sweep": sweep}


def labels_partial(label_path: str | os.PathLike, ds: VocDataset, split: str, variant: str,
                   stage: str, threads: int = 1) -> tuple[dict, dict]:
    """(meta, arrays) of one shard's label evaluation."""
    total, ignored, n = label_confusion(label_path, ds, split, threads)
    with LabelReader(label_path) as labels:
        config = labels.attr("refiner")
    meta = {"kind": "labels", "split": split, "variant": variant, "stage": stage,
            "evaluation": None, "config": config, "store": str(label_path),
            "shard": getattr(ds, "shard", WHOLE), "num_images": n}
    return meta, {"confusion": total, "ignored": np.int64(ignored)}


def write_partial(path: str | os.PathLike, meta: dict, arrays: dict[str, np.ndarray]) -> None:
    """The shard's result as .npz (meta as JSON inside), atomically."""
    with atomic_path(path, suffix=".npz") as tmp, open(tmp, "wb") as f:
        np.savez(f, meta=np.array(json.dumps(meta)), **arrays)


def read_partial(path: str | os.PathLike) -> tuple[dict, dict[str, np.ndarray]]:
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        meta = json.loads(str(arrays.pop("meta")))
    except (OSError, ValueError, KeyError) as err:
        raise StoreError(f"{path}: not a readable partial evaluation ({err})") from err
    return meta, arrays


def _check_cover(paths: Sequence[Path], metas: list[dict]) -> None:
    shards = [parse_shard(m["shard"]) for m in metas]
    n = shards[0][1]
    got = sorted(i for i, _ in shards)
    if any(m != n for _, m in shards) or got != list(range(1, n + 1)):
        raise StoreError(f"{paths[0].parent}: the partial evaluations are shards "
                         f"{[shard_name(*s) for s in shards]}, not 1..{n} of {n}")
    for path, meta in zip(paths[1:], metas[1:], strict=True):
        differ = [k for k in _SAME if meta.get(k) != metas[0].get(k)]
        if differ:
            raise StoreError(f"{path}: {differ} differ from {paths[0]}; the partial "
                             "evaluations of one report must judge one store")


def combine_partials(paths: Sequence[str | os.PathLike], ds: VocDataset) -> dict[str, Any]:
    """The evaluation report of a split from its shards' partial evaluations."""
    paths = [Path(p) for p in paths]
    if not paths:
        raise StoreError("no partial evaluations to combine")
    read = [read_partial(p) for p in paths]
    metas = [m for m, _ in read]
    _check_cover(paths, metas)
    meta = metas[0]
    total = sum(a["confusion"] for _, a in read)
    n = sum(int(m["num_images"]) for m in metas)
    if meta["kind"] == "seeds":
        result = seeds_result(total, read[0][1]["sweep"], ds, meta["split"], n, meta["store"])
        extra = {"evaluation": meta["evaluation"]}
    else:
        ignored = int(sum(int(a["ignored"]) for _, a in read))
        result = labels_result(total, ignored, ds, meta["split"], n, meta["store"])
        extra = {}
    result.update(stage=meta["stage"], variant=meta["variant"], **extra, config=meta["config"],
                  versions=versions(), shards=len(paths))
    return result
