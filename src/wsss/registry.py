"""The registry of extension points, readable without importing torch.

Every method, refiner kind, backbone and DeepLab architecture declares itself once, in its own
module, with a module-level literal::

    REGISTER = {"kind": "method", "name": "mymethod", "block": "mymethod", "plugin": True,
                "schema": {...}}

(or a list of such dicts when one module holds several components). `schema` is the JSON-schema
of the component's settings, defaults included: the one place its defaults live. The runtime
reads them with `defaults()`; the workflow assembles its config schema from them
(`wsss.schema`); common.smk, the summary order and the figures read names and capabilities from
here. Nothing else lists component names.

The declarations are read with `ast.literal_eval`, so Snakemake can consult the registry at
parse time without importing torch. Modules outside the package (a researcher's own method)
join by naming their files in the `WSSS_PLUGINS` environment variable (os.pathsep-separated).

Capabilities by kind:
- method: `block` (its settings key in a method block), `plugin` (adds losses onto a base named
  by `<block>.base`), `base` (can serve as a plug-in's base), `seg_head` (predicts masks),
  `cam_norm` (how `wsss.cams` normalises its CAM planes: "max" or "minmax"; a plug-in without
  one takes its base's, `method_capability`).
- refiner: `learned` (trains a network), `walk_keys` (settings read only by its walk),
  `network_log` (stem of its training log), `needs_seg_head` (reads a method's masks), `order`.
- backbone, deeplab_arch: `name` only (and `order`).
"""

from __future__ import annotations

import ast
import copy
import functools
import importlib
import importlib.util
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from wsss.errors import ConfigError

PACKAGE_ROOT = Path(__file__).resolve().parent
KINDS = ("method", "refiner", "backbone", "deeplab_arch")
PLUGINS_ENV = "WSSS_PLUGINS"


@dataclass(frozen=True)
class Component:
    """One declared component: where it lives and what it can do."""

    kind: str
    name: str
    module: str  # dotted module name, or "file:<path>" for a plug-in file
    path: Path
    info: dict[str, Any] = field(default_factory=dict, compare=False)
    schema: dict[str, Any] | None = field(default=None, compare=False)

    def get(self, key: str, default: Any = None) -> Any:
        return self.info.get(key, default)


def _declarations(path: Path) -> list[dict[str, Any]]:
    """The REGISTER literal(s) of a source file, without importing it."""
    text = path.read_text()
    if "REGISTER" not in text:
        return []
    for node in ast.parse(text, filename=str(path)).body:
        if (isinstance(node, ast.Assign) and len(node.targets) == 1
                and isinstance(node.targets[0], ast.Name) and node.targets[0].id == "REGISTER"):
            try:
                value = ast.literal_eval(node.value)
            except ValueError as err:
                raise ConfigError(f"{path}: REGISTER must be a literal ({err})") from err
            return value if isinstance(value, list) else [value]
    return []


