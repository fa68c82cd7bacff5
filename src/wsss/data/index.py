"""Dataset index: one validated pass over every image and mask, summarised as JSON.

Later stages read labels and sizes from the index instead of touching thousands of files, and a
broken file stops the workflow here, with its id in the message, instead of hours later.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from wsss.data.voc import DatasetError, VocDataset
from wsss.ops.pool import ordered_map
from wsss.store import write_json

_worker_ds: VocDataset | None = None


def _init_worker(ds: VocDataset) -> None:
    global _worker_ds
    _worker_ds = ds


def _check_one(image_id: str) -> tuple[str, list[int], list[int]]:
    ds = _worker_ds
    assert ds is not None, "worker not initialised"
    if ds.label_source == "xml":
        # classification-only images (VOC Main) have no mask; check the mask only where it exists
        if ds.mask_path(image_id).is_file():
            image, _ = ds.load_pair(image_id)
        else:
            image = ds.load_image(image_id)
        labels = ds.image_labels(image_id)
    else:
        image, mask = ds.load_pair(image_id)
        labels = ds.labels_from_mask(mask)
    return image_id, labels.tolist(), [int(image.shape[0]), int(image.shape[1])]


def _chunksize(n: int, threads: int) -> int:
    # a few chunks per worker balances load without paying IPC per image
    return max(1, min(64, n // (threads * 4) or 1))


def build_index(ds: VocDataset, splits: list[str], threads: int = 1) -> dict[str, Any]:
    """Read and validate every image and mask of `splits`; DatasetError on the first bad one.

    Returns {"classes", "root", "mask_dir", "label_source",
    "splits": {split: {"ids", "labels", "sizes", "no_foreground"}}}.
    """
    index: dict[str, Any] = {
        "classes": list(ds.classes),
        "root": str(ds.root),
        "mask_dir": ds.mask_dir,
        "label_source": ds.label_source,
        "splits": {},
    }
    threads = max(1, int(threads))
    for split in splits:
        ids = ds.ids(split)
        if not ids:
            raise DatasetError(f"{ds.root / ds.splits[split]}: split '{split}' is empty")
        results = ordered_map(_check_one, ids, threads, _init_worker, (ds,),
                              _chunksize(len(ids), threads))
        labels: dict[str, list[int]] = {}
        sizes: dict[str, list[int]] = {}
        for image_id, image_labels, size in results:
            labels[image_id] = image_labels
            sizes[image_id] = size
        index["splits"][split] = {
            "ids": ids,
            "labels": labels,
            "sizes": sizes,
            "no_foreground": [i for i in ids if not labels[i]],
        }
    return index


def write_index(path: str | os.PathLike, index: dict[str, Any]) -> None:
    """Write the index as JSON, atomically."""
    write_json(path, index)


def read_index(path: str | os.PathLike) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: dataset index does not exist")
    try:
        index = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise DatasetError(f"{path}: dataset index is unreadable: {err}") from err
    if not isinstance(index, dict) or "splits" not in index or "classes" not in index:
        raise DatasetError(f"{path}: not a dataset index (no 'classes'/'splits')")
    return index
