"""The registry reads declarations without importing, and each name lives in one module."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

from wsss import registry

REPO = Path(__file__).resolve().parents[1]


def test_reading_the_registry_imports_no_torch():
    code = ("import sys; from wsss import registry, schema; schema.assemble(); "
            "[registry.components(k) for k in registry.KINDS]; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_defaults_follow_nested_objects_and_merge_keeps_given_values():
    schema = {"type": "object", "properties": {
        "a": {"type": "number", "default": 1},
        "b": {"type": "object", "properties": {"c": {"type": "number", "default": 2},
                                                "d": {"type": "number"}}},
        "e": {"type": "number"}}}
    assert registry.defaults(schema) == {"a": 1, "b": {"c": 2}}
    merged = registry.merge_defaults(registry.defaults(schema), {"b": {"d": 5}, "a": 3})
    assert merged == {"a": 3, "b": {"c": 2, "d": 5}}


def test_an_unknown_name_names_the_key_and_the_choices():
    from wsss.errors import ConfigError

    with pytest.raises(ConfigError, match=r"methods\.x\.method: unknown method 'nope'"):
        registry.component("method", "nope", "methods.x.method")


# The names the extension-points issue singles out: each may be written, as a string or an
# identifier, only in the module that declares it (comments and docstrings aside).
OWNED = ["dscnet", "psa", "irn", "hsc", "acr", "csrm", "fsr"]


def _code_mentions(name: str) -> set[str]:
    import io
    import tokenize

    hits = set()
    files = [*(REPO / "src").rglob("*.py"), REPO / "Snakefile",
             *(REPO / "workflow" / "rules").glob("*.smk"),
             *(REPO / "workflow" / "schemas").glob("*.yaml")]
    for path in files:
        text = path.read_text()
        if name not in text:
            continue
        if path.suffix != ".py":
            word = re.compile(rf"(?<![\w]){name}(?![\w])")
            if any(word.search(line.split("#")[0]) for line in text.splitlines()):
                hits.add(str(path.relative_to(REPO)))
            continue
        for tok in tokenize.generate_tokens(io.StringIO(text).readline):
            if tok.type == tokenize.NAME and tok.string == name:
                hits.add(str(path.relative_to(REPO)))
            elif tok.type == tokenize.STRING and not tok.string.startswith(('"""', "'''")) \
                    and name in tok.string.strip("'\"frb").split("."):
                hits.add(str(path.relative_to(REPO)))
    return hits


@pytest.mark.parametrize("name", OWNED)
def test_a_component_is_named_only_in_its_own_module(name):
    comp = next(c for k in ("method", "refiner") for c in registry.components(k).values()
                if c.name == name)
    own = comp.path.relative_to(REPO)
    siblings = {str(p.relative_to(REPO)) for p in comp.path.parent.glob(f"{comp.path.stem}*.py")}
    assert _code_mentions(name) <= {str(own), *siblings}
