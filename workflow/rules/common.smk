# Helpers shared by the stage rules: config lookups, wildcard constraints, target lists.
import json
import re
import os
import sys
from pathlib import Path

# `wsss` lives next to the interpreter running snakemake; make it reachable even when the
# environment was not activated (e.g. `.venv/bin/snakemake` or `python -m snakemake`)
_bin = str(Path(sys.executable).parent)
os.environ.update(PATH=os.pathsep.join([_bin, os.environ.get("PATH", "")]))
# HDF5 file locks fail on many cluster file systems; readers and writers here never share a file
os.environ.update(HDF5_USE_FILE_LOCKING="FALSE")

DATASET = config["dataset"]["name"]
RESULTS = f"results/{DATASET}"
LOGS = f"{RESULTS}/logs"
BENCH = f"{RESULTS}/benchmarks"
ENV = "../../envs/wsss.yaml"
CPU_THREADS = 8  # per CPU-parallel job; snakemake caps it at --cores


def as_json(obj) -> str:
    """A config block as a canonical JSON string (a params value, so edits trigger reruns)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


def config_error(message: str):
    raise WorkflowError(f"config.yaml: {message}")


def _check_config():
    run, methods, refiners = config["run"], config["methods"], config["refiners"]
    for name in run["variants"]:
        if name not in methods:
            config_error(f"run.variants: '{name}' is not a key of methods: ({sorted(methods)})")
    for name in run["refiners"]:
        if name not in refiners:
            config_error(f"run.refiners: '{name}' is not a key of refiners: ({sorted(refiners)})")
    splits = config["dataset"]["splits"]
    for split in run["splits"] + [config["dataset"]["train_split"]]:
        if split not in splits:
            config_error(f"split '{split}' is not a key of dataset.splits ({sorted(splits)})")
    if config["dataset"]["kind"] == "voc" and not config["dataset"]["root"]:
        config_error("dataset.root must be set for dataset.kind voc")


_check_config()


def dataset_block() -> dict:
    """What the stages need to read the dataset (the generator settings stay with its rule)."""
    d = config["dataset"]
    root = f"{RESULTS}/data/voc" if d["kind"] == "synthetic" else d["root"]
    keys = ("name", "splits", "mask_dir", "label_source", "classes")
    return {"root": root, **{k: d[k] for k in keys}}


DATASET_JSON = as_json(dataset_block())


def method_block(wildcards) -> str:
    return as_json(config["methods"][wildcards.variant])


def refiner_block(wildcards) -> str:
    return as_json(config["refiners"][wildcards.refiner])


# Settings a learned refiner reads only in its random walk (rule refine_learned): editing them
# must neither remake its training labels nor retrain its network.
WALK_KEYS = {
    "psa": ("beta", "logt", "bg_alpha", "inference"),
    "irn": ("radius", "beta", "exp_times", "bg_threshold", "inference"),
}


def refiner_train_block(wildcards) -> str:
    """A learned refiner's block without its walk settings: what its network depends on."""
    block = config["refiners"][wildcards.refiner]
    walk = WALK_KEYS[block["refiner"]]
    return as_json({k: v for k, v in block.items() if k not in walk})


def refiner_label_block(wildcards) -> str:
    """A learned refiner's block without its network settings: what its training labels use,
    so a change to the network's training does not remake the labels."""
    block = config["refiners"][wildcards.refiner]
    skip = ("training", *WALK_KEYS[block["refiner"]])
    return as_json({k: v for k, v in block.items() if k not in skip})


def refiners_of(kind: str) -> list[str]:
    return [n for n, r in config["refiners"].items() if r["refiner"] == kind]


def one_of(names) -> str:
    """Wildcard regex matching exactly these names (or nothing when the list is empty)."""
    names = list(names)
    return "|".join(map(re.escape, names)) if names else "(?!)"


def code(*modules: str) -> list[str]:
    """Source files of a stage, as inputs: editing its code reruns that stage."""
    return [str(Path(workflow.basedir) / "src" / "wsss" / m) for m in modules]


def crf_inputs(wildcards) -> dict:
    inputs = {
        "cams": f"{RESULTS}/{wildcards.variant}/cams/{wildcards.split}.h5",
        "code": code("refine/crf.py"),
    }
    bg = config["refiners"][wildcards.refiner]["bg"]
    if bg["mode"] == "constant" and bg["threshold"] == "best":
        inputs["seeds_eval"] = f"{RESULTS}/{wildcards.variant}/cams/{wildcards.split}.eval.json"
    return inputs


def seeds_eval_arg(wildcards, input) -> str:
    return f"--seeds-eval {input.seeds_eval}" if "seeds_eval" in input.keys() else ""


def refiner_code(*modules: str):
    """Input function: the refiner kind's own module plus `modules` (a PSA edit leaves IRN be)."""

    def inputs(wildcards):
        kind = config["refiners"][wildcards.refiner]["refiner"]
        return code(f"refine/{kind}.py", *modules)

    return inputs


def evaluation_targets() -> list[str]:
    run = config["run"]
    out = []
    for v in run["variants"]:
        for s in run["splits"]:
            out.append(f"{RESULTS}/{v}/cams/{s}.eval.json")
            out += [f"{RESULTS}/{v}/{r}/labels/{s}.eval.json" for r in run["refiners"]]
    return out


def diagnostic_targets() -> list[str]:
    """Failure-mode measurements: only the synthetic benchmark records what they need."""
    if config["dataset"]["kind"] != "synthetic":
        return []
    run = config["run"]
    out = []
    for v in run["variants"]:
        for s in run["splits"]:
            out.append(f"{RESULTS}/{v}/cams/{s}.failure_modes.json")
            out += [f"{RESULTS}/{v}/{r}/labels/{s}.failure_modes.json" for r in run["refiners"]]
    return out


def summary_outputs() -> list[str]:
    return [f"{RESULTS}/summary.csv", f"{RESULTS}/summary.md", f"{RESULTS}/summary.png"]
