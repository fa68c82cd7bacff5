"""Data flows one way: no module imports a higher layer, and the import graph has no cycle.

The graph is the one the workflow derives code inputs from (`wsss.imports`, read with `ast`),
lazy imports inside functions included: a cycle kept alive by a lazy import is still a cycle.
"""

from __future__ import annotations

import pytest

from wsss.imports import direct_imports, graph

# lowest first; a module may import its own layer and the ones before it
LAYERS: list[tuple[str, ...]] = [
    ("wsss", "wsss.errors", "wsss.registry", "wsss.imports", "wsss.locks", "wsss.schema",
     "wsss.store", "wsss.paths"),
    ("wsss.data", "wsss.models", "wsss.ops", "wsss.train"),
    ("wsss.methods", "wsss.classifier", "wsss.pretrain"),
    ("wsss.cams",),
    ("wsss.refine",),
    ("wsss.deeplab",),
    ("wsss.metrics", "wsss.evaluate", "wsss.eval_partials", "wsss.diagnostics"),
    ("wsss.report",),
    ("wsss.cli", "wsss.__main__"),
]


def layer_of(module: str) -> int:
    """The layer of the longest prefix that names `module` or a package above it."""
    best, depth = None, -1
    for i, prefixes in enumerate(LAYERS):
        for p in prefixes:
            if (module == p or module.startswith(p + ".")) and p.count(".") > depth:
                best, depth = i, p.count(".")
    if best is None:
        raise AssertionError(f"{module} is in no layer of tests/test_layers.py")
    return best


def upward_imports(edges: dict[str, frozenset[str]]) -> list[str]:
    return sorted(f"{m} (layer {layer_of(m)}) imports {d} (layer {layer_of(d)})"
                  for m, deps in edges.items() for d in deps if layer_of(d) > layer_of(m))


def cycles(edges: dict[str, frozenset[str]]) -> list[list[str]]:
    """Each strongly connected group of more than one module (Tarjan), as a sorted list."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def test_every_module_has_a_layer():
    for module in graph():
        layer_of(module)


def test_no_module_imports_a_higher_layer():
    assert upward_imports(graph()) == []


def test_the_import_graph_has_no_cycle():
    assert cycles(graph()) == []


def test_the_checks_catch_what_they_are_for():
    """An upward edge and a two-module cycle, hand-made, are reported."""
    edges = {"wsss.methods.x": frozenset({"wsss.refine.y"}),
             "wsss.refine.y": frozenset({"wsss.methods.x"})}
    assert upward_imports(edges) == [
        "wsss.methods.x (layer 2) imports wsss.refine.y (layer 4)"]
    assert cycles(edges) == [["wsss.methods.x", "wsss.refine.y"]]
    assert cycles({"wsss.a": frozenset({"wsss.b"}), "wsss.b": frozenset()}) == []


def test_lazy_imports_count(tmp_path, monkeypatch):
    """An import inside a function is an edge (it runs when the function does)."""
    from wsss import imports

    pkg = tmp_path / "wsss"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "a.py").write_text("def f():\n    from wsss.sub import b\n    return b\n")
    (pkg / "sub" / "b.py").write_text("from . import c\n")
    (pkg / "sub" / "c.py").write_text("import os\n")
    monkeypatch.setattr(imports, "PACKAGE_ROOT", pkg)
    imports.direct_imports.cache_clear()
    try:
        assert direct_imports("wsss.sub.a") == {"wsss.sub", "wsss.sub.b"}
        assert direct_imports("wsss.sub.b") == {"wsss.sub", "wsss.sub.c"}
        assert imports.closure(["wsss.sub.a"]) == ["wsss", "wsss.sub", "wsss.sub.a",
                                                    "wsss.sub.b", "wsss.sub.c"]
    finally:
        imports.direct_imports.cache_clear()


@pytest.mark.parametrize("module", ["wsss.cli.crf", "wsss.cli.summary"])
def test_a_command_reaches_only_its_own_stage(module):
    """The CLI package lists its commands at run time, so one command's code inputs do not
    include the other stages (an edit to DeepLab does not rerun the CRF)."""
    from wsss.imports import closure

    reached = closure([module])
    assert not [m for m in reached if m.startswith("wsss.deeplab")]
    assert "wsss.methods.base" not in reached
