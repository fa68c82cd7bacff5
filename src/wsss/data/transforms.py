"""Image tensors for training and inference.

Training augmentation draws from a generator seeded by (seed, epoch, index), so a sample's
augmentation does not depend on the worker that loads it or on whether the run was resumed.
Further views of a sample (`views` k > 1) draw from children of that seed (spawn key = the
view's number), so the first view is the one a single-view run sees.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

# torchvision's ImageNet statistics: pretrained backbones expect them, and they do no harm
# to networks trained from scratch
MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


def normalize(image: np.ndarray) -> np.ndarray:
    """uint8 H×W×3 → float32 3×H×W, ImageNet-normalised."""
    return ((image.astype(np.float32) / 255.0 - MEAN) / STD).transpose(2, 0, 1)


def resize_long(image: np.ndarray, long_side: int) -> np.ndarray:
    h, w = image.shape[:2]
    scale = long_side / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return np.asarray(Image.fromarray(image).resize(size, Image.BILINEAR))


def color_jitter(image: np.ndarray, strength: float, rng: np.random.Generator) -> np.ndarray:
    """Brightness, contrast and saturation jitter of relative size `strength`."""
    x = image.astype(np.float32)
    b, c, s = 1.0 + rng.uniform(-strength, strength, size=3)
    x = x * b
    mean = x.mean()
    x = (x - mean) * c + mean
    gray = x.mean(axis=2, keepdims=True)
    x = (x - gray) * s + gray
    return np.clip(x, 0, 255).astype(np.uint8)


def random_crop(image: np.ndarray, size: int, rng: np.random.Generator,
                label: np.ndarray | None = None):
    """Crop (or zero-pad, after normalisation that is the mean colour) to size×size.

    With `label` (H×W), the same window is cut from it and its padding is 255 (ignore);
    returns (image, label) then.
    """
    c, h, w = image.shape
    out = np.zeros((c, size, size), dtype=image.dtype)
    top = rng.integers(0, h - size + 1) if h > size else 0
    left = rng.integers(0, w - size + 1) if w > size else 0
    oy = rng.integers(0, size - h + 1) if h < size else 0
    ox = rng.integers(0, size - w + 1) if w < size else 0
    ch, cw = min(h, size), min(w, size)
    out[:, oy : oy + ch, ox : ox + cw] = image[:, top : top + ch, left : left + cw]
    if label is None:
        return out
    lab = np.full((size, size), 255, dtype=np.uint8)
    lab[oy : oy + ch, ox : ox + cw] = label[top : top + ch, left : left + cw]
    return out, lab


def center_crop(image: np.ndarray, size: int) -> np.ndarray:
    """The centred size×size window of a C×H×W array, zero-padded (centred) where smaller."""
    c, h, w = image.shape
    out = np.zeros((c, size, size), dtype=image.dtype)
    top, left = max(0, (h - size) // 2), max(0, (w - size) // 2)
    oy, ox = max(0, (size - h) // 2), max(0, (size - w) // 2)
    ch, cw = min(h, size), min(w, size)
    out[:, oy : oy + ch, ox : ox + cw] = image[:, top : top + ch, left : left + cw]
    return out


class _TrainingImages(torch.utils.data.Dataset):
    """Decoded training images of a dataset, indexed by (index, epoch)."""

    def __init__(self, dataset, ids: Sequence[str], aug: dict[str, Any], seed: int):
        self.dataset, self.ids, self.aug, self.seed = dataset, list(ids), aug, seed
        self._cache: dict[str, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.ids)

    def _image(self, image_id: str) -> np.ndarray:
        # small datasets are decoded once per worker; large ones would not fit and are re-read
        if len(self.ids) <= self.aug.get("cache_max_images", 2000):
            if image_id not in self._cache:
                self._cache[image_id] = self.dataset.load_image(image_id)
            return self._cache[image_id]
        return self.dataset.load_image(image_id)


class ClassificationSet(_TrainingImages):
    """Images with multi-hot labels for classifier training.

    A key (index, epoch) gives `image` (3×S×S, S = crop_size), `label` (C,) and `index`. With
    `views` k > 1 in `aug`, also `views` (k×3×S×S): k independently augmented crops of the
    image, the first of which is `image`. A key (index, epoch, index_u), as
    `wsss.train.StepSampler` yields for `unaugmented_batch`, adds the second batch's sample:
    `image_u` (image index_u resized to a long side of S, centred and padded to S×S: no random
    resize, flip, jitter or crop), `label_u` and `index_u`.
    """

    def __init__(self, dataset, ids: Sequence[str], labels: dict[str, list[int]],
                 aug: dict[str, Any], seed: int):
        super().__init__(dataset, ids, aug, seed)
        self.labels = labels
        self.num_classes = dataset.num_classes

    def __getitem__(self, key: tuple[int, ...]) -> dict[str, Any]:
        index, epoch = key[:2]
        image_id = self.ids[index]
        image = self._augment(image_id, np.random.default_rng([self.seed, epoch, index]))
        sample = {"image": torch.from_numpy(image), "label": self._label(image_id),
                  "index": index}
        views = int(self.aug.get("views", 1))
        if views > 1:
            crops = [image] + [
                self._augment(image_id, np.random.default_rng(
                    np.random.SeedSequence([self.seed, epoch, index], spawn_key=(v,))))
                for v in range(1, views)
            ]
            sample["views"] = torch.from_numpy(np.stack(crops))
        if len(key) == 3:
            index_u = key[2]
            size = self.aug["crop_size"]
            plain = resize_long(self._image(self.ids[index_u]), size)
            sample.update(image_u=torch.from_numpy(center_crop(normalize(plain), size)),
                          label_u=self._label(self.ids[index_u]), index_u=index_u)
        return sample

    def _augment(self, image_id: str, rng: np.random.Generator) -> np.ndarray:
        image = self._image(image_id)
        if self.aug.get("random_resized_crop"):
            return self._resized_crop(image, rng)
        lo, hi = self.aug["resize_long"]
        image = resize_long(image, int(rng.integers(lo, hi + 1)))
        if self.aug["hflip"] and rng.random() < 0.5:
            image = image[:, ::-1]
        if self.aug["color_jitter"] > 0:
            image = color_jitter(image, self.aug["color_jitter"], rng)
        return random_crop(normalize(image), self.aug["crop_size"], rng)

    def _resized_crop(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """torchvision's RandomResizedCrop (area share in `random_resized_crop`, aspect ratio
        log-uniform in [3/4, 4/3], ten tries, then the whole image), bicubic to crop_size,
        then the flip and the colour jitter (FSR's and DINO's views)."""
        h, w = image.shape[:2]
        lo, hi = self.aug["random_resized_crop"]
        box = (0, 0, w, h)
        for _ in range(10):
            area = h * w * rng.uniform(lo, hi)
            ratio = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
            cw, ch = round(math.sqrt(area * ratio)), round(math.sqrt(area / ratio))
            if 0 < cw <= w and 0 < ch <= h:
                top, left = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
                box = (left, top, left + cw, top + ch)
                break
        size = self.aug["crop_size"]
        image = np.asarray(Image.fromarray(image).resize((size, size), Image.BICUBIC, box=box))
        if self.aug["hflip"] and rng.random() < 0.5:
            image = image[:, ::-1]
        if self.aug["color_jitter"] > 0:
            image = color_jitter(image, self.aug["color_jitter"], rng)
        return normalize(image)

    def _label(self, image_id: str) -> torch.Tensor:
        label = np.zeros(self.num_classes, dtype=np.float32)
        label[self.labels[image_id]] = 1.0
        return torch.from_numpy(label)


def resize_label(label: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of an H×W uint8 label map to (height, width)."""
    h, w = size
    return np.asarray(Image.fromarray(label).resize((w, h), Image.NEAREST))


