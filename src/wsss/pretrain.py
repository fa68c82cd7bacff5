"""The pretrain stage: a benchmark backbone trained to classify the synthetic corpus
(`wsss.data.synthetic.corpus`), the embedded benchmark's stand-in for ImageNet.

The network is the backbone (`build_backbone(name, output_stride, "none")`), global average
pooling and a linear layer, trained with cross-entropy by the one training loop
(`wsss.train.fit`: resumable, seeded). Augmentation per sample, drawn from (seed, epoch,
index) as the classifier's is: a horizontal flip and a random zoom in `training.scale`
(above 1 a window inside the image, below 1 the whole image shrunk into the frame), at a
random offset within the slack; pixels are ImageNet-normalised like the benchmark's images
(`wsss.data.transforms.normalize`) and the padding is zero, the mean colour, as
`random_crop` pads. The zoom and offset are applied to the batch at once (`grid_sample`).
After every epoch the network, in eval mode, classifies the held-out part; the curve rides in
the network's state, so a resumed run keeps the epochs before the kill.

Outputs, beside `out` (e.g. results/pretrained/tiny.pt):
  <stem>.pt                the weights file (written last, atomically)
  <stem>.json              held-out accuracy (at init and after training), seconds, curve
  <stem>.curve.csv         the curve, one row per epoch
  <stem>.train.log.csv     the loop's per-step log
  <stem>.train.checkpoint.pt  the loop's checkpoint (resume)
The weights file, loadable with `torch.load(weights_only=True)`, holds `state_dict` (the
trunk under torchvision's ResNet names, what `pretrained: <path>` loads; no `fc`), `head`
(the linear classifier's weight and bias, not loaded by backbones), `backbone`,
`output_stride`, `classes`, `held_out_accuracy`, `initial_held_out_accuracy`, `curve`,
`config` (the resolved `pretrain` block), `seconds` (of the last process: a resumed run counts
from its restart), `steps` and `versions`. The weights do not
depend on the output stride (it only changes a convolution's stride), so one file serves a
backbone at 8 and at 16.
"""

from __future__ import annotations

import csv
import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from wsss import registry
from wsss.data.synthetic.corpus import class_names, corpus
from wsss.data.transforms import MEAN, STD
from wsss.errors import ConfigError
from wsss.models.backbones import Backbone, build_backbone
from wsss.schema import assemble
from wsss.store import atomic_path, versions, write_json
from wsss.train import Trainable, fit, seed_everything

log = logging.getLogger(__name__)
EVAL_BATCH = 256


def pretrain_config(block: dict[str, Any] | None) -> dict[str, Any]:
    """The `pretrain` block with the schema's defaults filled in, validated against the
    schema (`properties.pretrain` of config.schema.yaml); a ConfigError names the key."""
    from jsonschema import Draft202012Validator
    from jsonschema.exceptions import best_match

    full = assemble()
    schema = {"$defs": full["$defs"], **full["properties"]["pretrain"]}
    cfg = registry.merge_defaults(registry.defaults(schema), block or {})
    cfg.pop("backbones", None)  # resolved per backbone by for_backbone
    error = best_match(Draft202012Validator(schema).iter_errors(cfg))
    if error is not None:
        where = ".".join(["pretrain", *(str(p) for p in error.absolute_path)])
        raise ConfigError(f"config key {where}: {error.message}")
    return cfg


def for_backbone(block: dict[str, Any], backbone: str) -> dict[str, Any]:
    """`block` for one backbone: its `backbones` table dropped, that backbone's entry merged
    over the rest (the workflow passes a block already resolved this way)."""
    own = (block.get("backbones") or {}).get(backbone)
    rest = {k: v for k, v in block.items() if k != "backbones"}
    return registry.merge_defaults(rest, own) if own else rest


def normalize_batch(images: torch.Tensor) -> torch.Tensor:
    """uint8 B×3×H×W → float, ImageNet-normalised (`transforms.normalize` for a batch)."""
    mean = torch.as_tensor(MEAN, device=images.device).view(1, 3, 1, 1)
    std = torch.as_tensor(STD, device=images.device).view(1, 3, 1, 1)
    return (images.float() / 255.0 - mean) / std


