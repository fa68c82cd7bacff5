"""Shared fixtures: a tiny dataset in VOC layout, written fresh for each test."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from wsss.data.voc import save_mask

TINY_CLASSES = ("cat", "dog")

# id -> (height, width, [(class index 0-based, shape, (top, left, bottom, right))]).
# Ids look like real VOC ids: "2007_000032" is also a valid int literal, which must never be used.
TINY_TRAIN = {
    "2007_000032": (40, 56, [(0, "ellipse", (6, 8, 30, 36))]),
    "2007_000039": (48, 40, [(1, "box", (10, 6, 40, 30))]),
    "2008_000123": (36, 36, [(0, "ellipse", (4, 4, 22, 22)), (1, "box", (16, 14, 34, 34))]),
    "2011_003276": (52, 44, [(1, "box", (8, 10, 44, 38))]),
}
TINY_VAL = {
    "2007_000042": (44, 60, [(1, "box", (4, 30, 36, 56)), (0, "ellipse", (10, 4, 40, 34))]),
    "2010_000001": (40, 48, [(0, "ellipse", (8, 12, 34, 40))]),
}
# fill colours of background / cat / dog in the images, so that colour-based refinement can work
TINY_COLOURS = ((90, 140, 80), (200, 90, 60), (60, 80, 200))


def _shape_mask(h: int, w: int, shape: str, box: tuple[int, int, int, int]) -> np.ndarray:
    top, left, bottom, right = box
    yy, xx = np.mgrid[0:h, 0:w]
    if shape == "box":
        return (yy >= top) & (yy < bottom) & (xx >= left) & (xx < right)
    cy, cx = (top + bottom - 1) / 2, (left + right - 1) / 2
    ry, rx = (bottom - top) / 2, (right - left) / 2
    return ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0


def _write_xml(path: Path, image_id: str, h: int, w: int, names: list[str]) -> None:
    objects = "".join(f"<object><name>{n}</name><difficult>0</difficult></object>" for n in names)
    path.write_text(
        f"<annotation><filename>{image_id}.jpg</filename>"
        f"<size><width>{w}</width><height>{h}</height><depth>3</depth></size>{objects}</annotation>"
    )


def write_tiny_voc(root: Path) -> Path:
    """Write the tiny dataset under `root` and return it.

    root/
      classes.txt                               cat, dog
      JPEGImages/<id>.jpg                       sizes differ per image
      SegmentationClass/<id>.png                palette PNG: 0 bg, 1 cat, 2 dog, 255 outline band
      SegmentationClassAug/<id>.png             same masks (SBD-style layout)
      Annotations/<id>.xml                      object names
      ImageSets/Segmentation/train.txt, val.txt plain ids
      ImageSets/Segmentation/train_aug.txt      SBD-style "/JPEGImages/id.jpg /Seg.../id.png" lines
    """
    rng = np.random.default_rng(0)
    for sub in (
        "JPEGImages",
        "SegmentationClass",
        "SegmentationClassAug",
        "Annotations",
        "ImageSets/Segmentation",
    ):
        (root / sub).mkdir(parents=True, exist_ok=True)
    (root / "classes.txt").write_text("".join(f"{c}\n" for c in TINY_CLASSES))
    for split, table in (("train", TINY_TRAIN), ("val", TINY_VAL)):
        for image_id, (h, w, objects) in table.items():
            mask = np.zeros((h, w), dtype=np.uint8)
            for k, shape, box in objects:  # later objects occlude earlier ones
                mask[_shape_mask(h, w, shape, box)] = k + 1
            colours = np.array(TINY_COLOURS, dtype=np.float32)
            image = colours[mask] + rng.normal(0, 6, size=(h, w, 3))
            # VOC marks a thin void band on object boundaries
            edge = np.zeros((h, w), dtype=bool)
            edge[1:, :] |= mask[1:, :] != mask[:-1, :]
            edge[:, 1:] |= mask[:, 1:] != mask[:, :-1]
            mask[edge] = 255
            Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(
                root / "JPEGImages" / f"{image_id}.jpg", quality=95
            )
            save_mask(root / "SegmentationClass" / f"{image_id}.png", mask)
            save_mask(root / "SegmentationClassAug" / f"{image_id}.png", mask)
            names = [TINY_CLASSES[k] for k, _, _ in objects]
            _write_xml(root / "Annotations" / f"{image_id}.xml", image_id, h, w, names)
        lists = root / "ImageSets" / "Segmentation"
        (lists / f"{split}.txt").write_text("".join(f"{i}\n" for i in table))
    (root / "ImageSets" / "Segmentation" / "train_aug.txt").write_text(
        "".join(f"/JPEGImages/{i}.jpg /SegmentationClassAug/{i}.png\n" for i in TINY_TRAIN)
    )
    return root


@pytest.fixture
def tiny_voc(tmp_path: Path) -> Path:
    """Root of a tiny VOC-layout dataset: 2 classes (cat, dog), 4 train + 2 val images."""
    return write_tiny_voc(tmp_path / "tiny_voc")


@pytest.fixture
def tiny_voc_config(tiny_voc: Path) -> dict[str, Any]:
    """VocDataset.from_config dict for `tiny_voc` (classes come from classes.txt)."""
    return {
        "root": str(tiny_voc),
        "splits": {
            "train": "ImageSets/Segmentation/train.txt",
            "val": "ImageSets/Segmentation/val.txt",
            "train_aug": "ImageSets/Segmentation/train_aug.txt",
        },
        "mask_dir": "SegmentationClass",
        "label_source": "masks",
        "classes": None,
    }


def prepend_background_entry(root: Path, name: str = "background") -> None:
    """Rewrite classes.txt with a leading background entry, as mmsegmentation's lists have."""
    (root / "classes.txt").write_text("".join(f"{c}\n" for c in (name, *TINY_CLASSES)))


