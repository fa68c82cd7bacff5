"""The workflow's config schema, assembled from the generic file and the components' REGISTERs.

`workflow/schemas/config.schema.yaml` holds what belongs to no component (dataset, run,
evaluation, DeepLab, the generic backbone/training/inference blocks). Each component's own
settings block, and every list of names (methods, refiner kinds, backbones, DeepLab
architectures, plug-in bases), come from the registry, so a new component is one module.
Validation fills in defaults the way `snakemake.utils.validate` does: a property's `default`
when the key is missing.

Before validation, a `methods:` or `refiners:` block that names `like: <other variant>` becomes
that variant's block with its own keys merged in (`resolve_like`), so an overlay's variant can
switch one component and keep the main config's backbone, schedule and inference whatever the
main config is.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

from wsss import registry
from wsss.errors import ConfigError

BASE_SCHEMA = Path(__file__).resolve().parents[2] / "workflow" / "schemas" / "config.schema.yaml"


def assemble(base_path: str | Path = BASE_SCHEMA) -> dict[str, Any]:
    """The full JSON schema: the generic file with the registry's parts put in."""
    schema = yaml.safe_load(Path(base_path).read_text())
    defs = schema["$defs"]
    methods = registry.components("method")
    defs["method"]["properties"]["method"]["enum"] = list(methods)
    for comp in methods.values():
        block = comp.get("block")
        if block and comp.schema:
            defs["method"]["properties"][block] = copy.deepcopy(comp.schema)
    defs["plugin_base"]["enum"] = [c.name for c in methods.values() if c.get("base")]

    refiners = registry.components("refiner")
    defs["refiner"]["properties"]["refiner"]["enum"] = list(refiners)
    cases = []
    for comp in refiners.values():
        body = copy.deepcopy(comp.schema) or {"type": "object", "properties": {}}
        body.setdefault("type", "object")
        body.setdefault("additionalProperties", False)
        body["properties"] = {"refiner": {"const": comp.name}, **body.get("properties", {})}
        cases.append({"if": {"properties": {"refiner": {"const": comp.name}}}, "then": body})
    defs["refiner"]["allOf"] = cases

    defs["backbone"]["properties"]["name"]["enum"] = registry.names("backbone")
    arch = schema["properties"]["deeplab"]["properties"]["model"]["properties"]["arch"]
    arch["enum"] = registry.names("deeplab_arch")
    return schema


LIKE = "like"  # the key of a variant block that starts from another variant's block
LIKE_SECTIONS = ("methods", "refiners")


def resolve_like(config: dict[str, Any]) -> dict[str, Any]:
    """Resolve `like:` in place: each `methods.X` / `refiners.X` block with `like: Y` becomes
    Y's block (resolved first, so chains work) with X's own keys merged in, nested blocks key by
    key, lists and other values replaced (as a later --configfile merges); `like` itself is
    dropped. Y must be a variant of the same section; a cycle or an unknown name is a
    ConfigError naming the key."""
    for section in LIKE_SECTIONS:
        blocks = config.get(section)
        if isinstance(blocks, dict):
            done: dict[str, Any] = {}
            for name in list(blocks):
                blocks[name] = _resolved(section, blocks, name, [name], done)
    return config


def _resolved(section: str, blocks: dict[str, Any], name: str, chain: list[str],
              done: dict[str, Any]) -> Any:
    if name in done:
        return done[name]
    block = blocks[name]
    if isinstance(block, dict) and LIKE in block:
        other, key = block[LIKE], f"{section}.{name}.{LIKE}"
        if not isinstance(other, str) or other not in blocks:
            raise ConfigError(f"config key {key}: {other!r} is not a key of {section} "
                              f"({sorted(blocks)})")
        if other in chain:
            raise ConfigError(f"config key {key}: a cycle ({' -> '.join([*chain, other])})")
        parent = _resolved(section, blocks, other, [*chain, other], done)
        if not isinstance(parent, dict):
            raise ConfigError(f"config key {key}: {section}.{other} is not a block")
        block = registry.merge_defaults(parent, {k: v for k, v in block.items() if k != LIKE})
    done[name] = block
    return block


def _path(error) -> str:
    return ".".join(str(p) for p in error.absolute_path) or "(top level)"


def validate_config(config: dict[str, Any], base_path: str | Path = BASE_SCHEMA) -> dict[str, Any]:
    """Validate `config` in place against the assembled schema, filling in defaults, after
    resolving `like:` (`resolve_like`); a ConfigError names the offending key."""
    from jsonschema import Draft202012Validator, validators
    from jsonschema.exceptions import best_match

    resolve_like(config)

    schema = assemble(base_path)
    check = Draft202012Validator.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, sub):
        if isinstance(instance, dict):
            for key, prop in properties.items():
                if "default" in prop:
                    instance.setdefault(key, copy.deepcopy(prop["default"]))
        yield from check(validator, properties, instance, sub)

    filling = validators.extend(Draft202012Validator, {"properties": set_defaults})
    error = best_match(filling(schema).iter_errors(config))
    if error is not None:
        raise ConfigError(f"config key {_path(error)}: {error.message}")
    return config
