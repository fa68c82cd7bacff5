# Helpers shared by the stage rules: config lookups, wildcard constraints, target lists.
import functools
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
# the registry, the import graph and the schema are torch-free: read at parse time from src/
sys.path.insert(0, str(Path(workflow.basedir) / "src"))
from wsss import registry  # noqa: E402
from wsss.errors import ConfigError  # noqa: E402
from wsss.imports import source_files  # noqa: E402
from wsss.locks import check_lock  # noqa: E402
from wsss.schema import validate_config  # noqa: E402
from wsss.paths import PRETRAINED_DIR, SYNTHETIC  # noqa: E402

# a researcher's own component files join the registry (and every job's environment)
_plugins = [str(Path(p).resolve()) for p in config.get("plugins", [])]
_plugins += [p for p in os.environ.get(registry.PLUGINS_ENV, "").split(os.pathsep) if p]
if _plugins:
    os.environ[registry.PLUGINS_ENV] = os.pathsep.join(dict.fromkeys(_plugins))


def _shown(path) -> str:
    """A config file as a message names it: relative to the working directory when inside it."""
    rel = os.path.relpath(path)
    return str(path) if rel.startswith("..") else rel


# what a config error names: the files the config was merged from (the main config and overlays)
CONFIG_FILES = ", ".join(map(_shown, workflow.overwrite_configfiles)) or "config.yaml"
try:
    validate_config(config, Path(workflow.basedir) / "workflow" / "schemas" / "config.schema.yaml")
except ConfigError as err:
    raise WorkflowError(f"{CONFIG_FILES}: {err}")

# A killed run leaves Snakemake's lock behind and the same command would stop at it: clear it
# here, before Snakemake locks, when no run is alive in this directory (wsss.locks). Only in the
# main process: a cluster job's Snakemake on a compute node cannot see the login node's run.
if not (workflow.remote_exec or workflow.subprocess_exec):
    _lock_note = check_lock(os.getcwd())
    if _lock_note:
        print(f"wsss: {_lock_note}", file=sys.stderr)

