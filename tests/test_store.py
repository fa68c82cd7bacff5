import json
import os
import pickle
import time

import h5py
import numpy as np
import pytest
from test_atomic import _kill_while_writing

from wsss.store import (
    CamReader,
    CamWriter,
    LabelMap,
    LabelReader,
    LabelWriter,
    StoreError,
    combine_stores,
    write_json,
)


def test_cam_store_round_trip(tmp_path):
    path = tmp_path / "cams" / "train.h5"
    cam = np.random.default_rng(0).random((2, 5, 7)).astype(np.float32)
    with CamWriter(path, {"classes": ["a", "b", "c"], "config": {"x": 1}}) as w:
        w.add("2007_000032", cam, [0, 2], cam_lowres=cam[:, ::4, ::4])
        w.add("empty", np.zeros((0, 3, 3)), [])
    with CamReader(path) as r:
        assert r.ids == ["2007_000032", "empty"]
        assert r.classes == ["a", "b", "c"]
        assert r.attr("config") == {"x": 1}
        assert "torch" in r.attr("versions") or "numpy" in r.attr("versions")
        got, keys = r.get("2007_000032")
        np.testing.assert_allclose(got, cam, atol=1e-3)  # float16 storage
        assert keys.tolist() == [0, 2]
        low, _ = r.get("2007_000032", lowres=True)
        assert low.shape == (2, 2, 2)
        assert r.get("empty")[0].shape == (0, 3, 3)
        r.check(["empty"], ["a", "b", "c"])
        with pytest.raises(StoreError, match="'missing_id' is missing"):
            r.check(["empty", "missing_id"])
        with pytest.raises(StoreError, match="written for another dataset"):
            r.check(["empty"], ["a", "b"])


def test_label_store_round_trip_and_kind_check(tmp_path):
    path = tmp_path / "labels.h5"
    lab = np.array([[0, 1], [255, 2]], dtype=np.uint8)
    with LabelWriter(path, {"classes": ["a", "b"]}) as w:
        w.add("x", lab)
    with LabelReader(path) as r:
        np.testing.assert_array_equal(r.get("x"), lab)
    with pytest.raises(StoreError, match="expected a 'cams' store"):
        CamReader(path)
    with pytest.raises(StoreError, match="no such"):
        LabelReader(tmp_path / "nope.h5")


def test_exception_inside_writer_leaves_nothing(tmp_path):
    path = tmp_path / "cams.h5"
    with pytest.raises(RuntimeError), CamWriter(path, {"classes": ["a"]}) as w:
        w.add("a", np.zeros((1, 2, 2)), [0])
        raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []


def test_killed_writer_leaves_no_valid_looking_file(tmp_path):
    """SIGKILL in the middle of writing: the target path never exists."""
    path = tmp_path / "cams.h5"
    _kill_while_writing(path)
    time.sleep(0.1)
    assert not path.exists()
    leftovers = list(tmp_path.iterdir())
    assert all(p.name.startswith(".") and p.name.endswith(".tmp") for p in leftovers)
    for p in leftovers:  # the temp file is not a complete store either: unreadable or no ids
        try:
            with h5py.File(p, "r", locking=False) as f:
                assert "ids" not in f.attrs
        except OSError:
            pass


def test_write_json_atomic(tmp_path):
    path = tmp_path / "a" / "b.json"
    write_json(path, {"miou": 0.5})
    assert json.loads(path.read_text()) == {"miou": 0.5}
    assert [p.name for p in path.parent.iterdir()] == ["b.json"]


def test_label_map_survives_pickling(tmp_path):
    path = tmp_path / "labels.h5"
    with LabelWriter(path, {"classes": ["cat", "dog"]}) as writer:
        writer.add("a", np.full((3, 4), 2, np.uint8))
    labels = LabelMap(path, ["a"])
    assert labels["a"].sum() == 24
    copy = pickle.loads(pickle.dumps(labels))
    np.testing.assert_array_equal(copy["a"], labels["a"])
    labels.close()
    copy.close()


# --- combined views over shards ------------------------------------------------------------


def _cam_shards(folder, ids_per_shard, config=None):
    """CAM stores of one split cut into shards; returns (paths, {id: (cam, keys, seg)})."""
    rng = np.random.default_rng(1)
    arrays, paths = {}, []
    for n, ids in enumerate(ids_per_shard, start=1):
        path = folder / f"{n}-of-{len(ids_per_shard)}.h5"
        with CamWriter(path, {"classes": ["a", "b"], "config": config or {"x": 1}}) as w:
            for image_id in ids:
                h, w_ = rng.integers(3, 9, size=2)
                cam = rng.random((1, h, w_)).astype(np.float16)
                seg = rng.random((3, h, w_)).astype(np.float16)
                w.add(image_id, cam, [int(rng.integers(2))], cam_lowres=cam[:, ::2, ::2],
                      seg=seg)
                arrays[image_id] = (cam, seg)
        paths.append(path)
    return paths, arrays


