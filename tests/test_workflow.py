"""Snakemake runs of the real workflow in temporary directories."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import QUICK_PRETRAIN

REPO = Path(__file__).resolve().parents[1]


def _snakemake(workdir: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"),
           "--directory", str(workdir), "--configfile", str(workdir / "config.yaml"),
           "--cores", "2", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
    return proc


def _write_config(workdir: Path, cfg: dict) -> None:
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))


def _tiny_config() -> dict:
    """The default config shrunk to seconds: few images, one epoch, one scale, two variants
    (the baseline and "other", a DSCNet on SEAM: a plug-in method whose CAMs need the labels)."""
    cfg = yaml.safe_load((REPO / "config.yaml").read_text())
    cfg["dataset"]["synthetic"].update(num_train=24, num_val=8)
    # the other methods are `like: baseline`: they follow
    cfg["methods"]["baseline"]["training"].update(epochs=1, batch_size=8)
    cfg["methods"]["baseline"]["inference"].update(scales=[1.0])
    # the pretrain stage, real but a few seconds (conftest.QUICK_PRETRAIN)
    cfg["pretrain"] = QUICK_PRETRAIN
    cfg["methods"]["other"] = cfg["methods"]["dscnet"]
    cfg["run"]["variants"] = ["baseline", "other"]
    cfg["run"]["variant_refiners"] = {}
    cfg["refiners"]["crf_power"] = {"refiner": "crf", "bg": {"mode": "power", "alpha": 8},
                                    "iterations": 2}
    for name in ("psa", "irn"):
        cfg["refiners"][name]["training"].update(epochs=1, batch_size=8)
    cfg["run"]["refiners"] = ["crf", "crf_power", "psa", "irn"]
    cfg["deeplab"]["training"].update(epochs=1, batch_size=8)
    cfg["deeplab"]["inference"].update(scales=[1.0])
    cfg["run"]["deeplab"] = [["other", "crf"], ["head", "seghead"]]
    cfg["report"] = {"examples": 3}
    # a single-stage method defined in the tests (its own segmentation head), whose
    # predictions are pseudo-labels through the `seghead` refiner kind
    cfg["plugins"] = [str(REPO / "tests" / "plugins" / "tiny_head.py")]
    cfg["methods"]["head"] = {**json.loads(json.dumps(cfg["methods"]["baseline"])),
                              "method": "tiny_head"}
    cfg["refiners"]["seghead"] = {"refiner": "seghead"}
    cfg["run"]["variants"].append("head")
    cfg["run"]["variant_refiners"] = {"head": ["seghead"]}
    return cfg


def _planned_jobs(proc: subprocess.CompletedProcess) -> dict[str, int]:
    """Job counts from a dry run's 'Job stats' table."""
    text = proc.stdout + proc.stderr
    table = text[text.index("Job stats:"):]
    return {m.group(1): int(m.group(2))
            for m in re.finditer(r"^(\w+)\s+(\d+)$", table, flags=re.M) if m.group(1) != "total"}


def _planned_outputs(proc: subprocess.CompletedProcess, rule: str) -> list[str]:
    """Outputs of the planned jobs of one rule in a dry run."""
    blocks = re.split(r"\n(?=(?:local)?rule \w+:)", proc.stdout + proc.stderr)
    return [m.group(1).strip() for b in blocks if re.match(rf"(?:local)?rule {rule}:", b)
            for m in [re.search(r"output: (.+)", b)] if m]


def test_dry_run_of_the_default_config(tmp_path):
    _write_config(tmp_path, yaml.safe_load((REPO / "config.yaml").read_text()))
    jobs = _planned_jobs(_snakemake(tmp_path, "-n"))
    # seven variants (baseline, seam, hsc, dscnet, acr, csrm, fsr) and two pretrained trunks
    # (the tiny ResNet, FSR's ViT); the learned refiners on the baseline only; CSRM's and FSR's
    # heads (seghead, fsr_seghead) label train and val, so their CAMs are extracted on val too
    assert jobs == {"pretrain": 2, "synthetic_data": 1, "dataset_index": 1, "train_classifier": 7,
                    "cams": 9,
                    "evaluate_seeds": 7, "refine_crf": 7, "refiner_train_labels": 2,
                    "refiner_train": 2, "refine_learned": 2, "refine_direct": 4,
                    "evaluate_labels": 13,
                    "failure_modes": 7, "failure_modes_labels": 13, "deeplab_train": 1,
                    "deeplab_predict": 2, "evaluate_deeplab": 4, "summary": 1,
                    "report_figures": 1, "all": 1}


