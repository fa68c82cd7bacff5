import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from wsss import registry
from wsss.data.voc import VocDataset
from wsss.methods.base import build_method
from wsss.refine import psa
from wsss.refine.features import classifier_backbone
from wsss.refine.randomwalk import pair_indices, pair_offsets
from wsss.store import CamWriter, LabelReader, LabelWriter, StoreError

BACKBONE = {"name": "tiny", "output_stride": 8, "pretrained": "none"}
TRAINING = {
    "seed": 1, "epochs": 1, "batch_size": 2, "lr": 0.01, "crop_size": 32,
    "resize_long": [32, 48], "color_jitter": 0.0, "checkpoint_every": 100,
}
CFG = {"refiner": "psa", "radius": 3, "logt": 4, "crf": {"iterations": 3}, "training": TRAINING}


# -- pair labels, label grid, loss -----------------------------------------------------------

def test_pair_labels_match_brute_force():
    grid = np.array([
        [0, 0, 1, 1, 255, 2],
        [0, 255, 1, 2, 2, 2],
        [0, 0, 0, 1, 1, 255],
        [2, 2, 0, 0, 255, 0],
        [2, 255, 2, 0, 1, 1],
    ])  # fmt: skip
    h, w = grid.shape
    radius = 3
    bg, fg, neg = (m[0].numpy() for m in psa.pair_labels(torch.from_numpy(grid)[None], radius))
    expected = {"bg": [], "fg": [], "neg": []}
    for dy, dx in pair_offsets(radius).tolist():  # pair_indices order: offset-major, raster
        for y in range(h):
            for x in range(w):
                if not (0 <= y + dy < h and 0 <= x + dx < w):
                    continue
                a, b = grid[y, x], grid[y + dy, x + dx]
                ok = a != 255 and b != 255
                expected["bg"].append(ok and a == b == 0)
                expected["fg"].append(ok and a == b and a > 0)
                expected["neg"].append(ok and a != b)
    assert len(bg) == len(pair_indices(h, w, radius)[0]) == len(expected["bg"])
    np.testing.assert_array_equal(bg, expected["bg"])
    np.testing.assert_array_equal(fg, expected["fg"])
    np.testing.assert_array_equal(neg, expected["neg"])
    assert bg.any() and fg.any() and neg.any()


def test_downsample_labels_takes_block_majority():
    labels = torch.tensor([[
        [1, 1, 0, 0, 2],
        [1, 255, 0, 255, 2],
        [255, 255, 3, 0, 0],
        [255, 1, 3, 3, 0],
        [4, 4, 0, 0, 7],
    ]])  # fmt: skip
    grid = psa.downsample_labels(labels, (3, 3), stride=2)
    # the last row and column are padded with 255 (so the lone 7 is outvoted); ties go to the
    # smaller value
    expected = [[1, 0, 2], [255, 3, 0], [4, 0, 255]]
    np.testing.assert_array_equal(grid[0].numpy(), expected)


def test_affinity_loss_on_toy_features():
    feats = torch.ones(1, 8, 4, 5)  # identical features: affinity 1 for every pair
    dist = psa.pair_distance(feats, radius=2)
    grid = torch.tensor([[[0, 0, 1, 1, 2]] * 4])
    masks = psa.pair_labels(grid, radius=2)
    terms = psa.affinity_loss(dist, *masks)
    assert terms["bg_pos"].item() == pytest.approx(0.0, abs=1e-6)
    assert terms["fg_pos"].item() == pytest.approx(0.0, abs=1e-6)
    assert terms["neg"].item() == pytest.approx(-np.log(psa.NEG_FLOOR), rel=1e-3)
    assert terms["loss"].item() == pytest.approx(terms["neg"].item() / 2)
    # far-apart features: negatives cost nothing, positives a lot; an empty term counts 0
    far = torch.arange(20.0).reshape(1, 1, 4, 5) * 10
    none = torch.zeros_like(masks[0])
    terms = psa.affinity_loss(psa.pair_distance(far, 2), masks[0], none, masks[2])
    assert terms["neg"].item() < 1e-3 and terms["bg_pos"].item() > 5
    assert terms["fg_pos"].item() == 0.0


