"""The ablation overlays (workflow/configs/ablations/) switch components only: after any main
config (config.yaml, workflow/configs/voc.yaml) each of their variants trains with that main
config's backbone, schedule and inference, checked on the blocks the real workflow hands its
jobs in a dry run. Also `like:` (wsss.schema.resolve_like), which lets them say so."""

from __future__ import annotations

import copy
import json
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from snakemake.settings.types import ConfigSettings

from wsss import registry
from wsss.errors import ConfigError
from wsss.schema import validate_config

REPO = Path(__file__).resolve().parents[1]
ABLATIONS = REPO / "workflow" / "configs" / "ablations"
MAINS = [REPO / "config.yaml", REPO / "workflow" / "configs" / "voc.yaml"]

# What each overlay may change in a main-config variant: dotted paths (and everything under
# them). A backbone, schedule or inference block written into an overlay shows up as a change
# outside these and fails; seeds.yaml may set the training seed and nothing else.
SWITCHES = {
    "acr_losses.yaml": {"acr.weights.cu_t", "acr.weights.cu_nt"},
    "acr_srf.yaml": {"acr.srf.enabled"},
    "csrm_losses.yaml": {"csrm.weights.s2c", "csrm.weights.u", "csrm.weights.contrast",
                         "csrm.classmix.prob"},
    "csrm_thresholds.yaml": {"csrm.c2s.fg", "csrm.s2c.sigma"},
    "fsr_reinforcement.yaml": {"fsr.weights.fsr_cls", "fsr.weights.fsr_patch", "fsr.aggregate"},
    "fsr_masking.yaml": {"fsr.masking.strategy", "fsr.masking.ratio"},
    "dscnet_modules.yaml": {"dscnet.components", "dscnet.infer_from"},
    "hsc_components.yaml": {"hsc.components", "hsc.crf.psc", "hsc.crf.rsc_csc"},
    # seeds.yaml: the training seed; CSRM's seeds also start from the baseline of their seed
    "seeds.yaml": {"training.seed", "init_from"},
    "irn_thresholds.yaml": {"conf_fg", "conf_bg"},
    # the embedded benchmark's schedule grid (after config.yaml only: its numbers are the
    # benchmark's): schedules and seeds, nothing else
    "schedule.yaml": {"training.epochs", "training.lr", "training.seed"},
    # ACR's small reconstructor on three seeds (after config.yaml only)
    "acr_small.yaml": {"acr.projections", "acr.unet", "training.seed"},
}
GRIDS = {"schedule.yaml"}
BENCHMARK = [(REPO / "config.yaml", REPO / "workflow" / "configs" / "benchmark" / name)
             for name in ("schedule.yaml", "acr_small.yaml")]


# -- how Snakemake assembles the config ------------------------------------------------------

def snakemake_config(*configfiles: Path) -> dict[str, Any]:
    """The config the Snakefile sees with `--configfile *configfiles`, validated as common.smk
    validates it: the command-line files merged in order (ConfigSettings) and nothing else (the
    Snakefile reads config.yaml only when no --configfile is given)."""
    config = copy.deepcopy(ConfigSettings(configfiles=list(configfiles)).overwrite_config)
    return validate_config(config)