@pytest.mark.workflow
def test_tiny_run_then_only_the_changed_branch_reruns(tmp_path):
    cfg = _tiny_config()
    _write_config(tmp_path, cfg)
    _snakemake(tmp_path)
    results = tmp_path / "results" / "synthetic"
    summary = (results / "summary.md").read_text()
    for name in ("baseline", "other", "seeds_miou", "crf_miou", "crf_power_miou", "psa_miou",
                 "irn_miou", "| head | val |", "seghead_miou", "deeplab_seghead_miou"):
        assert name in summary
    # the single-stage method's own val predictions are evaluated: its final number
    head_val = json.loads((results / "head" / "seghead" / "labels" / "val.eval.json").read_text())
    assert head_val["stage"] == "seghead" and head_val["num_images"] == 8
    seeds = json.loads((results / "baseline" / "cams" / "train.eval.json").read_text())
    assert 0.0 < seeds["miou"] <= 1.0 and seeds["num_images"] == 24
    assert len(seeds["curve"]["miou"]) == 96 and seeds["curve"]["threshold"][-1] == 0.95
    for rule in ("train_classifier/baseline", "cams/baseline/train", "summary"):
        assert (results / "benchmarks" / f"{rule}.tsv").exists()
    assert _snakemake(tmp_path, "-n").stdout.count("Nothing to be done") == 1
    deeplab = results / "other" / "crf" / "deeplab"
    val = json.loads((deeplab / "pred_crf" / "val.eval.json").read_text())
    assert val["stage"] == "deeplab_crf_crf" and val["split"] == "val" and val["num_images"] == 8
    assert "deeplab_crf_miou" in summary and (deeplab / "deeplab.log.csv").is_file()
    for figure in ("class_iou", "examples", "training_curves"):
        assert (results / "report" / f"{figure}.png").stat().st_size > 10_000
    _snakemake(tmp_path, "--report", "report.html")
    html = (tmp_path / "report.html").read_text()
    assert all(name in html for name in ("summary.png", "class_iou.png", "examples.png",
                                         "training_curves.png", "Per-class IoU"))

    # a training setting of one variant: that variant's classifier and everything after it
    cfg["methods"]["other"]["training"] = {"lr": 0.02}  # its own key over the `like:` chain's
    _write_config(tmp_path, cfg)
    assert _planned_jobs(_snakemake(tmp_path, "-n")) == {
        "train_classifier": 1, "cams": 1, "evaluate_seeds": 1, "failure_modes": 1,
        "refine_crf": 2, "refiner_train_labels": 2, "refiner_train": 2, "refine_learned": 2,
        "evaluate_labels": 4, "failure_modes_labels": 4, "deeplab_train": 1,
        "deeplab_predict": 2, "evaluate_deeplab": 4, "summary": 1, "report_figures": 1,
        "all": 1}

    # a setting of one refiner: that refiner's labels of every variant, nothing upstream
    del cfg["methods"]["other"]["training"]
    cfg["refiners"]["crf_power"]["iterations"] = 3
    _write_config(tmp_path, cfg)
    proc = _snakemake(tmp_path, "-n")
    assert _planned_jobs(proc) == {"refine_crf": 2, "evaluate_labels": 2,
                                   "failure_modes_labels": 2, "summary": 1,
                                   "report_figures": 1, "all": 1}
    outputs = _planned_outputs(proc, "refine_crf")
    assert sorted(outputs) == [f"results/synthetic/{v}/crf_power/labels/train.h5"
                               for v in ("baseline", "other")]

    # a PSA setting: PSA's branches only (its network and labels), not IRN's, not the CAMs
    cfg["refiners"]["crf_power"]["iterations"] = 2
    cfg["refiners"]["psa"]["training"]["lr"] = 0.02
    _write_config(tmp_path, cfg)
    proc = _snakemake(tmp_path, "-n")
    assert _planned_jobs(proc) == {"refiner_train": 2, "refine_learned": 2, "evaluate_labels": 2,
                                   "failure_modes_labels": 2, "summary": 1,
                                   "report_figures": 1, "all": 1}
    assert all("/psa/" in o for o in _planned_outputs(proc, "refine_learned"))

    # an IRN walk setting: IRN's walk only; its relation labels and network are kept
    cfg["refiners"]["psa"]["training"]["lr"] = _tiny_config()["refiners"]["psa"]["training"]["lr"]
    cfg["refiners"]["irn"]["beta"] = 8
    cfg["refiners"]["irn"]["inference"]["crf"] = False
    _write_config(tmp_path, cfg)
    proc = _snakemake(tmp_path, "-n")
    assert _planned_jobs(proc) == {"refine_learned": 2, "evaluate_labels": 2,
                                   "failure_modes_labels": 2, "summary": 1,
                                   "report_figures": 1, "all": 1}
    assert all("/irn/" in o for o in _planned_outputs(proc, "refine_learned"))

    # a DeepLab inference setting: its predictions only, not its network
    cfg["refiners"]["irn"] = _tiny_config()["refiners"]["irn"]
    cfg["deeplab"]["inference"]["flip"] = False
    _write_config(tmp_path, cfg)
    assert _planned_jobs(_snakemake(tmp_path, "-n")) == {
        "deeplab_predict": 4, "evaluate_deeplab": 8, "summary": 1, "report_figures": 1, "all": 1}