DATASET = config["dataset"]["name"]
RESULTS = f"results/{DATASET}"
LOGS = f"{RESULTS}/logs"
BENCH = f"{RESULTS}/benchmarks"
ENV = "../../envs/wsss.yaml"
PRETRAINED = str(PRETRAINED_DIR)  # the pretrain stage's weights, shared by every dataset
CPU_THREADS = 8  # per CPU-parallel job; snakemake caps it at --cores
# Per-image process pools whose results do not depend on the pool's size (dense CRF, metrics):
# at most half the cores, so that on a small machine they run beside a one-thread training
# instead of waiting for it. On 2 cores a 10-minute ACR training otherwise held every CRF and
# evaluation job back until it ended (README, "ACR on the benchmark", Cost). From 16 cores on
# it is CPU_THREADS. (pretrain, data, refine_learned and deeplab_predict keep CPU_THREADS.)
POOL_THREADS = min(CPU_THREADS, max(1, workflow.cores // 2))
# Network training (a method's classifier, a learned refiner, DeepLab) and CAM extraction: one
# torch thread. A second thread speeds a training step up by only 1.4-1.65x and a CAM job not at
# all (start-up dominates), tests/benchmarks/bench_threads.py and README "Threads", so two
# one-thread jobs side by side get more done than one job with two; and a job's numbers do not
# depend on --cores (torch's reductions change order with the thread count). More per job:
# snakemake --set-threads train_classifier=4 (a new result). CRF jobs keep their process pools
# (POOL_THREADS): those scale with it.
TORCH_THREADS = 1


# Per-image stages (CAMs, CRF, refiner labels and walks, DeepLab prediction, evaluation) run as
# dataset.shards jobs over disjoint id ranges, gathered into the store every consumer reads
# (workflow/rules/shards.smk); with 1 shard the stage writes that store itself, as before.
SHARDS = config["dataset"]["shards"]


def _shard_parts(path: str) -> tuple[str, str]:
    for ext, part_ext in ((".eval.json", ".npz"), (".h5", ".h5")):
        if path.endswith(ext):
            return path[: -len(ext)] + ext.rsplit(".", 1)[0], part_ext
    raise ValueError(f"no shard layout for {path}")


def shard_pattern(path: str) -> str:
    """One shard's file of a per-image output: results/.../cams/train.shards/2-of-4.h5 for
    cams/train.h5, .../train.eval.shards/2-of-4.npz (its confusions) for train.eval.json."""
    stem, ext = _shard_parts(path)
    return f"{stem}.shards/{{scatteritem}}{ext}"


def per_image(path: str) -> str:
    """The output of a per-image job: `path`, or with shards one shard's file of it."""
    return path if SHARDS == 1 else shard_pattern(path)


def per_image_side(path: str) -> str:
    """A per-image job's log or benchmark file: one per shard."""
    if SHARDS == 1:
        return path
    stem, ext = path.rsplit(".", 1)
    return f"{stem}.{{scatteritem}}.{ext}"


def shard_arg(partial: bool = False):
    """Params function: the job's `--shard i-of-n` (and `--partial` for an evaluation)."""

    def arg(wildcards) -> str:
        if SHARDS == 1:
            return ""
        return f"--shard {wildcards.scatteritem}" + (" --partial" if partial else "")

    return arg


def gather_side(path: str, root: str, ext: str) -> str:
    """The log or benchmark file of a gathering job, named after what it writes."""
    return f"{root}/combine/{path[len(RESULTS) + 1:].rsplit('.', 1)[0]}.{ext}"


def gathered(path: str) -> list[str]:
    """The shards' files of a per-image output (Snakemake's gather over `scatteritem`), with
    the output's other wildcards left for the gathering rule."""
    pattern = shard_pattern(path).replace("{", "{{").replace("}", "}}")
    return gather.shards(pattern.replace("{{scatteritem}}", "{scatteritem}"))


def as_json(obj) -> str:
    """A config block as a canonical JSON string (a params value, so edits trigger reruns)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


def config_error(message: str):
    raise WorkflowError(f"{CONFIG_FILES}: {message}")


def _check_config():
    run, methods, refiners = config["run"], config["methods"], config["refiners"]
    for name in run["variants"]:
        if name not in methods:
            config_error(f"run.variants: '{name}' is not a key of methods: ({sorted(methods)})")
    for name in run["refiners"]:
        if name not in refiners:
            config_error(f"run.refiners: '{name}' is not a key of refiners: ({sorted(refiners)})")
    for variant, names in run["variant_refiners"].items():
        if variant not in methods:
            config_error(f"run.variant_refiners: '{variant}' is not a key of methods: "
                         f"({sorted(methods)})")
        for name in names:
            if name not in refiners:
                config_error(f"run.variant_refiners.{variant}: '{name}' is not a key of "
                             f"refiners: ({sorted(refiners)})")
    splits = config["dataset"]["splits"]
    for split in run["splits"] + [config["dataset"]["train_split"]]:
        if split not in splits:
            config_error(f"split '{split}' is not a key of dataset.splits ({sorted(splits)})")
    if config["dataset"]["kind"] in ("voc", "coco") and not config["dataset"]["root"]:
        config_error(f"dataset.root must be set for dataset.kind {config['dataset']['kind']}")
    for split in config["deeplab"]["splits"]:
        if split not in splits:
            config_error(f"deeplab.splits: '{split}' is not a key of dataset.splits "
                         f"({sorted(splits)})")
    if run["deeplab"] != "all":
        for variant, refiner in run["deeplab"]:
            if variant not in methods:
                config_error(f"run.deeplab: ['{variant}', '{refiner}']: '{variant}' is not a key "
                             f"of methods: ({sorted(methods)})")
            if refiner not in refiners:
                config_error(f"run.deeplab: ['{variant}', '{refiner}']: '{refiner}' is not a key "
                             f"of refiners: ({sorted(refiners)})")
    for variant, block in methods.items():
        method_components(variant)  # unknown methods or bases stop here, the key named
        other, seen = block.get("init_from"), [variant]
        while other:
            if other not in methods:
                config_error(f"methods.{seen[-1]}.init_from: '{other}' is not a key of methods: "
                             f"({sorted(methods)})")
            if other in seen:
                config_error(f"methods.{variant}.init_from: a cycle ({' -> '.join(seen + [other])})")
            seen.append(other)
            other = methods[other].get("init_from")
    for variant in run["variants"]:
        key = (f"run.variant_refiners.{variant}" if variant in run["variant_refiners"]
               else "run.refiners")
        for r in refiners_for(variant):
            if refiner_kind(r).get("needs_seg_head"):
                method = method_components(variant)[0]
                if not method.get("seg_head"):
                    config_error(f"{key}: refiner '{r}' (kind {refiner_kind(r).name}) needs a "
                                 f"method with a segmentation head; variant '{variant}' "
                                 f"(method {method.name}) has none")
            if refiner_reads_classifier_stages(r) and not backbone_has_stages(variant):
                name = config["methods"][variant]["backbone"]["name"]
                config_error(f"{key}: refiner '{r}' (kind {refiner_kind(r).name}) reads the "
                             f"classifier's multi-level trunk (trunk.source: classifier), but "
                             f"variant '{variant}' has the ViT backbone '{name}', whose tokens "
                             f"come at one stride; give refiners.{r}.trunk source: pretrained "
                             f"(a ResNet), or use crf / seghead with this variant")
    selection = config["evaluation"]["selection_split"]
    if selection not in splits:
        config_error(f"evaluation.selection_split: '{selection}' is not a key of dataset.splits "
                     f"({sorted(splits)})")
    if selection == "val":
        config_error("evaluation.selection_split: 'val' is the held-out split the final numbers "
                     "are reported on; choose thresholds on another split (train)")
    if config["report"]["example_split"] not in run["splits"]:
        config_error(f"report.example_split: '{config['report']['example_split']}' is not one "
                     f"of run.splits ({run['splits']}), whose labels the grid shows")




COCO_DATA = f"{RESULTS}/data/coco"  # the coco converter's output: masks, lists, classes.txt


def coco_source() -> tuple[str, dict]:
    """(root, {split: instances file}) the coco converter reads: the dataset's, or for the
    benchmark in COCO layout the folder its writer fills."""
    d = config["dataset"]
    if d["kind"] == "synthetic":
        return f"{RESULTS}/data/coco_layout", {
            s: f"annotations/instances_{s}2014.json" for s in d["splits"]}
    if not d["root"]:
        config_error("dataset.root must be set for dataset.kind coco")
    return d["root"], dict(d["splits"])


def coco_image_dirs() -> dict:
    """split -> image folder under the COCO root (COCO's: instances_<folder>.json)."""
    from wsss.data.coco_json import default_image_dir
    from wsss.data.voc import DatasetError

    own = config["dataset"]["coco"]["image_dirs"] or {}
    dirs = {}
    for split, path in coco_source()[1].items():
        try:
            dirs[split] = own.get(split) or default_image_dir(path)
        except DatasetError as err:
            config_error(f"dataset.splits.{split}: {err} (dataset.coco.image_dirs)")
    return dirs


def reads_coco() -> bool:
    d = config["dataset"]
    return d["kind"] == "coco" or (d["kind"] == "synthetic" and d["layout"] == "coco")


def coco_inputs(wildcards) -> list[str]:
    """What the coco converter reads: the instances files, or the benchmark's COCO layout."""
    root, splits = coco_source()
    if config["dataset"]["kind"] == "synthetic":
        return rules.coco_layout.output
    return [os.path.join(root, p) for p in splits.values()]


def dataset_inputs(wildcards) -> list[str]:
    """What the dataset index reads: the converted COCO masks, the generated benchmark, or
    nothing (a VOC root is read directly)."""
    if reads_coco():
        return rules.coco_masks.output
    return rules.synthetic_data.output if config["dataset"]["kind"] == "synthetic" else []


def dataset_block() -> dict:
    """What the stages need to read the dataset (the generator settings stay with its rule)."""
    d = config["dataset"]
    if reads_coco():
        # every stage reads the converted masks and lists, and the images where they are
        return {"root": COCO_DATA, "name": d["name"],
                "splits": {s: f"{s}.txt" for s in d["splits"]},
                "mask_dir": "SegmentationClass", "label_source": "masks", "classes": None,
                "image_root": coco_source()[0],
                "image_dirs": list(dict.fromkeys(coco_image_dirs().values()))}
    root = f"{RESULTS}/data/voc" if d["kind"] == "synthetic" else d["root"]
    keys = ("name", "splits", "mask_dir", "label_source", "classes")
    # only when set, so that a run without them keeps its params (and its results) as they were
    extra = {k: d[k] for k in ("eval_mask_dir", "image_root", "image_dirs") if d.get(k)}
    return {"root": root, **{k: d[k] for k in keys}, **extra}


DATASET_JSON = as_json(dataset_block())


def method_block(wildcards) -> str:
    return as_json(config["methods"][wildcards.variant])


def pretrained_inputs(block) -> list[str]:
    """The pretrain stage's weight files a config block starts from: one per backbone block
    in it (at any depth: a method's backbone, a refiner's trunk, DeepLab's model) that says
    `pretrained: synthetic`."""
    found = []
    if isinstance(block, dict):
        if block.get("pretrained") == SYNTHETIC and "name" in block:
            found.append(f"{PRETRAINED}/{block['name']}.pt")
        for value in block.values():
            found += pretrained_inputs(value)
    elif isinstance(block, list):
        for value in block:
            found += pretrained_inputs(value)
    return sorted(set(found))


def backbone_modules(block) -> list[str]:
    """The modules of the backbones a config block names (at any depth): a backbone module
    loaded through the registry (the ViT's) is not in the stage's static import graph."""
    found = []
    if isinstance(block, dict):
        if isinstance(block.get("backbone"), dict) and "name" in block["backbone"]:
            found.append(registry.component("backbone", block["backbone"]["name"]).module)
        for value in block.values():
            found += backbone_modules(value)
    elif isinstance(block, list):
        for value in block:
            found += backbone_modules(value)
    return sorted(set(found))


def refiner_reads_classifier_stages(refiner: str) -> bool:
    """Whether a learned refiner builds its network on the classifier's own trunk (PSA's and
    IRN's `trunk.source: classifier`, their default), reading its stages."""
    if not refiner_kind(refiner).get("learned"):
        return False
    trunk = config["refiners"][refiner].get("trunk") or {}
    return trunk.get("source", "classifier") == "classifier"


def backbone_family(name: str) -> str:
    """A backbone's registry family: "resnet" (the default) or "vit"."""
    return registry.component("backbone", name).get("family", "resnet")


def backbone_has_stages(variant: str) -> bool:
    """Whether a variant's backbone is a multi-stage (ResNet) trunk; a ViT (registry family
    vit) gives its tokens at one stride only, which PSA's and IRN's heads cannot read."""
    block = config["methods"][variant].get("backbone") or {}
    return "name" not in block or backbone_family(block["name"]) != "vit"


def pretrain_block(backbone: str) -> dict:
    """The pretrain block one backbone trains with: `pretrain` without its `backbones` table,
    that backbone's entry of the table merged over it (so the block, and with it the rerun
    decision, is exactly the shared one for a backbone without an entry)."""
    block = {k: v for k, v in config["pretrain"].items() if k != "backbones"}
    own = config["pretrain"].get("backbones", {}).get(backbone)
    return registry.merge_defaults(block, own) if own else block


def refiner_pretrained(wildcards) -> list[str]:
    """A learned refiner's pretrain-stage weights: those of its trunk, when it is pretrained."""
    trunk = config["refiners"][wildcards.refiner].get("trunk") or {}
    return pretrained_inputs(trunk) if trunk.get("source") == "pretrained" else []


def method_components(variant: str) -> list:
    """The registry components a variant's classifier is built from: its method and, for a
    plug-in method, the chain of bases its block names."""
    return registry.method_chain(config["methods"][variant], f"methods.{variant}.method")


def code(*entries: str) -> list[str]:
    """Source files of a stage, as inputs: its entry modules and everything they import
    (wsss.imports), so editing any module a stage runs reruns it and nothing else."""
    return _code(tuple(entries))


@functools.cache
def _code(entries: tuple[str, ...]) -> list[str]:
    return source_files(entries)


def method_code(command: str):
    """Input function: the code of a variant's stage `command` (wsss.cli.<command>) plus its
    method modules (an HSC edit leaves the baseline be)."""

    def inputs(wildcards):
        mods = [c.module for c in method_components(wildcards.variant)]
        mods += backbone_modules(config["methods"][wildcards.variant])
        return code(f"wsss.cli.{command}", *mods)

    return inputs


def init_from_input(wildcards) -> list[str]:
    """The classifier a variant starts from (`init_from:`), a DAG edge."""
    other = config["methods"][wildcards.variant].get("init_from")
    return [f"{RESULTS}/{other}/classifier.pt"] if other else []


def init_from_arg(wildcards, input) -> str:
    return f"--init-from {input.init_from}" if input.init_from else ""


def refiner_block(wildcards) -> str:
    return as_json(config["refiners"][wildcards.refiner])


def refiner_kind(name: str):
    """The registry component of a refiner variant's kind."""
    return registry.component("refiner", config["refiners"][name]["refiner"],
                              f"refiners.{name}.refiner")


def walk_keys(name: str) -> tuple:
    """Settings a learned refiner reads only in its random walk (the refine_learned job, not
    its labels or network): declared `walk_keys` in the kind's REGISTER."""
    return tuple(refiner_kind(name).get("walk_keys", ()))


def refiner_train_block(wildcards) -> str:
    """A learned refiner's block without its walk settings: what its network depends on."""
    block = config["refiners"][wildcards.refiner]
    walk = walk_keys(wildcards.refiner)
    return as_json({k: v for k, v in block.items() if k not in walk})


def refiner_label_block(wildcards) -> str:
    """A learned refiner's block without its network settings: what its training labels use,
    so a change to the network's training does not remake the labels."""
    block = config["refiners"][wildcards.refiner]
    skip = ("training", "trunk", *walk_keys(wildcards.refiner))
    return as_json({k: v for k, v in block.items() if k not in skip})


def refiners_of(kind: str) -> list[str]:
    return [n for n, r in config["refiners"].items() if r["refiner"] == kind]


def refiners_where(capability: str, value=True) -> list[str]:
    """Refiner variants whose kind declares `capability` (e.g. learned)."""
    return [n for n in config["refiners"] if bool(refiner_kind(n).get(capability)) == value]


def one_of(names) -> str:
    """Wildcard regex matching exactly these names (or nothing when the list is empty)."""
    names = list(names)
    return "|".join(map(re.escape, names)) if names else "(?!)"


def crf_inputs(wildcards) -> dict:
    inputs = {
        "cams": f"{RESULTS}/{wildcards.variant}/cams/{wildcards.split}.h5",
        "code": code("wsss.cli.crf"),
    }
    bg = config["refiners"][wildcards.refiner]["bg"]
    if bg["mode"] == "constant" and bg["threshold"] == "best":
        # chosen on the declared selection split, never on the split being labelled (whose
        # masks, on VOC's train_aug, are the ones retraining then learns from)
        selection = config["evaluation"]["selection_split"]
        inputs["seeds_eval"] = f"{RESULTS}/{wildcards.variant}/cams/{selection}.eval.json"
    return inputs


def seeds_eval_arg(wildcards, input) -> str:
    return f"--seeds-eval {input.seeds_eval}" if "seeds_eval" in input.keys() else ""


def refiner_code(wildcards) -> list[str]:
    """A refiner stage's code: the refine command, its kind's module (a PSA edit leaves IRN
    be) and the modules of the backbones its block names (a trunk loaded by name)."""
    block = config["refiners"][wildcards.refiner]
    return code("wsss.cli.refine", refiner_kind(wildcards.refiner).module,
                *backbone_modules(block))


def refiners_for(variant: str) -> list[str]:
    """The refiners run on a variant's CAMs: its run.variant_refiners entry, else run.refiners."""
    run = config["run"]
    return list(run["variant_refiners"].get(variant, run["refiners"]))


def deeplab_pairs() -> list[tuple[str, str]]:
    """(variant, refiner) pairs whose pseudo-labels train a DeepLab."""
    run = config["run"]
    if run["deeplab"] == "all":
        return [(v, r) for v in run["variants"] for r in refiners_for(v)]
    return [(v, r) for v, r in run["deeplab"]]


DEEPLAB_KINDS = {"pred": "", "pred_crf": "_crf"}  # prediction folder -> stage-name suffix


def deeplab_train_block(wildcards) -> str:
    """What the network depends on: inference settings and splits only affect prediction."""
    return as_json({k: config["deeplab"][k] for k in ("model", "training")})


def deeplab_targets(suffix: str = ".eval.json") -> list[str]:
    return [f"{RESULTS}/{v}/{r}/deeplab/{kind}/{s}{suffix}" for v, r in deeplab_pairs()
            for s in config["deeplab"]["splits"] for kind in DEEPLAB_KINDS]


def label_splits(refiner: str) -> list[str]:
    """Splits a refiner labels: run.splits, and for a single-stage method's own predictions
    (a kind that reads the segmentation head) also the splits DeepLab is judged on (val):
    that is such a method's final number."""
    splits = list(config["run"]["splits"])
    if refiner_kind(refiner).get("needs_seg_head"):
        splits += [s for s in config["deeplab"]["splits"] if s not in splits]
    return splits


def evaluation_targets() -> list[str]:
    run = config["run"]
    out = []
    for v in run["variants"]:
        for s in run["splits"]:
            out.append(f"{RESULTS}/{v}/cams/{s}.eval.json")
        for r in refiners_for(v):
            out += [f"{RESULTS}/{v}/{r}/labels/{s}.eval.json" for s in label_splits(r)]
    return out + deeplab_targets()


def diagnostic_targets() -> list[str]:
    """Failure-mode measurements: only the synthetic benchmark records what they need (in its
    own folder; read in COCO layout, the dataset the stages see is the converted one)."""
    if config["dataset"]["kind"] != "synthetic" or reads_coco():
        return []
    run = config["run"]
    out = []
    for v in run["variants"]:
        for s in run["splits"]:
            out.append(f"{RESULTS}/{v}/cams/{s}.failure_modes.json")
        for r in refiners_for(v):
            out += [f"{RESULTS}/{v}/{r}/labels/{s}.failure_modes.json" for s in label_splits(r)]
    return out


def summary_outputs() -> list[str]:
    return [f"{RESULTS}/summary.csv", f"{RESULTS}/summary.md", f"{RESULTS}/summary.png"]


def example_columns() -> list[dict]:
    """Columns of the qualitative grid: per variant its CAM, seeds, refiners' labels and the
    DeepLab predictions of the pairs it feeds (when DeepLab predicts that split)."""
    split = config["report"]["example_split"]
    run = config["run"]
    cols = []
    for v in run["variants"]:
        cams = f"{RESULTS}/{v}/cams/{split}.h5"
        cols.append({"title": f"{v}: CAM", "kind": "cam", "path": cams})
        cols.append({"title": f"{v}: seeds", "kind": "seeds", "path": cams,
                     "extra": f"{RESULTS}/{v}/cams/{split}.eval.json"})
        for r in refiners_for(v):
            cols.append({"title": f"{v}: {r}", "kind": "labels",
                         "path": f"{RESULTS}/{v}/{r}/labels/{split}.h5"})
        if split in config["deeplab"]["splits"]:
            for pv, r in deeplab_pairs():
                if pv == v:
                    cols.append({"title": f"{v}: DeepLab ({r})", "kind": "labels",
                                 "path": f"{RESULTS}/{v}/{r}/deeplab/pred/{split}.h5"})
    return cols


def example_inputs() -> list[str]:
    return sorted({p for c in example_columns() for p in (c["path"], c.get("extra")) if p})


def training_logs() -> list[tuple[str, str, str]]:
    """(label, log CSV, the output that guarantees it) of every network the run trains; the
    logs are side files of the training rules, so the rules' outputs are the inputs."""
    run = config["run"]
    logs = []
    for v in run["variants"]:
        logs.append((f"{v}: classifier", f"{RESULTS}/{v}/train_log.csv",
                     f"{RESULTS}/{v}/classifier.pt"))
        for r in refiners_for(v):
            kind = refiner_kind(r)
            if kind.get("learned"):
                logs.append((f"{v}: {r}", f"{RESULTS}/{v}/{r}/{kind.get('network_log')}.log.csv",
                             f"{RESULTS}/{v}/{r}/network.pt"))
    for v, r in deeplab_pairs():
        logs.append((f"{v}: DeepLab ({r})", f"{RESULTS}/{v}/{r}/deeplab/deeplab.log.csv",
                     f"{RESULTS}/{v}/{r}/deeplab/deeplab.pt"))
    return logs


REPORT_FIGURES = {  # the mIoU bar chart is the summary rule's summary.png
    "heatmap": f"{RESULTS}/report/class_iou.png",
    "examples": f"{RESULTS}/report/examples.png",
    "curves": f"{RESULTS}/report/training_curves.png",
}


_check_config()
