import pytest

from wsss.data.shards import ShardedDataset, parse_shard, shard_ids, shard_range, sharded
from wsss.data.voc import DatasetError, VocDataset


@pytest.mark.parametrize("length,n", [(10, 4), (7, 7), (3, 5), (0, 2), (82081, 16)])
def test_shards_cut_the_split_into_contiguous_disjoint_ranges(length, n):
    ids = [f"id{i}" for i in range(length)]
    parts = [shard_ids(ids, f"{i}-of-{n}") for i in range(1, n + 1)]
    # in order, nothing lost or repeated: the shards' concatenation is the split itself
    assert sum(parts, []) == ids
    sizes = [len(p) for p in parts]
    assert max(sizes) - min(sizes) <= 1
    # ranges touch end to start
    ranges = [shard_range(length, f"{i}-of-{n}") for i in range(1, n + 1)]
    assert ranges[0][0] == 0 and ranges[-1][1] == length
    assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:], strict=False))


def test_ten_ids_in_four_shards_by_hand():
    ids = list("abcdefghij")
    assert [shard_ids(ids, f"{i}-of-4") for i in (1, 2, 3, 4)] == [
        ["a", "b"], ["c", "d", "e"], ["f", "g"], ["h", "i", "j"]]


@pytest.mark.parametrize("bad", ["0-of-4", "5-of-4", "2of4", "a-of-b", "", "1-of-0"])
def test_bad_shard_names_are_refused(bad):
    with pytest.raises(DatasetError, match="shard"):
        parse_shard(bad)


def test_a_sharded_dataset_lists_its_shards_ids_only(tiny_voc_config):
    ds = VocDataset.from_config(tiny_voc_config)
    assert sharded(ds, None) is ds and sharded(ds, "1-of-1") is ds
    whole = ds.ids("train")
    parts = [sharded(ds, f"{i}-of-3") for i in (1, 2, 3)]
    assert all(isinstance(p, ShardedDataset) for p in parts)
    assert sum((p.ids("train") for p in parts), []) == whole
    assert parts[1].all_ids("train") == whole
    # everything else is the dataset's: loading an id of another shard still works
    assert parts[0].classes == ds.classes and parts[0].root == ds.root
    assert (parts[0].load_mask(whole[-1]) == ds.load_mask(whole[-1])).all()
    assert len({hash(p) for p in parts}) == 3
