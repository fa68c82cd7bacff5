"""Sharded per-image stages and the COCO path, run through the real workflow: neither may change
a single stored value."""

import hashlib
import json
from pathlib import Path

import h5py
import pytest
from test_workflow import _planned_jobs, _snakemake, _tiny_config, _write_config

from wsss.store import CamReader, LabelReader

PER_IMAGE = ("cams", "evaluate_seeds", "refine_crf", "refiner_train_labels", "refine_learned",
             "refine_direct", "evaluate_labels", "deeplab_predict", "evaluate_deeplab")


def _config(shards: int, layout: str = "voc") -> dict:
    """The tiny run with every kind of per-image stage: CAMs, CRF, PSA's labels and walk, a
    segmentation head's labels, DeepLab prediction and all evaluations."""
    cfg = _tiny_config()
    cfg["run"]["variants"] = ["baseline", "head"]
    cfg["run"]["refiners"] = ["crf", "psa"]
    cfg["run"]["deeplab"] = [["baseline", "psa"], ["head", "seghead"]]
    cfg["dataset"].update(shards=shards, layout=layout)
    return cfg


def _digest(workdir: Path) -> dict[str, object]:
    """Every store a consumer reads (per id, the bytes of every array) and every mIoU."""
    results = workdir / "results" / "synthetic"
    out: dict[str, object] = {}
    for path in sorted(results.rglob("*.h5")):
        if ".shards" in path.parent.name:
            continue
        with h5py.File(path, "r") as f:
            kind = f.attrs["kind"]
        h = hashlib.sha256()
        with (CamReader if kind == "cams" else LabelReader)(path) as r:
            for image_id in r.ids:
                h.update(image_id.encode())
                if kind == "cams":
                    cam, keys = r.get(image_id)
                    h.update(cam.tobytes() + keys.tobytes())
                    if r.has_seg(image_id):
                        h.update(r.get_seg(image_id).tobytes())
                else:
                    h.update(r.get(image_id).tobytes())
        out[str(path.relative_to(results))] = h.hexdigest()
    for path in sorted(results.rglob("*.eval.json")):
        out[str(path.relative_to(results))] = json.loads(path.read_text())["miou"]
    return out


@pytest.mark.workflow
def test_shards_and_the_coco_layout_change_no_stored_value(tmp_path):
    one, four = tmp_path / "one", tmp_path / "four"
    _write_config(one, _config(1))
    _write_config(four, _config(4))
    single = _planned_jobs(_snakemake(one, "-n"))
    planned = _planned_jobs(_snakemake(four, "-n"))
    # four jobs per per-image stage, one gathering job per store or evaluation, the rest as is
    for rule in PER_IMAGE:
        assert planned[rule] == 4 * single[rule] > 0, rule
    assert planned["combine_cams"] == single["cams"]
    assert planned["combine_labels"] == single["refine_crf"] + single["refine_learned"] + \
        single["refine_direct"]
    assert planned["combine_seeds_eval"] == single["evaluate_seeds"]
    assert {r: n for r, n in planned.items() if r not in PER_IMAGE
            and not r.startswith("combine_")} == \
        {r: n for r, n in single.items() if r not in PER_IMAGE}

    _snakemake(four)
    sharded = _digest(four)
    view = four / "results" / "synthetic" / "baseline" / "cams" / "train.h5"
    with h5py.File(view, "r") as f:
        assert json.loads(f.attrs["shards"]) == [f"train.shards/{i}-of-4.h5" for i in (1, 2, 3, 4)]
        assert len(f.attrs["ids"]) > 0 and not any(
            isinstance(f.get(i, getlink=True), h5py.HardLink) for i in f)  # links, no arrays

    # back to one shard: the per-image stages and what reads them, nothing upstream
    _write_config(four, _config(1))
    rerun = _planned_jobs(_snakemake(four, "-n"))
    assert set(rerun) == {*PER_IMAGE, "refiner_train", "deeplab_train", "failure_modes",
                          "failure_modes_labels", "summary", "report_figures", "all"}
    _snakemake(four)
    assert _digest(four) == sharded

    # the benchmark written in COCO 2014 layout (polygons, RLE, void as crowd), converted back
    # by the coco reader, in two shards: the same images and masks, so the same every value
    coco = tmp_path / "coco"
    _write_config(coco, _config(2, layout="coco"))
    _snakemake(coco)
    data = coco / "results" / "synthetic" / "data"
    record = json.loads((data / "coco" / "conversion.json").read_text())
    assert record["splits"]["train"]["kept"] == 24 and record["splits"]["val"]["kept"] == 8
    assert record["splits"]["train"]["crowd_annotations"] > 0
    instances = json.loads((data / "coco_layout" / "annotations" /
                            "instances_train2014.json").read_text())
    forms = {type(a["segmentation"]).__name__ for a in instances["annotations"]}
    assert forms == {"list", "dict"}  # polygons and RLE both went through the reader
    assert _digest(coco) == sharded


def test_bad_shard_counts_and_a_coco_run_without_a_root_are_named(tmp_path):
    from test_workflow import _expect_config_error

    cfg = _config(0)
    _expect_config_error(tmp_path / "zero", cfg, "dataset.shards")
    cfg = _config(1)
    cfg["dataset"].update(kind="coco", root=None)
    _expect_config_error(tmp_path / "coco", cfg, "dataset.root must be set for dataset.kind coco")
    # a split whose image folder cannot be known, and an instances file that is not there
    cfg["dataset"].update(root=str(tmp_path), splits={"train": "annotations/x.json"})
    cfg["dataset"]["train_split"] = "train"
    cfg["run"]["splits"] = ["train"]
    cfg["deeplab"]["splits"] = ["train"]
    cfg["evaluation"]["selection_split"] = "train"
    cfg["report"]["example_split"] = "train"
    _expect_config_error(tmp_path / "name", cfg, "dataset.splits.train", "image_dirs")
    cfg["dataset"]["splits"] = {"train": "annotations/instances_train2014.json"}
    _expect_config_error(tmp_path / "nofile", cfg, "annotations/instances_train2014.json")