def _expect_config_error(tmp_path, cfg, *fragments):
    _write_config(tmp_path, cfg)
    proc = _snakemake(tmp_path, "-n", check=False)
    assert proc.returncode != 0
    out = proc.stdout + proc.stderr
    for fragment in fragments:
        assert fragment in out, out[-3000:]
    assert not (tmp_path / "results").exists()


def test_misspelt_key_is_named(tmp_path):
    cfg = yaml.safe_load((REPO / "config.yaml").read_text())
    cfg["methods"]["baseline"]["trainig"] = cfg["methods"]["baseline"].pop("training")
    _expect_config_error(tmp_path, cfg, "trainig")


def test_unknown_names_list_the_allowed_ones(tmp_path):
    cfg = yaml.safe_load((REPO / "config.yaml").read_text())
    cfg["methods"]["baseline"]["method"] = "camm"
    _expect_config_error(tmp_path, cfg, "camm", "baseline")
    cfg = yaml.safe_load((REPO / "config.yaml").read_text())
    cfg["methods"]["baseline"]["backbone"]["name"] = "resnet5"
    _expect_config_error(tmp_path, cfg, "resnet5", "resnet50")
    cfg = yaml.safe_load((REPO / "config.yaml").read_text())
    cfg["refiners"]["crf"]["refiner"] = "psaa"
    _expect_config_error(tmp_path, cfg, "psaa", "crf")


def test_bad_value_and_unknown_variant_are_named(tmp_path):
    cfg = yaml.safe_load((REPO / "config.yaml").read_text())
    cfg["methods"]["baseline"]["training"]["lr"] = -1
    _expect_config_error(tmp_path, cfg, "lr")
    cfg = yaml.safe_load((REPO / "config.yaml").read_text())
    cfg["run"]["variants"] = ["baselin"]
    _expect_config_error(tmp_path, cfg, "run.variants", "baselin")
    cfg = yaml.safe_load((REPO / "config.yaml").read_text())
    cfg["run"]["variant_refiners"] = {"seam": ["crf", "crff"]}
    _expect_config_error(tmp_path, cfg, "run.variant_refiners.seam", "crff")
    cfg = yaml.safe_load((REPO / "config.yaml").read_text())
    cfg["methods"]["hsc"]["hsc"]["base"] = "hsc"
    _expect_config_error(tmp_path, cfg, "base", "seam")


