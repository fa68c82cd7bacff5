"""The configs that ship with the repository are valid, and the schema knows the registries."""

from pathlib import Path

import pytest
import yaml
from snakemake.utils import validate

from wsss.methods import METHODS
from wsss.models.backbones import BACKBONES

REPO = Path(__file__).resolve().parents[1]
SCHEMA = REPO / "workflow" / "schemas" / "config.schema.yaml"


CONFIGS = [REPO / "config.yaml", *sorted((REPO / "workflow" / "configs").glob("*.yaml"))]


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_configs_validate(path):
    cfg = yaml.safe_load(path.read_text())
    validate(cfg, str(SCHEMA))
    for name in cfg["run"]["variants"]:
        assert name in cfg["methods"]


def test_schema_enums_match_the_registries():
    defs = yaml.safe_load(SCHEMA.read_text())["$defs"]
    assert set(defs["method"]["properties"]["method"]["enum"]) == set(METHODS)
    assert set(defs["backbone"]["properties"]["name"]["enum"]) == set(BACKBONES)


def test_conda_env_has_the_same_pins_as_requirements():
    pins = [line.strip() for line in (REPO / "requirements.txt").read_text().splitlines()
            if line.strip() and not line.startswith("#")]
    env = yaml.safe_load((REPO / "envs" / "wsss.yaml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert pip == pins


def test_learned_refiner_defaults_are_valid_refiner_blocks():
    """A config written out from a refiner's DEFAULTS validates (schema and code agree on keys)."""
    import copy

    from wsss.refine import LEARNED_REFINERS, refiner_module

    cfg = yaml.safe_load((REPO / "config.yaml").read_text())
    for name in LEARNED_REFINERS:
        cfg["refiners"][f"{name}_defaults"] = copy.deepcopy(refiner_module(name).DEFAULTS)
    validate(cfg, str(SCHEMA))
    defs = yaml.safe_load(SCHEMA.read_text())["$defs"]
    assert set(defs["refiner"]["properties"]["refiner"]["enum"]) == {"crf", *LEARNED_REFINERS}


def test_walk_crf_switch_is_a_boolean():
    from snakemake.exceptions import WorkflowError

    cfg = yaml.safe_load((REPO / "config.yaml").read_text())
    cfg["refiners"]["irn"]["inference"] = {"crf": "yes"}
    with pytest.raises(WorkflowError, match="'yes' is not of type 'boolean'"):
        validate(cfg, str(SCHEMA))


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
    over = yaml.safe_load(path.read_text())
    cfg = _overlay(yaml.safe_load((REPO / "config.yaml").read_text()), over)
    validate(cfg, str(SCHEMA))
    assert set(cfg["run"]["refiners"]) <= set(cfg["refiners"])
    assert set(cfg["run"]["variants"]) <= set(cfg["methods"])
