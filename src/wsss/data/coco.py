"""MS COCO 2014 instance annotations -> semantic masks in VOC layout, converted once, so every
later stage reads COCO through `VocDataset` unchanged (masks and lists from `out_dir`, images
from the COCO folders via `image_root` / `image_dirs`: see `dataset_config`). Output::

    SegmentationClass/<id>.png   palette PNG: 0 background, 1..80 the classes, 255 ignore
    <split>.txt                  ids of the split (sorted), images without foreground left out
    classes.txt                  the names, ordered by COCO category id (no background line)
    conversion.json              the record: per-split counts, category id -> mask value, inputs

Image id = the file name's stem ("COCO_train2014_000000000009"), a string, as in the papers'
list files; unique over all converted splits. Rules, per image:
  * classes: the categories sorted by COCO id take mask values 1..C (COCO's 80 ids run 1..90
    with gaps); every split's JSON must list the same categories.
  * overlaps: non-crowd instances are painted smallest `area` field first (ties: file order;
    no field: the decoded pixel count) and a painted pixel is never repainted, so the smaller
    instance wins. This is alicranck/coco2voc's rule (coco2voc_aux.py sorts by `area`, then
    `np.where(class_seg > 0, class_seg, ...)`; its issue #8: "smaller masks are on top"), the
    converter ToCo's README names for its VOC-style COCO masks (the Google Drive archive that
    RIB links too). Pixels claimed by two or more classes are counted (`overlap_pixels`).
  * crowd regions (iscrowd=1) become 255 where no non-crowd instance covers them
    (`crowd_pixels`); coco2voc paints them with their class instead.
  * polygons with fewer than 3 points enclose nothing and are skipped (`degenerate_polygons`;
    pycocotools would read a 4-number one as a box).
  * image-level labels: the classes of the non-crowd annotations. A category present only as a
    crowd region is not a label: its pixels are 255. Images without a label (COCO 2014: 702
    train, 367 val images have no annotation) are left out of the lists of the `drop_empty`
    splits, giving the papers' 82,081 / 40,137 images; their masks are still written. Stages
    read labels from the masks, which lack a class whose instances are wholly covered by
    smaller ones or have no pixel: such images are counted (`label_mismatch`).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from wsss.data.coco_json import categories, default_image_dir, load_json, work_items
from wsss.data.voc import VOID, DatasetError, save_mask
from wsss.ops.pool import ordered_map

log = logging.getLogger("wsss")

MASK_DIR = "SegmentationClass"
RECORD = "conversion.json"
OVERLAP_RULE = ("smaller annotation area wins (alicranck/coco2voc); crowd -> 255 where no "
                "non-crowd instance covers it")

# per worker: output folder, image folder and annotation file of the split being converted
_worker: dict[str, Path] = {}


def _init_worker(out: Path, image_dir: Path, source: Path) -> None:
    _worker.update(out=out, images=image_dir, source=source)


def _decode(ann: tuple, h: int, w: int, image_id: str) -> np.ndarray:
    """H×W uint8 0/1 mask of one annotation (polygons, uncompressed or compressed RLE)."""
    from pycocotools import mask as mask_utils

    ann_id, segm = ann[0], ann[4]
    where = f"{_worker['source']}: annotation {ann_id} of image '{image_id}'"
    try:
        if isinstance(segm, list):
            if not segm:  # no polygon with an area (see coco_json): an empty region
                return np.zeros((h, w), dtype=np.uint8)
            rle = mask_utils.merge(mask_utils.frPyObjects(segm, h, w))
        elif isinstance(segm, dict) and "counts" in segm and "size" in segm:
            if [int(v) for v in segm["size"]] != [h, w]:
                raise DatasetError(f"{where}: RLE size {segm['size']} != image size {[h, w]}")
            if isinstance(segm["counts"], list):
                rle = mask_utils.frPyObjects(segm, h, w)  # uncompressed RLE
            elif isinstance(segm["counts"], str | bytes):
                rle = segm  # compressed RLE
            else:
                raise DatasetError(f"{where}: RLE counts of type {type(segm['counts']).__name__}")
        else:
            raise DatasetError(f"{where}: segmentation of unknown form ({type(segm).__name__})")
        with warnings.catch_warnings():  # numpy 2's copy-keyword notice, from inside decode
            warnings.simplefilter("ignore", DeprecationWarning)
            return np.asarray(mask_utils.decode(rle), dtype=np.uint8).reshape(h, w)
    except DatasetError:
        raise
    except Exception as err:  # pycocotools raises bare TypeError/ValueError/...
        raise DatasetError(f"{where}: cannot decode the segmentation: {err}") from err


def _convert_one(item: tuple) -> tuple[str, list[int], list[int], int, int]:
    """Decode and paint one image, write its mask; (id, labels, mask labels, crowd px, overlap px).

    item = (image id, file name, height, width, annotations); each annotation is
    (annotation id, mask value, iscrowd, area or None, segmentation).
    """
    image_id, file_name, h, w, anns = item
    path = _worker["images"] / file_name
    if not path.is_file():
        raise DatasetError(f"{path}: image file of '{image_id}' does not exist")
    try:
        with Image.open(path) as im:  # reads the header only
            size = im.size
    except (OSError, SyntaxError, ValueError) as err:
        raise DatasetError(f"image '{image_id}' ({path}) is unreadable: {err}") from err
    if size != (w, h):
        raise DatasetError(f"image '{image_id}' ({path}): annotation size {w}x{h} (w x h) != "
                           f"the file's {size[0]}x{size[1]}")
    mask = np.zeros((h, w), dtype=np.uint8)
    overlap = np.zeros((h, w), dtype=bool)
    crowd = np.zeros((h, w), dtype=bool)
    decoded = [(a, _decode(a, h, w, image_id)) for a in anns]
    things = [(a, m) for a, m in decoded if not a[2]]
    # smaller first, the sort is stable: ties keep file order
    things.sort(key=lambda am: am[0][3] if am[0][3] is not None else int(am[1].sum()))
    for (_, value, _, _, _), m in things:
        region = m.astype(bool)
        overlap |= region & (mask != 0) & (mask != value)
        mask[region & (mask == 0)] = value
    for a, m in decoded:
        if a[2]:
            crowd |= m.astype(bool)
    crowd &= mask == 0
    mask[crowd] = VOID
    save_mask(_worker["out"] / MASK_DIR / f"{image_id}.png", mask)
    labels = sorted({int(a[1]) for a, _ in things})
    values = np.unique(mask)
    mask_labels = [int(v) for v in values if 0 < v < VOID]
    return image_id, labels, mask_labels, int(crowd.sum()), int(overlap.sum())


def _chunksize(n: int, threads: int) -> int:
    return max(1, min(64, n // (threads * 4) or 1))


def check_target(root: Path, marker: str) -> None:
    """DatasetError unless `root` is absent, empty, or holds `marker` (an earlier output of the
    same kind): never replace a folder something else wrote."""
    if root.exists() and (
        not root.is_dir() or (any(root.iterdir()) and not (root / marker).is_file())
    ):
        raise DatasetError(f"{root}: exists and has no {marker}; not replacing it")


def fresh_tmp(root: Path) -> Path:
    """An empty hidden sibling `.<name>.tmp` of `root` to build into; one left by a killed
    run is removed first (so it never accumulates, and never looks like `root`)."""
    tmp = root.parent / f".{root.name}.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    return tmp


def replace_dir(tmp: Path, root: Path, marker: str) -> None:
    """Move the finished folder `tmp` onto `root` (checked with check_target)."""
    check_target(root, marker)
    if not root.exists():
        os.replace(tmp, root)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{root.name}.old.", dir=root.parent))
    os.replace(root, old / root.name)
    os.replace(tmp, root)
    shutil.rmtree(old)


def convert_coco(root: str | os.PathLike, splits: dict[str, str], out_dir: str | os.PathLike,
                 image_dirs: dict[str, str] | None = None, drop_empty: Iterable[str] | None = None,
                 threads: int = 1) -> dict[str, Any]:
    """Convert the COCO instances files `splits` ({split: JSON relative to root}) into VOC
    layout under `out_dir`, atomically; returns the record also written as conversion.json.

    Images of a split are read from root/<image_dirs[split]> (default: the JSON's name,
    instances_train2014.json -> train2014). `drop_empty` (default: every split) names the
    splits whose lists leave out images without a foreground class. DatasetError on bad input,
    naming the file and the image or annotation id; nothing is then written at out_dir.
    """
    root, out = Path(root).expanduser(), Path(out_dir).expanduser()
    if not root.is_dir():
        raise DatasetError(f"{root}: COCO root does not exist or is not a directory")
    if not splits:
        raise DatasetError("convert_coco: no splits given")
    image_dirs = dict(image_dirs or {})
    unknown = sorted(set(image_dirs) - set(splits))
    drop = set(splits if drop_empty is None else drop_empty)
    unknown += sorted(drop - set(splits))
    if unknown:
        raise DatasetError(f"convert_coco: unknown split(s) {unknown} (splits: {list(splits)})")
    check_target(out, RECORD)  # fail before hours of work, not after
    threads = max(1, int(threads))
    tmp = fresh_tmp(out)
    try:
        record = _convert(root, splits, image_dirs, drop, tmp, threads)
        record["dataset_config"] = dataset_config(out.absolute(), record)
        (tmp / RECORD).write_text(json.dumps(record, indent=1) + "\n")
        replace_dir(tmp, out, RECORD)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return record


def _convert(root: Path, splits: dict[str, str], image_dirs: dict[str, str], drop: set[str],
             tmp: Path, threads: int) -> dict[str, Any]:
    (tmp / MASK_DIR).mkdir()
    record: dict[str, Any] = {"converter": "wsss.data.coco", "overlap_rule": OVERLAP_RULE,
                              "coco_root": str(root.resolve()), "annotation_files": {},
                              "image_dirs": {}, "splits": {}}
    reference: tuple[str, list[tuple[int, str]]] | None = None
    seen: dict[str, str] = {}
    for split, rel in splits.items():
        path = root / rel
        data = load_json(path)
        cats = categories(path, data)
        if reference is None:
            reference = (str(path), cats)
            index = {cat_id: k + 1 for k, (cat_id, _) in enumerate(cats)}
            (tmp / "classes.txt").write_text("".join(f"{name}\n" for _, name in cats))
            record["classes"] = [name for _, name in cats]
            record["category_index"] = {str(c): v for c, v in index.items()}
        elif cats != reference[1]:
            raise DatasetError(f"{path}: categories differ from those of {reference[0]}")
        image_dir = image_dirs.get(split) or default_image_dir(rel)
        if not (root / image_dir).is_dir():
            raise DatasetError(f"{root / image_dir}: image folder of split '{split}' does not "
                               "exist")
        counts = {"degenerate_polygons": 0}
        items = work_items(path, data, index, seen, split, counts)
        del data
        if not items:
            raise DatasetError(f"{path}: split '{split}' has no images")
        record["annotation_files"][split] = {"file": rel, "bytes": path.stat().st_size}
        record["image_dirs"][split] = image_dir
        record["splits"][split] = {**_convert_split(split, items, tmp, (root / image_dir, path),
                                                    split in drop, threads), **counts}
    return record


def _convert_split(split: str, items: list[tuple], tmp: Path, sources: tuple[Path, Path],
                   drop: bool, threads: int) -> dict[str, Any]:
    n_anns = sum(len(item[4]) for item in items)
    n_crowd = sum(a[2] for item in items for a in item[4])
    kept: list[str] = []
    dropped: list[str] = []
    crowd_px = overlap_px = mismatch = 0
    results = ordered_map(_convert_one, items, threads if len(items) > 1 else 1, _init_worker,
                          (tmp, *sources), _chunksize(len(items), threads), fork=True)
    for image_id, labels, mask_labels, crowd, overlap in results:
        crowd_px += crowd
        overlap_px += overlap
        mismatch += labels != mask_labels
        (dropped if drop and not labels else kept).append(image_id)
    (tmp / f"{split}.txt").write_text("".join(f"{i}\n" for i in kept))
    log.info("coco %s: %d images, %d kept, %d without foreground dropped; %d annotations "
             "(%d crowd): %d crowd pixels -> 255, %d pixels in overlaps of different classes",
             split, len(items), len(kept), len(dropped), n_anns, n_crowd, crowd_px, overlap_px)
    if mismatch:
        log.info("coco %s: %d images' masks lack a labelled class (wholly covered by smaller "
                 "instances) or show none", split, mismatch)
    return {"images": len(items), "kept": len(kept), "dropped_empty": len(dropped),
            "annotations": n_anns, "crowd_annotations": n_crowd, "crowd_pixels": crowd_px,
            "overlap_pixels": overlap_px, "label_mismatch": mismatch, "dropped_ids": dropped}


def dataset_config(out_dir: str | os.PathLike, record: dict[str, Any] | None = None
                   ) -> dict[str, Any]:
    """The VocDataset.from_config dict of a converted dataset (masks and lists in out_dir,
    images in the COCO folders); `record` defaults to out_dir's conversion.json."""
    out = Path(out_dir)
    if record is None:
        path = out / RECORD
        try:
            record = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise DatasetError(f"{path}: conversion record missing or unreadable: {err}") from err
    dirs = list(dict.fromkeys(record["image_dirs"].values()))
    return {"root": str(out), "splits": {s: f"{s}.txt" for s in record["splits"]},
            "mask_dir": MASK_DIR, "label_source": "masks", "classes": None,
            "image_root": record["coco_root"], "image_dirs": dirs}