def test_a_combined_view_reads_every_id_from_its_shard(tmp_path):
    ids = [["i0", "i1", "i2"], [], ["i3", "i4"], ["i5"]]  # an empty shard (n > ids) is valid
    paths, arrays = _cam_shards(tmp_path / "train.shards", ids)
    out = tmp_path / "train.h5"
    assert combine_stores(out, paths, "cams", [f"i{k}" for k in range(6)]) == 6
    with CamReader(out) as r:
        assert r.ids == [f"i{k}" for k in range(6)] and r.classes == ["a", "b"]
        assert r.attr("config") == {"x": 1}
        for image_id, (cam, seg) in arrays.items():
            got, _ = r.get(image_id)
            assert got.tobytes() == cam.astype(np.float32).tobytes()
            assert r.get_seg(image_id).tobytes() == seg.astype(np.float32).tobytes()
            assert r.has_seg(image_id)
        with pytest.raises(StoreError, match="'nope' is missing"):
            r.get("nope")
    # the view holds no arrays: it stays small however large the shards are
    assert out.stat().st_size < sum(p.stat().st_size for p in paths) / 2
    # plain h5py follows the external links, from another working directory too
    cwd = os.getcwd()
    try:
        os.chdir("/")
        with h5py.File(out, "r") as f:
            assert f["i4"]["cam"][()].tobytes() == arrays["i4"][0].tobytes()
    finally:
        os.chdir(cwd)


def test_a_combined_view_moves_with_its_folder(tmp_path):
    paths, arrays = _cam_shards(tmp_path / "a" / "train.shards", [["x"], ["y"]])
    combine_stores(tmp_path / "a" / "train.h5", paths, "cams")
    (tmp_path / "a").rename(tmp_path / "b")
    with CamReader(tmp_path / "b" / "train.h5") as r:
        assert r.get("y")[0].tobytes() == arrays["y"][0].astype(np.float32).tobytes()


def test_label_views_and_the_shape_of_a_label(tmp_path):
    labels = {"p": np.array([[0, 1, 255]], np.uint8), "q": np.array([[2], [0]], np.uint8)}
    parts = []
    for k, (image_id, lab) in enumerate(labels.items()):
        parts.append(tmp_path / f"{k}.h5")
        with LabelWriter(parts[-1], {"classes": ["a", "b"], "refiner": {"r": 1}}) as w:
            w.add(image_id, lab)
    combine_stores(tmp_path / "labels.h5", parts, "labels", ["p", "q"])
    with LabelReader(tmp_path / "labels.h5") as r:
        assert r.get("q").tobytes() == labels["q"].tobytes() and r.shape("q") == (2, 1)
        assert r.attr("refiner") == {"r": 1}
    lazy = pickle.loads(pickle.dumps(LabelMap(tmp_path / "labels.h5", ["p", "q"])))
    assert (lazy["p"] == labels["p"]).all()
    lazy.close()


def test_combining_refuses_shards_that_do_not_form_one_store(tmp_path):
    paths, _ = _cam_shards(tmp_path / "s", [["a"], ["b"]])
    other, _ = _cam_shards(tmp_path / "o", [["c"]], config={"x": 2})
    twice, _ = _cam_shards(tmp_path / "t", [["a"]])
    out = tmp_path / "out.h5"
    with pytest.raises(StoreError, match=r"attrs \['config'\] differ"):
        combine_stores(out, [*paths, *other], "cams")
    with pytest.raises(StoreError, match="'a' is in more than one shard"):
        combine_stores(out, [*paths, *twice], "cams")
    with pytest.raises(StoreError, match="'z' is in no shard"):
        combine_stores(out, paths, "cams", ["a", "b", "z"])
    with pytest.raises(StoreError, match="out of split order"):
        combine_stores(out, paths[::-1], "cams", ["a", "b"])
    with pytest.raises(StoreError, match="expected a 'labels' store"):
        combine_stores(out, paths, "labels")
    assert not out.exists()  # nothing half-written
    combine_stores(out, paths, "cams")
    with pytest.raises(StoreError, match="itself a combined view"):
        combine_stores(tmp_path / "again.h5", [out], "cams")


