"""A VOC-layout dataset with class-index masks (the synthetic benchmark) written in COCO 2014
layout, so the COCO path (`convert_coco`, then `VocDataset`) runs end to end without COCO.

Output under `out_root`::

    <split>2014/<id>.jpg                     the images: hard links (or copies) of .jpg
                                             sources; other formats re-encoded as JPEG
                                             quality 95, 4:4:4 (not byte-identical)
    annotations/instances_<split>2014.json   images, annotations, categories
    layout.json                              the writer's record

Annotations, per image: one non-crowd instance per class present (all its pixels, whatever
the number of connected components), compressed RLE (`pycocotools.mask.encode`); in every
`polygon_every`-th image as polygons instead, one rectangle per horizontal run of pixels
(pycocotools fills an integer-cornered rectangle exactly, so the union is exact). The void
pixels (255) become one crowd annotation in uncompressed RLE (COCO's form for crowds) of the
image's first class; in every `crowd_every`-th image the crowd region also covers all
foreground pixels, as COCO's crowd regions overlap instances, to exercise the rule that
non-crowd instances win. Category ids are deliberately not contiguous (1, 2, 3, 5, 6, 7, 9, ...)
and listed in reverse order. Instances never overlap, so `convert_coco` gives back exactly the
source masks: the round trip is exact.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from wsss.data.coco import check_target, fresh_tmp, replace_dir
from wsss.data.voc import VOID, DatasetError, VocDataset, foreground_classes

MARKER = "layout.json"


def category_id(k: int) -> int:
    """COCO-style id of the 0-based class k: gaps after every third id."""
    return k + 1 + k // 3


def _rle(mask: np.ndarray) -> dict[str, Any]:
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


def _uncompressed_rle(mask: np.ndarray) -> dict[str, Any]:
    """COCO's uncompressed RLE: column-major run lengths, starting with a run of zeros."""
    flat = mask.astype(bool).ravel(order="F")
    change = np.flatnonzero(np.diff(flat.astype(np.int8))) + 1
    bounds = np.concatenate([[0], change, [flat.size]])
    counts = np.diff(bounds).tolist()
    if flat.size and flat[0]:
        counts = [0, *counts]
    return {"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": counts}


def _run_polygons(mask: np.ndarray) -> list[list[float]]:
    """One integer-cornered rectangle per horizontal run of True pixels."""
    polys = []
    for y in range(mask.shape[0]):
        row = np.concatenate([[0], mask[y].astype(np.int8), [0]])
        edges = np.flatnonzero(np.diff(row))
        for x0, x1 in zip(edges[::2], edges[1::2], strict=True):
            polys.append([float(v) for v in (x0, y, x1, y, x1, y + 1, x0, y + 1)])
    return polys


def _bbox(mask: np.ndarray) -> list[float]:
    ys, xs = np.nonzero(mask)
    if not ys.size:
        return [0.0, 0.0, 0.0, 0.0]
    return [float(xs.min()), float(ys.min()), float(xs.max() - xs.min() + 1),
            float(ys.max() - ys.min() + 1)]


def _place_image(src: Path, dst: Path) -> None:
    if src.suffix.lower() in (".jpg", ".jpeg"):
        try:
            os.link(src, dst)
        except OSError:
            shutil.copyfile(src, dst)
        return
    with Image.open(src) as im:
        im.convert("RGB").save(dst, format="JPEG", quality=95, subsampling=0)


def _annotations(mask: np.ndarray, num_classes: int, coco_image_id: int, next_id: int,
                 polygons: bool, wide_crowd: bool) -> list[dict[str, Any]]:
    anns = []
    values = [int(v) for v in np.unique(mask) if 0 < v <= num_classes]
    for value in values:
        region = mask == value
        segm = _run_polygons(region) if polygons else _rle(region)
        anns.append({"id": next_id + len(anns), "image_id": coco_image_id,
                     "category_id": category_id(value - 1), "iscrowd": 0,
                     "area": float(region.sum()), "bbox": _bbox(region), "segmentation": segm})
    void = mask == VOID
    if wide_crowd:
        void = void | ((mask > 0) & (mask <= num_classes))
    if void.any():
        anns.append({"id": next_id + len(anns), "image_id": coco_image_id,
                     "category_id": category_id(values[0] - 1 if values else 0), "iscrowd": 1,
                     "area": float(void.sum()), "bbox": _bbox(void),
                     "segmentation": _uncompressed_rle(void)})
    return anns


