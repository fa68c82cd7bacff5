"""A broken dataset as a user meets it: `wsss index` (the workflow's dataset_index job, the
first to read the files) exits non-zero with one line naming the file or id, no traceback,
and writes nothing; an image without foreground is counted, not refused.

The other kinds of bad input are tested beside the code they pin: config keys, types, names and
overlays in tests/test_config.py and tests/test_workflow.py (dry runs), a missing dataset root
and a garbage image in tests/cli/test_commands.py, images in other modes than RGB in
tests/data/test_voc.py, class lists against the XML in tests/data/test_index.py, and the
training split's images without foreground in tests/test_classifier.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY_TRAIN

from wsss.data.voc import save_mask

LISTS = "ImageSets/Segmentation"


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _missing_root(root: Path) -> None:
    root.rename(root.with_name("moved_away"))


def _missing_image(root: Path) -> None:
    with (root / LISTS / "train.txt").open("a") as f:
        f.write("2012_999999\n")


def _corrupt_jpeg(root: Path) -> None:
    _truncate(root / "JPEGImages" / "2007_000039.jpg")  # a real JPEG, cut off half way


def _truncated_png_mask(root: Path) -> None:
    _truncate(root / "SegmentationClass" / "2008_000123.png")


def _mask_size(root: Path) -> None:
    save_mask(root / "SegmentationClass" / "2011_003276.png", np.zeros((10, 12), np.uint8))


def _class_index(root: Path) -> None:
    h, w, _ = TINY_TRAIN["2007_000032"]
    mask = np.zeros((h, w), np.uint8)
    mask[3, 4] = 3  # two classes: 1 and 2 are the only foreground values
    save_mask(root / "SegmentationClass" / "2007_000032.png", mask)


def _empty_split(root: Path) -> None:
    (root / LISTS / "train.txt").write_text("\n  \n")


def _duplicate_id(root: Path) -> None:
    with (root / LISTS / "train.txt").open("a") as f:
        f.write("2008_000123\n")


def _classes_short_of_the_masks(root: Path) -> None:
    # the leading background entry is skipped; then the list is one class short of the masks
    (root / "classes.txt").write_text("background\ncat\n")


# breakage -> what the one-line message must hold
BROKEN: dict[str, tuple[Callable[[Path], None], list[str]]] = {
    "missing_root": (_missing_root, ["tiny_voc: dataset root does not exist"]),
    "missing_image": (_missing_image, ["JPEGImages/2012_999999.jpg: image of '2012_999999' "
                                       "does not exist"]),
    "corrupt_jpeg": (_corrupt_jpeg, ["image '2007_000039'", "2007_000039.jpg) is unreadable"]),
    "truncated_png_mask": (_truncated_png_mask, ["mask of '2008_000123'",
                                                 "2008_000123.png) is unreadable"]),
    "mask_size": (_mask_size, ["image '2011_003276': mask size [10, 12] != image size [52, 44]",
                               "SegmentationClass/2011_003276.png"]),
    "class_index": (_class_index, ["mask of '2007_000032'", "values [3] outside 0..2"]),
    "empty_split": (_empty_split, [f"{LISTS}/train.txt: split 'train' is empty"]),
    "duplicate_id": (_duplicate_id, [f"{LISTS}/train.txt: image id '2008_000123' is listed "
                                     "twice"]),
    "classes_short_of_the_masks": (_classes_short_of_the_masks,
                                   ["mask of '2007_000039'", "values [2] outside 0..1",
                                    "(classes 1..1: ['cat'])"]),
}


def _wsss_index(dataset: dict, out: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "wsss", "index", "--dataset", json.dumps(dataset),
         "--splits", "train", "val", "--threads", "2", "--out", str(out)],
        capture_output=True, text=True, timeout=120,
    )


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_a_broken_dataset_is_named_in_one_line_and_nothing_is_written(
        tiny_voc_config, tiny_voc, tmp_path, case):
    breakage, fragments = BROKEN[case]
    breakage(tiny_voc)
    results = tmp_path / "results"
    results.mkdir()
    proc = _wsss_index(tiny_voc_config, results / "index.json")
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    line = next(x for x in proc.stderr.splitlines() if x.startswith("wsss index: error: "))
    for fragment in fragments:
        assert fragment in line, line
    assert list(results.iterdir()) == []  # no index, no temp file


def test_an_image_without_foreground_is_counted_not_refused(tiny_voc_config, tiny_voc, tmp_path):
    h, w, _ = TINY_TRAIN["2011_003276"]
    save_mask(tiny_voc / "SegmentationClass" / "2011_003276.png", np.zeros((h, w), np.uint8))
    out = tmp_path / "index.json"
    proc = _wsss_index(tiny_voc_config, out)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "train: 4 images, 1 without foreground labels" in proc.stderr
    assert "val: 2 images, 0 without foreground labels" in proc.stderr
    train = json.loads(out.read_text())["splits"]["train"]
    assert train["ids"] == list(TINY_TRAIN)  # listed, so that CAMs and evaluation still see it
    assert train["labels"]["2011_003276"] == [] and train["no_foreground"] == ["2011_003276"]
