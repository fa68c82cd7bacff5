"""The checks of the kill-trial harness (kill_trials.py) on a chain's working directory: the
results that must not change under kills (summary.csv / summary.md text and every .eval.json but
its library versions) and their comparison with the reference's, number by number; every HDF5
store under results/ opened with wsss.store's readers and held to its contract (format version,
ids against the names present and the dataset split, dtypes and ranks of every array); the
temporary files and Snakemake incomplete markers left at the end; and the (inode, mtime, size)
state by which finished jobs' outputs are checked for being rerun or rewritten."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def collect_results(work: Path) -> dict[str, Any]:
    """What must not change under kills: summary.csv/.md text and every .eval.json (but the
    library versions it records)."""
    out: dict[str, Any] = {}
    results = work / "results"
    for path in sorted(results.rglob("summary.csv")) + sorted(results.rglob("summary.md")):
        out[str(path.relative_to(work))] = path.read_text()
    for path in sorted(results.rglob("*.eval.json")):
        data = json.loads(path.read_text())
        data.pop("versions", None)
        out[str(path.relative_to(work))] = data
    return out


def _diff(a: Any, b: Any, where: str, out: list[str], limit: int = 20) -> None:
    if len(out) >= limit:
        return
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b)):
            if key not in a or key not in b:
                out.append(f"{where}.{key}: only in {'chain' if key in b else 'reference'}")
            else:
                _diff(a[key], b[key], f"{where}.{key}", out, limit)
    elif isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _diff(x, y, f"{where}[{i}]", out, limit)
    elif a != b:
        if isinstance(a, str) and isinstance(b, str):
            la, lb = a.splitlines(), b.splitlines()
            first = next((i for i, (x, y) in enumerate(zip(la, lb, strict=False)) if x != y),
                         min(len(la), len(lb)))
            a = la[first] if first < len(la) else "<end>"
            b = lb[first] if first < len(lb) else "<end>"
            where = f"{where} line {first + 1}"
        out.append(f"{where}: reference {a!r}, chain {b!r}")


def compare_results(ref: dict[str, Any], got: dict[str, Any]) -> list[str]:
    diffs: list[str] = []
    for name in sorted(set(ref) | set(got)):
        if name not in got:
            diffs.append(f"{name}: missing in the chain")
        elif name not in ref:
            diffs.append(f"{name}: not in the reference")
        else:
            _diff(ref[name], got[name], name, diffs)
    return diffs


def _split_ids(work: Path) -> dict[str, list[str]]:
    index = next((work / "results").glob("*/data/index.json"), None)
    if index is None:
        return {}
    return {s: info["ids"] for s, info in json.loads(index.read_text())["splits"].items()}


def check_store(path: Path, split_ids: dict[str, list[str]]) -> list[str]:
    """Problems of one HDF5 store against wsss.store's contract (empty: sound)."""
    import h5py
    import numpy as np

    from wsss import store

    try:
        with h5py.File(path, "r", locking=False) as f:
            kind = f.attrs.get("kind")
            version = f.attrs.get("format_version")
            names = set(f.keys())
    except OSError as err:
        return [f"not a readable HDF5 file ({err})"]
    if kind not in ("cams", "labels"):
        return [f"kind attr {kind!r}, not cams or labels"]
    problems = []
    if version != store.FORMAT_VERSION:
        problems.append(f"format_version {version!r}")
    reader_cls = store.CamReader if kind == "cams" else store.LabelReader
    try:
        reader = reader_cls(path)
    except store.StoreError as err:
        return [*problems, str(err)]
    with reader:
        ids = reader.ids
        if len(set(ids)) != len(ids):
            problems.append("ids attr has duplicates")
        if set(ids) != names:
            problems.append(f"ids attr ({len(ids)}) != names present ({len(names)})")
        expected = split_ids.get(path.stem)
        if expected is not None and list(ids) != list(expected):
            problems.append(f"ids ({len(ids)}) are not split {path.stem}'s ({len(expected)})")
        for image_id in ids:
            try:
                node = reader._node(image_id)
                if kind == "labels":
                    label = reader.get(image_id)
                    if label.dtype != np.uint8 or label.ndim != 2:
                        problems.append(f"{image_id}: label {label.dtype} ndim {label.ndim}")
                    continue
                cam = node["cam"][()]
                keys = node["keys"][()]
                if cam.dtype != np.float16 or cam.ndim != 3:
                    problems.append(f"{image_id}: cam {cam.dtype} ndim {cam.ndim}")
                if keys.dtype != np.int64 or keys.ndim != 1 or len(keys) != cam.shape[0]:
                    problems.append(f"{image_id}: keys {keys.dtype} {keys.shape} for {cam.shape}")
                for name in ("cam_lowres", "seg"):
                    if name in node:
                        data = node[name][()]
                        if data.dtype != np.float16 or data.ndim != 3:
                            problems.append(f"{image_id}: {name} {data.dtype} ndim {data.ndim}")
                        if name == "cam_lowres" and data.shape[0] != cam.shape[0]:
                            problems.append(f"{image_id}: cam_lowres planes {data.shape[0]}")
                reader.get(image_id)
            except (store.StoreError, OSError, KeyError) as err:
                problems.append(f"{image_id}: {err}")
            if len(problems) > 10:
                break
    return problems


def check_stores(work: Path) -> tuple[int, dict[str, list[str]]]:
    split_ids = _split_ids(work)
    stores = sorted((work / "results").rglob("*.h5"))
    corrupt = {}
    for path in stores:
        problems = check_store(path, split_ids)
        if problems:
            corrupt[str(path.relative_to(work))] = problems
    return len(stores), corrupt


def leftovers(work: Path) -> dict[str, list[str]]:
    tmp = [str(p.relative_to(work)) for p in (work / "results").rglob(".*.tmp")]
    incomplete = work / ".snakemake" / "incomplete"
    marks = [p.name for p in incomplete.iterdir()] if incomplete.is_dir() else []
    return {"temp_files": sorted(tmp), "incomplete_markers": sorted(marks)}


def file_state(path: Path) -> tuple[int, int, int] | None:
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_mtime_ns, st.st_size

