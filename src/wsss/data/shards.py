"""Shards: a per-image stage split into N jobs over disjoint, contiguous ranges of a split's ids.

A shard is named as Snakemake's scatter/gather names its items, "i-of-n" (1-based), so the
workflow passes its `{scatteritem}` wildcard straight through. Shard i of n holds the ids
[floor((i-1)·L/n), floor(i·L/n)) of a split of L ids, in list order: the shards' sizes differ
by at most one, their concatenation is the split in order, and a shard may be empty when n > L.

`sharded(ds, shard)` is the dataset as a per-image stage sees it: `ids(split)` returns the
shard's ids only, so every stage that walks `ds.ids(split)` (CAMs, CRF, refiners, DeepLab
prediction, evaluation) runs on its range without knowing about shards.
"""

from __future__ import annotations

import dataclasses
import re

from wsss.data.voc import DatasetError, VocDataset

WHOLE = "1-of-1"
_PATTERN = re.compile(r"(\d+)-of-(\d+)")


def parse_shard(text: str) -> tuple[int, int]:
    """(i, n) of "i-of-n"; DatasetError unless 1 <= i <= n."""
    m = _PATTERN.fullmatch(str(text).strip())
    if not m:
        raise DatasetError(f"shard '{text}': expected 'i-of-n' (e.g. 2-of-4)")
    i, n = int(m.group(1)), int(m.group(2))
    if not 1 <= i <= n:
        raise DatasetError(f"shard '{text}': i must be in 1..n")
    return i, n


def shard_name(i: int, n: int) -> str:
    return f"{i}-of-{n}"


def shard_range(length: int, shard: str) -> tuple[int, int]:
    """[start, stop) of shard "i-of-n" in a list of `length` ids."""
    i, n = parse_shard(shard)
    return (i - 1) * length // n, i * length // n


def shard_ids(ids: list[str], shard: str) -> list[str]:
    """The ids of one shard, in list order."""
    start, stop = shard_range(len(ids), shard)
    return list(ids[start:stop])


@dataclasses.dataclass(frozen=True)
class ShardedDataset(VocDataset):
    """A dataset whose splits are restricted to one shard ("i-of-n")."""

    shard: str = WHOLE

    def __post_init__(self) -> None:
        super().__post_init__()
        parse_shard(self.shard)

    def __hash__(self) -> int:
        return hash((super().__hash__(), self.shard))

    def all_ids(self, split: str) -> list[str]:
        """Every id of the split, as the unsharded dataset lists them."""
        return super().ids(split)

    def ids(self, split: str) -> list[str]:
        return shard_ids(super().ids(split), self.shard)


def sharded(ds: VocDataset, shard: str | None) -> VocDataset:
    """`ds` restricted to `shard`; `ds` itself for the whole split (None or "1-of-1")."""
    if shard is None or parse_shard(shard) == (1, 1):
        return ds
    fields = {f.name: getattr(ds, f.name) for f in dataclasses.fields(ds) if f.init}
    fields.pop("shard", None)
    return ShardedDataset(**fields, shard=shard)