class SegmentationSet(_TrainingImages):
    """Images with dense uint8 label maps (pseudo-labels).

    The same random resize, flip and crop is applied to image and label; padding is 255.
    `labels` maps image id -> H×W uint8 array (e.g. read from a label HDF5 store).
    """

    def __init__(self, dataset, ids: Sequence[str], labels: dict[str, np.ndarray],
                 aug: dict[str, Any], seed: int):
        super().__init__(dataset, ids, aug, seed)
        self.labels = labels

    def __getitem__(self, key: tuple[int, int]) -> dict[str, Any]:
        index, epoch = key
        image_id = self.ids[index]
        rng = np.random.default_rng([self.seed, epoch, index])
        image, label = self._image(image_id), self.labels[image_id]
        lo, hi = self.aug["resize_long"]
        image = resize_long(image, int(rng.integers(lo, hi + 1)))
        label = resize_label(label, image.shape[:2])
        if self.aug["hflip"] and rng.random() < 0.5:
            image, label = image[:, ::-1], label[:, ::-1]
        if self.aug.get("color_jitter", 0) > 0:
            image = color_jitter(image, self.aug["color_jitter"], rng)
        image, label = random_crop(normalize(image), self.aug["crop_size"], rng, label)
        return {"image": torch.from_numpy(image), "label": torch.from_numpy(label.astype(np.int64)),
                "index": index}


def scaled_views(image: np.ndarray, scales: Sequence[float], flip: bool) -> list[list[np.ndarray]]:
    """Normalised 3×h×w arrays per scale: [image] or [image, mirrored image]."""
    h, w = image.shape[:2]
    views = []
    for s in scales:
        size = (max(1, round(w * s)), max(1, round(h * s)))
        scaled = image
        if s != 1.0:
            scaled = np.asarray(Image.fromarray(image).resize(size, Image.BILINEAR))
        x = normalize(scaled)
        views.append([x, np.ascontiguousarray(x[:, :, ::-1])] if flip else [x])
    return views


def upsample(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def view_maps(maps: torch.Tensor, arrays: Sequence[np.ndarray], sizes: Sequence[tuple[int, int]],
              per: int, stride: int) -> Iterator[torch.Tensor]:
    """Per image of a batch of views (`per` consecutive views an image: the view and, with 2,
    its mirror), its maps at image size: (per, C, H, W), mirrors flipped back.

    A view's cells (those that see it; all of them in the unpadded batches the callers build)
    cover slightly more than the view when a side is not a multiple of `stride`, so they are
    resized to the covered extent, then cropped."""
    for i, (h, w) in enumerate(sizes):
        vh, vw = arrays[i * per].shape[1:]
        ch, cw = math.ceil(vh / stride), math.ceil(vw / stride)
        m = maps[i * per : (i + 1) * per, :, :ch, :cw].float()
        if per == 2:
            m = torch.stack([m[0], m[1].flip(-1)])
        eh = max(h, math.ceil(ch * stride * h / vh))
        ew = max(w, math.ceil(cw * stride * w / vw))
        yield upsample(m, (eh, ew))[:, :, :h, :w]