def augment_batch(images: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
    """Normalised B×3×S×S images resampled by per-sample (zoom, flip, dx, dy): output pixel
    p reads input point (flip · p / zoom + d) in [-1, 1] coordinates, zero outside."""
    zoom, flip, dx, dy = params.float().unbind(1)
    theta = torch.zeros(len(images), 2, 3, device=images.device)
    theta[:, 0, 0] = flip / zoom
    theta[:, 1, 1] = 1.0 / zoom
    theta[:, 0, 2], theta[:, 1, 2] = dx, dy
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros",
                         align_corners=False)


class CorpusSet(torch.utils.data.Dataset):
    """Corpus images keyed by (index, epoch): `image` (uint8 3×S×S), `label`, `augment`
    (zoom, flip ±1, dx, dy; applied by `augment_batch`) and `index`."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, training: dict[str, Any]):
        self.images = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))
        self.labels = torch.from_numpy(labels)
        self.seed = int(training["seed"])
        self.scale = [float(s) for s in training["scale"]]
        self.hflip = bool(training["hflip"])

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, key: tuple[int, int]) -> dict[str, Any]:
        index, epoch = key
        rng = np.random.default_rng([self.seed, epoch, index])
        zoom = float(np.exp(rng.uniform(np.log(self.scale[0]), np.log(self.scale[1]))))
        flip = -1.0 if self.hflip and rng.random() < 0.5 else 1.0
        slack = abs(1.0 - 1.0 / zoom)  # how far the window (or the shrunk image) can move
        dx, dy = rng.uniform(-slack, slack, size=2) if slack > 0 else (0.0, 0.0)
        return {"image": self.images[index], "label": self.labels[index],
                "augment": torch.tensor([zoom, flip, dx, dy], dtype=torch.float32),
                "index": index}


class PretrainNet(Trainable):
    """Backbone + global average pooling + linear classifier, cross-entropy; evaluates the
    held-out part after each epoch (and once before the first step) into `curve`."""

    def __init__(self, backbone: str, output_stride: int, num_classes: int,
                 held_out: tuple[np.ndarray, np.ndarray]):
        super().__init__()
        self.trunk: Backbone = build_backbone(backbone, output_stride, "none")
        self.head = nn.Linear(self.trunk.out_channels, num_classes)
        images, labels = held_out
        self._held_out = (torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2))),
                          torch.from_numpy(labels))
        self.curve: list[dict[str, float]] = []
        self.initial_accuracy: float | None = None
        self._sums = [0.0, 0, 0]  # this epoch's loss sum, correct and seen training samples
        self._per_epoch = 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.trunk(x).mean(dim=(2, 3)))

    def param_groups(self) -> list[dict[str, Any]]:
        return [{"params": list(self.parameters()), "lr_mult": 1.0, "name": "all"}]

    def begin(self, total_steps: int, steps_per_epoch: int, start_step: int) -> None:
        self._per_epoch = steps_per_epoch
        if start_step == 0:
            self.curve, self._sums = [], [0.0, 0, 0]
            self.initial_accuracy = self.held_out_accuracy()

    def training_step(self, batch: dict[str, torch.Tensor], step: int) -> dict[str, float]:
        x = augment_batch(normalize_batch(batch["image"]), batch["augment"])
        with self.autocast():
            logits = self(x)
        loss = F.cross_entropy(logits.float(), batch["label"])
        self.optimize(loss)
        correct = int((logits.argmax(1) == batch["label"]).sum())
        n = len(batch["label"])
        self._sums = [self._sums[0] + float(loss.detach()) * n, self._sums[1] + correct,
                      self._sums[2] + n]
        if (step + 1) % self._per_epoch == 0:
            total, right, seen = self._sums
            self.curve.append({"epoch": (step + 1) // self._per_epoch, "loss": total / seen,
                               "train_accuracy": right / seen,
                               "held_out_accuracy": self.held_out_accuracy()})
            self._sums = [0.0, 0, 0]
        return {"loss": float(loss.detach()), "accuracy": correct / n}

    @torch.no_grad()
    def held_out_accuracy(self) -> float:
        """Top-1 accuracy on the held-out part, in eval mode (the mode is restored)."""
        was_training = self.training
        self.eval()
        images, labels = self._held_out
        correct = 0
        for i in range(0, len(labels), EVAL_BATCH):
            x = normalize_batch(images[i : i + EVAL_BATCH].to(self.device))
            with self.autocast():
                pred = self(x).argmax(1).cpu()
            correct += int((pred == labels[i : i + EVAL_BATCH]).sum())
        self.train(was_training)
        return correct / max(len(labels), 1)

    def get_extra_state(self) -> dict[str, Any]:
        return {"curve": [dict(r) for r in self.curve], "initial": self.initial_accuracy,
                "sums": list(self._sums)}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.curve = [dict(r) for r in state["curve"]]
        self.initial_accuracy = state["initial"]
        self._sums = list(state["sums"])


def side_paths(out: str | os.PathLike) -> dict[str, Path]:
    """The stage's other files, beside its weights file `out`."""
    out = Path(out)
    stem = out.name[: -len(".pt")] if out.name.endswith(".pt") else out.name
    return {"json": out.with_name(f"{stem}.json"), "curve": out.with_name(f"{stem}.curve.csv"),
            "fit_name": Path(f"{stem}.train")}


