"""Reader for datasets in PASCAL VOC layout: VOC2012, VOC2012 + SBD ("aug") and the synthetic set.

Layout under `root`::

    JPEGImages/<id>.jpg            images (.png accepted when no .jpg exists), any mode read
                                   as RGB (`to_rgb`: grey, CMYK; alpha dropped); elsewhere
                                   with `image_root` / `image_dirs` (COCO: see data/coco.py)
    <mask_dir>/<id>.png            class-index masks: 0 background, k+1 <-> classes[k], 255 void
    <eval_mask_dir>/<id>.png       optional: ground truth for evaluation where it has the id
                                   (VOC's SegmentationClass), else <mask_dir>'s mask
    Annotations/<id>.xml           object names (only for label_source == "xml")
    <split list files>             one id per line, or SBD-style "/JPEGImages/id.jpg /Seg.../id.png"
    classes.txt                    optional: foreground names, one per line; a leading
                                   `background` / `_background_` entry (mmsegmentation's and
                                   many converted datasets' lists) is skipped

Image ids are kept as strings everywhere: VOC ids such as "2007_000032" are valid Python int
literals (underscores are digit separators), so any int round trip would silently corrupt them.
"""

from __future__ import annotations

import logging
import os
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from wsss.atomic import create_temp

VOC_CLASSES: tuple[str, ...] = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
    "tvmonitor",
)  # fmt: skip

VOID = 255
_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
_CONFIG_KEYS = {"root", "splits", "mask_dir", "eval_mask_dir", "label_source", "classes",
                "image_root", "image_dirs"}
_LABEL_SOURCES = ("masks", "xml")
# names a class list may give index 0 (mask value 0) under; never a foreground class
_BACKGROUND_NAMES = ("background", "_background_", "__background__")

log = logging.getLogger(__name__)
_said: set[str] = set()  # say things once per process, not once per call


def _voc_colormap(n: int = 256) -> list[int]:
    """The standard VOC colormap: bits of the index are spread over the high bits of R, G, B."""
    palette: list[int] = []
    for index in range(n):
        r = g = b = 0
        c = index
        for shift in range(7, -1, -1):
            r |= ((c >> 0) & 1) << shift
            g |= ((c >> 1) & 1) << shift
            b |= ((c >> 2) & 1) << shift
            c >>= 3
        palette.extend((r, g, b))
    return palette


# Index 255 comes out as (224, 224, 192), the VOC "void" colour.
VOC_PALETTE: list[int] = _voc_colormap()


class DatasetError(Exception):
    """A dataset file is missing, unreadable or inconsistent; the message names the path or id."""