def misname_xml_object(root: Path, image_id: str, new_names: list[str]) -> None:
    """Rewrite one image's annotation with other object names (its mask is left as it is)."""
    table = {**TINY_TRAIN, **TINY_VAL}
    h, w, _ = table[image_id]
    _write_xml(root / "Annotations" / f"{image_id}.xml", image_id, h, w, new_names)


@pytest.fixture
def one_thread():
    """Tiny tensors: on a busy machine OpenMP's thread hand-offs, not the arithmetic, would set
    the pace. Modules that train on tiny tensors use it for every test (`pytestmark`)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# A short real pretrain run (seconds on one thread; four shapes learnt well above chance):
# weights in the stage's format for tests that build the default config's networks
# (`pretrained: synthetic`), so that they train from features, as the default run does.
QUICK_PRETRAIN = {"corpus": {"classes": 4, "train_per_class": 64, "held_out_per_class": 16,
                             "size": 48},
                  "training": {"epochs": 3, "batch_size": 16, "optimizer": "adamw", "lr": 0.002,
                               "weight_decay": 1.0e-4}}


@pytest.fixture(scope="session")
def quick_pretrained(tmp_path_factory) -> Path:
    """A tiny.pt written once per session by a real (very short) pretrain run."""
    import torch

    from wsss.pretrain import pretrain

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return pretrain("tiny", QUICK_PRETRAIN, tmp_path_factory.mktemp("pretrained") / "tiny.pt",
                        torch.device("cpu"))
    finally:
        torch.set_num_threads(threads)


def pretrained_workdir(work: Path, weights: Path) -> Path:
    """`work` with the pretrain stage's tiny.pt where jobs find it (results/pretrained/,
    relative to the workflow's directory, i.e. the current directory of a job)."""
    import shutil

    (work / "results" / "pretrained").mkdir(parents=True, exist_ok=True)
    shutil.copy(weights, work / "results" / "pretrained" / "tiny.pt")
    return work