def test_seghead_on_a_method_without_a_head_stops_at_start_up(tmp_path):
    cfg = yaml.safe_load((REPO / "config.yaml").read_text())
    cfg["refiners"]["own"] = {"refiner": "seghead"}
    cfg["run"]["variant_refiners"]["seam"] = ["crf", "own"]
    _expect_config_error(tmp_path, cfg, "run.variant_refiners.seam", "own",
                         "segmentation head", "method seam")


def test_a_vit_variant_with_a_refiner_on_the_classifiers_trunk_stops_at_start_up(tmp_path):
    """PSA / IRN on the classifier's own trunk read a ResNet's stages; FSR's ViT has none.
    The same refiners on a pretrained ResNet trunk (the default config's) are accepted."""
    cfg = yaml.safe_load((REPO / "config.yaml").read_text())
    cfg["refiners"]["psa_own"] = {**cfg["refiners"]["psa"], "trunk": {"source": "classifier"}}
    cfg["run"]["variant_refiners"]["fsr"] = ["crf", "psa_own"]
    _expect_config_error(tmp_path, cfg, "run.variant_refiners.fsr", "psa_own",
                         "variant 'fsr'", "vit_tiny", "trunk source: pretrained")
    cfg["run"]["variant_refiners"]["fsr"] = ["crf", "psa", "irn", "fsr_seghead"]
    _write_config(tmp_path, cfg)
    assert _snakemake(tmp_path, "-n", check=False).returncode == 0


def test_init_from_is_a_dag_edge_and_a_bad_name_is_refused(tmp_path):
    cfg = yaml.safe_load((REPO / "config.yaml").read_text())
    cfg["methods"]["warm"] = {**json.loads(json.dumps(cfg["methods"]["dscnet"])),
                              "init_from": "baseline"}
    cfg["run"]["variants"] = ["warm"]
    _write_config(tmp_path, cfg)
    proc = _snakemake(tmp_path, "-n", "--printshellcmds")
    # the baseline's classifier is trained first, although the run asks only for `warm`
    assert _planned_outputs(proc, "train_classifier") and sorted(
        _planned_outputs(proc, "train_classifier")) == [
        "results/synthetic/baseline/classifier.pt", "results/synthetic/warm/classifier.pt"]
    assert "--init-from results/synthetic/baseline/classifier.pt" in proc.stdout
    cfg["methods"]["warm"]["init_from"] = "basline"
    _expect_config_error(tmp_path, cfg, "methods.warm.init_from", "basline")


def test_crf_threshold_is_chosen_on_the_selection_split_for_every_labelled_split(tmp_path):
    cfg = yaml.safe_load((REPO / "config.yaml").read_text())
    cfg["run"].update(variants=["baseline"], refiners=["crf"], variant_refiners={},
                      splits=["train", "val"], deeplab=[])
    _write_config(tmp_path, cfg)
    proc = _snakemake(tmp_path, "-n", "--printshellcmds")
    crf = [line for line in proc.stdout.splitlines() if "wsss crf " in line]
    assert len(crf) == 2  # train and val labelled
    # both read the train split's sweep: val's own masks never choose its threshold
    assert all("--seeds-eval results/synthetic/baseline/cams/train.eval.json" in c for c in crf)
    cfg["evaluation"] = {"selection_split": "val"}
    _expect_config_error(tmp_path, cfg, "evaluation.selection_split", "val")
    cfg["evaluation"] = {"selection_split": "trian"}
    _expect_config_error(tmp_path, cfg, "evaluation.selection_split", "trian")


def _pretrained_users(workdir: Path, *configfiles: Path) -> tuple[list[str], list[str]]:
    """A dry run's planned pretrain outputs, and the outputs of the jobs that read tiny.pt."""
    _write_config(workdir, yaml.safe_load(configfiles[0].read_text()))
    proc = _snakemake(workdir, "-n", "--printshellcmds", "--configfile",
                      *map(str, configfiles))
    weights = "results/pretrained/tiny.pt"
    blocks = {b.split("output: ")[1].split("\n")[0]: b
              for b in re.split(r"\n(?=(?:local)?rule \w+:)", proc.stdout) if "output: " in b}
    users = sorted(out for out, b in blocks.items()
                   if weights in b.split("output: ")[0] and not out.startswith(weights))
    return _planned_outputs(proc, "pretrain"), users


