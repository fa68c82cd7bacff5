"""Multi-scale + flip CAM inference on hand-made methods whose CAM is a known function of the
image: where the maps land, how the mirror is put back, the network's stride, that a CAM does
not depend on its batch mates, each method's normalisation and the kept planes."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from fakes import FixedMethod as _Fixed

from wsss import registry
from wsss.cams import cam_norm, extract_cams, multiscale_cams, normalise
from wsss.errors import ConfigError
from wsss.store import CamReader

INFERENCE = {"scales": [1.0], "flip": False, "batch_size": 3}


def _ramps(images: torch.Tensor) -> torch.Tensor:
    """Stride 1; plane c is (c + 1) × the column index of the view."""
    b, _, h, w = images.shape
    x = torch.arange(w, dtype=torch.float32).expand(b, 1, h, w)
    return torch.cat([x, 2 * x], dim=1)


class _Dataset:
    def __init__(self, images: dict[str, np.ndarray]):
        self.images = images

    def load_image(self, image_id: str) -> np.ndarray:
        return self.images[image_id]


def _grey(h: int, w: int) -> np.ndarray:
    return np.full((h, w, 3), 128, np.uint8)


def test_maps_fit_each_image_of_a_batch_of_different_sizes():
    images = [_grey(10, 30), _grey(12, 20)]
    keys = [np.array([0, 1]), np.array([1])]
    out = multiscale_cams(_Fixed(_ramps, 2), images, keys, [1.0], flip=False)
    for image, k, (full, low) in zip(images, keys, out, strict=True):
        h, w = image.shape[:2]
        x = torch.arange(w, dtype=torch.float32).expand(h, w)
        expected = torch.stack([(c + 1) * x for c in k.tolist()])
        torch.testing.assert_close(full, expected)
        assert low.shape == (len(k), math.ceil(h / 4), math.ceil(w / 4))
        # each plane divided by its own peak: both ramps become x / (w - 1)
        torch.testing.assert_close(torch.from_numpy(normalise(full)),
                                   (x / (w - 1)).expand(len(k), h, w), atol=1e-5, rtol=1e-5)


def test_the_mirror_is_flipped_back_within_its_own_width():
    images = [_grey(10, 30), _grey(12, 20)]
    keys = [np.array([0]), np.array([0])]
    out = multiscale_cams(_Fixed(_ramps, 2), images, keys, [1.0], flip=True)
    for image, (full, _) in zip(images, out, strict=True):
        # x on the image + (w - 1 - x) from its mirror put back: w - 1 everywhere
        w = image.shape[1]
        torch.testing.assert_close(full, torch.full_like(full, w - 1.0))


def _colours(images: torch.Tensor) -> torch.Tensor:
    """Stride 4; class 0 = the red channel, class 1 = the blue one, averaged over 4×4 cells."""
    return 10 * F.avg_pool2d(images[:, [0, 2]], 4, ceil_mode=True)


def _two_colour(h: int, w: int, split: int) -> np.ndarray:
    image = np.zeros((h, w, 3), np.uint8)
    image[:, :split, 0] = 255  # red on the left
    image[:, split:, 2] = 255  # blue on the right
    return image


def test_multiscale_flip_maps_land_on_the_right_pixels():
    images = [(_two_colour(44, 60, 27), 27), (_two_colour(37, 30, 13), 13)]  # off-centre splits
    keys = [np.array([0, 1])] * 2
    scales = [1.0, 0.5, 1.5]
    out = multiscale_cams(_Fixed(_colours, 2), [im for im, _ in images], keys, scales, True)
    for (image, split), (full, _) in zip(images, out, strict=True):
        assert full.shape == (2, *image.shape[:2])
        label = full.argmax(dim=0)
        assert set(label.unique().tolist()) == {0, 1}
        # the first blue column of each row; a mirror flipped back over the padded width (not
        # its own) would move the padded image's edge
        edge = (label == 0).sum(dim=1).float()
        assert (edge - split).abs().max() <= 2, edge


def _deep(images: torch.Tensor) -> torch.Tensor:
    """Stride 4, then a layer that sees the neighbouring cells: with the +1 (a bias), zero
    padding below or right of an image looks like content to the cells next to it, as it does
    to a real network's deeper layers."""
    cells = F.avg_pool2d(images[:, [0, 2]] + 1, 4, ceil_mode=True)
    return F.avg_pool2d(cells, 3, stride=1, padding=1)


