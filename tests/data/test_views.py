"""Classifier samples: the default sample, k augmented views, the unaugmented second sample."""

import numpy as np
import pytest
import torch

from wsss.data.transforms import (
    ClassificationSet,
    center_crop,
    color_jitter,
    normalize,
    random_crop,
    resize_long,
)

AUG = {"resize_long": [24, 48], "hflip": True, "color_jitter": 0.3, "crop_size": 32}
LABELS = {"a": [0], "b": [1, 2], "c": [2]}


class Images:
    """Three random images of different shapes; "c" is 16×32, so at crop 32 it needs no resize."""

    num_classes = 3
    shapes = {"a": (40, 30), "b": (27, 50), "c": (16, 32)}

    def load_image(self, image_id):
        rng = np.random.default_rng(ord(image_id))
        return rng.integers(0, 256, (*self.shapes[image_id], 3), dtype=np.uint8)


def _set(**aug):
    return ClassificationSet(Images(), ["a", "b", "c"], LABELS, {**AUG, **aug}, seed=5)


def _old_sample(ds, ids, seed, index, epoch):
    """ClassificationSet.__getitem__ as it was before views and the second batch existed."""
    image_id = ids[index]
    rng = np.random.default_rng([seed, epoch, index])
    image = ds.load_image(image_id)
    lo, hi = AUG["resize_long"]
    image = resize_long(image, int(rng.integers(lo, hi + 1)))
    if AUG["hflip"] and rng.random() < 0.5:
        image = image[:, ::-1]
    image = color_jitter(image, AUG["color_jitter"], rng)
    return random_crop(normalize(image), AUG["crop_size"], rng)


def test_the_default_sample_is_the_one_before_views_existed():
    trainset = _set()
    for epoch in range(3):
        for index in range(3):
            sample = trainset[(index, epoch)]
            assert set(sample) == {"image", "label", "index"}
            old = _old_sample(Images(), ["a", "b", "c"], 5, index, epoch)
            assert np.array_equal(sample["image"].numpy(), old), (index, epoch)
    assert trainset[(1, 0)]["label"].tolist() == [0.0, 1.0, 1.0]


def test_views_differ_from_each_other_and_repeat_for_the_same_index_and_epoch():
    sample = _set(views=3)[(1, 2)]
    views = sample["views"]
    assert views.shape == (3, 3, 32, 32)
    assert torch.equal(views[0], sample["image"])  # the first view is the single-view sample
    assert torch.equal(sample["image"], _set()[(1, 2)]["image"])
    for i in range(3):
        for j in range(i + 1, 3):
            assert not torch.equal(views[i], views[j]), (i, j)
    again = _set(views=3)[(1, 2)]["views"]  # a fresh set, as a resumed run or a worker has
    assert torch.equal(again, views)
    assert not torch.equal(_set(views=3)[(1, 3)]["views"][1], views[1])  # another epoch


def test_views_collate_to_batch_image_view_axes():
    trainset = _set(views=2)
    batch = torch.utils.data.default_collate([trainset[(i, 0)] for i in range(3)])
    assert batch["views"].shape == (3, 2, 3, 32, 32)
    assert torch.equal(batch["views"][:, 0], batch["image"])


def test_the_second_sample_is_unaugmented_and_depends_only_on_its_image():
    trainset = _set()
    sample = trainset[(0, 0, 2)]
    assert torch.equal(sample["image"], trainset[(0, 0)]["image"])  # the first is untouched
    assert sample["index_u"] == 2 and sample["label_u"].tolist() == [0.0, 0.0, 1.0]
    # "c" is 16×32: at crop 32 it keeps its size and sits centred, 8 padded rows above/below
    expect = np.zeros((3, 32, 32), dtype=np.float32)
    expect[:, 8:24] = normalize(Images().load_image("c"))
    assert np.array_equal(sample["image_u"].numpy(), expect)
    for key in ((1, 0, 2), (0, 7, 2)):  # no flip, jitter or crop drawn per index or epoch
        assert torch.equal(trainset[key]["image_u"], sample["image_u"])


@pytest.mark.parametrize(("shape", "window"), [((3, 40, 36), (4, 36, 2, 34))])
def test_center_crop_cuts_the_middle(shape, window):
    image = np.arange(np.prod(shape), dtype=np.float32).reshape(shape)
    top, bottom, left, right = window
    assert np.array_equal(center_crop(image, 32), image[:, top:bottom, left:right])


def test_random_resized_crop_views_are_windows_of_the_image_resized_to_the_crop():
    """With random_resized_crop each view is a window of the image (area share within the
    range, aspect within 3/4..4/3) resized to crop_size: a constant-colour window stays that
    colour, views differ, and without the key the old augmentation is unchanged."""

    class Halves(Images):
        def load_image(self, image_id):
            img = np.zeros((40, 60, 3), np.uint8)
            img[:, 30:] = 200  # left half black, right half grey
            return img

    ds = ClassificationSet(Halves(), ["a", "b", "c"], LABELS,
                           {**AUG, "color_jitter": 0.0, "hflip": False, "views": 4,
                            "random_resized_crop": [0.05, 0.1]}, seed=5)
    views = ds[(0, 0)]["views"]
    assert views.shape == (4, 3, 32, 32)
    black, grey = normalize(np.zeros((1, 1, 3), np.uint8)), normalize(
        np.full((1, 1, 3), 200, np.uint8))
    # a window of at most a tenth of the image seldom straddles the edge; most views are flat
    flat = [v for v in views.numpy() if v.std(axis=(1, 2)).max() < 1e-3]
    assert flat, "no window fell inside one half"
    for v in flat:
        colour = v[:, 0, 0][:, None, None]
        assert np.allclose(colour, black[:, 0:1, 0:1]) or np.allclose(colour, grey[:, 0:1, 0:1])
    assert not torch.equal(views[0], views[1])
    assert torch.equal(_set()[(0, 0)]["image"], _set()[(0, 0)]["image"])