def test_confident_label_combines_low_and_high_alpha_maps():
    low = np.array([[0, 0, 2, 2, 1]], np.uint8)
    high = np.array([[0, 2, 2, 0, 1]], np.uint8)
    np.testing.assert_array_equal(psa.confident_label(low, high), [[0, 255, 2, 0, 1]])


def test_settings_fill_defaults_from_the_register_schema():
    defaults = registry.defaults(psa.REGISTER["schema"])  # read before any block is merged
    cfg = psa.settings({"beta": 4, "training": {"lr": 0.5}, "crf": {"bilateral": {"srgb": 5}}})
    assert cfg["refiner"] == "psa" and cfg["beta"] == 4 and cfg["logt"] == defaults["logt"] == 8
    assert cfg["training"]["lr"] == 0.5 and cfg["training"]["batch_size"] == 8
    assert cfg["crf"]["bilateral"] == {"sxy": 80, "srgb": 5, "compat": 10}
    assert cfg["crf"]["gaussian"] == {"sxy": 3, "compat": 3}
    # the given block did not leak into the declared defaults
    assert psa.settings(None)["training"] == defaults["training"] != cfg["training"]


# -- stages on the tiny dataset ----------------------------------------------------------------

def _gt_cams(ds, ids, path, skip=(), empty=()):
    """CAMs = blurred one-hot ground truth of the present classes; no classes for `empty`."""
    with CamWriter(path, {"classes": list(ds.classes)}) as writer:
        for image_id in ids:
            if image_id in skip:
                continue
            mask = ds.load_mask(image_id)
            keys = ds.labels_from_mask(mask) if image_id not in empty else np.zeros(0, np.int64)
            cams = np.zeros((len(keys), *mask.shape), np.float32)
            for plane, k in enumerate(keys):
                onehot = torch.from_numpy((mask == k + 1).astype(np.float32))[None, None]
                blurred = F.avg_pool2d(onehot, 5, stride=1, padding=2, count_include_pad=False)
                cams[plane] = blurred[0, 0].numpy()
            writer.add(image_id, cams, keys)
    return path


@pytest.fixture
def ds(tiny_voc_config):
    return VocDataset.from_config(tiny_voc_config)


@pytest.fixture
def classifier(tmp_path, ds):
    torch.manual_seed(0)
    method = build_method({"method": "baseline", "backbone": BACKBONE,
                           "training": {"new_layer_lr_mult": 10}}, ds.num_classes)
    path = tmp_path / "classifier.pt"
    torch.save({"config": {"backbone": BACKBONE}, "method": method.state_dict(),
                "backbone": method.trunk.state_dict()}, path)
    return path


@pytest.mark.parametrize(("h", "w", "radius"), [(5, 7, 3), (2, 9, 5), (6, 1, 4), (1, 1, 2)])
def test_pair_distance_follows_pair_indices(h, w, radius):
    feats = torch.randn(2, 3, h, w)
    src, dst = pair_indices(h, w, radius)
    flat = feats.flatten(2)
    expected = (flat[:, :, src] - flat[:, :, dst]).abs().mean(dim=1)
    torch.testing.assert_close(psa.pair_distance(feats, radius), expected)


def _check_labels(path, ds, split, allowed):
    with LabelReader(path) as reader:
        assert reader.ids == ds.ids(split) and reader.classes == list(ds.classes)
        assert reader.attr("refiner")["refiner"] == "psa"
        for image_id in ds.ids(split):
            label = reader.get(image_id)
            assert label.dtype == np.uint8 and label.shape == ds.load_image(image_id).shape[:2]
            assert set(np.unique(label)) <= allowed(image_id)


def test_make_labels_writes_confident_regions(tmp_path, ds):
    ids = ds.ids("train")
    cams = _gt_cams(ds, ids, tmp_path / "cams.h5", empty={ids[0]})
    out = tmp_path / "aff_labels.h5"
    psa.make_labels(cams, ds, "train", CFG, out, threads=2)

    def allowed(image_id):
        return {0} if image_id == ids[0] else {0, 255, *(ds.image_labels(image_id) + 1).tolist()}

    _check_labels(out, ds, "train", allowed)
    with LabelReader(out) as reader:
        values = np.concatenate([reader.get(i).ravel() for i in ds.ids("train")])
    assert {0, 1, 2} <= set(np.unique(values))  # background and both classes are confident
    # foreground from the low alpha, background from the high alpha leaves an unsure band
    # between them; with the two alphas swapped every pixel would be confident
    assert 0.01 < (values == 255).mean() < 0.9


