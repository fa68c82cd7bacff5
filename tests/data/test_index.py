"""Dataset index: XML labels cross-checked against the masks, a leading background entry."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import (
    TINY_CLASSES,
    TINY_TRAIN,
    TINY_VAL,
    misname_xml_object,
    prepend_background_entry,
)

from wsss.data.index import build_index
from wsss.data.voc import DatasetError, VocDataset

ALL = {**TINY_TRAIN, **TINY_VAL}


def _wsss_index(dataset: dict, out: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "wsss", "index", "--dataset", json.dumps(dataset),
         "--splits", "train", "val", "--threads", "2", "--out", str(out)],
        capture_output=True, text=True, timeout=120,
    )


@pytest.mark.parametrize("entry", ["background", "_background_"])
def test_leading_background_entry_is_skipped_once(tiny_voc_config, tiny_voc, caplog, entry):
    prepend_background_entry(tiny_voc, entry)
    xml_cfg = {**tiny_voc_config, "label_source": "xml"}
    with caplog.at_level(logging.INFO, logger="wsss"):
        ds = VocDataset.from_config(xml_cfg)
        VocDataset.from_config(xml_cfg)  # a second reader in the same process says nothing
    said = [r for r in caplog.records if entry in r.getMessage()]
    assert len(said) == 1 and "classes.txt" in said[0].getMessage()
    assert ds.classes == TINY_CLASSES
    masks = VocDataset.from_config(tiny_voc_config)
    for image_id, (_, _, objects) in ALL.items():
        expected = sorted({k for k, _, _ in objects})
        assert ds.image_labels(image_id).tolist() == expected  # not shifted by one
        assert masks.image_labels(image_id).tolist() == expected
    index = build_index(ds, ["train", "val"])  # the cross-check agrees
    assert index["classes"] == list(TINY_CLASSES)
    assert index["splits"]["train"]["labels"]["2007_000039"] == [1]


def test_background_elsewhere_is_kept(tiny_voc_config):
    # only a leading entry means mask value 0; a later one is the user's own class
    ds = VocDataset.from_config({**tiny_voc_config, "classes": ["cat", "background"]})
    assert ds.classes == ("cat", "background")


@pytest.mark.parametrize("threads", [1, 2])
def test_wrong_xml_name_is_named_with_both_sides(tiny_voc_config, tiny_voc, threads):
    misname_xml_object(tiny_voc, "2010_000001", ["dog"])  # its mask holds a cat
    masks = VocDataset.from_config(tiny_voc_config)
    assert build_index(masks, ["train", "val"])["splits"]["val"]["labels"]["2010_000001"] == [0]
    xml = VocDataset.from_config({**tiny_voc_config, "label_source": "xml"})
    with pytest.raises(DatasetError) as err:
        build_index(xml, ["train", "val"], threads=threads)
    message = str(err.value)
    assert "val/2010_000001: xml ['dog'] vs mask ['cat']" in message
    assert "on 1 of 6 images" in message
    assert "2007_000032" not in message  # the agreeing images are not blamed


def test_swapped_class_list_is_caught(tiny_voc_config):
    # the failure the check exists for: a class list that does not match the masks' values
    ds = VocDataset.from_config({**tiny_voc_config, "label_source": "xml",
                                 "classes": ["dog", "cat"]})
    with pytest.raises(DatasetError, match=r"on 4 of 6 images.*train/2007_000032: xml \['cat'\]"):
        build_index(ds, ["train", "val"])


def test_images_without_mask_are_not_cross_checked(tiny_voc_config, tiny_voc):
    misname_xml_object(tiny_voc, "2010_000001", ["dog"])
    (tiny_voc / "SegmentationClass" / "2010_000001.png").unlink()  # classification-only image
    ds = VocDataset.from_config({**tiny_voc_config, "label_source": "xml"})
    assert build_index(ds, ["val"])["splits"]["val"]["labels"]["2010_000001"] == [1]


def test_cli_index_stops_on_a_disagreement_and_writes_nothing(tiny_voc_config, tiny_voc,
                                                              tmp_path):
    xml_cfg = {**tiny_voc_config, "label_source": "xml"}
    prepend_background_entry(tiny_voc, "_background_")
    good = tmp_path / "good.json"
    proc = _wsss_index(xml_cfg, good)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stderr.count("'_background_'") == 1
    assert json.loads(good.read_text())["classes"] == list(TINY_CLASSES)
    misname_xml_object(tiny_voc, "2007_000039", ["cat"])  # its mask holds a dog
    out = tmp_path / "index.json"
    proc = _wsss_index(xml_cfg, out)
    assert proc.returncode != 0
    assert "2007_000039" in proc.stderr and "xml ['cat'] vs mask ['dog']" in proc.stderr
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp file
