"""Stand-ins shared by several test modules (importable: tests/ is on sys.path)."""

from __future__ import annotations

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


def two_regions(h: int = 32, w: int = 48) -> tuple[np.ndarray, np.ndarray]:
    """A red left half and a blue right half, and its truth (1 on the right)."""
    image = np.zeros((h, w, 3), np.uint8)
    image[:, : w // 2] = RED
    image[:, w // 2 :] = BLUE
    truth = np.zeros((h, w), np.int64)
    truth[:, w // 2 :] = 1
    return image, truth
