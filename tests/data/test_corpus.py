"""The pretraining corpus: deterministic, balanced, its classes what their names say, and apart
from the WSSS benchmark's images."""

from __future__ import annotations

import numpy as np
import pytest

from wsss.data.synthetic import corpus as corpus_mod
from wsss.data.synthetic.config import SPLITS, resolve_config
from wsss.data.synthetic.corpus import PARTS, class_names, corpus, image_rng
from wsss.data.synthetic.render import render_image
from wsss.errors import ConfigError

SMALL = {"seed": 0, "classes": 12, "train_per_class": 3, "held_out_per_class": 2, "size": 40}


def test_same_config_same_arrays_whatever_the_workers_and_another_seed_differs():
    images, labels = corpus(SMALL, "train")
    again, labels_again = corpus(SMALL, "train", threads=2)
    np.testing.assert_array_equal(again, images)
    np.testing.assert_array_equal(labels_again, labels)
    other, _ = corpus({**SMALL, "seed": 1}, "train")
    assert not any(np.array_equal(a, b) for a, b in zip(images, other, strict=True))


def test_parts_are_balanced_and_disjoint():
    images, labels = corpus(SMALL, "train")
    held, held_labels = corpus(SMALL, "held_out")
    assert images.shape == (12 * 3, 40, 40, 3) and images.dtype == np.uint8
    assert np.bincount(labels).tolist() == [3] * 12
    assert np.bincount(held_labels).tolist() == [2] * 12
    # the held-out part is drawn from its own streams, not a prefix of the training part's
    assert not any(np.array_equal(h, t) for h in held for t in images)
    # images of one class differ (size, place, rotation, background, hue are random)
    first = images[labels == 0]
    assert not np.array_equal(first[0], first[1])


def test_each_label_is_drawn_as_the_shape_and_texture_its_name_says(monkeypatch):
    """Class k is shape k mod 8 with texture k div 8, as class_names(k) says."""
    painted: list[str] = []
    real_paint = corpus_mod.paint_body

    def spy(spec, cfg, rng, pl, h, w):
        painted.append(f"{spec.shape}/{spec.texture}")
        return real_paint(spec, cfg, rng, pl, h, w)

    monkeypatch.setattr(corpus_mod, "paint_body", spy)
    _, labels = corpus(SMALL, "train")
    names = class_names(SMALL["classes"])
    assert painted == [names[k] for k in labels]
    assert {n.split("/")[1] for n in painted} == {"stripes", "dots"}  # 12 classes: 2 textures
    assert len(set(class_names())) == corpus_mod.NUM_CLASSES == 32


def test_streams_are_not_the_benchmarks():
    """The corpus's generator for (seed, part, i) is none of the benchmark's (seed, split, i)
    generators, for either part and either split (the benchmark seeds by that tuple)."""
    for part in PARTS:
        for split in range(len(SPLITS)):
            for i in range(4):
                ours = image_rng(0, part, i).random(4)
                theirs = np.random.default_rng((0, split, i)).random(4)
                assert not np.array_equal(ours, theirs), (part, split, i)


def test_no_corpus_image_is_a_benchmark_image_of_the_same_size():
    cfg = {**SMALL, "size": 48}
    bench = resolve_config({"seed": cfg["seed"], "min_side": 48, "max_side": 48})
    theirs = [render_image(bench, split, i).image for split in SPLITS for i in range(3)]
    for part in PARTS:
        ours, _ = corpus(cfg, part)
        assert all(o.shape == t.shape for o in ours[:6] for t in theirs)
        assert not any(np.array_equal(o, t) for o in ours[:6] for t in theirs)


@pytest.mark.parametrize(("key", "value"), [("classes", 33), ("classes", 1), ("size", 16)])
def test_a_bad_setting_is_named(key, value):
    with pytest.raises(ConfigError, match=rf"pretrain\.corpus\.{key}"):
        corpus({**SMALL, key: value}, "train")


def test_a_missing_setting_is_named():
    cfg = {k: v for k, v in SMALL.items() if k != "train_per_class"}
    with pytest.raises(ConfigError, match=r"pretrain\.corpus\.train_per_class: missing"):
        corpus(cfg, "train")
