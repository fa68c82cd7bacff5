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


KIND_KEYS = {"methods": "method", "refiners": "refiner"}  # the key naming a block's component


def _check_named(config: dict[str, Any]) -> None:
    """A block that names neither its component nor `like:` is most often an overlay's keys
    for a variant the main config does not have (a misspelt or a removed name); say so, with
    the variants it could have meant, instead of the schema's bare missing-property message."""
    for section, kind in KIND_KEYS.items():
        blocks = config.get(section)
        if not isinstance(blocks, dict):
            continue
        known = sorted(n for n, b in blocks.items() if isinstance(b, dict) and
                       (kind in b or LIKE in b))
        for name, block in blocks.items():
            if isinstance(block, dict) and kind not in block and LIKE not in block:
                raise ConfigError(
                    f"config key {section}.{name}: sets neither '{kind}' nor '{LIKE}', so it "
                    f"is none of the variants defined in {section} ({known}); an overlay "
                    f"changes a variant under its exact name, and a new variant needs "
                    f"'{kind}: <name>' or '{LIKE}: <variant>'")


def _like_depths(config: dict[str, Any]) -> dict[tuple[str, str], int]:
    """(section, name) -> how many `like:` steps a block is from one written out in full (0),
    read before resolve_like replaces the blocks."""
    depths: dict[tuple[str, str], int] = {}
    for section in LIKE_SECTIONS:
        blocks = config.get(section)
        if not isinstance(blocks, dict):
            continue
        for name in blocks:
            hops, seen, block = 0, {name}, blocks[name]
            while isinstance(block, dict) and isinstance(block.get(LIKE), str):
                hops += 1
                if block[LIKE] in seen:  # a cycle: resolve_like refuses it
                    break
                seen.add(block[LIKE])
                block = blocks.get(block[LIKE])
            depths[(section, name)] = hops
    return depths


def _first_written(errors: list, depths: dict[tuple[str, str], int]):
    """The error to report: among those in the blocks fewest `like:` steps from one written
    out in full. A wrong value in `baseline` is copied into every `like: baseline` variant,
    and naming one of those (methods.seam.training.epochs) would send the reader to a block
    that does not hold the value; the one written in full (methods.baseline...) does."""
    from jsonschema.exceptions import best_match

    def depth(error) -> int:
        return depths.get(tuple(str(p) for p in list(error.absolute_path)[:2]), 0)

    if not errors:
        return None
    least = min(map(depth, errors))
    return best_match(e for e in errors if depth(e) == least)


def validate_config(config: dict[str, Any], base_path: str | Path = BASE_SCHEMA) -> dict[str, Any]:
    """Validate `config` in place against the assembled schema, filling in defaults, after
    resolving `like:` (`resolve_like`); a ConfigError names the offending key, in the block
    that holds it rather than a `like:` copy (`_first_written`), and a methods / refiners
    block that names no component is reported as the missing variant it most likely is."""
    from jsonschema import Draft202012Validator, validators

    _check_named(config)
    depths = _like_depths(config)
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
    error = _first_written(list(filling(schema).iter_errors(config)), depths)
    if error is not None:
        raise ConfigError(f"config key {_path(error)}: {error.message}")
    return config
