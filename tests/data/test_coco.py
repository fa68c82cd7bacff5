"""COCO 2014 -> VOC-layout conversion, the COCO-layout writer, their round trip, and the VOC
reader's image folders; a hand-made COCO fixture with known answers."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from wsss.cli import main
from wsss.data import synthetic
from wsss.data.coco import convert_coco, dataset_config
from wsss.data.coco_writer import write_coco_layout
from wsss.data.voc import DatasetError, VocDataset

# COCO-style ids with gaps, listed out of order: mask values follow the sorted ids
CATEGORIES = [{"id": 12, "name": "bird"}, {"id": 3, "name": "cat"}, {"id": 7, "name": "dog"}]
CAT, DOG, BIRD = 1, 2, 3
SPLITS = {"train": "annotations/instances_train2014.json",
          "val": "annotations/instances_val2014.json"}
A, B, C, F = (f"COCO_train2014_{i:012d}" for i in (1, 2, 3, 6))
D, E = (f"COCO_val2014_{i:012d}" for i in (4, 5))


def _box(h, w, top, left, bottom, right):
    m = np.zeros((h, w), dtype=np.uint8)
    m[top:bottom, left:right] = 1
    return m


def _compressed(m):
    rle = mask_utils.encode(np.asfortranarray(m))
    return {"size": list(rle["size"]), "counts": rle["counts"].decode("ascii")}


def _uncompressed(m):
    """Column-major run lengths starting with zeros, written out by hand."""
    flat, counts, value, run = m.ravel(order="F"), [], 0, 0
    for v in flat:
        if v == value:
            run += 1
        else:
            counts.append(run)
            value, run = v, 1
    counts.append(run)
    return {"size": list(m.shape), "counts": counts}


def _ann(ann_id, image_id, cat, segm, area, crowd=0):
    return {"id": ann_id, "image_id": image_id, "category_id": cat, "segmentation": segm,
            "area": area, "iscrowd": crowd, "bbox": [0, 0, 1, 1]}


def write_coco_fixture(root: Path) -> Path:
    """train: A (16x20) polygon cat, RLE dog, uncompressed-RLE bird over both, a crowd;
    B (10x12) triangle cat and a dog that is only a crowd; C (8x8) no annotation; F (6x6) a cat
    whose only polygon has two points. val: D (6x8) a compressed-RLE dog over a cat with the
    larger `area`; E (5x5) no annotation."""
    images = {"train": [(1, A, 16, 20), (2, B, 10, 12), (3, C, 8, 8), (6, F, 6, 6)],
              "val": [(4, D, 6, 8), (5, E, 5, 5)]}
    anns = {
        "train": [
            # file order cat, bird, dog: neither "first wins" nor "last wins" gives the bird
            _ann(10, 1, 3, [[2, 3, 8, 3, 8, 9, 2, 9]], 36.0),  # cat: x 2..7, y 3..8
            _ann(11, 1, 12, _uncompressed(_box(16, 20, 4, 6, 8, 12)), 24.0),  # bird: x 6..11
            _ann(12, 1, 7, _compressed(_box(16, 20, 0, 10, 6, 18)), 48.0),  # dog: x 10..17
            _ann(13, 1, 12, _uncompressed(_box(16, 20, 8, 0, 16, 5)), 40.0, crowd=1),
            _ann(20, 2, 3, [[0, 0, 0, 8, 8, 0]], 32.0),  # triangle x + y < 8 (pixel centres)
            _ann(21, 2, 7, _uncompressed(_box(10, 12, 6, 8, 10, 12)), 16.0, crowd=1),
            _ann(22, 6, 3, [[1, 1, 4, 4]], 0.0),  # pycocotools alone would read it as a box
        ],
        "val": [_ann(30, 4, 7, _compressed(_box(6, 8, 1, 2, 4, 6)), 12.0),
                # 4 pixels inside the dog, but the `area` field (40) decides: the dog wins
                _ann(31, 4, 3, _compressed(_box(6, 8, 1, 3, 3, 5)), 40.0)],
    }
    for split, rel in SPLITS.items():
        folder = root / f"{split}2014"
        folder.mkdir(parents=True)
        for _, name, h, w in images[split]:
            Image.new("RGB", (w, h), (90, 120, 30)).save(folder / f"{name}.jpg", quality=90)
        data = {"images": [{"id": i, "file_name": f"{n}.jpg", "height": h, "width": w}
                           for i, n, h, w in images[split]],
                "annotations": anns[split], "categories": CATEGORIES}
        (root / rel).parent.mkdir(exist_ok=True)
        (root / rel).write_text(json.dumps(data))
    return root


def expected_masks() -> dict[str, np.ndarray]:
    a = np.zeros((16, 20), dtype=np.uint8)
    a[3:9, 2:8] = CAT
    a[0:6, 10:18] = DOG
    a[4:8, 6:12] = BIRD  # the smallest instance wins wherever it overlaps
    crowd = np.zeros_like(a, dtype=bool)
    crowd[8:16, 0:5] = True
    a[crowd & (a == 0)] = 255  # not over the cat's row y = 8
    yy, xx = np.mgrid[0:10, 0:12]
    b = np.where(xx + yy <= 6, CAT, 0).astype(np.uint8)
    b[6:10, 8:12] = 255
    d = np.zeros((6, 8), dtype=np.uint8)
    d[1:4, 2:6] = DOG
    return {A: a, B: b, C: np.zeros((8, 8), np.uint8), D: d, E: np.zeros((5, 5), np.uint8),
            F: np.zeros((6, 6), np.uint8)}


@pytest.fixture
def coco_root(tmp_path):
    return write_coco_fixture(tmp_path / "coco")


def test_fixture_masks_lists_and_record(coco_root, tmp_path, caplog):
    out = tmp_path / "out"
    with caplog.at_level("INFO", logger="wsss"):
        record = convert_coco(coco_root, SPLITS, out)
    ds = VocDataset.from_config(dataset_config(out))
    assert ds.classes == ("cat", "dog", "bird")
    assert (out / "classes.txt").read_text() == "cat\ndog\nbird\n"
    assert record["category_index"] == {"3": 1, "7": 2, "12": 3}
    for image_id, mask in expected_masks().items():
        assert np.array_equal(ds.load_mask(image_id), mask), image_id
    assert ds.ids("train") == [A, B, F] and ds.ids("val") == [D]
    # the dog of B is only a crowd: 255, and not a label
    assert ds.image_labels(B).tolist() == [CAT - 1]
    train, val = record["splits"]["train"], record["splits"]["val"]
    assert (train["images"], train["kept"], train["dropped_empty"]) == (4, 3, 1)
    assert train["dropped_ids"] == [C] and val["dropped_ids"] == [E]
    # bird over cat: x 6..7, y 4..7 (8 px); bird over dog: x 10..11, y 4..5 (4 px)
    assert train["overlap_pixels"] == 12 and val["overlap_pixels"] == 4
    assert train["crowd_pixels"] == 5 * 8 - 3 + 4 * 4 and val["crowd_pixels"] == 0
    assert (train["annotations"], train["crowd_annotations"]) == (7, 2)
    assert train["degenerate_polygons"] == 1
    # F's cat has no pixel, D's cat is hidden: labelled, but not in the mask
    assert train["label_mismatch"] == 1 and val["label_mismatch"] == 1
    files = record["annotation_files"]
    size = (coco_root / SPLITS["val"]).stat().st_size
    assert files["val"] == {"file": SPLITS["val"], "bytes": size}
    assert json.loads((out / "conversion.json").read_text()) == json.loads(json.dumps(record))
    assert "1 without foreground dropped" in caplog.text
    assert ds.image_path(D) == coco_root / "val2014" / f"{D}.jpg"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["coco", "out"]  # no temp folder left


def test_drop_empty_only_for_named_splits_and_threads(coco_root, tmp_path):
    one = convert_coco(coco_root, SPLITS, tmp_path / "one", drop_empty=["train"])
    two = convert_coco(coco_root, SPLITS, tmp_path / "two", drop_empty=["train"], threads=2)
    assert (tmp_path / "two" / "val.txt").read_text() == f"{D}\n{E}\n"
    assert one["splits"] == two["splits"]
    for image_id in expected_masks():
        name = f"SegmentationClass/{image_id}.png"
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes()
    # a rerun replaces an earlier conversion and the half-built folder of a killed run
    (tmp_path / ".one.tmp" / "SegmentationClass").mkdir(parents=True)
    convert_coco(coco_root, {"val": SPLITS["val"]}, tmp_path / "one")
    assert not (tmp_path / "one" / "train.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["coco", "one", "two"]


def _rewrite(path: Path, change) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def _first_ann(key, value):
    def change(data):
        data["annotations"][0][key] = value
    return change


def _first_image_height(data):
    data["images"][0]["height"] = 17


def _train_name_in_val(data):
    data["images"][0]["file_name"] = f"{A}.jpg"


def _fewer_categories(data):
    data["categories"] = data["categories"][:2]


@pytest.mark.parametrize("case, expected", [
    ("missing json", r"instances_val2014\.json: annotation file does not exist"),
    ("bad json", r"instances_val2014\.json: annotation file is unreadable"),
    ("unknown category", r"instances_train2014\.json: annotation 10 .*unknown category id 99"),
    ("unknown image", r"instances_train2014\.json: annotation 10 refers to unknown image id 42"),
    ("missing image", rf"train2014/{B}\.jpg: image file of '{B}' does not exist"),
    ("size mismatch", rf"image '{A}' .*train2014/{A}\.jpg.*20x17 .*20x16"),
    ("duplicate id", rf"val2014\.json: image id '{A}' is also in split 'train' .*train2014"),
    ("unknown form", rf"train2014\.json: annotation 10 of image '{A}': segmentation of unkn"),
    ("categories differ", r"instances_val2014\.json: categories differ from .*train2014\.json"),
    ("no image folder", r"val2014: image folder of split 'val' does not exist"),
])
def test_bad_inputs_name_the_file_and_write_nothing(coco_root, tmp_path, case, expected):
    train, val = coco_root / SPLITS["train"], coco_root / SPLITS["val"]
    if case == "missing json":
        val.unlink()
    elif case == "bad json":
        val.write_text("{not json")
    elif case == "unknown category":
        _rewrite(train, _first_ann("category_id", 99))
    elif case == "unknown image":
        _rewrite(train, _first_ann("image_id", 42))
    elif case == "missing image":
        (coco_root / "train2014" / f"{B}.jpg").unlink()
    elif case == "size mismatch":
        _rewrite(train, _first_image_height)
    elif case == "duplicate id":
        _rewrite(val, _train_name_in_val)
    elif case == "unknown form":
        _rewrite(train, _first_ann("segmentation", {"polygon": [1, 2, 3]}))
    elif case == "categories differ":
        _rewrite(val, _fewer_categories)
    elif case == "no image folder":
        shutil.rmtree(coco_root / "val2014")
    out = tmp_path / "out"
    with pytest.raises(DatasetError, match=expected):
        convert_coco(coco_root, SPLITS, out, threads=2 if case == "missing image" else 1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["coco"]


def test_refuses_foreign_folder_and_missing_root(coco_root, tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "precious.txt").write_text("x")
    with pytest.raises(DatasetError, match="no conversion.json"):
        convert_coco(coco_root, SPLITS, tmp_path / "out")
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["precious.txt"]
    with pytest.raises(DatasetError, match="no layout.json"):
        write_coco_layout(coco_root, {"train": [A]}, tmp_path / "out", classes=["cat"])
    with pytest.raises(DatasetError, match="nowhere: COCO root does not exist"):
        convert_coco(tmp_path / "nowhere", SPLITS, tmp_path / "x")
    shutil.copy(coco_root / SPLITS["train"], coco_root / "annotations" / "train.json")
    with pytest.raises(DatasetError, match="cannot derive the image folder"):
        convert_coco(coco_root, {"train": "annotations/train.json"}, tmp_path / "x")


def _form(ann: dict) -> str:
    segm = ann["segmentation"]
    if isinstance(segm, list):
        return "polygon"
    form = "rle" if isinstance(segm["counts"], str) else "uncompressed"
    return form + " crowd" * ann["iscrowd"]


def _assert_round_trip(voc: VocDataset, back: VocDataset, splits: list[str]) -> None:
    for split in splits:
        assert back.ids(split) == sorted(voc.ids(split))
        for image_id in voc.ids(split):
            assert np.array_equal(back.load_mask(image_id), voc.load_mask(image_id)), image_id
            image, source = back.load_image(image_id), voc.load_image(image_id)
            if voc.image_path(image_id).suffix == ".jpg":  # linked or copied: the same pixels
                assert np.array_equal(image, source), image_id
            else:  # re-encoded at quality 95, 4:4:4
                assert np.abs(image.astype(int) - source).mean() < 1.5, image_id


def test_round_trip_of_the_tiny_voc_set(tiny_voc, tiny_voc_config, tmp_path):
    voc = VocDataset.from_config(tiny_voc_config)
    png = voc.image_path("2010_000001")  # a .png source is re-encoded as JPEG
    Image.open(png).save(png.with_suffix(".png"))
    png.unlink()
    lists = {s: f"ImageSets/Segmentation/{s}.txt" for s in ("train", "val")}
    layout = write_coco_layout(tiny_voc, lists, tmp_path / "coco", crowd_every=2,
                               polygon_every=3)
    assert layout["splits"]["train"]["images"] == 4
    data = json.loads((tmp_path / "coco" / SPLITS["train"]).read_text())
    assert [c["id"] for c in data["categories"]] == [2, 1]
    assert {_form(a) for a in data["annotations"]} == {"rle", "polygon", "uncompressed crowd"}
    record = convert_coco(tmp_path / "coco", SPLITS, tmp_path / "back")
    _assert_round_trip(voc, VocDataset.from_config(dataset_config(tmp_path / "back")),
                       ["train", "val"])
    void = sum(int((voc.load_mask(i) == 255).sum()) for i in voc.ids("train"))
    assert record["splits"]["train"]["crowd_pixels"] == void  # wide crowds lose to instances
    jpg = voc.image_path("2007_000032")
    assert (tmp_path / "coco" / "train2014" / "2007_000032.jpg").read_bytes() == jpg.read_bytes()


def test_round_trip_of_the_synthetic_benchmark(tmp_path):
    synthetic.generate(tmp_path / "voc", {"num_train": 4, "num_val": 2, "min_side": 48,
                                          "max_side": 56})
    cfg = synthetic.dataset_config(tmp_path / "voc")
    write_coco_layout(tmp_path / "voc", cfg["splits"], tmp_path / "coco", polygon_every=2)
    convert_coco(tmp_path / "coco", SPLITS, tmp_path / "back", threads=2)
    _assert_round_trip(VocDataset.from_config(cfg),
                       VocDataset.from_config(dataset_config(tmp_path / "back")), ["train", "val"])


def test_image_root_and_dirs_lookup_order(tiny_voc, tiny_voc_config, tmp_path, monkeypatch):
    images = tmp_path / "images"
    for folder in ("a", "b"):
        (images / folder).mkdir(parents=True)
    Image.new("RGB", (4, 3)).save(images / "b" / "x.jpg")
    Image.new("RGB", (4, 3)).save(images / "a" / "y.png")
    Image.new("RGB", (4, 3)).save(images / "b" / "y.jpg")
    monkeypatch.chdir(tmp_path)
    ds = VocDataset.from_config({**tiny_voc_config, "image_root": "images",
                                 "image_dirs": ["a", "b"]})
    assert ds.image_path("x") == Path("images/b/x.jpg")  # only in the second folder
    assert ds.image_path("y") == Path("images/a/y.png")  # the folder order before .jpg/.png
    assert ds.image_path("z") == Path("images/a/z.jpg")  # none: the first candidate, for errors
    with pytest.raises(DatasetError, match="z.jpg"):
        ds.load_image("z")
    assert hash(ds) != hash(VocDataset.from_config(tiny_voc_config))
    monkeypatch.setenv("HOME", str(tmp_path))
    home = VocDataset.from_config({**tiny_voc_config, "image_root": "~/images",
                                   "image_dirs": ["b"]})
    assert home.image_path("x") == tmp_path / "images" / "b" / "x.jpg"
    default = VocDataset.from_config(tiny_voc_config)  # VOC: root/JPEGImages as before
    assert default.image_path("2007_000032") == tiny_voc / "JPEGImages" / "2007_000032.jpg"
    with pytest.raises(DatasetError, match="image_root does not exist"):
        VocDataset.from_config({**tiny_voc_config, "image_root": "nowhere"})
    with pytest.raises(DatasetError, match="image_dirs"):
        VocDataset(root=tiny_voc, classes=("cat",), image_dirs=())


def test_cli_layout_then_masks_and_errors(tiny_voc, coco_root, tmp_path, capsys):
    lists = {s: f"ImageSets/Segmentation/{s}.txt" for s in ("train", "val")}
    assert main(["coco-layout", "--voc-root", str(tiny_voc), "--splits", json.dumps(lists),
                 "--crowd-every", "1", "--polygon-every", "2", "--out", str(tmp_path / "c")]) == 0
    assert main(["coco-masks", "--root", str(tmp_path / "c"), "--splits", json.dumps(SPLITS),
                 "--threads", "2", "--out", str(tmp_path / "back")]) == 0
    _assert_round_trip(VocDataset.from_config({"root": str(tiny_voc), "splits": lists}),
                       VocDataset.from_config(dataset_config(tmp_path / "back")), ["train", "val"])
    # the flag alone: no split drops its images without foreground
    assert main(["coco-masks", "--root", str(coco_root), "--splits", json.dumps(SPLITS),
                 "--image-dirs", json.dumps({"val": "val2014"}), "--drop-empty",
                 "--out", str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / "train.txt").read_text() == f"{A}\n{B}\n{C}\n{F}\n"
    rc = main(["coco-masks", "--root", str(tmp_path / "coco"), "--splits",
               json.dumps({"train": "annotations/missing.json"}), "--out", str(tmp_path / "x")])
    assert rc == 1
    assert "missing.json: annotation file does not exist" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