def test_a_cam_does_not_depend_on_the_batch_it_is_in():
    images = [_two_colour(37, 30, 13), _two_colour(44, 60, 27), _two_colour(37, 30, 20),
              _two_colour(21, 50, 9)]  # two share a size, so share a forward
    keys = [np.array([0, 1]), np.array([1]), np.array([0]), np.array([0, 1])]
    scales = [1.0, 0.5, 1.5]
    together = multiscale_cams(_Fixed(_deep, 2), images, keys, scales, True)
    for image, k, (full, low) in zip(images, keys, together, strict=True):
        [(full_alone, low_alone)] = multiscale_cams(_Fixed(_deep, 2), [image], [k], scales, True)
        torch.testing.assert_close(full, full_alone)
        torch.testing.assert_close(low, low_alone)


def _cells(images: torch.Tensor) -> torch.Tensor:
    """Stride 4 (a partial last cell counts): plane 0 is each cell's row index, plane 1 its
    column index."""
    b, _, h, w = images.shape
    ch, cw = math.ceil(h / 4), math.ceil(w / 4)
    rows = torch.arange(ch, dtype=torch.float32)[:, None].expand(b, 1, ch, cw)
    cols = torch.arange(cw, dtype=torch.float32)[None, :].expand(b, 1, ch, cw)
    return torch.cat([rows, cols], dim=1)


def test_the_stride_is_the_networks_on_sides_that_are_not_a_multiple_of_it():
    """37 × 30 pixels give 10 × 8 cells of 4 pixels, covering 40 × 32: the cells are laid at
    4 pixels each and cropped, not stretched over the image (a stride of 37 / 10)."""
    [(full, low)] = multiscale_cams(_Fixed(_cells, 2), [_grey(37, 30)], [np.array([0, 1])],
                                    [1.0], False)
    # pixel i's centre lies at (i + 0.5) / 4 - 0.5 in cell units (bilinear, flat before the
    # first cell's centre)
    rows = ((torch.arange(37) + 0.5) / 4 - 0.5).clamp_min(0)
    cols = ((torch.arange(30) + 0.5) / 4 - 0.5).clamp_min(0)
    torch.testing.assert_close(full[0], rows[:, None].expand(37, 30))
    torch.testing.assert_close(full[1], cols[None, :].expand(37, 30))
    # the stride-4 map's cell (y, x) covers pixels [4y, 4y + 4) × [4x, 4x + 4) (as IRN's
    # refiner reads it): here the network's own cells
    torch.testing.assert_close(low, _cells(torch.zeros(1, 3, 37, 30))[0])


def test_views_of_one_size_share_a_forward_with_their_own_labels():
    """No padding: each forward holds views of one size, all views of that size at once, each
    with its own image's labels."""
    shapes = []

    def echo_labels(images, labels):  # the CAM of class c is 1 where the image has it
        shapes.append(tuple(images.shape))
        return labels[:, :, None, None].expand(-1, -1, *images.shape[-2:]).clone()

    class Echo(_Fixed):
        def cams(self, images, labels=None):
            return echo_labels(images, labels)

    images = [_grey(20, 24), _grey(16, 30), _grey(20, 24)]
    keys = [np.array([0]), np.array([1]), np.array([1])]
    out = multiscale_cams(Echo(None, 2), images, keys, [1.0, 0.5], True)
    assert sorted(shapes) == sorted([(4, 3, 20, 24), (2, 3, 16, 30), (4, 3, 10, 12),
                                     (2, 3, 8, 15)])
    for full, _ in out:  # its class's plane, from 2 scales × (view + mirror)
        torch.testing.assert_close(full, torch.full_like(full, 4.0))


def _planes(images: torch.Tensor) -> torch.Tensor:
    """Class 0: a ramp peaking at 2 (w - 1); class 1: 3 everywhere; class 2: negative."""
    x = _ramps(images)[:, :1]
    return torch.cat([2 * x, torch.full_like(x, 3.0), torch.full_like(x, -1.0)], dim=1)


