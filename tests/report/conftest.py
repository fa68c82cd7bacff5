"""Fixtures of the report tests: evaluations, stores and training logs, and PNG checks."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from wsss import registry
from wsss.data.voc import VocDataset
from wsss.store import CamWriter, LabelWriter


def _png_size(path: Path) -> tuple[int, int]:
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        assert im.format == "PNG"
        return im.size


def _only_files(folder: Path) -> list[str]:
    """Everything in `folder`, temp files included: a failed figure must leave nothing."""
    return sorted(p.name for p in folder.iterdir())


def _write_log(path: Path, rows: int, extra: str = "") -> Path:
    lines = ["step,epoch,lr,loss,bg_pos,seconds" + extra]
    for step in range(1, rows + 1):
        lines.append(f"{step},{step // 10},{0.05 * (1 - step / rows)},{1 / step},"
                     f"{0.5 + 0.1 * np.sin(step)},{0.1 * step}")
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def png_size() -> Callable[[Path], tuple[int, int]]:
    """(width, height) of a PNG, after checking that it is a complete, valid one."""
    return _png_size


@pytest.fixture
def only_files() -> Callable[[Path], list[str]]:
    return _only_files


@pytest.fixture
def write_log() -> Callable[..., Path]:
    """Write a training log CSV of `rows` steps (loss, bg_pos, lr, ...) and return its path."""
    return _write_log


@pytest.fixture
def refiners(monkeypatch) -> list[str]:
    """Refiner names the report orders by, set here instead of read from the source tree.

    Deliberately not alphabetical, so an ordering by name instead of by the registry shows.
    """
    names = ["zeta", "crf", "mu"]
    real = registry.names
    monkeypatch.setattr(registry, "names",
                        lambda kind: list(names) if kind == "refiner" else real(kind))
    return names


def _make_eval(variant: str, stage: str, split: str, miou: float) -> dict:
    iou = {"background": 0.8, "cat": miou, "dog": None if stage == "seeds" else miou / 2}
    return {"variant": variant, "stage": stage, "split": split, "miou": miou, "iou": iou,
            "label_file": f"results/{variant}/{stage}/labels/{split}.h5"}


@pytest.fixture
def make_eval() -> Callable[[str, str, str, float], dict]:
    """One evaluation dict (the dog class has no IoU in seeds), named by its label file."""
    return _make_eval


@pytest.fixture
def evals(refiners) -> list[dict]:
    """Two variants: seeds and the refiners on train, DeepLab (± CRF) on val."""
    out = []
    for variant in ("first", "second"):
        for stage in ("seeds", *refiners):
            out.append(_make_eval(variant, stage, "train", 0.5))
        for stage in ("deeplab_mu", "deeplab_mu_crf"):
            out.append(_make_eval(variant, stage, "val", 0.6))
    return out


@pytest.fixture
def stores(tmp_path, tiny_voc_config):
    """CAM and label stores for the tiny train split, plus a seeds evaluation JSON."""
    ds = VocDataset.from_config(tiny_voc_config)
    ids = ds.ids("train")
    rng = np.random.default_rng(0)
    cams, labels, partial = (tmp_path / "cams.h5", tmp_path / "labels.h5",
                             tmp_path / "partial.h5")
    with CamWriter(cams, {"classes": list(ds.classes)}) as w:
        for image_id in ids:
            gt = ds.load_mask(image_id)
            keys = ds.image_labels(image_id)
            planes = np.stack([(gt == k + 1) * 0.8 + 0.2 * rng.random(gt.shape) for k in keys])
            w.add(image_id, planes, keys)
    with LabelWriter(labels, {"classes": list(ds.classes)}) as w:
        for image_id in ids:
            w.add(image_id, ds.load_mask(image_id))
    with LabelWriter(partial, {"classes": list(ds.classes)}) as w:
        w.add(ids[0], ds.load_mask(ids[0]))
    seeds_eval = tmp_path / "seeds.eval.json"
    seeds_eval.write_text(json.dumps({"best_threshold": 0.3, "miou": 0.5}))
    return ds, ids, cams, labels, partial, seeds_eval
