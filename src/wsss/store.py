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
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np

# atomic_path and WriteError are re-exported: every stage writes its outputs through them
from wsss.atomic import WriteError as WriteError
from wsss.atomic import atomic_path as atomic_path
from wsss.atomic import release

os.environ.setdefault("HDF5_USE_FILE_LOCKING", "FALSE")

FORMAT_VERSION = 1
_OPEN_PARTS = 64  # shard files a combined view keeps open at once


class StoreError(Exception):
    """A store file is missing, of the wrong kind, or does not match what the caller expects."""


def versions() -> dict[str, str]:
    """Versions of the code and libraries that produced a result (recorded in every output)."""
    from importlib import metadata

    out = {"python": platform.python_version()}
    for dist in ("wsss", "torch", "torchvision", "numpy", "h5py", "pydensecrf2", "pycocotools",
                 "snakemake"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[dist] = metadata.version(dist)
    return out


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
    version = f.attrs.get("format_version")
    if version is None or version != FORMAT_VERSION:
        f.close()
        found = "no format version" if version is None else f"format version {version}"
        raise StoreError(f"{path}: {found}, this code reads format version {FORMAT_VERSION}; "
                         "rerun the stage that writes it (or delete it and let the workflow "
                         "rebuild it)")
    return f


class _Writer:
    """Shared part of the atomic HDF5 writers: temp file, attrs, commit on clean exit.

    Each dataset is flushed as it is added, so a full disk fails the `add` that hit it (HDF5
    would otherwise drop the error in a destructor and may crash at close); the temp file is
    then emptied before HDF5 closes it, and a WriteError names the target (atomic_path)."""

    kind = ""

    def __init__(self, path: str | os.PathLike, attrs: dict[str, Any]):
        self.path = Path(path)
        self._ctx = atomic_path(self.path, suffix=".h5")
        self._tmp = self._ctx.__enter__()
        self.file: h5py.File | None = None
        try:
            self.file = h5py.File(self._tmp, "w", locking=False)
            self.file.attrs["kind"] = self.kind
            self.file.attrs["format_version"] = FORMAT_VERSION
            self.file.attrs["versions"] = json.dumps(versions())
            for key, value in attrs.items():
                plain = isinstance(value, str | int | float)
                self.file.attrs[key] = value if plain else json.dumps(value)
        except BaseException as err:
            self._discard(err)
            raise
        self.ids: list[str] = []

    def _discard(self, err: BaseException) -> None:
        """Close and remove the temp file after `err`; raises WriteError for a failed write."""
        if self.file is not None:
            release(self.file, self._tmp)
        self._ctx.__exit__(type(err), err, err.__traceback__)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc is not None:
            self._discard(exc)
            return False
        try:
            self.file.attrs["ids"] = json.dumps(self.ids)
            self.file.close()
        except Exception as err:
            self._discard(err)
            raise
        self._ctx.__exit__(None, None, None)
        return False


def _attr_json(f: h5py.File, key: str, default: Any = None) -> Any:
    value = f.attrs.get(key)
    if value is None:
        return default
    try:
        return json.loads(value)
    except (TypeError, json.JSONDecodeError):
        return value


# Float16 maps: byte-shuffled (the exponents of neighbouring pixels repeat), one chunk per class
# plane. tests/benchmarks/bench_store.py and README "Disk": gzip level 1 makes the CAMs 47 %
# smaller than lzf at about lzf's read speed; `seg` (C+1 planes, read in the CAM jobs' loop)
# keeps lzf, 33 % smaller with the shuffle and as fast as before.
_GZIP1 = {"compression": "gzip", "compression_opts": 1, "shuffle": True}
_LZF = {"compression": "lzf", "shuffle": True}


def _per_plane(data: np.ndarray, filters: dict[str, Any]) -> dict[str, Any]:
    if data.ndim != 3 or data.size == 0:  # no plane (an image without a class): nothing to chunk
        return {}
    return {**filters, "chunks": (1, *data.shape[1:])}


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
        for name, data, filters in (("cam", cam, _GZIP1), ("cam_lowres", cam_lowres, _GZIP1),
                                    ("seg", seg, _LZF)):
            if data is not None:
                data = np.asarray(data, dtype=np.float16)
                g.create_dataset(name, data=data, **_per_plane(data, filters)).flush()
        g.create_dataset("keys", data=np.asarray(keys, dtype=np.int64)).flush()
        self.ids.append(image_id)


class LabelWriter(_Writer):
    """Write pseudo-labels: one uint8 H×W dataset per image id (0 bg, 1..C, 255 ignore)."""

    kind = "labels"

    def add(self, image_id: str, label: np.ndarray) -> None:
        label = np.asarray(label)
        if label.dtype != np.uint8 or label.ndim != 2:
            raise StoreError(f"{self.path}: label of {image_id} must be a 2-D uint8 array")
        self.file.create_dataset(image_id, data=label, compression="lzf").flush()
        self.ids.append(image_id)


class _Reader:
    """A store, or a combined view over per-shard stores (`combine_stores`) read the same way:
    each id's arrays come from the shard file that holds it, opened on first use."""

    kind = ""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.file = _open_read(self.path, self.kind)
        self.ids: list[str] = _attr_json(self.file, "ids", [])
        self.classes: list[str] = _attr_json(self.file, "classes", [])
        self._known = set(self.ids)
        parts = _attr_json(self.file, "shards")
        self._parts: list[Path] = [self.path.parent / p for p in parts] if parts else []
        self._where: dict[str, int] = {}
        if self._parts:
            sizes = _attr_json(self.file, "shard_sizes")
            owner = np.repeat(np.arange(len(sizes)), sizes)
            self._where = dict(zip(self.ids, owner.tolist(), strict=True))
        self._open: OrderedDict[int, h5py.File] = OrderedDict()

    def attr(self, key: str, default: Any = None) -> Any:
        return _attr_json(self.file, key, default)

    def _part(self, k: int) -> h5py.File:
        f = self._open.get(k)
        if f is None:
            if len(self._open) >= _OPEN_PARTS:  # bounded: a view may have thousands of shards
                self._open.popitem(last=False)[1].close()
            f = self._open[k] = _open_read(self._parts[k], self.kind)
        self._open.move_to_end(k)
        return f

    def _node(self, image_id: str) -> Any:
        """The id's group (CAMs) or dataset (labels), from the file that holds it."""
        if self._parts:
            k = self._where.get(image_id)
            f = None if k is None else self._part(k)
        else:
            f = self.file
        if f is None or image_id not in f:
            raise StoreError(f"{self.path}: image id '{image_id}' is missing")
        return f[image_id]

    def check(self, ids: Sequence[str], classes: Sequence[str] | None = None) -> None:
        """Fail with the file and the first mismatching id if this store cannot serve `ids`."""
        if classes is not None and list(classes) != list(self.classes):
            name = self.attr("dataset")
            raise StoreError(
                f"{self.path}: written for another dataset: the store's dataset "
                f"{f'{name!r} ' if name else ''}has the class list {self.classes}, this "
                f"dataset has {list(classes)}; rerun the stage that writes it for this dataset "
                "(or delete it)"
            )
        for image_id in ids:
            if image_id not in self._known:
                raise StoreError(f"{self.path}: image id '{image_id}' is missing")

    def close(self) -> None:
        for f in self._open.values():
            f.close()
        self._open.clear()
        self.file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


# attrs of a shard that are its own, not the store's: everything else must agree across shards
_PER_SHARD = ("ids", "versions", "shard")


def combine_stores(out: str | os.PathLike, parts: Sequence[str | os.PathLike], kind: str,
                   ids: Sequence[str] | None = None) -> int:
    """One store over per-shard stores of the same stage, without copying their arrays.

    The combined file holds the shards' common attrs, `ids` (the shards' ids in order),
    `shards` (their file names relative to `out`'s folder) and `shard_sizes`; every reader of
    this module reads it as it reads a single store. For other HDF5 tools each id is also an
    external link to its group or dataset in the shard (h5py: f[id]["cam"] works). With `ids`
    (the split's), the shards must cover exactly those ids, in that order. Returns the count.
    """
    out = Path(out)
    names: list[str] = []
    sizes: list[int] = []
    combined: list[str] = []
    common: dict[str, Any] | None = None
    first = None
    for part in map(Path, parts):
        with _open_read(part, kind) as f:
            attrs = {k: f.attrs[k] for k in f.attrs if k not in _PER_SHARD}
            part_ids = _attr_json(f, "ids", [])
            if _attr_json(f, "shards"):
                raise StoreError(f"{part}: is itself a combined view, not a shard")
        if common is None:
            common, first = attrs, part
        elif attrs.keys() != common.keys() or any(
                not np.array_equal(attrs[k], common[k]) for k in attrs):
            differ = sorted(k for k in attrs.keys() | common.keys()
                            if k not in attrs or k not in common
                            or not np.array_equal(attrs[k], common[k]))
            raise StoreError(f"{part}: attrs {differ} differ from those of {first}; the "
                             "shards of one store must come from the same config")
        names.append(os.path.relpath(part, out.parent))
        sizes.append(len(part_ids))
        combined += part_ids
    if common is None:
        raise StoreError(f"{out}: no shards to combine")
    if len(set(combined)) != len(combined):
        seen: set[str] = set()
        twice = next(i for i in combined if i in seen or seen.add(i))
        raise StoreError(f"{out}: image id '{twice}' is in more than one shard")
    if ids is not None and list(ids) != combined:
        missing = next((i for i in ids if i not in set(combined)), None)
        what = f"image id '{missing}' is in no shard" if missing else "ids out of split order"
        raise StoreError(f"{out}: the shards do not cover the split: {what}")
    with atomic_path(out, suffix=".h5") as tmp:
        f = h5py.File(tmp, "w", locking=False)
        try:
            for key, value in common.items():
                f.attrs[key] = value
            f.attrs["versions"] = json.dumps(versions())
            f.attrs["ids"] = json.dumps(combined)
            f.attrs["shards"] = json.dumps(names)
            f.attrs["shard_sizes"] = json.dumps(sizes)
            for name, size, start in zip(names, sizes, np.cumsum([0, *sizes[:-1]]), strict=True):
                for image_id in combined[start:start + size]:
                    f[image_id] = h5py.ExternalLink(name, image_id)
            f.close()
        except BaseException:
            release(f, tmp)  # a failed HDF5 flush must not be retried onto a full disk
            raise
    return len(combined)


class CamReader(_Reader):
    kind = "cams"

    def get(self, image_id: str, lowres: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """Return (cams float32 K×H×W, keys int64 K) of one image."""
        g = self._node(image_id)
        cam = g["cam_lowres" if lowres else "cam"][()].astype(np.float32)
        return cam, g["keys"][()]

    def has_seg(self, image_id: str) -> bool:
        """Whether the image has `seg` predictions (CAMs of a method with a segmentation head)."""
        return image_id in self._known and "seg" in self._node(image_id)

    def get_seg(self, image_id: str) -> np.ndarray:
        """(C+1)×H×W float32 class probabilities of one image (background plane first)."""
        g = self._node(image_id)
        if "seg" not in g:
            raise StoreError(f"{self.path}: image id '{image_id}' has no 'seg' predictions "
                             f"(method '{self.attr('method')}' has no segmentation head)")
        return g["seg"][()].astype(np.float32)


class LabelReader(_Reader):
    kind = "labels"

    def get(self, image_id: str) -> np.ndarray:
        return self._node(image_id)[()]

    def shape(self, image_id: str) -> tuple[int, int]:
        """(H, W) of one label without reading it."""
        return tuple(self._node(image_id).shape)


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
