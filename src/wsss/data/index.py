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


def _check_one(image_id: str) -> tuple[str, list[int], list[int], list[int] | None]:
    """(id, image labels, [h, w], the mask's labels where they must agree with the XML's)."""
    ds = _worker_ds
    assert ds is not None, "worker not initialised"
    mask_labels = None
    if ds.label_source == "xml":
        # classification-only images (VOC Main) have no mask; check the mask only where it exists
        if ds.mask_path(image_id).is_file():
            image, mask = ds.load_pair(image_id)
            # the mask is read here anyway, so the cross-check costs one np.unique
            mask_labels = ds.labels_from_mask(mask).tolist()
        else:
            image = ds.load_image(image_id)
        labels = ds.image_labels(image_id)
    else:
        image, mask = ds.load_pair(image_id)
        labels = ds.labels_from_mask(mask)
    return image_id, labels.tolist(), [int(image.shape[0]), int(image.shape[1])], mask_labels


_SHOWN = 5  # disagreements named in the message; the rest are counted


def _names(ds: VocDataset, labels: list[int]) -> list[str]:
    return [ds.classes[k] for k in labels]


def _check_agreement(ds: VocDataset, mismatches: list[tuple[str, str, list[int], list[int]]],
                     checked: int) -> None:
    """DatasetError if any image's XML labels differ from its mask's.

    A shifted or misnamed class list makes them differ on nearly every image, and training,
    CAMs and evaluation would still run to the end on wrong labels; stop before any of them.
    """
    if not mismatches:
        return
    shown = "; ".join(
        f"{split}/{image_id}: xml {_names(ds, xml)} vs mask {_names(ds, mask)}"
        for split, image_id, xml, mask in mismatches[:_SHOWN]
    )
    more = f" (and {len(mismatches) - _SHOWN} more)" if len(mismatches) > _SHOWN else ""
    raise DatasetError(
        f"{ds.root}: image labels from Annotations/*.xml disagree with the {ds.mask_dir} masks "
        f"on {len(mismatches)} of {checked} images with both: {shown}{more}. Check the class "
        f"list ({list(ds.classes)}) against the masks' values, or use label_source: masks"
    )


def _chunksize(n: int, threads: int) -> int:
    # a few chunks per worker balances load without paying IPC per image
    return max(1, min(64, n // (threads * 4) or 1))


def build_index(ds: VocDataset, splits: list[str], threads: int = 1) -> dict[str, Any]:
    """Read and validate every image and mask of `splits`; DatasetError on the first bad one.

    With label_source "xml", every image that also has a mask must have the same labels in both;
    otherwise DatasetError names the first few ids and what each side says.

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
    mismatches: list[tuple[str, str, list[int], list[int]]] = []
    checked = 0
    for split in splits:
        ids = ds.ids(split)
        if not ids:
            raise DatasetError(f"{ds.root / ds.splits[split]}: split '{split}' is empty")
        results = ordered_map(_check_one, ids, threads, _init_worker, (ds,),
                              _chunksize(len(ids), threads))
        labels: dict[str, list[int]] = {}
        sizes: dict[str, list[int]] = {}
        for image_id, image_labels, size, mask_labels in results:
            labels[image_id] = image_labels
            sizes[image_id] = size
            if mask_labels is not None:
                checked += 1
                if mask_labels != image_labels:
                    mismatches.append((split, image_id, image_labels, mask_labels))
        index["splits"][split] = {
            "ids": ids,
            "labels": labels,
            "sizes": sizes,
            "no_foreground": [i for i in ids if not labels[i]],
        }
    _check_agreement(ds, mismatches, checked)
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
