"""What the learned refiner kinds share: their settings (REGISTER defaults + the block), training
their network on their own labels with `wsss.train.fit`, loading it back, and the frame of the
random-walk stage.

A learned kind's network is a `wsss.train.Trainable` built as `build(cfg, num_classes,
backbone)` from its completed settings and a backbone: for training the one its `trunk` setting
names (`wsss.refine.features.refiner_trunk`: the classifier's, or a declared pretrained one),
for loading a fresh one of the stored architecture. Its weights file holds `method` (the state
dict), `config` (the settings it was trained with, `trunk` included), `backbone_config` (the
block of the trunk it was built on: the classifier's backbone block or `trunk.backbone`) and
`classes`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from wsss import registry
from wsss.data.transforms import SegmentationSet
from wsss.models.backbones import Backbone, build_backbone
from wsss.refine.features import check_trunk, refiner_trunk
from wsss.refine.pool import ScoreFn, store_labels, walk_labels
from wsss.store import CamReader, LabelMap, LabelReader, StoreError
from wsss.train import Trainable, fit, pick_device, seed_everything
from wsss.train.resume import backbone_modules, pretrained_inputs, resume_key

if TYPE_CHECKING:
    from wsss.data.voc import VocDataset

Build = Callable[[dict[str, Any], int, Backbone], Trainable]
# (reader of the checked CAM file, ids) -> the walk jobs (id, image, keys, walk | None)
StartWalks = Callable[[CamReader, list[str]], Iterable[tuple[str, Any, Any, Any]]]


def as_device(device: torch.device | str) -> torch.device:
    return pick_device(device) if isinstance(device, str) else device


def train_network(register: dict[str, Any], build: Build, ds: VocDataset, split: str,
                  label_path: str | os.PathLike, cfg: dict[str, Any],
                  classifier_path: str | os.PathLike, out_path: str | os.PathLike,
                  device: torch.device | str, frozen: bool = False) -> Path:
    """Train a learned refiner's network on the `split` labels of `label_path`; the weights go
    to `out_path` (atomically), checkpoint and log next to it (<network_log>.checkpoint.pt,
    <network_log>.log.csv), so a killed run resumes. Returns `out_path`.

    The network starts from the trunk of its `trunk` setting (`frozen`: fixed, as IRN keeps
    it): the classifier's backbone or a pretrained one; `classifier_path` is read only for the
    former. Its new layers' initial weights (and a `pretrained: none` trunk's) are drawn after
    seeding with `training.seed`.
    """
    cfg = registry.declared_settings(register, cfg)
    training = cfg["training"]
    key = f"refiners.<{register['name']} variant>.trunk"
    check_trunk(cfg["trunk"], key)  # a config error before any file is read
    ids = ds.ids(split)
    with LabelReader(label_path) as reader:
        reader.check(ids, list(ds.classes))
    seed_everything(training["seed"])  # the new layers' initial weights are part of the run
    trunk = refiner_trunk(cfg["trunk"], classifier_path, frozen=frozen, key=key)
    net = build(cfg, ds.num_classes, trunk.backbone)
    labels = LabelMap(label_path, ids)
    trainset = SegmentationSet(ds, ids, labels, training, seed=training["seed"])
    meta = {"config": cfg, "backbone_config": trunk.config, "classes": list(ds.classes),
            "refiner": register["name"]}
    # resumed only from the same code (the refiner rule's: wsss.cli.refine and the kind) and files
    code = ["wsss.cli.refine", registry.component("refiner", register["name"]).module,
            *backbone_modules(cfg)]
    reads = {"labels": label_path, **pretrained_inputs(cfg["trunk"])}
    if cfg["trunk"]["source"] == "classifier":
        reads["classifier"] = classifier_path
    out_path = Path(out_path)
    try:  # the label map is closed whatever fails, hashing the files included
        meta["resume_key"] = resume_key(net, trainset, code, reads)
        final = fit(net, trainset, training, out_path.parent, meta, as_device(device),
                    name=register["network_log"])
    finally:
        labels.close()
    if final != out_path:
        os.replace(final, out_path)  # same directory: an atomic rename of a complete file
    return out_path


def load_network(build: Build, weights_path: str | os.PathLike, device: torch.device) -> Trainable:
    """The network `train_network` wrote, in eval mode on `device`: its trunk's architecture
    from `backbone_config` (no pretrained weights are loaded, the file holds the trained ones)."""
    if not Path(weights_path).is_file():
        raise StoreError(f"{weights_path}: no such refiner weights file")
    state = torch.load(weights_path, map_location="cpu", weights_only=False)
    bb = state["backbone_config"]
    backbone = build_backbone(bb["name"], bb["output_stride"], "none")
    net = build(state["config"], len(state["classes"]), backbone)
    net.load_state_dict(state["method"])
    return net.to(device).eval()


def refine_walks(cam_path: str | os.PathLike, ds: VocDataset, split: str, cfg: dict[str, Any],
                 out_path: str | os.PathLike, threads: int, start: StartWalks,
                 post: ScoreFn, post_cfg: dict[str, Any], desc: str) -> None:
    """Write the random-walk labels of `split` to `out_path` (uint8, 0 bg, k + 1 class k).

    The CAM file is checked against the split first; `start(reader, ids)` then loads the
    network and returns the lazy job stream. The network runs image by image in this thread,
    the walks in `threads` threads, and `post(image, scores, keys, post_cfg)` (the optional CRF,
    when `inference.crf`) in `threads` processes (`pool.walk_labels`); `cfg` is recorded.
    """
    ids = ds.ids(split)
    with CamReader(cam_path) as reader:
        reader.check(ids, list(ds.classes))
        jobs = start(reader, ids)
        crf = bool(cfg["inference"]["crf"])
        labels = walk_labels(jobs, threads, post if crf else None, post_cfg if crf else None)
        store_labels(labels, ds, split, cfg, out_path, desc)