def pretrain(backbone: str, cfg: dict[str, Any] | None, out: str | os.PathLike,
             device: torch.device, threads: int = 1, stop_after: int | None = None) -> Path:
    """Generate the corpus, train `backbone` on it, write the weights file `out` (see the
    module docstring) and its side files; returns `out`. `threads`: corpus worker processes.
    `stop_after` ends training early with a checkpoint and writes nothing else (a kill)."""
    cfg = pretrain_config(for_backbone(cfg or {}, backbone))
    out = Path(out)
    if not out.name.endswith(".pt"):
        raise ConfigError(f"pretrain output {out}: expected a .pt file name")
    paths = side_paths(out)
    t0 = time.time()
    train_images, train_labels = corpus(cfg["corpus"], "train", threads)
    held_out = corpus(cfg["corpus"], "held_out", threads)
    t_corpus = time.time() - t0
    log.info("corpus: %d training and %d held-out images of %d classes (%.1f s)",
             len(train_labels), len(held_out[1]), cfg["corpus"]["classes"], t_corpus)

    training = cfg["training"]
    seed_everything(training["seed"])  # the initial weights are part of the recipe
    net = PretrainNet(backbone, cfg["output_stride"], cfg["corpus"]["classes"], held_out)
    trainset = CorpusSet(train_images, train_labels, training)
    meta = {"config": cfg, "backbone": backbone}
    t1 = time.time()
    final = fit(net, trainset, training, out.parent, meta, device, stop_after=stop_after,
                name=str(paths["fit_name"]))
    if not final.is_file():  # stopped early
        return out
    final.unlink()  # the loop's copy of the whole network; the trunk goes into `out` below
    t_train = time.time() - t1
    net.eval()
    accuracy = net.curve[-1]["held_out_accuracy"]
    seconds = {"corpus": round(t_corpus, 2), "training": round(t_train, 2),
               "total": round(time.time() - t0, 2)}
    classes = class_names(cfg["corpus"]["classes"])
    summary = {"backbone": backbone, "output_stride": cfg["output_stride"],
               "held_out_accuracy": accuracy, "initial_held_out_accuracy": net.initial_accuracy,
               "chance": 1.0 / len(classes), "held_out_images": len(held_out[1]),
               "train_images": len(train_labels), "classes": classes, "seconds": seconds,
               "steps": training["epochs"] * (len(trainset) // training["batch_size"]),
               "curve": net.curve, "config": cfg}
    log.info("%s: held-out accuracy %.3f (chance %.3f, at init %.3f) in %.1f s", backbone,
             accuracy, summary["chance"], net.initial_accuracy, seconds["total"])
    write_json(paths["json"], summary)
    with atomic_path(paths["curve"]) as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["epoch", "loss", "train_accuracy",
                                                "held_out_accuracy"])
        writer.writeheader()
        writer.writerows(net.curve)
    payload = {**{k: v for k, v in summary.items() if k not in ("train_images",
                                                                 "held_out_images", "chance")},
               "state_dict": net.trunk.net_state_dict(),
               "head": {k: v.detach().clone() for k, v in net.head.state_dict().items()},
               "versions": versions()}
    with atomic_path(out) as tmp:
        torch.save(payload, tmp)
        # the file must be what a backbone block's `pretrained:` accepts, before it is in place
        build_backbone(backbone, cfg["output_stride"], str(tmp))
    return out