def save_mask(path: str | os.PathLike, mask: np.ndarray) -> None:
    """Write a class-index mask as a VOC palette PNG, atomically (temp file + os.replace)."""
    mask = np.asarray(mask)
    if mask.ndim != 2 or mask.dtype != np.uint8:
        raise ValueError(f"{path}: mask must be a 2-D uint8 array, got {mask.dtype} {mask.shape}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(mask)
    image.putpalette(VOC_PALETTE)  # turns the L image into mode P with the same index values
    fd, tmp = create_temp(path)  # mode 0666 less the umask, as open() gives
    try:
        with os.fdopen(fd, "wb") as f:
            image.save(f, format="PNG")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _read_lines(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def foreground_classes(names: list[str] | tuple[str, ...], source: str) -> tuple[str, ...]:
    """`names` without a leading background entry, which would otherwise be taken as foreground
    class 1 and shift every XML label by one against the masks; logs the skip once per source."""
    names = tuple(names)
    if names and names[0].strip().lower() in _BACKGROUND_NAMES:
        if source not in _said:
            _said.add(source)
            log.info("%s: first class %r is the background (mask value 0); skipped, %d "
                     "foreground classes remain", source, names[0], len(names) - 1)
        return names[1:]
    return names


def _id_from_token(token: str) -> str:
    # SBD lists give paths ("/JPEGImages/2007_000032.jpg"); plain lists give bare ids. Only strip
    # known image suffixes so ids that contain dots survive.
    name = token.rsplit("/", 1)[-1]
    stem, dot, suffix = name.rpartition(".")
    if dot and "." + suffix.lower() in _IMAGE_SUFFIXES:
        return stem
    return name


_SIXTEEN_BIT = ("I;16", "I;16B", "I;16L", "I;16N", "I")  # "I": 16-bit grey PNGs, older Pillow


def to_rgb(im: Image.Image) -> np.ndarray:
    """H×W×3 uint8 RGB of an opened image, as torchvision's and PIL's `convert("RGB")` give it:
    grey is repeated over the channels, a palette looked up, CMYK converted (Adobe's inverted
    CMYK JPEGs included: PIL reads the APP14 marker), and an alpha channel dropped, not
    composited over a background: the colour a pixel was painted with is its colour. VOC has
    no such images; a converted dataset may. 16-bit grey, which `convert` would clip to white
    above 255, is scaled to 8 bits.
    """
    if im.mode in _SIXTEEN_BIT:
        grey = np.clip(np.asarray(im, dtype=np.int64), 0, 65535)
        grey = ((grey * 255 + 32767) // 65535).astype(np.uint8)  # 65535 -> 255, rounded
        return np.repeat(grey[..., None], 3, axis=2)
    return np.asarray(im.convert("RGB"), dtype=np.uint8)


@dataclass(frozen=True)
class VocDataset:
    """One dataset in VOC layout; all loaders raise DatasetError naming the path or image id."""

    root: Path
    classes: tuple[str, ...]
    splits: dict[str, str] = field(default_factory=dict)
    mask_dir: str = "SegmentationClass"
    label_source: str = "masks"
    # None: evaluate on mask_dir. VOC + SBD: SegmentationClass, the papers' ground truth for the
    # 1,464 train and 1,449 val ids, while the aug masks stay the fallback for the other ids
    eval_mask_dir: str | None = None
    # where the images are: <image_root>/<dir>/<id>.jpg|.png, dirs tried in order; None: root
    image_root: Path | None = None
    image_dirs: tuple[str, ...] = ("JPEGImages",)

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))
        object.__setattr__(self, "classes", tuple(self.classes))
        if self.image_root is not None:
            object.__setattr__(self, "image_root", Path(self.image_root))
        dirs = (self.image_dirs,) if isinstance(self.image_dirs, str) else tuple(self.image_dirs)
        if not dirs or not all(isinstance(d, str) and d for d in dirs):
            raise DatasetError(f"{self.root}: image_dirs must be folder names: {dirs!r}")
        object.__setattr__(self, "image_dirs", dirs)
        if not self.classes:
            raise DatasetError(f"{self.root}: the class list is empty")
        if len(set(self.classes)) != len(self.classes):
            raise DatasetError(f"{self.root}: duplicate class names in {list(self.classes)}")
        if len(self.classes) >= VOID:
            raise DatasetError(f"{self.root}: at most {VOID - 1} classes fit in a uint8 mask")
        if self.label_source not in _LABEL_SOURCES:
            raise DatasetError(
                f"{self.root}: label_source must be one of {_LABEL_SOURCES}, "
                f"got {self.label_source!r}"
            )

    def __hash__(self) -> int:
        # the generated hash would fail on the `splits` dict; callers cache per dataset
        splits = tuple(sorted(self.splits.items()))
        return hash((self.root, self.classes, splits, self.mask_dir, self.label_source,
                     self.eval_mask_dir, self.image_root, self.image_dirs))

    @classmethod
    def from_config(cls, cfg: dict[str, Any]) -> VocDataset:
        """Build from a config dict (keys: root, splits, mask_dir, eval_mask_dir, label_source,
        classes, image_root, image_dirs); relative roots are relative to the working directory."""
        unknown = sorted(set(cfg) - _CONFIG_KEYS)
        if unknown:
            raise DatasetError(f"dataset config: unknown key(s) {unknown}")
        if "root" not in cfg:
            raise DatasetError("dataset config: 'root' is required")
        root = Path(cfg["root"]).expanduser()
        if not root.is_dir():
            raise DatasetError(f"{root}: dataset root does not exist or is not a directory")
        classes = cfg.get("classes")
        source = f"{root}: dataset config 'classes'"
        if classes is None:
            classes_file = root / "classes.txt"
            source = str(classes_file)
            classes = _read_lines(classes_file) if classes_file.is_file() else VOC_CLASSES
        image_root = cfg.get("image_root")
        if image_root is not None:
            image_root = Path(image_root).expanduser()
            if not image_root.is_dir():
                raise DatasetError(f"{image_root}: image_root does not exist or is not a directory")
        return cls(
            root=root,
            classes=foreground_classes(classes, source),
            splits=dict(cfg.get("splits") or {}),
            mask_dir=cfg.get("mask_dir") or "SegmentationClass",
            label_source=cfg.get("label_source") or "masks",
            eval_mask_dir=cfg.get("eval_mask_dir") or None,
            image_root=image_root,
            image_dirs=cfg.get("image_dirs") or ("JPEGImages",),
        )

    @property
    def num_classes(self) -> int:
        """Number of foreground classes C (mask values 1..C)."""
        return len(self.classes)

    def ids(self, split: str) -> list[str]:
        """Image ids of a split, in list-file order, as strings."""
        if split not in self.splits:
            raise DatasetError(
                f"{self.root}: unknown split '{split}' (known: {sorted(self.splits)})"
            )
        path = self.root / self.splits[split]
        if not path.is_file():
            raise DatasetError(f"{path}: list file of split '{split}' does not exist")
        ids = [_id_from_token(line.split()[0]) for line in _read_lines(path)]
        seen: set[str] = set()
        for image_id in ids:
            if image_id in seen:
                # stores key results by id, so a repeated id would overwrite or crash later
                raise DatasetError(f"{path}: image id '{image_id}' is listed twice")
            seen.add(image_id)
        return ids

    def image_path(self, image_id: str) -> Path:
        """The first existing <image_root>/<dir>/<id>.jpg or .png (dirs in order, .jpg before
        .png within a dir); the first dir's .jpg path when none exists."""
        base = self.root if self.image_root is None else self.image_root
        for folder in self.image_dirs:
            for suffix in (".jpg", ".png"):
                path = base / folder / f"{image_id}{suffix}"
                if path.exists():
                    return path
        return base / self.image_dirs[0] / f"{image_id}.jpg"

    def mask_path(self, image_id: str) -> Path:
        return self.root / self.mask_dir / f"{image_id}.png"

    def xml_path(self, image_id: str) -> Path:
        return self.root / "Annotations" / f"{image_id}.xml"

    def load_image(self, image_id: str) -> np.ndarray:
        """H×W×3 uint8 RGB, whatever the file's mode (`to_rgb`)."""
        path = self.image_path(image_id)
        if not path.is_file():
            raise DatasetError(f"{path}: image of '{image_id}' does not exist")
        try:
            with Image.open(path) as im:
                return to_rgb(im)
        except (OSError, SyntaxError, ValueError) as err:
            raise DatasetError(f"image '{image_id}' ({path}) is unreadable: {err}") from err

    def eval_mask_path(self, image_id: str) -> Path:
        """The ground truth evaluation scores against: eval_mask_dir's mask where it exists."""
        if self.eval_mask_dir is not None:
            path = self.root / self.eval_mask_dir / f"{image_id}.png"
            if path.is_file():
                return path
        return self.mask_path(image_id)

    def _has_eval_mask(self, image_id: str) -> bool:
        return (self.root / str(self.eval_mask_dir) / f"{image_id}.png").is_file()

    def eval_fallbacks(self, ids: list[str], split: str) -> int:
        """How many of `ids` have no eval_mask_dir mask (scored on mask_dir's); logs it once."""
        if self.eval_mask_dir is None:
            return 0
        missing = sum(not self._has_eval_mask(i) for i in ids)
        key = f"{self.root}:{self.eval_mask_dir}:{split}:{len(ids)}"
        if key not in _said:
            _said.add(key)
            log.info("split '%s': %d of %d evaluated ids have no mask in %s and are scored on "
                     "%s", split, missing, len(ids), self.eval_mask_dir, self.mask_dir)
        return missing

    def load_eval_mask(self, image_id: str) -> np.ndarray:
        """Ground-truth mask for evaluation (see eval_mask_path); checked as load_mask is."""
        return self._read_mask(image_id, self.eval_mask_path(image_id))

    def load_mask(self, image_id: str) -> np.ndarray:
        """H×W uint8 class indices (palette indices of a P image, or values of an L image)."""
        return self._read_mask(image_id, self.mask_path(image_id))

    def _read_mask(self, image_id: str, path: Path) -> np.ndarray:
        if not path.is_file():
            raise DatasetError(f"{path}: mask of '{image_id}' does not exist")
        try:
            with Image.open(path) as im:
                if im.mode not in ("P", "L"):
                    raise DatasetError(
                        f"mask of '{image_id}' ({path}) has mode {im.mode}; "
                        "expected a palette (P) or grey (L) PNG of class indices"
                    )
                mask = np.array(im, dtype=np.uint8)
        except (OSError, SyntaxError, ValueError) as err:
            raise DatasetError(f"mask of '{image_id}' ({path}) is unreadable: {err}") from err
        values = np.unique(mask)
        bad = values[(values > self.num_classes) & (values != VOID)]
        if bad.size:
            raise DatasetError(
                f"mask of '{image_id}' ({path}) has values {bad.tolist()} outside "
                f"0..{self.num_classes} and {VOID} (classes 1..{self.num_classes}: "
                f"{list(self.classes)})"
            )
        return mask

    def load_pair(self, image_id: str) -> tuple[np.ndarray, np.ndarray]:
        """(image, mask) of one id, checked to have the same size."""
        image = self.load_image(image_id)
        mask = self.load_mask(image_id)
        if image.shape[:2] != mask.shape:
            raise DatasetError(
                f"image '{image_id}': mask size {list(mask.shape)} != image size "
                f"{list(image.shape[:2])} ({self.mask_path(image_id)})"
            )
        return image, mask

    def labels_from_mask(self, mask: np.ndarray) -> np.ndarray:
        """Sorted 0-based foreground indices present in an already loaded mask."""
        values = np.unique(mask)
        return (values[(values >= 1) & (values <= self.num_classes)] - 1).astype(np.int64)

    def _labels_from_xml(self, image_id: str) -> np.ndarray:
        path = self.xml_path(image_id)
        if not path.is_file():
            raise DatasetError(f"{path}: annotation of '{image_id}' does not exist")
        try:
            tree = ET.parse(path)
        except ET.ParseError as err:
            raise DatasetError(f"annotation of '{image_id}' ({path}) is unreadable: {err}") from err
        index = {name: k for k, name in enumerate(self.classes)}
        found = set()
        for obj in tree.getroot().iter("object"):
            name = (obj.findtext("name") or "").strip()
            if name not in index:
                raise DatasetError(f"annotation of '{image_id}' ({path}): unknown class '{name}'")
            found.add(index[name])
        return np.array(sorted(found), dtype=np.int64)

    def image_labels(self, image_id: str) -> np.ndarray:
        """Sorted int64 array of the 0-based foreground classes present in the image."""
        if self.label_source == "xml":
            return self._labels_from_xml(image_id)
        return self.labels_from_mask(self.load_mask(image_id))

    def label_vector(self, image_id: str) -> np.ndarray:
        """float32 (C,) multi-hot image-level label."""
        vec = np.zeros(self.num_classes, dtype=np.float32)
        vec[self.image_labels(image_id)] = 1.0
        return vec


def export_pngs(label_path: str | os.PathLike, out_dir: str | os.PathLike) -> int:
    """Every mask of a label store as a VOC palette PNG in `out_dir`; returns the count."""
    from wsss.store import LabelReader

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with LabelReader(label_path) as labels:
        for image_id in labels.ids:
            save_mask(out / f"{image_id}.png", labels.get(image_id))
        return len(labels.ids)
