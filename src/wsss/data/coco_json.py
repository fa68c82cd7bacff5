"""Reading and checking COCO instances files for `wsss.data.coco`: the JSON, its categories,
and per-image work items whose ids, image ids and category ids are all known."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from wsss.data.voc import VOID, DatasetError


def load_json(path: Path) -> dict[str, Any]:
    """The parsed instances file; DatasetError naming it if missing, unreadable or not COCO."""
    if not path.is_file():
        raise DatasetError(f"{path}: annotation file does not exist")
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DatasetError(f"{path}: annotation file is unreadable: {err}") from err
    if not isinstance(data, dict) or not all(
        isinstance(data.get(k), list) for k in ("images", "annotations", "categories")
    ):
        raise DatasetError(f"{path}: not a COCO instances file (needs lists 'images', "
                           "'annotations', 'categories')")
    return data


def categories(path: Path, data: dict[str, Any]) -> list[tuple[int, str]]:
    """(COCO id, name) of every category, sorted by id."""
    try:
        cats = sorted((int(c["id"]), str(c["name"])) for c in data["categories"])
    except (KeyError, TypeError, ValueError) as err:
        raise DatasetError(f"{path}: a category has no integer 'id' or no 'name': {err}") from err
    if not cats:
        raise DatasetError(f"{path}: no categories")
    if len({c for c, _ in cats}) != len(cats):
        raise DatasetError(f"{path}: duplicate category ids")
    if len(cats) >= VOID:
        raise DatasetError(f"{path}: {len(cats)} categories do not fit in a uint8 mask")
    return cats


def default_image_dir(json_rel: str) -> str:
    """COCO's image folder of an instances file: instances_train2014.json -> train2014."""
    match = re.fullmatch(r"instances_(.+)\.json", Path(json_rel).name)
    if match is None:
        raise DatasetError(f"{json_rel}: cannot derive the image folder from the file name "
                           "(COCO: instances_<folder>.json); give image_dirs")
    return match.group(1)


def work_items(path: Path, data: dict[str, Any], index: dict[int, int], seen: dict[str, str],
           split: str, counts: dict[str, int]) -> list[tuple]:
    """Per-image work items (id, file name, height, width, annotations), sorted by id; each
    annotation (id, mask value, iscrowd, area or None, segmentation). Checked: ids unique (over
    the splits in `seen` too), image and category ids known, polygons well formed."""
    images: dict[int, tuple] = {}
    for im in data["images"]:
        try:
            coco_id, file_name = int(im["id"]), str(im["file_name"])
            h, w = int(im["height"]), int(im["width"])
        except (KeyError, TypeError, ValueError) as err:
            raise DatasetError(f"{path}: image entry {im!r:.120} lacks id/file_name/height/width "
                               f"({err})") from err
        image_id = Path(file_name).stem
        if image_id in seen:
            raise DatasetError(f"{path}: image id '{image_id}' is also in split "
                               f"{seen[image_id]}; ids must be unique across splits")
        if coco_id in images:
            raise DatasetError(f"{path}: image id {coco_id} ('{image_id}') is listed twice")
        seen[image_id] = f"'{split}' ({path})"
        images[coco_id] = (image_id, file_name, h, w, [])
    for ann in data["annotations"]:
        ann_id = ann.get("id") if isinstance(ann, dict) else None
        try:
            target = images[int(ann["image_id"])]
        except (KeyError, TypeError, ValueError) as err:
            raise DatasetError(f"{path}: annotation {ann_id} refers to unknown image id "
                               f"{ann.get('image_id')!r}") from err
        try:
            value = index[int(ann["category_id"])]
        except (KeyError, TypeError, ValueError) as err:
            raise DatasetError(f"{path}: annotation {ann_id} of image '{target[0]}' has unknown "
                               f"category id {ann.get('category_id')!r}") from err
        where = f"{path}: annotation {ann_id} of image '{target[0]}'"
        if "segmentation" not in ann:
            raise DatasetError(f"{where} has no segmentation")
        segm = ann["segmentation"]
        if isinstance(segm, list):
            segm, n = _polygons(segm, where)
            counts["degenerate_polygons"] += n
        area = ann.get("area")
        target[4].append((ann_id, value, int(bool(ann.get("iscrowd", 0))),
                          None if area is None else float(area), segm))
    return sorted(images.values(), key=lambda item: item[0])


def _polygons(segm: list, where: str) -> tuple[list[list[float]], int]:
    """The polygons with an area, as float lists, and how many had fewer than 3 points.

    Such polygons enclose nothing; pycocotools would even read a 4-number one as a box."""
    try:
        polys = [[float(v) for v in poly] for poly in segm]
    except (TypeError, ValueError) as err:
        raise DatasetError(f"{where}: polygon is not a list of numbers: {err}") from err
    if any(len(p) % 2 for p in polys):
        raise DatasetError(f"{where}: a polygon has an odd number of coordinates")
    kept = [p for p in polys if len(p) >= 6]
    return kept, len(polys) - len(kept)
