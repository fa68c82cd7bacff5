"""The import graph of the `wsss` package, read with `ast` (no module is imported).

The workflow derives each rule's code inputs from it: a stage depends on the source files of
its entry module and of every `wsss` module those import, directly or not, at module level or
inside a function (lazy imports run too), plus the `__init__.py` of every package on the way
(importing `wsss.a.b` executes `wsss/a/__init__.py`). Editing any of them reruns the stage;
editing a module it does not reach leaves it alone. Components loaded by name at run time
(a variant's method, a refiner kind) are not in the static graph: the workflow adds their
modules as further entries, through the registry.
"""

from __future__ import annotations

import ast
import functools
from collections.abc import Iterable
from pathlib import Path

from wsss.registry import PACKAGE_ROOT, module_name

PACKAGE = "wsss"


def module_path(module: str) -> Path | None:
    """The source file of a `wsss` module or package, or None when there is none."""
    parts = module.split(".")
    if parts[0] != PACKAGE:
        return None
    base = PACKAGE_ROOT.joinpath(*parts[1:])
    if base.with_suffix(".py").is_file():
        return base.with_suffix(".py")
    if (base / "__init__.py").is_file():
        return base / "__init__.py"
    return None


def _is_package(module: str) -> bool:
    path = module_path(module)
    return path is not None and path.name == "__init__.py"


def _resolve(module: str, node: ast.ImportFrom) -> str:
    """The absolute module an ImportFrom names (relative imports resolved)."""
    if not node.level:
        return node.module or ""
    parts = module.split(".")
    if not _is_package(module):
        parts = parts[:-1]
    parts = parts[: len(parts) - (node.level - 1)]
    return ".".join(parts + ([node.module] if node.module else []))


@functools.cache
def direct_imports(module: str) -> frozenset[str]:
    """The `wsss` modules one module imports anywhere in its body (TYPE_CHECKING included:
    annotations only, but a cheap and safe over-approximation). `module` may also be
    "file:<path>", a plug-in file outside the package (registry.PLUGINS_ENV)."""
    path = Path(module[5:]) if module.startswith("file:") else module_path(module)
    if path is None:
        return frozenset()
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            target = _resolve(module, node)
            found.add(target)
            # `from wsss.pkg import mod` imports the submodule wsss.pkg.mod
            found.update(f"{target}.{a.name}" for a in node.names
                         if module_path(f"{target}.{a.name}") is not None)
    return frozenset(m for m in found if module_path(m) is not None and m != module)


def _source(module: str) -> Path | None:
    return Path(module[5:]) if module.startswith("file:") else module_path(module)


def _parents(module: str) -> list[str]:
    if module.startswith("file:"):
        return []
    parts = module.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def closure(entries: Iterable[str]) -> list[str]:
    """Every `wsss` module that importing `entries` executes, sorted."""
    seen: set[str] = set()
    todo = [m for m in entries]
    while todo:
        module = todo.pop()
        if module in seen or _source(module) is None:
            continue
        seen.add(module)
        todo.extend(direct_imports(module))
        todo.extend(_parents(module))
    return sorted(seen)


def source_files(entries: Iterable[str]) -> list[str]:
    """The source files of `closure(entries)`, as sorted path strings."""
    return sorted(str(_source(m)) for m in closure(entries))


def graph() -> dict[str, frozenset[str]]:
    """module -> its direct `wsss` imports, for every module of the package."""
    modules = [module_name(p) for p in sorted(PACKAGE_ROOT.rglob("*.py"))]
    return {m: direct_imports(m) for m in modules}