def test_stored_planes_are_the_labelled_ones_each_normalised_to_its_peak(tmp_path):
    ds = _Dataset({"a": _grey(9, 17), "b": _grey(8, 12), "c": _grey(7, 7)})
    labels = {"a": [0, 2], "b": [1], "c": []}
    out = tmp_path / "cams.h5"
    extract_cams(_Fixed(_planes, 3), ds, ["a", "b", "c"], labels, INFERENCE, out,
                 {"classes": ["x", "y", "z"]})
    with CamReader(out) as reader:
        assert reader.ids == ["a", "b", "c"] and reader.attr("seg_fusion") is None
        cam, keys = reader.get("a")
        assert keys.tolist() == [0, 2] and cam.shape == (2, 9, 17)
        ramp = np.arange(17, dtype=np.float32) / 16
        np.testing.assert_allclose(cam[0], np.broadcast_to(ramp, (9, 17)), atol=1e-3)
        assert np.all(cam[1] == 0)  # a class that never fires stays 0 (not NaN, not 1)
        cam, keys = reader.get("b")
        assert keys.tolist() == [1] and cam.shape == (1, 8, 12)
        np.testing.assert_allclose(cam, 1.0, atol=1e-3)  # class 1's plane, not class 0's ramp
        cam, keys = reader.get("c")
        low, _ = reader.get("c", lowres=True)
        assert cam.shape == (0, 7, 7) and low.shape == (0, 2, 2) and keys.size == 0
        assert not reader.has_seg("a")  # a method without a head stores no masks


def test_normalise_max_divides_each_plane_by_its_own_peak():
    cam = torch.zeros(3, 2, 2)
    cam[0, 0, 0], cam[1, 1, 1] = 4.0, 0.5
    out = normalise(cam)
    assert out[0, 0, 0] == pytest.approx(1.0, abs=1e-4)
    assert out[1, 1, 1] == pytest.approx(1.0, abs=1e-4)
    assert np.all(out[2] == 0) and out.dtype == np.float32


def test_a_head_method_runs_its_trunk_once_per_view_batch():
    """CAMs and segmentation come from one forward pass per scale (`cams_and_seg`), not from
    `cams` and `seg_logits` separately, and equal what the two give."""
    from fakes import FixedMethod

    from wsss.cams import multiscale_maps

    calls = []

    class Counting(FixedMethod):
        def cams(self, images, labels=None):
            calls.append("cams")
            return super().cams(images, labels)

        def seg_logits(self, images):
            calls.append("seg")
            return super().seg_logits(images)

        def cams_and_seg(self, images, labels=None):
            calls.append("both")
            return self.fn(images), self.fn(images)

    image = _two_colour(20, 24, 10)
    keys = [np.array([0, 1])]
    cams, seg = multiscale_maps(Counting(_colours, 2), [image], keys, [1.0, 0.5], True, "mean")
    assert calls == ["both", "both"]
    alone = multiscale_cams(FixedMethod(_colours, 2), [image], keys, [1.0, 0.5], True)
    torch.testing.assert_close(cams[0][0], alone[0][0])
    assert seg[0].shape == (2, 20, 24)
    torch.testing.assert_close(seg[0].sum(dim=0), torch.ones(20, 24))


def _floored(images: torch.Tensor) -> torch.Tensor:
    """A floor of 2 under a ramp: class 0 is 2 + the column index, class 1 is 0."""
    x = _ramps(images)[:, :1]
    return torch.cat([2 + x, torch.zeros_like(x)], dim=1)


def test_minmax_takes_each_planes_floor_off_and_max_does_not():
    cam = torch.tensor([[[2.0, 4.0], [6.0, 10.0]], [[0.0, 0.0], [0.0, 0.0]]])
    # plane 0: floor 2, range 8, so (x - 2) / 8, the floor itself 0; plane 1 stays 0
    np.testing.assert_allclose(normalise(cam, "minmax"),
                               [[[0, 0.25], [0.5, 1]], [[0, 0], [0, 0]]], atol=1e-4)
    np.testing.assert_allclose(normalise(cam, "max"),
                               [[[0.2, 0.4], [0.6, 1]], [[0, 0], [0, 0]]], atol=1e-4)
    with pytest.raises(ValueError, match="'median'"):
        normalise(cam, "median")


