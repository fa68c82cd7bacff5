"""The summary table: pipeline order of the stages, percentages, and the failure-mode table."""

from __future__ import annotations

import csv
import json

import pytest

from wsss.report.summary import load_evaluations, summary_rows, write_summary


def _eval(stage, split="train", miou=0.5, precision=0.6, recall=0.7, **extra):
    return {"variant": "first", "stage": stage, "split": split, "miou": miou,
            "fg_precision": precision, "fg_recall": recall, **extra}


def test_summary_rows_order_stages_and_leave_undefined_cells_empty(refiners):
    # registry order zeta, crf, mu: not the alphabetical one
    evals = [_eval("deeplab_mu", split="val", precision=None, miou=0.25),
             _eval("mu", miou=0.6123), _eval("zeta"),
             _eval("seeds", best_threshold=0.14, miou_at_default=0.4)]
    columns, rows = summary_rows(evals)
    stages = [c[: -len("_miou")] for c in columns if c.endswith("_miou") and "default" not in c]
    assert stages == ["seeds", "zeta", "mu", "deeplab_mu"]
    assert columns[:7] == ["variant", "split", "seeds_miou", "seeds_threshold",
                           "seeds_miou_at_default", "seeds_fg_precision", "seeds_fg_recall"]
    train, val = rows
    assert (train["split"], val["split"]) == ("train", "val")
    assert train["mu_miou"] == 61.23 and train["seeds_threshold"] == 0.14
    assert train["seeds_miou_at_default"] == 40.0
    assert val["deeplab_mu_miou"] == 25.0 and val["deeplab_mu_fg_precision"] == ""
    assert "mu_miou" not in val


def _diagnosis(variant, stage, threshold=None):
    return {"variant": variant, "stage": stage, "split": "train", "threshold": threshold,
            "mean_object_recall": 0.7, "part_recall": 0.8, "body_recall": None,
            "part_body_cam_ratio": 1.25 if threshold else None,
            "background_false_positive_rate": {"grass": 0.1, "water": 0.2},
            "cooccurring": {"water": ["boat"]}, "leakage_ratio": {"water": 2.0}}


def test_write_summary_writes_csv_markdown_and_failure_modes(tmp_path, refiners, png_size):
    paths = []
    for k, e in enumerate([_eval("mu", miou=0.3), _eval("seeds", best_threshold=0.2,
                                                         miou_at_default=0.25)]):
        paths.append(tmp_path / f"{k}.eval.json")
        paths[-1].write_text(json.dumps(e))
    diags = []
    for k, (variant, stage, t) in enumerate([("second", "zeta", None), ("first", "mu", None),
                                             ("first", "seeds", 0.3)]):
        diags.append(tmp_path / f"{k}.diag.json")
        diags[-1].write_text(json.dumps(_diagnosis(variant, stage, t)))
    out_csv, out_md, out_png = tmp_path / "s.csv", tmp_path / "s.md", tmp_path / "s.png"
    write_summary(paths, out_csv, out_md, out_png, title="Tiny", diagnostics=diags)

    with open(out_csv, newline="") as fh:
        (row,) = list(csv.DictReader(fh))
    assert row["seeds_miou"] == "50.0" and row["mu_miou"] == "30.0"
    md = out_md.read_text()
    assert md.startswith("# Tiny\n\n")
    assert "| first | train | 50.0 | 0.2 | 25.0 | 60.0 | 70.0 | 30.0 | 60.0 | 70.0 |" in md
    table = md[md.index("## Failure modes"):]
    rows = [line.split(" | ")[:4] for line in table.splitlines() if line.startswith("| ")][1:]
    # by variant, then pipeline stage; threshold with two decimals, empty when undefined
    assert rows == [["| first", "seeds", "train", "0.30"], ["| first", "mu", "train", ""],
                    ["| second", "zeta", "train", ""]]
    assert "| 70.0 | 80.0 |  | 1.25 | 10.0 | 20.0 | 2.00 |" in table
    assert png_size(out_png)[0] > 0


def test_load_evaluations_names_the_file_lacking_a_key(tmp_path):
    path = tmp_path / "x.eval.json"
    path.write_text(json.dumps({"variant": "v", "stage": "seeds", "miou": 0.5}))
    with pytest.raises(ValueError, match=r"x.eval.json: evaluation lacks 'split'"):
        load_evaluations([path])
    path.write_text(json.dumps({"variant": "v", "stage": "seeds", "miou": 0.5, "split": "val"}))
    assert load_evaluations([path])[0]["_path"] == str(path)


def test_a_bad_evaluation_writes_no_summary(tmp_path):
    path = tmp_path / "x.eval.json"
    path.write_text(json.dumps({"variant": "v", "stage": "seeds", "split": "val"}))
    with pytest.raises(ValueError, match="'miou'"):
        write_summary([path], tmp_path / "s.csv", tmp_path / "s.md", tmp_path / "s.png")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.eval.json"]


def test_summary_names_the_split_that_chose_each_threshold(tmp_path, refiners, png_size):
    chosen = {"bg": {"mode": "constant", "threshold": 0.17, "chosen_on": "train"}}
    fixed = {"bg": {"mode": "constant", "threshold": 0.3}}
    paths = []
    for k, e in enumerate([_eval("mu", split="val", config=chosen), _eval("zeta", config=fixed),
                           _eval("seeds", best_threshold=0.2, miou_at_default=0.25)]):
        paths.append(tmp_path / f"{k}.eval.json")
        paths[-1].write_text(json.dumps(e))
    write_summary(paths, tmp_path / "s.csv", tmp_path / "s.md", tmp_path / "s.png")
    md = (tmp_path / "s.md").read_text()
    # the val labels' threshold came from train; a fixed threshold is not listed
    assert "- first mu (val): background 0.17, chosen on the `train` split's seeds" in md
    assert "zeta (train)" not in md
