"""The dense-CRF primitives: mean-field marginals that follow colour edges, the defaults
completion, and the two-threshold label CRF of IRN and HSC."""

import numpy as np
import pytest
from fakes import two_regions as _two_regions

from wsss.ops.densecrf import DEFAULT_CRF, crf_params, dense_crf, label_crf

RED, BLUE = (200, 40, 40), (40, 40, 200)



def test_crf_cleans_noisy_probabilities():
    image, truth = _two_regions()
    rng = np.random.default_rng(0)
    onehot = np.stack([truth == 0, truth == 1]).astype(np.float32)
    probs = np.clip(0.35 + 0.3 * onehot + rng.normal(0, 0.3, onehot.shape), 0.01, 1.0)
    noisy_acc = (probs.argmax(axis=0) == truth).mean()
    q = dense_crf(image, probs.astype(np.float32), DEFAULT_CRF)
    assert q.shape == probs.shape and q.dtype == np.float32
    np.testing.assert_allclose(q.sum(axis=0), 1.0, atol=1e-4)  # marginals
    crf_acc = (q.argmax(axis=0) == truth).mean()
    assert noisy_acc < 0.85
    assert crf_acc >= 0.98 and crf_acc > noisy_acc + 0.1


def test_dense_crf_checks_shapes():
    with pytest.raises(ValueError, match="do not match"):
        dense_crf(np.zeros((4, 4, 3), np.uint8), np.ones((2, 4, 5), np.float32), {})


def test_dense_crf_accepts_read_only_images():
    image, truth = _two_regions(8, 10)
    image.setflags(write=False)  # as an image memory-mapped from a store arrives
    probs = np.stack([truth == 0, truth == 1]).astype(np.float32) * 0.8 + 0.1
    assert (dense_crf(image, probs, {}).argmax(axis=0) == truth).all()


def test_crf_params_fill_only_missing_keys():
    p = crf_params({"iterations": "3", "bilateral": {"srgb": 5}, "gt_prob": 0.7})
    assert p == {"iterations": 3, "gaussian": {"sxy": 3, "compat": 3},
                 "bilateral": {"sxy": 80, "srgb": 5, "compat": 10}}
    assert crf_params(None) == DEFAULT_CRF and crf_params(None) is not DEFAULT_CRF
    crf_params(None)["gaussian"]["sxy"] = 99  # a caller's edit must not leak into the defaults
    assert DEFAULT_CRF["gaussian"]["sxy"] == 3


LABEL_CRF = {"gt_prob": 0.7, "iterations": 10, "gaussian": {"sxy": 3, "compat": 3},
             "bilateral": {"sxy": 50, "srgb": 5, "compat": 10}}


def test_label_crf_keeps_clean_hard_labels():
    image = np.zeros((16, 20, 3), np.uint8)
    image[:, 10:] = BLUE
    planes = np.zeros((16, 20), np.int64)
    planes[:, 10:] = 1
    noisy = planes.copy()
    noisy[3, 3] = 1  # one stray pixel inside the other colour region
    out = label_crf(image, noisy, 2, LABEL_CRF)
    np.testing.assert_array_equal(out, planes)


def test_label_crf_gt_prob_sets_how_firmly_labels_hold():
    # a label band across the colour edge: an (almost) certain unary keeps it, IRN's 0.7 lets
    # the image move it back to the edge
    image, truth = _two_regions(16, 24)
    planes = truth.copy()
    planes[:, 8:12] = 1  # four columns of the red half labelled as the blue class
    firm = label_crf(image, planes, 2, {**LABEL_CRF, "gt_prob": 1 - 1e-6})
    weak = label_crf(image, planes, 2, LABEL_CRF)
    np.testing.assert_array_equal(firm, planes)
    np.testing.assert_array_equal(weak, truth)