def module_name(path: Path) -> str:
    """`wsss.x.y` for src/wsss/x/y.py (and `wsss.x` for src/wsss/x/__init__.py)."""
    parts = list(Path(path).resolve().relative_to(PACKAGE_ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def plugin_files() -> list[Path]:
    """Extra component files named by WSSS_PLUGINS."""
    raw = os.environ.get(PLUGINS_ENV, "")
    files = [Path(p).resolve() for p in raw.split(os.pathsep) if p.strip()]
    for f in files:
        if not f.is_file():
            raise ConfigError(f"{PLUGINS_ENV}: no such file {f}")
    return files


@functools.cache
def _scan(plugins: tuple[Path, ...]) -> dict[str, dict[str, Component]]:
    found: dict[str, list[tuple[Any, Component]]] = {k: [] for k in KINDS}
    sources = [(p, module_name(p)) for p in sorted(PACKAGE_ROOT.rglob("*.py"))]
    sources += [(p, f"file:{p}") for p in plugins]
    for path, module in sources:
        for decl in _declarations(path):
            decl = dict(decl)
            kind, name = decl.pop("kind", None), decl.pop("name", None)
            if kind not in KINDS or not isinstance(name, str):
                raise ConfigError(f"{path}: REGISTER needs kind (one of {KINDS}) and a name")
            schema = decl.pop("schema", None)
            comp = Component(kind, name, module, path, decl, schema)
            for other in found[kind]:
                if other[1].name == name:
                    raise ConfigError(f"{kind} '{name}' is declared twice: {other[1].path} "
                                      f"and {path}")
            found[kind].append(((decl.get("order", 100), name), comp))
    return {k: {c.name: c for _, c in sorted(v, key=lambda t: t[0])} for k, v in found.items()}


def components(kind: str) -> dict[str, Component]:
    """name -> component of one kind, in declaration order (`order`, then name)."""
    if kind not in KINDS:
        raise ValueError(f"unknown component kind '{kind}'")
    return _scan(tuple(plugin_files()))[kind]


def names(kind: str) -> list[str]:
    return list(components(kind))


def component(kind: str, name: Any, key: str = "") -> Component:
    """The component `name` of `kind`; a ConfigError names `key` and the choices otherwise."""
    comps = components(kind)
    if name not in comps:
        where = f"{key}: " if key else ""
        raise ConfigError(f"{where}unknown {kind.replace('_', ' ')} {name!r}; "
                          f"choose one of {list(comps)}")
    return comps[name]


def load(comp: Component) -> ModuleType:
    """Import a component's module (so that its runtime registration runs)."""
    if not comp.module.startswith("file:"):
        return importlib.import_module(comp.module)
    mod_name = f"wsss_plugin_{comp.path.stem}"
    if mod_name in sys.modules:
        return sys.modules[mod_name]
    spec = importlib.util.spec_from_file_location(mod_name, comp.path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[mod_name] = module
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


# -- defaults ----------------------------------------------------------------------------------
def defaults(schema: dict[str, Any] | None) -> dict[str, Any]:
    """The defaults an object schema declares, nested objects included."""
    out: dict[str, Any] = {}
    for key, sub in ((schema or {}).get("properties") or {}).items():
        if "default" in sub:
            out[key] = copy.deepcopy(sub["default"])
        if sub.get("type") == "object" and "properties" in sub:
            nested = defaults(sub)
            if nested or "default" in sub:
                out[key] = merge_defaults(nested, out.get(key) or {})
    return out


def merge_defaults(base: dict[str, Any], given: dict[str, Any] | None) -> dict[str, Any]:
    """`base` deep-copied with `given` merged in recursively (nested dicts key by key)."""
    out = copy.deepcopy(base)
    for key, value in (given or {}).items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge_defaults(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def declared_settings(register: dict[str, Any], given: dict[str, Any] | None) -> dict[str, Any]:
    """A component's settings from its own REGISTER literal: the declared defaults with `given`
    merged in. A refiner block keeps its kind's name under `refiner`, first, as every refiner
    records its block."""
    base = defaults(register.get("schema"))
    if register.get("kind") == "refiner":
        base = {"refiner": register["name"], **base}
    return merge_defaults(base, given)


def settings(kind: str, name: str, given: dict[str, Any] | None) -> dict[str, Any]:
    """A component's settings by name (see `declared_settings`)."""
    comp = component(kind, name)
    return declared_settings({"kind": kind, "name": name, "schema": comp.schema}, given)


# -- a variant's method chain ------------------------------------------------------------------
def method_chain(block: dict[str, Any], key: str = "method") -> list[Component]:
    """The method components a variant's method block (`block["method"]`) is built from: its
    method and, for a plug-in, the chain of bases its block names (`<block>.base`, defaults
    included). `key` names the block's `method` entry in errors."""
    comp = component("method", block.get("method"), key)
    chain = [comp]
    prefix = key.rpartition(".")[0]
    while comp.get("plugin"):
        sub = comp.get("block") or comp.name
        base = settings("method", comp.name, block.get(sub)).get("base")
        comp = component("method", base, f"{prefix}.{sub}.base" if prefix else f"{sub}.base")
        if comp in chain:
            raise ConfigError(f"{key}: method {chain[0].name!r} has a cycle of bases")
        chain.append(comp)
    return chain


def method_capability(block: dict[str, Any], capability: str, default: Any = None) -> Any:
    """A capability a variant's method inherits: the first declaration of it along
    `method_chain(block)` (a plug-in's own, else its base's), `default` when none declares it.
    Only for capabilities that are properties of the maps a plug-in takes from its base (such
    as `cam_norm`); `seg_head` is not inherited (a base's head is not carried into a plug-in)."""
    for comp in method_chain(block):
        if capability in comp.info:
            return comp.info[capability]
    return default
