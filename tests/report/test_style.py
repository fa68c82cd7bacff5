"""Stage order and colours shared by the summary and the figures."""

from __future__ import annotations

import matplotlib
import pytest

from wsss import registry
from wsss.report.style import FigureError, require, stage_sort_key, stage_styles


def test_stage_order_follows_the_pipeline_and_the_registry(refiners):
    # registry order zeta, crf, mu; "mu_bg10" is a setting of mu; "other" is not registered
    stages = ["deeplab_mu_crf", "mu_bg10", "mu", "deeplab_crf", "seeds", "zeta", "crf",
              "deeplab_mu", "deeplab_crf_crf", "other", "deeplab_zeta"]
    assert sorted(stages, key=stage_sort_key) == [
        "seeds", "zeta", "crf", "mu", "mu_bg10", "other",
        "deeplab_zeta", "deeplab_crf", "deeplab_crf_crf", "deeplab_mu", "deeplab_mu_crf",
    ]


def test_stage_order_changes_with_the_declaration_order(monkeypatch):
    stages = ["seeds", "b", "a", "deeplab_a", "deeplab_b"]
    monkeypatch.setattr(registry, "names", lambda kind: ["b", "a"])
    assert sorted(stages, key=stage_sort_key) == ["seeds", "b", "a", "deeplab_b", "deeplab_a"]
    monkeypatch.setattr(registry, "names", lambda kind: ["a", "b"])
    assert sorted(stages, key=stage_sort_key) == ["seeds", "a", "b", "deeplab_a", "deeplab_b"]


def test_registered_refiners_sort_in_declaration_order():
    names = registry.names("refiner")
    assert sorted(reversed(names), key=stage_sort_key) == names
    deeplab = [f"deeplab_{n}" for n in names]
    assert sorted(reversed(deeplab), key=stage_sort_key) == deeplab


def test_a_refiners_labels_and_its_deeplab_share_a_hue(refiners):
    tab20 = matplotlib.colormaps["tab20"].colors
    styles = stage_styles(["deeplab_mu_crf", "mu", "seeds", "deeplab_mu", "zeta"])
    # sources in pipeline order: zeta (hue 0), mu (hue 1); light = labels, dark = DeepLab
    assert styles["seeds"] == {"color": "#7f7f7f", "hatch": None}
    assert styles["zeta"] == {"color": tab20[1], "hatch": None}
    assert styles["mu"] == {"color": tab20[3], "hatch": None}
    assert styles["deeplab_mu"] == {"color": tab20[2], "hatch": None}
    assert styles["deeplab_mu_crf"] == {"color": tab20[2], "hatch": "///"}


def test_the_eighth_source_skips_the_seeds_grey():
    stages = [f"s{k}" for k in range(9)]
    styles = stage_styles(stages)
    grey_pair = {matplotlib.colormaps["tab20"].colors[i] for i in (14, 15)}
    assert not grey_pair & {s["color"] for s in styles.values()}
    assert len({s["color"] for s in styles.values()}) == 9


def test_require_names_the_evaluation_file():
    with pytest.raises(FigureError, match=r"a/b.eval.json \(variant=v\): .*'miou'"):
        require([{"variant": "v", "_path": "a/b.eval.json"}], ["miou"])
    with pytest.raises(FigureError, match="no evaluations"):
        require([], ["miou"])
