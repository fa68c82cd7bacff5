"""write_figures: the report_figures rule's three PNGs from evaluation files, stores and logs."""

from __future__ import annotations

import json

import pytest

from wsss.data.index import build_index, write_index
from wsss.report.figures import write_figures


def _inputs(tmp_path, stores, evals, write_log):
    ds, _, cams, labels, _, seeds_eval = stores
    paths = []
    for k, e in enumerate(evals):
        paths.append(tmp_path / f"{k}.eval.json")
        paths[-1].write_text(json.dumps(e))
    columns = [{"title": "CAM", "kind": "cam", "path": str(cams)},
               {"title": "seeds", "kind": "seeds", "path": str(cams), "extra": str(seeds_eval)},
               {"title": "labels", "kind": "labels", "path": str(labels)}]
    logs = [["classifier", str(write_log(tmp_path / "a.csv", 20))]]
    return ds, paths, columns, logs


def test_write_figures_draws_all_three_and_counts(tmp_path, stores, evals, write_log, png_size):
    ds, paths, columns, logs = _inputs(tmp_path, stores, evals, write_log)
    index = tmp_path / "index.json"
    write_index(index, build_index(ds, ["train"]))
    out = {name: tmp_path / "figs" / f"{name}.png" for name in ("heatmap", "grid", "curves")}
    # more examples than the split has: the count is of the images shown
    counts = write_figures(ds, paths, columns, logs, "train", 10, index, **out)
    assert counts == (len(evals), 4, 1)
    for path in out.values():
        assert png_size(path)[0] > 0
    assert write_figures(ds, paths, columns, logs, "train", 2, None, **out) == (len(evals), 2, 1)


def test_write_figures_reads_the_picks_from_the_index(tmp_path, stores, evals, write_log):
    ds, paths, columns, logs = _inputs(tmp_path, stores, evals, write_log)
    index = tmp_path / "index.json"
    data = build_index(ds, ["train"])
    # an index without the split's image labels: the picks must read them there, not the masks
    data["splits"]["train"]["labels"] = {}
    write_index(index, data)
    out = {name: tmp_path / "figs" / f"{name}.png" for name in ("heatmap", "grid", "curves")}
    with pytest.raises(ValueError, match="has no entry in the given labels"):
        write_figures(ds, paths, columns, logs, "train", 2, index, **out)


def test_a_bad_evaluation_draws_no_figure(tmp_path, stores, evals, write_log):
    ds, paths, columns, logs = _inputs(tmp_path, stores, evals, write_log)
    paths[2].write_text(json.dumps({"variant": "v", "stage": "seeds", "split": "train"}))
    figs = tmp_path / "figs"
    with pytest.raises(ValueError, match=rf"{paths[2].name}: evaluation lacks 'miou'"):
        write_figures(ds, paths, columns, logs, "train", 2, None, heatmap=figs / "h.png",
                      grid=figs / "g.png", curves=figs / "c.png")
    assert not figs.exists()