def _split_ids(ds: VocDataset, spec: list[str] | str, split: str) -> list[str]:
    if isinstance(spec, str):
        return VocDataset(root=ds.root, classes=ds.classes, splits={split: spec}).ids(split)
    return [str(i) for i in spec]


def write_coco_layout(voc_root: str | os.PathLike, splits: dict[str, list[str] | str],
                      out_root: str | os.PathLike, classes: list[str] | None = None,
                      crowd_every: int = 0, polygon_every: int = 0,
                      mask_dir: str = "SegmentationClass") -> dict[str, Any]:
    """Write the VOC-layout dataset at `voc_root` in COCO 2014 layout under `out_root`,
    atomically; returns the record also written as layout.json.

    `splits` maps a split name to its ids or to a list file relative to voc_root; `classes`
    defaults to voc_root/classes.txt. Ids must be unique across splits.
    """
    voc_root, out = Path(voc_root).expanduser(), Path(out_root).expanduser()
    if not voc_root.is_dir():
        raise DatasetError(f"{voc_root}: dataset root does not exist or is not a directory")
    if classes is None:
        path = voc_root / "classes.txt"
        if not path.is_file():
            raise DatasetError(f"{path}: class list does not exist; give classes")
        classes = [line.strip() for line in path.read_text().splitlines() if line.strip()]
        classes = list(foreground_classes(classes, str(path)))
    ds = VocDataset(root=voc_root, classes=tuple(classes), mask_dir=mask_dir)
    check_target(out, MARKER)
    tmp = fresh_tmp(out)
    try:
        record = _write(ds, splits, tmp, max(0, crowd_every), max(0, polygon_every))
        (tmp / MARKER).write_text(json.dumps(record, indent=1) + "\n")
        replace_dir(tmp, out, MARKER)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return record


def _write(ds: VocDataset, splits: dict[str, list[str] | str], tmp: Path, crowd_every: int,
           polygon_every: int) -> dict[str, Any]:
    (tmp / "annotations").mkdir()
    categories = [{"id": category_id(k), "name": name, "supercategory": "synthetic"}
                  for k, name in enumerate(ds.classes)][::-1]
    record: dict[str, Any] = {"writer": "wsss.data.coco_writer", "source": str(ds.root),
                              "classes": list(ds.classes), "crowd_every": crowd_every,
                              "polygon_every": polygon_every, "splits": {}}
    seen: dict[str, str] = {}
    next_image, next_ann = 1, 1
    for split, spec in splits.items():
        folder = f"{split}2014"
        (tmp / folder).mkdir()
        images, annotations = [], []
        for n, image_id in enumerate(_split_ids(ds, spec, split)):
            if image_id in seen:
                raise DatasetError(f"image id '{image_id}' is in splits '{seen[image_id]}' and "
                                   f"'{split}'; ids must be unique across splits")
            seen[image_id] = split
            src = ds.image_path(image_id)
            if not src.is_file():
                raise DatasetError(f"{src}: image of '{image_id}' does not exist")
            mask = ds.load_mask(image_id)
            h, w = mask.shape
            with Image.open(src) as im:
                if im.size != (w, h):
                    raise DatasetError(f"image '{image_id}' ({src}): size {im.size} != mask "
                                       f"size {(w, h)} (w, h)")
            _place_image(src, tmp / folder / f"{image_id}.jpg")
            images.append({"id": next_image, "file_name": f"{image_id}.jpg", "height": int(h),
                           "width": int(w)})
            anns = _annotations(mask, ds.num_classes, next_image, next_ann,
                                polygon_every > 0 and n % polygon_every == 0,
                                crowd_every > 0 and n % crowd_every == 0)
            annotations.extend(anns)
            next_image, next_ann = next_image + 1, next_ann + len(anns)
        data = {"info": {"description": f"{ds.root} in COCO 2014 layout"}, "licenses": [],
                "images": images, "annotations": annotations, "categories": categories}
        rel = f"annotations/instances_{folder}.json"
        (tmp / rel).write_text(json.dumps(data))
        record["splits"][split] = {"images": len(images), "annotations": len(annotations),
                                   "file": rel, "image_dir": folder}
    return record