def test_pretrained_synthetic_is_an_input_of_exactly_the_rules_that_start_from_it(tmp_path):
    main = REPO / "config.yaml"
    scratch = REPO / "workflow" / "configs" / "benchmark" / "scratch.yaml"
    # the default config, the papers' regime: every network that trains starts from the weights
    planned, users = _pretrained_users(tmp_path, main)
    # each once: the tiny ResNet, and FSR's ViT
    assert sorted(p.split(", ")[0] for p in planned) == ["results/pretrained/tiny.pt",
                                                         "results/pretrained/vit_tiny.pt"]
    res = "results/synthetic"
    assert users == sorted([f"{res}/{v}/classifier.pt" for v in ("baseline", "seam", "hsc",
                                                                 "dscnet", "acr", "csrm")]
                           + [f"{res}/baseline/psa/network.pt", f"{res}/baseline/irn/network.pt",
                              f"{res}/baseline/psa/deeplab/deeplab.pt"])
    # the from-scratch overlay: nothing starts from them, so the stage does not run at all
    assert _pretrained_users(tmp_path, main, scratch) == ([], [])
    # one method and one refiner switched back on: exactly those two read them
    (tmp_path / "mixed.yaml").write_text(yaml.safe_dump({
        "methods": {"hsc": {"backbone": {"pretrained": "synthetic"}}},
        "refiners": {"irn": {"trunk": {"source": "pretrained", "backbone": {
            "name": "tiny", "output_stride": 8, "pretrained": "synthetic"}}}}}))
    planned, users = _pretrained_users(tmp_path, main, scratch, tmp_path / "mixed.yaml")
    assert len(planned) == 1
    assert users == [f"{res}/baseline/irn/network.pt", f"{res}/hsc/classifier.pt"]


# A bad overlay (a second --configfile) as a user writes one, each with what the message must
# name; every case stops at parse time: the wrong value where it is written (not the `like:`
# variants that copy it), a variant the main config does not have. Unknown method and refiner
# names: test_unknown_names_list_the_allowed_ones.
BAD_OVERLAYS = {
    "unknown_key": ({"methods": {"baseline": {"trainig": {"epochs": 3}}}},
                    ["config key methods.baseline:", "'trainig' was unexpected"]),
    "wrong_type": ({"methods": {"baseline": {"training": {"epochs": "ten"}}}},
                   ["config key methods.baseline.training.epochs", "'ten'", "integer"]),
    "run_names_a_missing_variant": ({"run": {"variants": ["baseline", "basline"]}},
                                    ["run.variants", "'basline'", "'baseline'"]),
    "changes_a_missing_variant": ({"methods": {"basline": {"training": {"lr": 0.1}}}},
                                  ["config key methods.basline", "'baseline'"]),
    "like_a_missing_variant": ({"methods": {"mine": {"like": "basline"}}},
                               ["config key methods.mine.like", "'basline'"]),
}


@pytest.mark.parametrize("case", sorted(BAD_OVERLAYS))
def test_a_bad_overlay_stops_at_parse_time_naming_the_key(tmp_path, case):
    overlay, fragments = BAD_OVERLAYS[case]
    _write_config(tmp_path, yaml.safe_load((REPO / "config.yaml").read_text()))
    (tmp_path / "overlay.yaml").write_text(yaml.safe_dump(overlay))
    proc = _snakemake(tmp_path, "-n", "--configfile", str(tmp_path / "config.yaml"),
                      str(tmp_path / "overlay.yaml"), check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "WorkflowError" in out and "Traceback" not in out, out[-3000:]
    for fragment in fragments:
        assert fragment in out, out[-3000:]
    assert not (tmp_path / "results").exists()
