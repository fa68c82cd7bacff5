"""The resume key: what a training run is trained from besides its config.

The resume key (`resume_key`) records what a run is trained from besides its config: a digest
of the code and one of each input file. `wsss.train.fit` resumes a checkpoint only when its
config and key equal the run's (`stale_reasons`), so a job Snakemake reruns because its code or
data changed starts afresh instead of continuing, or even returning, the old run.

- code: sha256 over (path relative to the package, bytes) of the sorted source files of the
  static import closure (`wsss.imports.source_files`, the graph common.smk's `code()` derives a
  rule's code inputs from) of the stage's entries (its command module, method chain and
  backbone modules, as common.smk lists them) plus the modules defining every class of the
  trained network (its submodules and their bases) and of the training set, and `wsss.train`
  itself. A superset of the rule's code inputs: every edit that reruns the job changes the key
  (a component loaded by name that the rule misses is still covered by its classes); an edit
  to an extra file only costs a fresh start after a kill. Static files, not `sys.modules`:
  the digest does not depend on what happens to be imported when training starts.
- inputs: role -> {path, sha256 of the bytes}; only the digests are compared, so a moved but
  unchanged file still resumes.
"""

from __future__ import annotations

import hashlib
import os
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from wsss import registry
from wsss.imports import source_files
from wsss.paths import SYNTHETIC, pretrained_path


def _entry(module: str) -> str | None:
    """The import-graph entry of a loaded module: `wsss.x.y`, "file:<path>" for a plug-in
    file (`registry.load`), None for modules outside the package (torch)."""
    file = getattr(sys.modules.get(module), "__file__", None)
    if not file:
        return None
    path = Path(file).resolve()
    if path.is_relative_to(registry.PACKAGE_ROOT):
        return registry.module_name(path)
    return f"file:{path}" if module.startswith("wsss_plugin_") else None


def class_modules(*objects: Any) -> list[str]:
    """The `wsss` modules (and plug-in files) defining the classes of `objects`, of their
    submodules when they are `nn.Module`s, and of all their bases."""
    found: set[str] = set()
    for obj in objects:
        parts = list(obj.modules()) if isinstance(obj, nn.Module) else [obj]
        for part in parts:
            for cls in type(part).__mro__:
                entry = _entry(cls.__module__)
                if entry is not None:
                    found.add(entry)
    return sorted(found)


def code_digest(entries: Iterable[str]) -> str:
    """sha256 over the source files of the import closure of `entries`."""
    digest = hashlib.sha256()
    for name in source_files(entries):
        path = Path(name)
        label = (path.relative_to(registry.PACKAGE_ROOT).as_posix()
                 if path.is_relative_to(registry.PACKAGE_ROOT) else str(path))
        data = path.read_bytes()
        digest.update(f"{label}\0{len(data)}\0".encode())
        digest.update(data)
    return digest.hexdigest()


def file_digest(path: str | os.PathLike) -> str:
    """sha256 of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def _blocks(block: Any) -> Iterable[dict[str, Any]]:
    """Every dict in a config block, at any depth."""
    if isinstance(block, dict):
        yield block
        values: Iterable[Any] = block.values()
    elif isinstance(block, list):
        values = block
    else:
        return
    for value in values:
        yield from _blocks(value)


def backbone_modules(block: Any) -> list[str]:
    """The registry modules of the backbones a config block names (as common.smk's)."""
    return sorted({registry.component("backbone", b["backbone"]["name"]).module
                   for b in _blocks(block)
                   if isinstance(b.get("backbone"), dict) and "name" in b["backbone"]})


def pretrained_inputs(block: Any) -> dict[str, Path]:
    """"pretrained <path>" -> path of the weight files the backbone blocks of a config block
    load (`pretrained: synthetic` or a path; ImageNet weights come with torchvision)."""
    found: dict[str, Path] = {}
    for b in _blocks(block):
        source, name = b.get("pretrained"), b.get("name")
        if not isinstance(source, str) or not isinstance(name, str):
            continue
        if source in ("none", "imagenet"):
            continue
        path = pretrained_path(name) if source == SYNTHETIC else Path(source)
        found[f"pretrained {path}"] = path
    return found


def resume_key(method: nn.Module, trainset: Any = None, code: Iterable[str] = (),
               inputs: Mapping[str, str | os.PathLike | None] | None = None) -> dict[str, Any]:
    """What a run is trained from besides its config (see the module doc): the code digest of
    `code` (import-graph entries), the classes of `method` and `trainset` and `wsss.train`;
    and the digest of each input file (roles whose path is None are left out)."""
    entries = {*code, "wsss.train", *class_modules(method, trainset)}
    files = {}
    for role, path in (inputs or {}).items():
        if path is not None:
            sha = file_digest(path) if Path(path).is_file() else None
            files[role] = {"path": str(path), "sha256": sha}
    return {"code": code_digest(sorted(entries)), "inputs": files}


_MISSING = object()


def _differing(a: Any, b: Any, prefix: str = "") -> list[str]:
    """The dotted keys at which two config blocks differ."""
    if not (isinstance(a, dict) and isinstance(b, dict)):
        return [prefix[:-1] or "the whole block"]
    out = []
    for k in sorted(set(a) | set(b), key=str):
        x, y = a.get(k, _MISSING), b.get(k, _MISSING)
        if x != y:
            out += _differing(x, y, f"{prefix}{k}.")
    return out


def stale_reasons(saved: Mapping[str, Any], meta: Mapping[str, Any]) -> list[str]:
    """Why a checkpoint's record (`saved`: its config and `resume_key`) is not this run's
    (`meta`); empty when it may be resumed."""
    reasons = []
    if saved.get("config") != meta.get("config"):
        keys = _differing(saved.get("config"), meta.get("config"))
        more = ", ..." if len(keys) > 6 else ""
        reasons.append(f"another config ({', '.join(keys[:6])}{more})")
    old, new = saved.get("resume_key"), meta["resume_key"]
    if not isinstance(old, dict):
        return [*reasons, "it records no code or data digest (an older version wrote it)"]
    if old.get("code") != new["code"]:
        reasons.append("code changed (the wsss source files it was trained with)")
    was, now = old.get("inputs") or {}, new["inputs"]
    changed = [f"{role} ({(now.get(role) or was[role])['path']})"
               for role in sorted(set(was) | set(now))
               if (was.get(role) or {}).get("sha256", _MISSING)
               != (now.get(role) or {}).get("sha256", _MISSING)]
    if changed:
        reasons.append(f"data changed: {', '.join(changed)}")
    return reasons


def architecture_differences(saved: Mapping[str, Any], mine: Mapping[str, Any]) -> list[str]:
    """How the state dict `saved` differs from `mine` in keys and tensor shapes."""
    out = []
    for k, v in mine.items():
        if k not in saved:
            out.append(f"{k} missing from the file")
        elif torch.is_tensor(v) and torch.is_tensor(saved[k]) and saved[k].shape != v.shape:
            out.append(f"{k} {list(saved[k].shape)} in the file, {list(v.shape)} here")
    out += [f"{k} not in this network" for k in saved if k not in mine]
    return out