def _dry_run(workdir: Path, *configfiles: Path) -> str:
    workdir.mkdir(parents=True, exist_ok=True)
    shutil.copy(REPO / "config.yaml", workdir / "config.yaml")  # as in the repository root
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"),
           "--directory", str(workdir), "--cores", "1", "-n", "-p",
           "--configfile", *map(str, configfiles)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        raise AssertionError(f"snakemake -n failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc.stdout


def _jobs(text: str, rule: str) -> list[tuple[dict[str, str], dict[str, Any] | None]]:
    """(wildcards, the JSON after --config in its shell command) of each planned `rule` job."""
    out = []
    for block in text.split("\nrule ")[1:]:
        name, _, body = block.partition(":")
        if name.strip() != rule:
            continue
        wildcards, config = {}, None
        for line in body.splitlines():
            line = line.strip()
            if line.startswith("wildcards:"):
                pairs = line.removeprefix("wildcards:").split(",")
                wildcards = dict(p.strip().split("=", 1) for p in pairs)
            if line.startswith("Shell command:") or line.startswith("wsss "):
                args = shlex.split(line.removeprefix("Shell command:"))
                if "--config" in args:
                    config = json.loads(args[args.index("--config") + 1])
                break
        out.append((wildcards, config))
    return out


def _effective(section: str, block: dict[str, Any]) -> dict[str, Any]:
    """A validated block with the settings its components read at run time: the validator
    fills a component block's defaults only where the block is given, the component merges
    its REGISTER defaults under whatever is (and reads them all when its method's block is
    left out: voc.yaml's `csrm` has none)."""
    if section == "refiners":
        return registry.settings("refiner", block["refiner"], block)
    out = copy.deepcopy(block)
    for comp in registry.components("method").values():
        sub = comp.get("block")
        if sub and (sub in out or out.get("method") == comp.name):
            out[sub] = registry.settings("method", comp.name, out.get(sub))
    return out


_MISSING = object()


def _changes(a: Any, b: Any, prefix: str = "") -> set[str]:
    """Dotted paths of the leaves where two blocks differ; a block on one side only (a
    component block the validator leaves out: its defaults come from the REGISTER) counts as
    an empty one, so its leaves are the changes."""
    a = {} if a is _MISSING and isinstance(b, dict) else a
    b = {} if b is _MISSING and isinstance(a, dict) else b
    if isinstance(a, dict) and isinstance(b, dict):
        out: set[str] = set()
        for key in a.keys() | b.keys():
            path = f"{prefix}.{key}" if prefix else key
            out |= _changes(a.get(key, _MISSING), b.get(key, _MISSING), path)
        return out
    return set() if a == b else {prefix}


def _allowed(path: str, switches: set[str]) -> bool:
    return any(path == s or path.startswith(f"{s}.") for s in switches)


def _leaves(block: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for key, value in block.items():
        path = f"{prefix}.{key}" if prefix else key
        out |= _leaves(value, path) if isinstance(value, dict) else {path: value}
    return out


def _get(block: dict[str, Any], path: str) -> Any:
    for key in path.split("."):
        block = block[key]
    return block


@pytest.fixture(scope="module")
def dry_runs(tmp_path_factory) -> dict[tuple[str, str], str]:
    runs = {}
    for main, overlay in CASES:
        work = tmp_path_factory.mktemp(f"{main.stem}_{overlay.stem}")
        runs[main.name, overlay.name] = _dry_run(work, main, overlay)
    return runs


CASES = [(m, o) for m in MAINS for o in sorted(ABLATIONS.glob("*.yaml"))] + BENCHMARK


def _case_id(case) -> str:
    return f"{case[0].stem}+{case[1].stem}"


@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_overlay_variants_keep_the_main_configs_backbone_and_schedule(case, dry_runs):
    """Every variant an overlay adds is trained (refined) with the block of the main-config
    variant it names (`like:`, else the one named after its method or refiner kind), changed
    only where the overlay's switches are, and carrying each switch the overlay writes. An
    overlay that hard-codes config.yaml's tiny CPU schedule fails on voc.yaml; one whose
    switches get lost (a merge that drops the variant's own keys) fails on both."""
    main, overlay = case
    raw = yaml.safe_load(overlay.read_text())
    text = dry_runs[main.name, overlay.name]
    base = snakemake_config(main)  # the main config alone: what the variants must keep
    switches = SWITCHES[overlay.name]
    checked = set()
    for section, rule, key in (("methods", "train_classifier", "variant"),
                               ("refiners", "refine_learned", "refiner")):
        added = raw.get(section, {})
        for wildcards, block in _jobs(text, rule):
            name = wildcards[key]
            if name not in added:
                continue
            own = added[name]
            ref = base[section][own.get("like") or own.get("method") or own.get("refiner")]
            changed = _changes(_effective(section, ref), _effective(section, block))
            # a grid may hold the main config's own point (schedule.yaml: the chosen schedule)
            assert changed or overlay.name in GRIDS, f"{name} is the same as the variant it is like"
            wrong = {p for p in changed if not _allowed(p, switches)}
            assert not wrong, f"{overlay.name} on {main.name}: {name} changes {sorted(wrong)}"
            for path, value in _leaves({k: v for k, v in own.items() if k != "like"}).items():
                if _allowed(path, switches):
                    assert _get(block, path) == value, (name, path)
            checked.add(name)
    assert checked == {*raw.get("methods", {}), *raw.get("refiners", {})}


def test_voc_rows_train_on_vocs_resnet_and_seam_schedule(dry_runs):
    """Known answer on VOC: Table IV's rows are ResNet-101 at stride 8 with SEAM's schedule
    (voc.yaml's `dscnet`), not config.yaml's tiny CPU one."""
    voc = yaml.safe_load(MAINS[1].read_text())["methods"]["dscnet"]
    jobs = _jobs(dry_runs["voc.yaml", "dscnet_modules.yaml"], "train_classifier")
    rows = {w["variant"]: b for w, b in jobs}
    for name in ("dscnet_m1", "dscnet_m4_base"):
        assert rows[name]["backbone"] == voc["backbone"]
        assert {k: rows[name]["training"][k] for k in voc["training"]} == voc["training"]


def test_table_iv_rows_are_retrained_and_m3_to_m4_is_one_change_at_a_time(dry_runs):
    """DSCNet's Table IV is val mIoU after retraining: every row gets a DeepLab, all on the same
    refiner. M4 differs from M3 in its fusion head and in the map the CAMs are read from; a row
    between them changes one of the two."""
    for main in MAINS:
        text = dry_runs[main.name, "dscnet_modules.yaml"]
        rows = {w["variant"]: _effective("methods", b)
                for w, b in _jobs(text, "train_classifier")}
        raw = yaml.safe_load((ABLATIONS / "dscnet_modules.yaml").read_text())
        assert set(rows) == set(raw["run"]["variants"])
        pairs = {(w["variant"], w["refiner"]) for w, _ in _jobs(text, "deeplab_train")}
        assert {v for v, _ in pairs} == set(rows)
        assert len({r for _, r in pairs}) == 1
        on = {"pgcl": True, "sgcl": True}
        m3 = next(n for n, b in rows.items() if b["method"] == "dscnet"
                  and b["dscnet"]["components"] == {**on, "fusion": False})
        m4 = "dscnet"  # the main config's full DSCNet
        between = [n for n in rows if n not in (m3, m4)
                   and len(_changes(rows[m3], rows[n])) == 1
                   and len(_changes(rows[n], rows[m4])) == 1]
        assert between, (main.name, _changes(rows[m3], rows[m4]))


def test_a_voc_run_does_not_inherit_the_benchmarks_settings(dry_runs):
    """voc.yaml leaves PSA's and IRN's settings to their REGISTER defaults (the papers'); the
    Snakefile used to merge config.yaml under every --configfile, so a VOC run trained PSA
    with the benchmark's radius 3 on 96-pixel crops."""
    text = dry_runs["voc.yaml", "irn_thresholds.yaml"]
    blocks = {w["refiner"]: b for w, b in _jobs(text, "refine_learned")}
    bench = yaml.safe_load((REPO / "config.yaml").read_text())["refiners"]
    for kind in ("psa", "irn"):
        want = registry.settings("refiner", kind, yaml.safe_load(MAINS[1].read_text())
                                 ["refiners"][kind])
        got = _effective("refiners", blocks[kind])
        assert got["radius"] == want["radius"] != bench[kind]["radius"], kind
        assert got["training"]["crop_size"] == want["training"]["crop_size"] != 96, kind


def test_the_config_helper_is_what_snakemake_sees(dry_runs):
    """snakemake_config (the in-process reference above) against the real dry run: the blocks
    of the variants and refiners the jobs get, main config's and overlay's alike (a change to
    how the Snakefile loads its config shows here first)."""
    cfg = snakemake_config(MAINS[1], ABLATIONS / "dscnet_modules.yaml")
    text = dry_runs["voc.yaml", "dscnet_modules.yaml"]
    jobs = _jobs(text, "train_classifier")
    assert jobs
    for wildcards, block in jobs:
        assert block == cfg["methods"][wildcards["variant"]], wildcards
    jobs = _jobs(text, "refine_learned")
    assert jobs
    for wildcards, block in jobs:
        assert block == cfg["refiners"][wildcards["refiner"]], wildcards


# -- like: -----------------------------------------------------------------------------------

def _config() -> dict[str, Any]:
    return yaml.safe_load((REPO / "config.yaml").read_text())


def test_like_starts_from_the_named_block_merged_key_by_key():
    cfg = _config()
    cfg["methods"] = json.loads(json.dumps(cfg["methods"]))  # unshare the YAML anchors
    cfg["methods"]["baseline"]["training"]["epochs"] = 7
    cfg["methods"]["b"] = {"like": "baseline", "training": {"seed": 3}}
    cfg["methods"]["c"] = {"like": "b", "inference": {"scales": [2.0]}}  # a chain
    cfg["refiners"]["irn_x"] = {"like": "irn", "conf_bg": 0.1}
    validate_config(cfg)
    a, b, c = (cfg["methods"][n] for n in ("baseline", "b", "c"))
    assert "like" not in b and "like" not in c and "like" not in cfg["refiners"]["irn_x"]
    assert b["method"] == "baseline" and b["backbone"] == a["backbone"]
    assert b["training"] == {**a["training"], "seed": 3}  # nested: one key replaced
    assert a["training"]["seed"] == 0  # the block it is like is left as it was
    assert c["training"] == b["training"] and c["inference"]["scales"] == [2.0]  # list replaced
    assert c["inference"]["flip"] == a["inference"]["flip"]
    irn, irn_x = cfg["refiners"]["irn"], cfg["refiners"]["irn_x"]
    assert irn_x["conf_bg"] == 0.1 and irn["conf_bg"] == 0.05
    assert irn_x["training"] == irn["training"] and irn_x["radius"] == irn["radius"]


@pytest.mark.parametrize("edit,match", [
    ({"b": {"like": "nope"}}, r"methods\.b\.like: 'nope' is not a key of methods"),
    ({"b": {"like": "c"}, "c": {"like": "b"}}, r"methods\.\w\.like: a cycle \((b|c) -> "),
    ({"b": {"like": "b"}}, r"methods\.b\.like: a cycle \(b -> b\)"),
])
def test_like_names_the_key_of_an_unknown_or_circular_variant(edit, match):
    cfg = _config()
    cfg["methods"].update(edit)
    with pytest.raises(ConfigError, match=match):
        validate_config(cfg)
