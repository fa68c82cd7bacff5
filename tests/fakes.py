"""Stand-ins shared by several test modules (importable: tests/ is on sys.path)."""

from __future__ import annotations

import csv

import numpy as np
import torch

RED, BLUE, GREEN = (200, 40, 40), (40, 40, 200), (40, 200, 40)


class FixedMethod(torch.nn.Module):
    """A 'method' whose raw CAM and segmentation logits are `fn(images)`: no learning, a
    computable answer for the inference code around it."""

    def __init__(self, fn, num_classes: int = 2):
        super().__init__()
        self.unused = torch.nn.Parameter(torch.zeros(1))  # gives the method a device
        self.fn, self.num_classes = fn, num_classes

    @property
    def device(self) -> torch.device:
        return self.unused.device

    def cams(self, images: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        return self.fn(images)

    def seg_logits(self, images: torch.Tensor) -> torch.Tensor:
        return self.fn(images)

    def cams_and_seg(self, images: torch.Tensor, labels: torch.Tensor | None = None):
        return self.fn(images), self.fn(images)


def two_regions(h: int = 32, w: int = 48) -> tuple[np.ndarray, np.ndarray]:
    """A red left half and a blue right half, and its truth (1 on the right)."""
    image = np.zeros((h, w, 3), np.uint8)
    image[:, : w // 2] = RED
    image[:, w // 2 :] = BLUE
    truth = np.zeros((h, w), np.int64)
    truth[:, w // 2 :] = 1
    return image, truth


# A tiny training problem for the training contract's tests
TRAINING = {
    "seed": 3, "epochs": 2, "batch_size": 4, "lr": 0.05, "momentum": 0.9, "nesterov": False,
    "weight_decay": 1e-4, "poly_power": 0.9, "new_layer_lr_mult": 10, "checkpoint_every": 2,
}
CFG = {"method": "baseline", "training": TRAINING,
       "backbone": {"name": "tiny", "output_stride": 8, "pretrained": "none"}}


class ToySet(torch.utils.data.Dataset):
    """Class k is a bright square in quadrant k; augmentation noise seeded by (epoch, index)."""

    def __len__(self):
        return 10

    def __getitem__(self, key):
        index, epoch = key
        rng = np.random.default_rng([index, epoch])
        image = rng.normal(0, 0.1, (3, 32, 32)).astype(np.float32)
        label = np.zeros(2, dtype=np.float32)
        for k in (index % 2, (index // 2) % 2):
            label[k] = 1
            image[:, 16 * k : 16 * k + 8, 4:12] += 2.0
        return {"image": torch.from_numpy(image), "label": torch.from_numpy(label)}


def log_rows(path) -> list[dict[str, str]]:
    """A training log's rows without the wall-clock column (what a resumed run must repeat)."""
    with open(path) as fh:
        return [{k: v for k, v in row.items() if k != "seconds"} for row in csv.DictReader(fh)]


def fit_method(cfg, dataset, training, out, stop_after=None, num_classes: int = 2):
    """A method built from `cfg` under seed 123 and trained by the loop in `out` (stopped after
    `stop_after` steps, a kill, when given): the run a kill-and-resume test repeats."""
    from wsss.methods.base import build_method
    from wsss.train import fit

    torch.manual_seed(123)
    method = build_method(cfg, num_classes)
    fit(method, dataset, training, out, {"config": cfg}, torch.device("cpu"),
        stop_after=stop_after)
    return method
