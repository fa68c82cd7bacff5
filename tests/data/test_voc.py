"""VOC reader and dataset index on the tiny fixture."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY_CLASSES, TINY_TRAIN, TINY_VAL
from PIL import Image

from wsss.data.index import build_index, read_index, write_index
from wsss.data.voc import VOC_CLASSES, VOC_PALETTE, DatasetError, VocDataset, save_mask


def test_voc_constants():
    assert len(VOC_CLASSES) == 20
    assert VOC_CLASSES[0] == "aeroplane" and VOC_CLASSES[-1] == "tvmonitor"
    assert len(VOC_PALETTE) == 768
    assert VOC_PALETTE[3:6] == [128, 0, 0]
    assert VOC_PALETTE[-3:] == [224, 224, 192]


def test_ids_stay_strings_and_classes_from_file(tiny_voc_config):
    ds = VocDataset.from_config(tiny_voc_config)
    assert ds.classes == TINY_CLASSES and ds.num_classes == 2
    ids = ds.ids("train")
    assert ids == list(TINY_TRAIN)
    assert all(isinstance(i, str) for i in ids)
    assert "2007_000032" in ids
    assert ds.ids("train_aug") == ids  # SBD-style list lines give the same ids
    assert hash(ds) == hash(VocDataset.from_config(tiny_voc_config))  # usable as a cache key


def test_classes_default_to_voc(tiny_voc_config, tiny_voc):
    (tiny_voc / "classes.txt").unlink()
    assert VocDataset.from_config(tiny_voc_config).classes == VOC_CLASSES
    explicit = VocDataset.from_config({**tiny_voc_config, "classes": ["a", "b", "c"]})
    assert explicit.classes == ("a", "b", "c")


def test_images_masks_and_labels(tiny_voc_config):
    ds = VocDataset.from_config(tiny_voc_config)
    for table in (TINY_TRAIN, TINY_VAL):
        for image_id, (h, w, objects) in table.items():
            image, mask = ds.load_image(image_id), ds.load_mask(image_id)
            assert image.shape == (h, w, 3) and image.dtype == np.uint8
            assert mask.shape == (h, w) and mask.dtype == np.uint8
            assert set(np.unique(mask)) <= {0, 1, 2, 255} and 255 in mask
            expected = sorted({k for k, _, _ in objects})
            labels = ds.image_labels(image_id)
            assert labels.dtype == np.int64 and labels.tolist() == expected
            vec = ds.label_vector(image_id)
            assert vec.dtype == np.float32 and vec.shape == (2,)
            assert np.flatnonzero(vec).tolist() == expected
    sizes = {ds.load_image(i).shape for i in ds.ids("train")}
    assert len(sizes) == len(TINY_TRAIN)  # every image has its own size


def test_labels_from_xml_and_sbd_masks(tiny_voc_config, tiny_voc):
    ds = VocDataset.from_config({**tiny_voc_config, "label_source": "xml"})
    from_masks = VocDataset.from_config(tiny_voc_config)
    for image_id in ds.ids("val"):
        assert ds.image_labels(image_id).tolist() == from_masks.image_labels(image_id).tolist()
    # xml labels do not read masks at all
    (tiny_voc / "SegmentationClass" / "2010_000001.png").unlink()
    assert ds.image_labels("2010_000001").tolist() == [0]
    aug = VocDataset.from_config({**tiny_voc_config, "mask_dir": "SegmentationClassAug"})
    assert aug.mask_path("2007_000032") == tiny_voc / "SegmentationClassAug" / "2007_000032.png"
    assert aug.image_labels("2007_000032").tolist() == [0]


def test_mode_l_mask_and_png_image(tiny_voc_config, tiny_voc):
    ds = VocDataset.from_config(tiny_voc_config)
    mask = ds.load_mask("2007_000032")
    Image.fromarray(mask).save(ds.mask_path("2007_000032"))  # mode L
    assert np.array_equal(ds.load_mask("2007_000032"), mask)
    jpg = ds.image_path("2007_000032")
    Image.open(jpg).save(jpg.with_suffix(".png"))
    jpg.unlink()
    assert ds.image_path("2007_000032").suffix == ".png"
    assert ds.load_image("2007_000032").shape == (40, 56, 3)


def test_save_mask_roundtrip(tmp_path):
    mask = np.array([[0, 1, 255], [20, 2, 0]], dtype=np.uint8)
    save_mask(tmp_path / "m.png", mask)
    with Image.open(tmp_path / "m.png") as im:
        assert im.mode == "P"
        assert im.getpalette()[255 * 3 : 256 * 3] == [224, 224, 192]
        assert np.array_equal(np.array(im), mask)
    assert [p.name for p in tmp_path.iterdir()] == ["m.png"]  # no temp file left


def test_bad_mask_value_names_the_id(tiny_voc_config):
    ds = VocDataset.from_config(tiny_voc_config)
    mask = ds.load_mask("2008_000123")
    mask[0, 0] = 7
    save_mask(ds.mask_path("2008_000123"), mask)
    with pytest.raises(DatasetError, match=r"2008_000123.*\[7\]"):
        ds.load_mask("2008_000123")


def test_missing_and_corrupt_files(tiny_voc_config, tiny_voc):
    ds = VocDataset.from_config(tiny_voc_config)
    image = tiny_voc / "JPEGImages" / "2007_000039.jpg"
    image.unlink()
    with pytest.raises(DatasetError, match=str(image)):
        ds.load_image("2007_000039")
    mask = ds.mask_path("2011_003276")
    mask.unlink()
    with pytest.raises(DatasetError, match=str(mask)):
        ds.load_mask("2011_003276")
    ds.image_path("2007_000032").write_bytes(b"not a jpeg")
    with pytest.raises(DatasetError, match="2007_000032"):
        ds.load_image("2007_000032")
    ds.mask_path("2007_000032").write_bytes(b"\x89PNG broken")
    with pytest.raises(DatasetError, match="2007_000032"):
        ds.load_mask("2007_000032")


def test_config_errors(tiny_voc_config, tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(DatasetError, match=str(missing)):
        VocDataset.from_config({**tiny_voc_config, "root": str(missing)})
    ds = VocDataset.from_config(tiny_voc_config)
    with pytest.raises(DatasetError, match="'test'"):
        ds.ids("test")
    (Path(tiny_voc_config["root"]) / "ImageSets/Segmentation/val.txt").unlink()
    with pytest.raises(DatasetError, match="val.txt"):
        ds.ids("val")
    with pytest.raises(DatasetError, match="label_source"):
        VocDataset.from_config({**tiny_voc_config, "label_source": "csv"})
    with pytest.raises(DatasetError, match="colour"):
        VocDataset.from_config({**tiny_voc_config, "colour": 1})


def test_index_build_write_read(tiny_voc_config, tmp_path):
    ds = VocDataset.from_config(tiny_voc_config)
    serial = build_index(ds, ["train", "val"])
    assert build_index(ds, ["train", "val"], threads=2) == serial
    assert serial["classes"] == list(TINY_CLASSES)
    train = serial["splits"]["train"]
    assert train["ids"] == list(TINY_TRAIN)
    assert train["sizes"]["2007_000032"] == [40, 56]
    assert train["labels"]["2008_000123"] == [0, 1]
    assert train["no_foreground"] == []
    path = tmp_path / "out" / "index.json"
    write_index(path, serial)
    assert read_index(path) == json.loads(json.dumps(serial))


def test_index_no_foreground_and_errors(tiny_voc_config, tmp_path):
    ds = VocDataset.from_config(tiny_voc_config)
    save_mask(ds.mask_path("2010_000001"), np.zeros((40, 48), np.uint8))
    assert build_index(ds, ["val"])["splits"]["val"]["no_foreground"] == ["2010_000001"]
    save_mask(ds.mask_path("2007_000042"), np.zeros((10, 10), np.uint8))  # wrong size
    with pytest.raises(DatasetError, match="2007_000042"):
        build_index(ds, ["val"], threads=2)
    with pytest.raises(DatasetError, match="nothing.json"):
        read_index(tmp_path / "nothing.json")


def test_eval_masks_prefer_eval_dir_and_fall_back(tiny_voc_config, tiny_voc, tmp_path, caplog):
    import logging

    from wsss.evaluate import evaluate_labels
    from wsss.store import LabelWriter

    cfg = {**tiny_voc_config, "mask_dir": "SegmentationClassAug"}
    ds = VocDataset.from_config({**cfg, "eval_mask_dir": "SegmentationClass"})
    # the aug masks differ from VOC's (SBD has no void band): make one id's aug mask all cat
    fine = ds.load_mask("2007_000042")
    save_mask(ds.mask_path("2007_000042"), np.where(fine == 0, 0, 1).astype(np.uint8))
    (tiny_voc / "SegmentationClass" / "2010_000001.png").unlink()  # only the aug mask left
    assert np.array_equal(ds.load_eval_mask("2007_000042"), fine)
    assert ds.eval_mask_path("2010_000001") == ds.mask_path("2010_000001")
    assert ds.image_labels("2007_000042").tolist() == [0]  # labels stay on mask_dir

    val = ds.ids("val")
    with LabelWriter(tmp_path / "labels.h5", {"classes": list(TINY_CLASSES)}) as w:
        for image_id in val:
            w.add(image_id, ds.load_eval_mask(image_id))
    with caplog.at_level(logging.INFO, logger="wsss"):
        scored = evaluate_labels(tmp_path / "labels.h5", ds, "val")
        assert ds.eval_fallbacks(val, "val") == 1
    said = [r.getMessage() for r in caplog.records if "evaluated ids" in r.getMessage()]
    assert said == ["split 'val': 1 of 2 evaluated ids have no mask in SegmentationClass and "
                    "are scored on SegmentationClassAug"]
    assert scored["miou"] == pytest.approx(1.0)  # scored on the masks it was made from
    # without eval_mask_dir, the same labels are scored on the altered aug mask: no longer perfect
    plain = VocDataset.from_config(cfg)
    assert plain.eval_fallbacks(val, "val") == 0
    assert evaluate_labels(tmp_path / "labels.h5", plain, "val")["miou"] < 0.99


# 24×48 image of three flat 16-px blocks (JPEG's 8- and 16-px blocks hold one colour each)
BLOCK_INDEX = np.repeat(np.arange(3), 16)[None].repeat(24, 0)
BLOCK_RGB = np.array(((200, 90, 60), (60, 80, 200), (90, 140, 80)), np.uint8)[BLOCK_INDEX]
BLOCK_GREY = BLOCK_RGB[..., 1]


def _palette_image() -> Image.Image:
    im = Image.fromarray(BLOCK_INDEX.astype(np.uint8), "L").convert("P")
    im.putpalette([200, 90, 60, 60, 80, 200, 90, 140, 80])
    return im


# mode -> (image, suffix, save options, the RGB it must decode to, JPEG tolerance)
NON_RGB = {
    # COCO and many scraped sets hold grey and CMYK JPEGs; PIL writes CMYK as Adobe does
    # (inverted, APP14 marker), so a reader that ignored the marker would invert every colour
    "grey_jpeg": (Image.fromarray(BLOCK_GREY), ".jpg", {"quality": 100},
                  np.repeat(BLOCK_GREY[..., None], 3, 2), 2),
    "cmyk_jpeg": (Image.fromarray(BLOCK_RGB).convert("CMYK"), ".jpg", {"quality": 100},
                  BLOCK_RGB, 3),
    # alpha dropped, as convert("RGB") and torchvision do: the colour stays where alpha is 0
    "rgba_png": (Image.fromarray(np.dstack([BLOCK_RGB, (BLOCK_INDEX * 120).astype(np.uint8)]),
                                 "RGBA"), ".png", {}, BLOCK_RGB, 0),
    "palette_png": (_palette_image(), ".png", {}, BLOCK_RGB, 0),
    # 16-bit grey: convert("RGB") would clip everything above 255 to white
    "grey16_png": (Image.fromarray(BLOCK_GREY.astype(np.uint16) * 257), ".png", {},
                   np.repeat(BLOCK_GREY[..., None], 3, 2), 0),
}


@pytest.mark.parametrize("case", sorted(NON_RGB))
def test_non_rgb_images_decode_to_their_rgb_values(tiny_voc_config, tiny_voc, case):
    image, suffix, options, expected, tolerance = NON_RGB[case]
    ds = VocDataset.from_config(tiny_voc_config)
    ds.image_path("2007_000032").unlink()
    path = tiny_voc / "JPEGImages" / f"2007_000032{suffix}"
    image.save(path, **options)
    with Image.open(path) as written:  # the file holds the mode under test, not RGB
        assert written.mode == {"grey_jpeg": "L", "cmyk_jpeg": "CMYK", "rgba_png": "RGBA",
                                "palette_png": "P", "grey16_png": "I;16"}[case]
    decoded = ds.load_image("2007_000032")
    assert decoded.shape == (24, 48, 3) and decoded.dtype == np.uint8
    assert np.abs(decoded.astype(int) - expected).max() <= tolerance

