"""The dataset on disk: every image written in VOC layout, the generator's record, atomically."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from wsss.data.synthetic.classes import CLASS_SPECS
from wsss.data.synthetic.config import BACKGROUNDS, SPLITS, resolve_config
from wsss.data.synthetic.render import render_image
from wsss.data.voc import save_mask
from wsss.ops.pool import ordered_map


def image_id(split: str, index: int) -> str:
    return f"syn_{split}_{index:04d}"


def _write_one(args: tuple[Path, dict, str, int]) -> tuple[str, str, list[int]]:
    out, cfg, split, index = args
    image, label, parts, background = render_image(cfg, split, index)
    name = image_id(split, index)
    Image.fromarray(image).save(
        out / "JPEGImages" / f"{name}.jpg",
        format="JPEG",
        quality=cfg["jpeg_quality"],
        subsampling=0,
    )
    save_mask(out / "SegmentationClass" / f"{name}.png", label)
    save_mask(out / "SegmentationPart" / f"{name}.png", parts)
    values = np.unique(label)
    labels = [int(v) - 1 for v in values if 1 <= v <= cfg["num_classes"]]
    if not labels:  # cannot happen by construction; a silent empty image would skew benchmarks
        raise RuntimeError(f"synthetic image {name} ended up without a visible object")
    return name, background, labels


def _statistics(cfg: dict, records: list[tuple[str, str, list[int]]]) -> dict[str, Any]:
    names = [spec.name for spec in CLASS_SPECS[: cfg["num_classes"]]]
    bg_counts = {b: sum(r[1] == b for r in records) for b in BACKGROUNDS}
    class_counts = {n: sum(k in r[2] for r in records) for k, n in enumerate(names)}
    # P(background | class present): the co-occurrence a classifier can exploit
    p_bg_given_class = {
        b: {
            n: round(sum(r[1] == b and k in r[2] for r in records) / max(class_counts[n], 1), 4)
            for k, n in enumerate(names)
        }
        for b in BACKGROUNDS
    }
    objects = {str(m): sum(len(r[2]) == m for r in records) for m in range(1, 4)}
    return {
        "images": len(records),
        "background_counts": bg_counts,
        "class_counts": class_counts,
        "labels_per_image": objects,
        "p_background_given_class": p_bg_given_class,
    }


def _replace_dir(tmp: Path, root: Path) -> None:
    if not root.exists():
        os.replace(tmp, root)
        return
    old = root.parent / f".{root.name}.old"
    if old.exists():
        shutil.rmtree(old)
    os.replace(root, old)
    os.replace(tmp, root)
    shutil.rmtree(old)


def generate(root: str | os.PathLike, cfg: dict[str, Any] | None = None, threads: int = 1) -> None:
    """Write the synthetic dataset (VOC layout) under `root`, deterministically and atomically."""
    cfg = resolve_config(cfg)
    root = Path(root)
    if root.exists() and (
        not root.is_dir() or (any(root.iterdir()) and not (root / "generator.json").is_file())
    ):
        # never replace something that is not an earlier synthetic dataset
        raise FileExistsError(f"{root}: exists and is not a synthetic dataset; not replacing it")
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = root.parent / f".{root.name}.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)  # left by a killed run
    for sub in ("JPEGImages", "SegmentationClass", "SegmentationPart", "ImageSets/Segmentation"):
        (tmp / sub).mkdir(parents=True)

    names = [spec.name for spec in CLASS_SPECS[: cfg["num_classes"]]]
    jobs = [(tmp, cfg, split, i) for split in SPLITS for i in range(cfg[f"num_{split}"])]
    # every image draws from its own generator, so the pool's size does not change the output
    threads = max(1, int(threads)) if len(jobs) > 1 else 1
    records = list(ordered_map(_write_one, jobs, threads,
                               chunksize=max(1, len(jobs) // (threads * 4))))

    meta: dict[str, Any] = {
        "generator": "wsss.data.synthetic",
        "config": cfg,
        "classes": names,
        "backgrounds": list(BACKGROUNDS),
        "cooccurring": cfg["cooccur"],
        "class_design": {
            spec.name: {
                "shape": spec.shape,
                "part_position": list(spec.part_pos),
                "part_pattern": spec.part_pattern,
                "part_colors": [list(c) for c in spec.part_colors],
                "body_hue": spec.hue,
                "preferred_texture": spec.texture,
            }
            for spec in CLASS_SPECS[: cfg["num_classes"]]
        },
        "statistics": {},
        "image_backgrounds": {},
    }
    for split in SPLITS:
        split_records = [r for r, job in zip(records, jobs, strict=True) if job[2] == split]
        ids = [r[0] for r in split_records]
        (tmp / "ImageSets/Segmentation" / f"{split}.txt").write_text("".join(f"{i}\n" for i in ids))
        meta["statistics"][split] = _statistics(cfg, split_records)
        meta["image_backgrounds"].update({r[0]: r[1] for r in split_records})
    (tmp / "classes.txt").write_text("".join(f"{n}\n" for n in names))
    (tmp / "generator.json").write_text(json.dumps(meta, indent=2) + "\n")
    _replace_dir(tmp, root)


def dataset_config(root: str | os.PathLike) -> dict[str, Any]:
    """The VocDataset.from_config dict for a generated dataset."""
    return {
        "root": str(root),
        "splits": {s: f"ImageSets/Segmentation/{s}.txt" for s in SPLITS},
        "mask_dir": "SegmentationClass",
        "label_source": "masks",
        "classes": None,
    }

