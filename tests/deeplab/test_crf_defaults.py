"""DeepLab's post-processing CRF defaults are DeepLab's (the schema's), never PSA's kernels."""

from __future__ import annotations

import copy

import numpy as np
import torch
from deeplab.cases import CFG

from wsss import registry
from wsss.data.voc import VocDataset
from wsss.deeplab import predict as deeplab_predict
from wsss.deeplab.training import DeepLab
from wsss.ops.densecrf import DEFAULT_CRF
from wsss.schema import assemble


def _schema_defaults() -> dict:
    """What a validated config fills in for a missing `deeplab.inference.crf` block."""
    block = assemble()["properties"]["deeplab"]["properties"]["inference"]["properties"]["crf"]
    return registry.defaults(block)


def test_missing_or_partial_block_falls_back_to_the_schema_defaults():
    expected = _schema_defaults()
    assert deeplab_predict.deeplab_crf(None) == expected
    assert deeplab_predict.deeplab_crf({}) == expected
    # the shared kernels are PSA's; inheriting them was the bug
    assert deeplab_predict.deeplab_crf(None) != DEFAULT_CRF
    partial = deeplab_predict.deeplab_crf({"bilateral": {"srgb": 5}})
    assert partial["bilateral"] == {**expected["bilateral"], "srgb": 5}
    assert partial["gaussian"] == expected["gaussian"]
    assert partial["iterations"] == expected["iterations"]


def test_a_full_block_is_used_as_given():
    given = {"iterations": 4, "gaussian": {"sxy": 2, "compat": 5},
             "bilateral": {"sxy": 50, "srgb": 7, "compat": 6}}
    assert deeplab_predict.deeplab_crf(copy.deepcopy(given)) == given


def test_predict_without_a_crf_block_runs_deeplabs_kernels(tmp_path, tiny_voc_config,
                                                            monkeypatch):
    ds = VocDataset.from_config(tiny_voc_config)
    torch.manual_seed(0)
    net = DeepLab(CFG, ds.num_classes).eval()
    monkeypatch.setattr(deeplab_predict, "load_deeplab", lambda *args: net)
    seen = []

    def record(image, probs, params):
        seen.append(copy.deepcopy(params))
        return probs.argmax(axis=0).astype(np.uint8)

    monkeypatch.setattr(deeplab_predict, "crf_label", record)
    cfg = copy.deepcopy(CFG)
    del cfg["inference"]["crf"]
    deeplab_predict.predict(tmp_path / "w.pt", ds, "val", cfg, tmp_path / "p.h5",
                            tmp_path / "c.h5", "cpu", threads=1)
    assert len(seen) == len(ds.ids("val"))
    assert all(params == _schema_defaults() for params in seen)
