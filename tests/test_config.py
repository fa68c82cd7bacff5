"""The configs that ship with the repository are valid against the schema assembled from the
generic file and the components' REGISTER schemas, and each component's defaults are its own."""

import copy
from pathlib import Path

import pytest
import yaml

from wsss import registry
from wsss.errors import ConfigError
from wsss.schema import assemble, validate_config

REPO = Path(__file__).resolve().parents[1]
CONFIGS = [REPO / "config.yaml", *sorted((REPO / "workflow" / "configs").glob("*.yaml"))]


def _default() -> dict:
    return yaml.safe_load((REPO / "config.yaml").read_text())


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_configs_validate(path):
    cfg = yaml.safe_load(path.read_text())
    validate_config(cfg)
    for name in cfg["run"]["variants"]:
        assert name in cfg["methods"]


def test_conda_env_has_the_same_pins_as_requirements():
    pins = [line.strip() for line in (REPO / "requirements.txt").read_text().splitlines()
            if line.strip() and not line.startswith("#")]
    env = yaml.safe_load((REPO / "envs" / "wsss.yaml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert pip == pins


@pytest.mark.parametrize("kind", ["method", "refiner"])
def test_every_component_default_is_a_valid_block(kind):
    """A block written out from a component's declared defaults validates: a default that
    breaks its own schema (a typo, a wrong type, a value out of range) fails here."""
    cfg = _default()
    for comp in registry.components(kind).values():
        if not comp.schema:
            continue
        defaults = registry.defaults(comp.schema)
        if kind == "refiner":
            cfg["refiners"][f"{comp.name}_defaults"] = {"refiner": comp.name, **defaults}
        elif comp.get("block"):
            block = copy.deepcopy(cfg["methods"]["baseline"])
            block.update(method=comp.name, **{comp.get("block"): defaults})
            cfg["methods"][f"{comp.name}_defaults"] = block
    validate_config(cfg)


def test_a_misspelt_key_in_a_component_block_is_named():
    cfg = _default()
    kind = next(c for c in registry.components("refiner").values() if c.get("learned"))
    name = next(n for n, r in cfg["refiners"].items() if r["refiner"] == kind.name)
    cfg["refiners"][name]["radiuss"] = 3
    with pytest.raises(ConfigError, match=rf"refiners\.{name}.*'radiuss' was unexpected"):
        validate_config(cfg)


def test_a_wrong_type_names_the_key():
    cfg = _default()
    name = next(n for n, r in cfg["refiners"].items()
                if registry.component("refiner", r["refiner"]).get("learned"))
    cfg["refiners"][name]["inference"] = {"crf": "yes"}
    with pytest.raises(ConfigError, match=rf"refiners\.{name}\.inference\.crf.*boolean"):
        validate_config(cfg)


def test_defaults_are_filled_from_the_component():
    """A refiner block that gives only its kind gets the kind's declared defaults."""
    cfg = _default()
    kind = next(iter(registry.components("refiner").values()))
    cfg["refiners"]["bare"] = {"refiner": kind.name}
    validate_config(cfg)
    for key, value in registry.defaults(kind.schema).items():
        assert cfg["refiners"]["bare"][key] == value


def test_a_plugin_file_joins_the_registry_and_the_schema(tmp_path, monkeypatch):
    """A component outside the package (WSSS_PLUGINS) is a method name and a block key, with
    its defaults, without any edit to the package or the schema file."""
    plugin = tmp_path / "mine.py"
    plugin.write_text('REGISTER = {"kind": "method", "name": "mine", "block": "mine", '
                      '"schema": {"type": "object", "additionalProperties": False, '
                      '"properties": {"w": {"type": "number", "default": 0.5}}}}\n')
    monkeypatch.setenv(registry.PLUGINS_ENV, str(plugin))
    schema = assemble()
    assert "mine" in schema["$defs"]["method"]["properties"]["method"]["enum"]
    cfg = _default()
    cfg["methods"]["m"] = {**copy.deepcopy(cfg["methods"]["baseline"]), "method": "mine",
                           "mine": {}}
    validate_config(cfg)
    assert cfg["methods"]["m"]["mine"] == {"w": 0.5}
    cfg["methods"]["m"]["mine"] = {"w": "heavy"}
    with pytest.raises(ConfigError, match=r"methods\.m\.mine\.w"):
        validate_config(cfg)


def test_a_name_declared_twice_is_refused(tmp_path, monkeypatch):
    taken = next(iter(registry.components("method")))
    plugin = tmp_path / "dup.py"
    plugin.write_text(f'REGISTER = {{"kind": "method", "name": "{taken}"}}\n')
    monkeypatch.setenv(registry.PLUGINS_ENV, str(plugin))
    with pytest.raises(ConfigError, match="declared twice"):
        registry.components("method")


def _overlay(base: dict, over: dict) -> dict:
    """Snakemake's merge of a later --configfile: nested dicts merged, other values replaced."""
    out = dict(base)
    for key, value in over.items():
        both = isinstance(value, dict) and isinstance(base.get(key), dict)
        out[key] = _overlay(base[key], value) if both else value
    return out


OVERLAYS = sorted((REPO / "workflow" / "configs" / "ablations").glob("*.yaml"))


@pytest.mark.parametrize("path", OVERLAYS, ids=lambda p: p.name)
def test_ablation_overlays_validate_on_the_default_config(path):
    cfg = _overlay(_default(), yaml.safe_load(path.read_text()))
    validate_config(cfg)
    assert set(cfg["run"]["refiners"]) <= set(cfg["refiners"])
    assert set(cfg["run"]["variants"]) <= set(cfg["methods"])


def test_the_training_contract_falls_back_to_the_schema_defaults():
    """Blocks that skip the generic keys (a learned refiner's training block, a test's) get
    the code's fallbacks; they must be the schema's defaults, or the same run would differ
    between the workflow and a hand-run stage."""
    from wsss.cams import DEFAULT_SEG_FUSION
    from wsss.train import TRAINING_DEFAULTS

    defs = assemble()["$defs"]
    training = registry.defaults(defs["training"])
    # keys added without a schema default (so existing blocks are recorded unchanged) fall
    # back to the value that leaves the run as it was: no warm-up offset
    unrecorded = {"warmup_start": 0.0}
    assert set(unrecorded) <= set(defs["training"]["properties"])
    assert not set(unrecorded) & set(training)
    assert {k: training.get(k, unrecorded.get(k)) for k in TRAINING_DEFAULTS} == TRAINING_DEFAULTS
    assert training["views"] == 1
    assert registry.defaults(defs["inference"])["seg_fusion"] == DEFAULT_SEG_FUSION


@pytest.mark.parametrize("edit,named", [
    # the wrong value is copied into seam (like: baseline), hsc and dscnet (like: seam)
    (lambda m: m["baseline"]["training"].update(epochs="ten"), "methods.baseline.training"),
    (lambda m: m["baseline"].update(trainig={}), "methods.baseline:"),
    # aa's own value, one `like:` step from a full block, copied into zz, two steps away
    (lambda m: m.update(aa={"like": "baseline", "training": {"epochs": "ten"}},
                        zz={"like": "aa"}), "methods.aa.training"),
])
def test_an_inherited_error_is_named_where_it_is_written(edit, named):
    cfg = _default()
    edit(cfg["methods"])
    with pytest.raises(ConfigError) as err:
        validate_config(cfg)
    assert str(err.value).startswith(f"config key {named}"), err.value


def test_a_block_naming_no_component_is_taken_for_a_missing_variant():
    """An overlay's `methods: {baselin: {training: ...}}` (a misspelt variant) adds a block
    that names no method: the message says which variants there are."""
    cfg = _default()
    cfg["methods"]["baselin"] = {"training": {"lr": 0.1}}
    with pytest.raises(ConfigError, match=r"methods\.baselin: sets neither 'method' nor 'like'"
                                          r".*'baseline'"):
        validate_config(cfg)
    cfg = _default()
    cfg["refiners"]["crff"] = {"iterations": 3}
    with pytest.raises(ConfigError, match=r"refiners\.crff: sets neither 'refiner'.*'crf'"):
        validate_config(cfg)