def test_train_and_refine_end_to_end(tmp_path, ds, classifier):
    ids = ds.ids("train")
    cams = _gt_cams(ds, ids, tmp_path / "cams.h5")
    labels = tmp_path / "aff_labels.h5"
    with LabelWriter(labels, {"classes": list(ds.classes)}) as writer:
        for image_id in ids:  # ground truth as affinity labels keeps the test CRF-free
            writer.add(image_id, ds.load_mask(image_id))
    weights = psa.train(ds, "train", labels, CFG, classifier, tmp_path / "psa" / "network.pt",
                        "cpu")
    # the weights where asked, the log and checkpoint next to them, nothing else
    assert weights == tmp_path / "psa" / "network.pt" and weights.is_file()
    assert {p.name for p in (tmp_path / "psa").iterdir()} == {
        "network.pt", "affinity.log.csv", "affinity.checkpoint.pt"}
    log = (tmp_path / "psa" / "affinity.log.csv").read_text().splitlines()
    assert len(log) == 1 + len(ids) // TRAINING["batch_size"]
    header = log[0].split(",")
    assert {"bg_pos", "fg_pos", "neg", "loss"} <= set(header)
    for row in log[1:]:  # PSA's weighting of the logged terms, every step finite
        v = dict(zip(header, row.split(","), strict=True))
        terms = {k: float(v[k]) for k in ("bg_pos", "fg_pos", "neg", "loss")}
        assert all(np.isfinite(list(terms.values()))) and terms["neg"] > 0
        assert terms["loss"] == pytest.approx(
            terms["bg_pos"] / 4 + terms["fg_pos"] / 4 + terms["neg"] / 2, rel=1e-4)

    # one image without classes; the walk may use another radius than training did
    cams = _gt_cams(ds, ids, tmp_path / "cams2.h5", empty={ids[1]})
    out = tmp_path / "rw.h5"
    psa.refine(cams, ds, "train", {**CFG, "radius": 2}, weights, out, "cpu", threads=2)

    def allowed(image_id):
        return {0} if image_id == ids[1] else {0, *(ds.image_labels(image_id) + 1).tolist()}

    _check_labels(out, ds, "train", allowed)
    with LabelReader(out) as reader:
        assert json.loads(reader.file.attrs["refiner"])["radius"] == 2
        assert not reader.get(ids[1]).any()


def test_flipped_affinities_are_mirror_consistent(ds, classifier):
    backbone = classifier_backbone(classifier)
    net = psa.AffinityNet(psa.settings(CFG), ds.num_classes, backbone).eval()
    x = torch.randn(1, 3, 24, 40)
    aff, (h, w) = net.affinities(x, flip=True)
    aff_m, _ = net.affinities(x.flip(-1), flip=True)
    src, dst = pair_indices(h, w, net.radius)
    mirror = (src // w) * w + (w - 1 - src % w), (dst // w) * w + (w - 1 - dst % w)
    index = {frozenset(p): i for i, p in enumerate(zip(src.tolist(), dst.tolist(), strict=True))}
    order = [index[frozenset(p)] for p in zip(*(m.tolist() for m in mirror), strict=True)]
    torch.testing.assert_close(aff[0], aff_m[0, order])
    assert aff.shape == (1, len(src)) and bool(((aff > 0) & (aff <= 1)).all())


def test_missing_cam_id_fails_before_writing(tmp_path, ds, classifier):
    ids = ds.ids("train")
    cams = _gt_cams(ds, ids, tmp_path / "cams.h5", skip={ids[2]})
    out = tmp_path / "labels.h5"
    with pytest.raises(StoreError, match=rf"cams\.h5.*'{ids[2]}'"):
        psa.make_labels(cams, ds, "train", CFG, out, threads=1)
    with pytest.raises(StoreError, match=rf"cams\.h5.*'{ids[2]}'"):
        psa.refine(cams, ds, "train", CFG, tmp_path / "unused.pt", out, "cpu", threads=1)
    assert not out.exists() and not list(tmp_path.glob(".labels.h5*"))
