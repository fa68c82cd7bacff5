"""The failure-mode table's leakage cell: no ratio when the other backgrounds' FP rate is ~0."""

from __future__ import annotations

import json

from wsss.report.summary import _failure_mode_table


def _diagnosis(variant: str, fp: dict[str, float], ratio: float) -> dict:
    """A failure-mode JSON as `wsss.diagnostics` writes it (ratio as it computed it)."""
    return {"variant": variant, "stage": "crf", "split": "train", "threshold": None,
            "mean_object_recall": 0.7, "part_recall": 0.8, "body_recall": 0.6,
            "part_body_cam_ratio": None, "background_false_positive_rate": fp,
            "cooccurring": {"water": ["boat"]}, "leakage_ratio": {"water": ratio}}


def _leakage_cells(tmp_path, diags: list[dict]) -> tuple[dict[str, str], str]:
    paths = []
    for k, d in enumerate(diags):
        paths.append(tmp_path / f"{k}.failure_modes.json")
        paths[-1].write_text(json.dumps(d))
    table = _failure_mode_table(paths)
    rows = [line[2:-2].split(" | ") for line in table.splitlines() if line.startswith("| ")]
    head, body = rows[0], rows[1:]
    column = head.index("leakage water")
    return {row[0]: row[column] for row in body}, table


def test_ratio_over_a_near_zero_rate_is_replaced_by_the_two_rates(tmp_path):
    # water 8.1 %, the others' mean 0.0004: the ratio (202.5) is a division by noise
    near_zero = _diagnosis("dscnet", {"grass": 0.0003, "sand": 0.0005, "water": 0.081}, 202.5)
    # others' mean exactly at the floor, and above it: the ratio stays
    at_floor = _diagnosis("hsc", {"grass": 0.004, "sand": 0.006, "water": 0.02}, 4.0)
    above = _diagnosis("seam", {"grass": 0.02, "sand": 0.06, "water": 0.12}, 3.0)
    cells, table = _leakage_cells(tmp_path, [near_zero, at_floor, above])
    assert cells["dscnet"] == "— (FP 8.1 % vs 0.0 %)"
    assert "202.50" not in table
    assert cells["hsc"] == "4.00"
    assert cells["seam"] == "3.00"
    # the caption says what the dash means
    assert "under 0.5 %" in table and "no ratio" in table


def test_no_ratio_and_no_rate_leaves_the_cell_empty(tmp_path):
    # water not measured at all (no water pixels): nothing to print
    d = _diagnosis("seam", {"grass": 0.0, "sand": 0.0}, 0.0)
    d["leakage_ratio"] = {}
    cells, _ = _leakage_cells(tmp_path, [d])
    assert cells["seam"] == ""
