"""HDF5 stores that stages exchange: CAMs and pseudo-labels, plus atomic JSON outputs.

Every writer goes to a temporary file in the target folder and is `os.replace`d into place only
after it is complete, so a killed job never leaves a file that looks valid. Readers open HDF5
with file locking off because cluster file systems (NFS, Lustre) often refuse the locks.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np

os.environ.setdefault("HDF5_USE_FILE_LOCKING", "FALSE")

FORMAT_VERSION = 1


class StoreError(Exception):
    """A store file is missing, of the wrong kind, or does not match what the caller expects."""


def versions() -> dict[str, str]:
    """Versions of the code and libraries that produced a result (recorded in every output)."""
    from importlib import metadata

    out = {"python": platform.python_version()}
    for dist in ("wsss", "torch", "torchvision", "numpy", "h5py", "pydensecrf2", "snakemake"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[dist] = metadata.version(dist)
    return out


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix + ".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write `obj` as indented JSON, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n")


def _open_read(path: Path, kind: str) -> h5py.File:
    if not path.is_file():
        raise StoreError(f"{path}: no such {kind} file")
    try:
        f = h5py.File(path, "r", locking=False)
    except OSError as err:
        raise StoreError(f"{path}: not a readable HDF5 file ({err})") from err
    found = f.attrs.get("kind")
    if found != kind:
        f.close()
        raise StoreError(f"{path}: expected a '{kind}' store, found '{found}'")
    return f


class _Writer:
    """Shared part of the atomic HDF5 writers: temp file, attrs, commit on clean exit."""

    kind = ""

    def __init__(self, path: str | os.PathLike, attrs: dict[str, Any]):
        self.path = Path(path)
        self._ctx = atomic_path(self.path, suffix=".h5")
        self._tmp = self._ctx.__enter__()
        self.file = h5py.File(self._tmp, "w", locking=False)
        self.file.attrs["kind"] = self.kind
        self.file.attrs["format_version"] = FORMAT_VERSION
        self.file.attrs["versions"] = json.dumps(versions())
        for key, value in attrs.items():
            plain = isinstance(value, str | int | float)
            self.file.attrs[key] = value if plain else json.dumps(value)
        self.ids: list[str] = []

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.file.attrs["ids"] = json.dumps(self.ids)
        self.file.close()
        if exc_type is None:
            self._ctx.__exit__(None, None, None)
        else:
            self._ctx.__exit__(exc_type, exc, tb)
        return False


def _attr_json(f: h5py.File, key: str, default: Any = None) -> Any:
    value = f.attrs.get(key)
    if value is None:
        return default
    try:
        return json.loads(value)
    except (TypeError, json.JSONDecodeError):
        return value


class CamWriter(_Writer):
    """Write CAMs: one group per image id with `cam` (K×H×W float16), `keys`, `cam_lowres`."""

    kind = "cams"

    def add(
        self,
        image_id: str,
        cam: np.ndarray,
        keys: Sequence[int],
        cam_lowres: np.ndarray | None = None,
        seg: np.ndarray | None = None,
    ) -> None:
        g = self.file.create_group(image_id)
        g.create_dataset("cam", data=np.asarray(cam, dtype=np.float16), compression="lzf")
        g.create_dataset("keys", data=np.asarray(keys, dtype=np.int64))
        if cam_lowres is not None:
            g.create_dataset("cam_lowres", data=np.asarray(cam_lowres, dtype=np.float16))
        if seg is not None:
            g.create_dataset("seg", data=np.asarray(seg, dtype=np.float16), compression="lzf")
        self.ids.append(image_id)


class LabelWriter(_Writer):
    """Write pseudo-labels: one uint8 H×W dataset per image id (0 bg, 1..C, 255 ignore)."""

    kind = "labels"

    def add(self, image_id: str, label: np.ndarray) -> None:
        label = np.asarray(label)
        if label.dtype != np.uint8 or label.ndim != 2:
            raise StoreError(f"{self.path}: label of {image_id} must be a 2-D uint8 array")
        self.file.create_dataset(image_id, data=label, compression="lzf")
        self.ids.append(image_id)


class _Reader:
    kind = ""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.file = _open_read(self.path, self.kind)
        self.ids: list[str] = _attr_json(self.file, "ids", [])
        self.classes: list[str] = _attr_json(self.file, "classes", [])

    def attr(self, key: str, default: Any = None) -> Any:
        return _attr_json(self.file, key, default)

    def check(self, ids: Sequence[str], classes: Sequence[str] | None = None) -> None:
        """Fail with the file and the first mismatching id if this store cannot serve `ids`."""
        if classes is not None and list(classes) != list(self.classes):
            raise StoreError(
                f"{self.path}: class list {self.classes} does not match "
                f"the dataset's {list(classes)}"
            )
        have = set(self.ids)
        for image_id in ids:
            if image_id not in have:
                raise StoreError(f"{self.path}: image id '{image_id}' is missing")

    def close(self) -> None:
        self.file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


class CamReader(_Reader):
    kind = "cams"

    def get(self, image_id: str, lowres: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """Return (cams float32 K×H×W, keys int64 K) of one image."""
        if image_id not in self.file:
            raise StoreError(f"{self.path}: image id '{image_id}' is missing")
        g = self.file[image_id]
        cam = g["cam_lowres" if lowres else "cam"][()].astype(np.float32)
        return cam, g["keys"][()]

    def has_seg(self, image_id: str) -> bool:
        """Whether the image has `seg` predictions (CAMs of a method with a segmentation head)."""
        return image_id in self.file and "seg" in self.file[image_id]

    def get_seg(self, image_id: str) -> np.ndarray:
        """(C+1)×H×W float32 class probabilities of one image (background plane first)."""
        if image_id not in self.file:
            raise StoreError(f"{self.path}: image id '{image_id}' is missing")
        g = self.file[image_id]
        if "seg" not in g:
            raise StoreError(f"{self.path}: image id '{image_id}' has no 'seg' predictions "
                             f"(method '{self.attr('method')}' has no segmentation head)")
        return g["seg"][()].astype(np.float32)


class LabelReader(_Reader):
    kind = "labels"

    def get(self, image_id: str) -> np.ndarray:
        if image_id not in self.file:
            raise StoreError(f"{self.path}: image id '{image_id}' is missing")
        return self.file[image_id][()]


class LabelMap(Mapping[str, np.ndarray]):
    """id -> label of a label store, read on demand (a whole split may not fit in RAM).

    Training sets take a mapping; this one opens the HDF5 file lazily in each process, so it
    can be pickled or forked into DataLoader workers (an h5py handle cannot cross a fork).
    `ids` are the keys it serves; they are not checked against the file (`LabelReader.check`).
    """

    def __init__(self, path: str | os.PathLike, ids: Sequence[str]):
        self.path = Path(path)
        self.ids = list(ids)
        self._known = set(self.ids)
        self._reader: LabelReader | None = None
        self._pid = 0

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_reader": None, "_pid": 0}

    def __getitem__(self, image_id: str) -> np.ndarray:
        if self._reader is None or self._pid != os.getpid():
            self._reader, self._pid = LabelReader(self.path), os.getpid()
        return self._reader.get(image_id)

    def __contains__(self, image_id: object) -> bool:
        return image_id in self._known

    def __iter__(self) -> Iterator[str]:
        return iter(self.ids)

    def __len__(self) -> int:
        return len(self.ids)

    def close(self) -> None:
        """Close this process's handle; a handle inherited through fork is left alone."""
        if self._reader is not None and self._pid == os.getpid():
            self._reader.close()
        self._reader = None
