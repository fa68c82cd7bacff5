"""Summary of all evaluations: a variants × stages table (CSV and Markdown) and a bar chart
(`wsss.report.bars.miou_bars`)."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from pathlib import Path

from wsss.report.bars import miou_bars
from wsss.report.style import stage_sort_key
from wsss.store import atomic_path


def load_evaluations(paths: Sequence[str | Path]) -> list[dict]:
    """The evaluation JSONs, each with its path under "_path"; ValueError if one lacks a key."""
    evals = []
    for path in paths:
        data = json.loads(Path(path).read_text())
        for key in ("variant", "stage", "miou", "split"):
            if key not in data:
                raise ValueError(f"{path}: evaluation lacks '{key}'")
        data["_path"] = str(path)  # lets the figures name the file in their errors
        evals.append(data)
    return evals


def _percent(value: float | None) -> float | str:
    """A fraction in %, or empty where it is undefined (e.g. precision with no foreground
    predicted at all)."""
    return "" if value is None else round(100 * value, 2)


def summary_rows(evals: list[dict]) -> tuple[list[str], list[dict]]:
    """One row per (variant, split); columns per stage: mIoU, plus seeds threshold and fg P/R."""
    stages = sorted({e["stage"] for e in evals},
                    key=stage_sort_key)
    rows: dict[tuple[str, str], dict] = {}
    for e in evals:
        row = rows.setdefault((e["variant"], e["split"]),
                              {"variant": e["variant"], "split": e["split"]})
        for key in ("miou", "fg_precision", "fg_recall"):
            row[f"{e['stage']}_{key}"] = _percent(e[key])
        if e["stage"] == "seeds":
            row["seeds_threshold"] = e["best_threshold"]
            row["seeds_miou_at_default"] = _percent(e["miou_at_default"])
    columns = ["variant", "split"]
    for s in stages:
        columns.append(f"{s}_miou")
        if s == "seeds":
            columns += ["seeds_threshold", "seeds_miou_at_default"]
        columns += [f"{s}_fg_precision", f"{s}_fg_recall"]
    return columns, [rows[k] for k in sorted(rows)]


def chosen_thresholds(evals: list[dict]) -> list[tuple[str, str, str, float, str]]:
    """(variant, stage, split, threshold, selection split) of every label evaluation whose
    refiner chose its background threshold on a selection split (`bg.chosen_on` in the config
    the labels record), sorted."""
    out = []
    for e in evals:
        bg = (e.get("config") or {}).get("bg") or {}
        if "chosen_on" in bg:
            out.append((e["variant"], e["stage"], e["split"], float(bg["threshold"]),
                        str(bg["chosen_on"])))
    return sorted(out)


def _chosen_thresholds(evals: list[dict]) -> str:
    rows = chosen_thresholds(evals)
    if not rows:
        return ""
    lines = [f"- {v} {st} ({sp}): background {t:.2f}, chosen on the `{on}` split's seeds"
             for v, st, sp, t, on in rows]
    return ("\nThresholds chosen on the selection split (`evaluation.selection_split`), never "
            "on the split being labelled:\n\n" + "\n".join(lines) + "\n")


def _markdown(columns: list[str], rows: list[dict], title: str) -> str:
    out = io.StringIO()
    if title:
        out.write(f"# {title}\n\n")
    out.write("mIoU, foreground precision and recall in %; seeds at the best background "
              "threshold of the sweep (and at the configured default). `deeplab_<refiner>`: "
              "DeepLab trained on that refiner's pseudo-labels of the train split, evaluated on "
              "the row's split (`_crf`: after DeepLab's CRF).\n\n")
    out.write("| " + " | ".join(columns) + " |\n")
    out.write("|" + "|".join("---" for _ in columns) + "|\n")
    for r in rows:
        out.write("| " + " | ".join(str(r.get(c, "")) for c in columns) + " |\n")
    return out.getvalue()


# Below this mean FP rate on the other backgrounds a leakage ratio divides by noise (the
# synthetic benchmark printed 5782.56 for a rate near zero): the cell shows the two rates instead.
LEAKAGE_FLOOR = 0.005


def _leakage_cell(d: dict, bg: str) -> str:
    """The leakage of co-occurring background `bg`: the ratio, or, where the other backgrounds'
    mean FP rate is under LEAKAGE_FLOOR, "— (FP a % vs b %)" with the two rates."""
    fp = d["background_false_positive_rate"]
    others = [r for b, r in fp.items() if b != bg]
    if bg in fp and others and sum(others) / len(others) < LEAKAGE_FLOOR:
        return f"— (FP {100 * fp[bg]:.1f} % vs {100 * sum(others) / len(others):.1f} %)"
    return f"{d['leakage_ratio'][bg]:.2f}" if bg in d["leakage_ratio"] else ""


def _failure_mode_table(paths: Sequence[str | Path]) -> str:
    """Markdown table of the synthetic benchmark's failure modes per variant."""
    diags = [json.loads(Path(p).read_text()) for p in paths]
    if not diags:
        return ""
    bgs = sorted({b for d in diags for b in d["background_false_positive_rate"]})
    cooc = sorted({b for d in diags for b in d["cooccurring"]})
    head = (["variant", "stage", "split", "threshold", "object recall", "part recall",
             "body recall", "CAM part/body"]
            + [f"FP rate {b}" for b in bgs] + [f"leakage {b}" for b in cooc])
    out = io.StringIO()
    out.write("\n## Failure modes (synthetic benchmark)\n\n")
    out.write("Object recall: share of object pixels labelled with their class; part / body "
              "recall: the same on each object's discriminative part / on the rest of it; CAM "
              "part/body: mean CAM of the object's class on its part over that on its body "
              "(> 1 = activation concentrated on the part). FP rate: share of background "
              "pixels of each background type predicted as foreground; leakage = FP rate on a "
              "co-occurring background / mean FP rate on the others (co-occurring: "
              + "; ".join(f"{b}: {', '.join(c)}" for b, c in diags[0]["cooccurring"].items())
              + f"); where that mean is under {100 * LEAKAGE_FLOOR:g} % the ratio would "
              "divide by noise, so the cell gives no ratio, only the two rates: "
              "\"— (FP co-occurring % vs mean of the others %)\".\n\n")
    out.write("| " + " | ".join(head) + " |\n|" + "|".join("---" for _ in head) + "|\n")
    for d in sorted(diags, key=lambda d: (d["variant"], d["split"], stage_sort_key(d["stage"]))):
        fp = d["background_false_positive_rate"]
        threshold = "" if d["threshold"] is None else f"{d['threshold']:.2f}"
        cells = [d["variant"], d["stage"], d["split"], threshold,
                 f"{100 * d['mean_object_recall']:.1f}"]
        cells += [f"{100 * d[k]:.1f}" if d.get(k) is not None else ""
                  for k in ("part_recall", "body_recall")]
        ratio = d.get("part_body_cam_ratio")
        cells.append(f"{ratio:.2f}" if ratio is not None else "")
        cells += [f"{100 * fp[b]:.1f}" if b in fp else "" for b in bgs]
        cells += [_leakage_cell(d, b) for b in cooc]
        out.write("| " + " | ".join(cells) + " |\n")
    return out.getvalue()


def write_summary(eval_paths: Sequence[str | Path], csv_path: str | Path, md_path: str | Path,
                  png_path: str | Path, title: str = "",
                  diagnostics: Sequence[str | Path] = ()) -> None:
    """The summary table as CSV and Markdown (with the failure modes of `diagnostics`) and the
    mIoU bar chart of the evaluations at `eval_paths`."""
    evals = load_evaluations(eval_paths)
    columns, rows = summary_rows(evals)
    with atomic_path(csv_path) as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    with atomic_path(md_path) as tmp:
        tmp.write_text(_markdown(columns, rows, title) + _chosen_thresholds(evals)
                       + _failure_mode_table(diagnostics))
    miou_bars(evals, png_path, title)
