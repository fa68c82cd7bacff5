"""Editing a module reruns exactly the stages that import it (code inputs derived from the
import graph, `wsss.imports`), checked with dry runs of the real workflow on a copy of the
repository whose outputs all exist and are up to date."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
STAMP = 1_700_000_000  # one mtime for every output: none is newer than another


def _snakemake(repo: Path, workdir: Path, *args: str) -> str:
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(repo / "Snakefile"),
           "--directory", str(workdir), "--cores", "1", "--rerun-triggers", "mtime", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        raise AssertionError(f"snakemake failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc.stdout + proc.stderr


def _directly_rerun(text: str, path: Path) -> set[tuple[str, str]]:
    """(rule, wildcards) of the planned jobs that list `path` among their inputs (a dry run
    gives a downstream job only its upstream reason, so the input list tells)."""
    out = set()
    for block in re.split(r"\n(?=(?:local)?rule \w+:)", text):
        rule = re.match(r"(?:local)?rule (\w+):", block)
        inputs = re.search(r"input: (.+)", block)
        if rule and inputs and str(path) in inputs.group(1).split(", "):
            wc = re.search(r"wildcards: (.+)", block)
            out.add((rule.group(1), wc.group(1).strip() if wc else ""))
    return out


@pytest.fixture(scope="module")
def up_to_date(tmp_path_factory):
    """A copy of the workflow and package, and a run folder where every output of the default
    config exists with one old mtime (older than nothing, newer than the sources)."""
    root = tmp_path_factory.mktemp("codeinputs")
    repo = root / "repo"
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info")
    repo.mkdir()
    shutil.copy2(REPO / "Snakefile", repo / "Snakefile")
    shutil.copytree(REPO / "workflow", repo / "workflow", ignore=ignore)
    shutil.copytree(REPO / "src", repo / "src", ignore=ignore)
    for p in (repo / "src").rglob("*.py"):
        os.utime(p, (STAMP - 100, STAMP - 100))
    work = root / "run"
    work.mkdir()
    (work / "config.yaml").write_text((REPO / "config.yaml").read_text())
    text = _snakemake(repo, work, "--configfile", str(work / "config.yaml"), "--summary")
    lines = [ln.split("\t") for ln in text.splitlines() if ln.startswith("results/")]
    for cols in lines:
        out = work / cols[0]
        if cols[2] == "synthetic_data":
            out.mkdir(parents=True, exist_ok=True)
        else:
            out.parent.mkdir(parents=True, exist_ok=True)
            out.touch()
        os.utime(out, (STAMP, STAMP))
    assert len(lines) > 50
    assert "Nothing to be done" in _snakemake(repo, work, "-n")
    return repo, work


@pytest.mark.workflow
@pytest.mark.parametrize("module, expected, not_expected", [
    # the label CRF: HSC's training runs it inside every step; the baseline's does not
    ("ops/densecrf.py", {("train_classifier", "variant=hsc")},
     {("train_classifier", "variant=baseline"), ("cams", "variant=baseline, split=train")}),
    # one method's module: its own classifier and CAMs, no other variant's
    ("methods/dscnet.py", {("train_classifier", "variant=dscnet"),
                           ("cams", "variant=dscnet, split=train")},
     {("train_classifier", "variant=seam"), ("cams", "variant=seam, split=train")}),
    # a model module only one method imports (ACR's U-Net): that method's stages only
    ("models/unet.py", {("train_classifier", "variant=acr"), ("cams", "variant=acr, split=train")},
     {("train_classifier", "variant=baseline"), ("cams", "variant=baseline, split=train")}),
    # CSRM's DeepLabV3+ head: CSRM's stages only
    ("models/deeplabv3plus.py", {("train_classifier", "variant=csrm"),
                                 ("cams", "variant=csrm, split=val")},
     {("train_classifier", "variant=acr"), ("cams", "variant=baseline, split=train")}),
    # the ViT, loaded through the registry (in no static import graph): FSR's stages and the
    # ViT's pretraining, not the tiny ResNet's nor the ResNet methods'
    ("models/vit.py", {("train_classifier", "variant=fsr"), ("cams", "variant=fsr, split=val"),
                       ("pretrain", "backbone=vit_tiny")},
     {("pretrain", "backbone=tiny"), ("train_classifier", "variant=baseline")}),
    # DeepLab's prediction code does not retrain it
    ("deeplab/predict.py", {("deeplab_predict", "variant=baseline, refiner=psa, split=val")},
     {("deeplab_train", "variant=baseline, refiner=psa")}),
])
def test_editing_a_module_reruns_the_stages_that_import_it(up_to_date, module, expected,
                                                           not_expected):
    repo, work = up_to_date
    path = repo / "src" / "wsss" / module
    os.utime(path, (STAMP + 100, STAMP + 100))
    try:
        rerun = _directly_rerun(_snakemake(repo, work, "-n"), path)
    finally:
        os.utime(path, (STAMP - 100, STAMP - 100))
    assert expected <= rerun
    assert not (not_expected & rerun)


@pytest.mark.workflow
def test_a_module_no_stage_imports_reruns_nothing(up_to_date):
    repo, work = up_to_date
    path = repo / "src" / "wsss" / "lonely.py"
    path.write_text('"""imported by nothing"""\n')
    os.utime(path, (STAMP + 100, STAMP + 100))
    try:
        assert "Nothing to be done" in _snakemake(repo, work, "-n")
    finally:
        path.unlink()
