"""Image tensors for training and inference (wsss.data.transforms), on hand-made inputs with known
answers, and the training sets' augmentation being a function of (seed, epoch, index) only."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from wsss.data.transforms import (
    MEAN,
    STD,
    ClassificationSet,
    SegmentationSet,
    color_jitter,
    normalize,
    random_crop,
    resize_label,
    resize_long,
    scaled_views,
    upsample,
)
from wsss.data.voc import VocDataset


def _halves(h: int, w: int) -> np.ndarray:
    """uint8 h×w×3: left half black, right half white."""
    image = np.zeros((h, w, 3), np.uint8)
    image[:, w // 2 :] = 255
    return image


# -- pixels -------------------------------------------------------------------------------------
def test_normalize_is_channel_first_imagenet_statistics():
    image = np.array([[[255, 0, 128], [0, 255, 0], [10, 20, 30]],
                      [[1, 2, 3], [200, 100, 50], [255, 255, 255]]], np.uint8)  # 2×3×3
    out = normalize(image)
    assert out.shape == (3, 2, 3) and out.dtype == np.float32
    for y in range(2):
        for x in range(3):
            for c in range(3):
                expected = (image[y, x, c] / 255.0 - MEAN[c]) / STD[c]
                assert out[c, y, x] == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize(("hw", "long_side", "expected"), [
    ((40, 100), 50, (20, 50)),   # landscape: the width is the long side
    ((100, 40), 50, (50, 20)),   # portrait: the height is
    ((30, 45), 64, (43, 64)),    # 30 × 64/45 = 42.67 rounds to 43
    ((60, 60), 30, (30, 30)),
])
def test_resize_long_scales_the_long_side(hw, long_side, expected):
    out = resize_long(_halves(*hw), long_side)
    assert out.shape == (*expected, 3)
    # not transposed: the left edge stays black and the right edge white
    assert out[:, 0].max() == 0 and out[:, -1].min() == 255


def test_resize_label_is_nearest_and_takes_height_then_width():
    label = np.arange(8, dtype=np.uint8).reshape(2, 4)
    out = resize_label(label, (4, 8))
    assert np.array_equal(out, label.repeat(2, axis=0).repeat(2, axis=1))
    assert set(np.unique(resize_label(label, (3, 5)))) <= set(range(8))  # no blended values


def test_color_jitter_clips_instead_of_wrapping():
    white = np.full((4, 4, 3), 255, np.uint8)
    outs = [color_jitter(white, 0.5, np.random.default_rng(s)) for s in range(20)]
    # a brightening draw gives 331 before clipping, 75 after a uint8 wrap-around
    assert any((o == 255).all() for o in outs)
    assert all(o.min() >= 127 for o in outs)
    gray = np.full((4, 4, 3), 100, np.uint8)
    for s in range(5):
        out = color_jitter(gray, 0.2, np.random.default_rng(s))
        # contrast and saturation leave a uniform gray image uniform and gray
        assert (out == out[0, 0, 0]).all() and 80 <= out[0, 0, 0] <= 120


# -- crops --------------------------------------------------------------------------------------
def _window_of(crop: np.ndarray, image: np.ndarray) -> tuple[int, int]:
    """(top, left) of the size×size window of `image` (C×H×W) equal to `crop`."""
    size = crop.shape[-1]
    for top in range(image.shape[1] - size + 1):
        for left in range(image.shape[2] - size + 1):
            if np.array_equal(image[:, top : top + size, left : left + size], crop):
                return top, left
    raise AssertionError("the crop is no window of the image")


def test_random_crop_cuts_the_same_window_from_image_and_label_and_reaches_every_window():
    image = (np.arange(2 * 6 * 8, dtype=np.float32) + 1).reshape(2, 6, 8)
    label = np.arange(48, dtype=np.uint8).reshape(6, 8)
    windows = set()
    for seed in range(200):
        crop, lab = random_crop(image, 4, np.random.default_rng(seed), label)
        top, left = _window_of(crop, image)
        assert np.array_equal(lab, label[top : top + 4, left : left + 4])
        windows.add((top, left))
    assert windows == {(top, left) for top in range(3) for left in range(5)}


def test_random_crop_pads_with_zero_and_ignore_at_every_offset():
    image = np.full((3, 2, 3), 7.0, np.float32)
    label = np.full((2, 3), 4, np.uint8)
    offsets = set()
    for seed in range(100):
        crop, lab = random_crop(image, 4, np.random.default_rng(seed), label)
        inside = crop[0] == 7.0
        assert inside.sum() == 6 and (crop[:, ~inside] == 0).all()
        # the label is padded with 255 (ignore) exactly where the image is padded
        assert np.array_equal(lab == 4, inside) and (lab[~inside] == 255).all()
        ys, xs = np.nonzero(inside)
        offsets.add((ys.min(), xs.min()))
    assert offsets == {(y, x) for y in range(3) for x in range(2)}
    only = random_crop(image, 4, np.random.default_rng(0))  # without label: the image only
    assert isinstance(only, np.ndarray) and only.shape == (3, 4, 4)


def test_random_crop_crops_one_side_and_pads_the_other():
    image = (np.arange(10 * 2, dtype=np.float32) + 1).reshape(1, 10, 2)  # tall and narrow
    crop = random_crop(image, 4, np.random.default_rng(3))
    cols = np.nonzero(crop[0].any(axis=0))[0]
    assert len(cols) == 2 and (crop[0][:, cols] > 0).all()  # every row cut from the image
    rows = crop[0][:, cols]
    top = int(rows[0, 0] - 1) // 2
    assert np.array_equal(rows, image[0, top : top + 4])


# -- inference views ----------------------------------------------------------------------------
def test_scaled_views_sizes_and_flip_order():
    image = np.random.default_rng(0).integers(0, 256, (8, 6, 3), dtype=np.uint8)
    views = scaled_views(image, [1.0, 0.5], flip=True)
    assert len(views) == 2 and all(len(v) == 2 for v in views)
    plain, mirrored = views[0]
    assert np.array_equal(plain, normalize(image))  # scale 1 is the image itself
    # the second of each pair is the mirror image (last column first), contiguous for torch
    assert np.array_equal(mirrored, plain[:, :, ::-1]) and mirrored.flags["C_CONTIGUOUS"]
    assert views[1][0].shape == (3, 4, 3)  # 0.5 of 8×6
    assert [len(v) for v in scaled_views(image, [1.0, 2.0], flip=False)] == [1, 1]
    assert scaled_views(image, [2.0], flip=False)[0][0].shape == (3, 16, 12)


def test_upsample_is_bilinear_without_aligned_corners():
    x = torch.tensor([[[[0.0, 1.0]]]])
    # half-pixel centres: source positions -0.25, 0.25, 0.75, 1.25, clamped at the borders
    assert torch.allclose(upsample(x, (1, 4))[0, 0, 0], torch.tensor([0.0, 0.25, 0.75, 1.0]))


# -- training sets ------------------------------------------------------------------------------
AUG = {"resize_long": [24, 40], "hflip": True, "color_jitter": 0.3, "crop_size": 32}


def _dataset(tiny_voc_config) -> tuple[VocDataset, list[str]]:
    ds = VocDataset.from_config(tiny_voc_config)
    return ds, ds.ids("train")


def _same(a: dict, b: dict) -> bool:
    return all(torch.equal(a[k], b[k]) for k in ("image", "label")) and a["index"] == b["index"]


def test_classification_set_is_a_function_of_seed_epoch_and_index(tiny_voc_config):
    ds, ids = _dataset(tiny_voc_config)
    labels = {i: list(ds.image_labels(i)) for i in ids}
    train = ClassificationSet(ds, ids, labels, AUG, seed=0)
    first = train[(1, 0)]
    train[(0, 0)], train[(2, 3)]  # other samples in between change nothing
    assert _same(train[(1, 0)], first)
    assert _same(ClassificationSet(ds, ids, labels, AUG, seed=0)[(1, 0)], first)
    assert not torch.equal(train[(1, 1)]["image"], first["image"])
    assert not torch.equal(ClassificationSet(ds, ids, labels, AUG, seed=1)[(1, 0)]["image"],
                           first["image"])
    assert first["image"].shape == (3, 32, 32)
    expected = np.zeros(ds.num_classes, np.float32)
    expected[labels[ids[1]]] = 1.0
    assert np.array_equal(first["label"].numpy(), expected)


def test_segmentation_set_keeps_image_and_label_aligned(tiny_voc_config):
    ds, ids = _dataset(tiny_voc_config)
    masks = {i: ds.load_mask(i) for i in ids}
    train = SegmentationSet(ds, ids, masks, {**AUG, "resize_long": [20, 30], "color_jitter": 0.0},
                           seed=0)
    for index in range(len(ids)):
        sample = train[(index, 0)]
        assert _same(train[(index, 0)], sample)
        assert not torch.equal(train[(index, 1)]["image"], sample["image"])
        image, label = sample["image"], sample["label"]
        assert label.dtype == torch.int64
        # the crop is larger than every resized image: padding is 0 in the image, 255 in the label
        padded = (image == 0).all(dim=0)
        assert padded.any() and (label[padded] == 255).all()
        # the cat (class 1) is drawn red (200) on a green background (red 90): only if resize,
        # flip and crop moved both alike do its pixels stay the red ones (1.31 against -0.58)
        red = image[0]
        cat, background = red[label == 1], red[label == 0]
        if len(cat):
            assert cat.mean() - background.mean() > 1.5


def test_view_maps_give_each_image_its_own_views_with_the_mirror_flipped_back():
    """Stride 1, maps = the batch itself: each image's two views come back as the image (the
    mirror flipped back), in the order the images were batched."""
    from wsss.data.transforms import scaled_views, view_maps

    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (5, 7, 3)).astype(np.uint8) for _ in range(2)]
    arrays = [v for img in images for v in scaled_views(img, [1.0], True)[0]]
    batch = torch.from_numpy(np.stack(arrays))
    out = list(view_maps(batch, arrays, [im.shape[:2] for im in images], 2, 1))
    for k, maps in enumerate(out):
        want = torch.from_numpy(arrays[2 * k]).float()
        assert maps.shape == (2, 3, 5, 7)
        torch.testing.assert_close(maps[0], want)
        torch.testing.assert_close(maps[1], want)  # the mirror, flipped back