@pytest.mark.parametrize(("block", "expected"), [
    ({"method": "baseline"}, "max"),
    ({"method": "seam"}, "minmax"),
    ({"method": "hsc"}, "minmax"),  # base seam by default
    ({"method": "dscnet"}, "minmax"),
    ({"method": "hsc", "hsc": {"base": "baseline"}}, "max"),
    ({"method": "dscnet", "dscnet": {"base": "baseline"}}, "max"),
])
def test_a_plugin_normalises_as_its_base_does(tmp_path, block, expected):
    """Stored CAMs (both resolutions) are normalised the way the method, or a plug-in's base,
    declares, and the file says which."""
    method = _Fixed(_floored, 2)
    method.cfg = block
    assert cam_norm(method) == expected
    out = tmp_path / "cams.h5"
    extract_cams(method, _Dataset({"a": _grey(8, 13)}), ["a"], {"a": [0, 1]}, INFERENCE, out,
                 {"classes": ["x", "y"]})
    with CamReader(out) as reader:
        assert reader.attr("cam_norm") == expected
        cam, _ = reader.get("a")
        low, _ = reader.get("a", lowres=True)
    x = np.arange(13, dtype=np.float32)
    # min-max: (2 + x - 2) / 12; max: (2 + x) / 14
    ramp = x / 12 if expected == "minmax" else (2 + x) / 14
    np.testing.assert_allclose(cam[0], np.broadcast_to(ramp, (8, 13)), atol=2e-3)
    assert np.all(cam[1] == 0)
    # the stride-4 map normalised the same way: its floor taken off by min-max only
    assert low[0].max() == pytest.approx(1.0, abs=2e-3)
    assert (low[0].min() == 0) == (expected == "minmax")


def _plugin(tmp_path, monkeypatch, name: str, cam: str = "") -> None:
    decl = (f'REGISTER = {{"kind": "method", "name": "{name}", "block": "{name}", '
            f'"plugin": True, {cam}"schema": {{"type": "object", "properties": '
            f'{{"base": {{"type": "string", "default": "seam"}}}}}}}}\n')
    path = tmp_path / f"{name}.py"
    path.write_text(decl)
    monkeypatch.setenv(registry.PLUGINS_ENV, str(path))


def test_a_plugins_own_declaration_wins_over_its_bases(tmp_path, monkeypatch):
    _plugin(tmp_path, monkeypatch, "own_norm", '"cam_norm": "max", ')
    assert registry.method_capability({"method": "own_norm"}, "cam_norm") == "max"
    _plugin(tmp_path, monkeypatch, "no_norm")
    assert registry.method_capability({"method": "no_norm"}, "cam_norm") == "minmax"


def test_an_unknown_declared_normalisation_is_refused_before_a_file_is_written(
        tmp_path, monkeypatch):
    _plugin(tmp_path, monkeypatch, "odd_norm", '"cam_norm": "median", ')
    method = _Fixed(_floored, 2)
    method.cfg = {"method": "odd_norm"}
    out = tmp_path / "cams.h5"
    with pytest.raises(ConfigError, match=r"odd_norm\.py.*'median'"):
        extract_cams(method, _Dataset({"a": _grey(8, 13)}), ["a"], {"a": [0]}, INFERENCE, out,
                     {"classes": ["x", "y"]})
    assert not out.exists()


@pytest.mark.parametrize("method_name", ["seam", "dscnet"])
def test_a_real_methods_cams_do_not_depend_on_their_batch_mates(method_name, one_thread):
    """SEAM's PCM and DSCNet's per-image k-means are global over the grid: in a batch padded
    to a common size they would see the padding. Mixed sizes together equal each alone."""
    from wsss.methods.base import build_method

    backbone = {"name": "tiny", "output_stride": 8, "pretrained": "none"}
    torch.manual_seed(0)
    method = build_method({"method": method_name, "backbone": backbone}, 3).eval()
    rng = np.random.default_rng(1)
    images = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
              for h, w in ((40, 56), (64, 64), (40, 56))]
    keys = [np.array([0, 2]), np.array([1]), np.array([2])]
    together = multiscale_cams(method, images, keys, [1.0, 0.5], True)
    for image, k, (full, low) in zip(images, keys, together, strict=True):
        [(full_alone, low_alone)] = multiscale_cams(method, [image], [k], [1.0, 0.5], True)
        torch.testing.assert_close(full, full_alone, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(low, low_alone, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("fusion", ["max", "flip_sum_max"])
def test_seg_fusion_of_a_view_and_its_mirror(fusion):
    """The ramps' mirror, flipped back, is (c + 1)(w - 1 - x): "max" keeps the larger of the
    two per pixel, "flip_sum_max" (ToCo / FSR) adds them, a constant (c + 1)(w - 1)."""
    from wsss.cams import multiscale_maps

    h, w = 6, 9
    _, seg = multiscale_maps(_Fixed(_ramps, 2), [_grey(h, w)], [np.array([0, 1])], [1.0],
                             True, fusion)
    x = torch.arange(w, dtype=torch.float32).expand(h, w)
    base = torch.maximum(x, w - 1 - x) if fusion == "max" else torch.full((h, w), w - 1.0)
    expected = torch.stack([base, 2 * base]).softmax(dim=0)
    torch.testing.assert_close(seg[0], expected)