def test_a_view_over_many_shards_keeps_a_bounded_number_open(tmp_path, monkeypatch):
    import wsss.store as store

    monkeypatch.setattr(store, "_OPEN_PARTS", 3)
    paths, arrays = _cam_shards(tmp_path / "s", [[f"i{k}"] for k in range(8)])
    combine_stores(tmp_path / "v.h5", paths, "cams")
    with CamReader(tmp_path / "v.h5") as r:
        for _ in range(2):
            for image_id, (cam, _seg) in arrays.items():
                assert r.get(image_id)[0].tobytes() == cam.astype(np.float32).tobytes()
                assert len(r._open) <= 3


def test_cams_are_stored_compressed_one_plane_per_chunk(tmp_path):
    """A smooth CAM (what upsampled class maps are) must not be stored at its raw size, and a
    class plane must be readable without decompressing the others."""
    yy, xx = np.mgrid[0:120, 0:160] / 40.0
    cam = np.stack([np.sin(yy) * np.cos(xx), np.cos(yy + xx)]).astype(np.float16) * 0.5 + 0.5
    with CamWriter(tmp_path / "c.h5", {"classes": ["a", "b"]}) as w:
        w.add("x", cam, [0, 1], cam_lowres=cam[:, ::4, ::4], seg=np.concatenate([cam, cam[:1]]))
        w.add("none", np.zeros((0, 120, 160), np.float16), [])
    with h5py.File(tmp_path / "c.h5", "r") as f:
        for name in ("cam", "cam_lowres", "seg"):
            d = f["x"][name]
            assert d.chunks == (1, *d.shape[1:]) and d.shuffle, name
            assert d.id.get_storage_size() < d.nbytes / 2, name
    with CamReader(tmp_path / "c.h5") as r:
        assert r.get("x")[0].tobytes() == cam.astype(np.float32).tobytes()  # lossless
        assert r.get("none")[0].shape == (0, 120, 160)


# --- stores of another format version or another dataset ------------------------------------


def _set_version(path, version):
    with h5py.File(path, "r+", locking=False) as f:
        if version is None:
            del f.attrs["format_version"]
        else:
            f.attrs["format_version"] = version


@pytest.mark.parametrize("version, found", [(0, "format version 0"), (None, "no format version"),
                                            (2, "format version 2")])
def test_a_store_of_another_format_version_is_refused(tmp_path, version, found):
    path = tmp_path / "cams.h5"
    with CamWriter(path, {"classes": ["a"]}) as w:
        w.add("x", np.zeros((1, 2, 2)), [0])
    _set_version(path, version)
    with pytest.raises(StoreError) as err:
        CamReader(path)
    assert str(err.value).startswith(f"{path}: {found}, this code reads format version 1; ")
    assert "rerun the stage that writes it" in str(err.value)


def test_a_view_refuses_a_shard_rewritten_in_another_format_version(tmp_path):
    paths, arrays = _cam_shards(tmp_path / "s", [["a"], ["b"]])
    combine_stores(tmp_path / "v.h5", paths, "cams")
    _set_version(paths[1], 0)
    with CamReader(tmp_path / "v.h5") as r:
        assert r.get("a")[0].tobytes() == arrays["a"][0].astype(np.float32).tobytes()
        with pytest.raises(StoreError, match=f"{paths[1]}: format version 0, this code reads"):
            r.get("b")


def test_a_store_of_another_dataset_is_refused_naming_both(tmp_path):
    path = tmp_path / "cams.h5"
    with CamWriter(path, {"classes": ["cat", "dog"], "dataset": "voc"}) as w:
        w.add("x", np.zeros((1, 2, 2)), [0])
    with CamReader(path) as r:
        r.check(["x"], ["cat", "dog"])
        with pytest.raises(StoreError) as err:
            r.check(["x"], ["circle", "square"])
    assert str(err.value).startswith(
        f"{path}: written for another dataset: the store's dataset 'voc' has the class list "
        "['cat', 'dog'], this dataset has ['circle', 'square']; rerun the stage")
    path = tmp_path / "labels.h5"  # no dataset name recorded: the class lists tell them apart
    with LabelWriter(path, {"classes": ["cat", "dog"]}) as w:
        w.add("x", np.zeros((2, 2), np.uint8))
    with LabelReader(path) as r, pytest.raises(StoreError, match=(
            r"labels.h5: written for another dataset: the store's dataset has the class list "
            r"\['cat', 'dog'\], this dataset has \['cat'\]")):
        r.check(["x"], ["cat"])
