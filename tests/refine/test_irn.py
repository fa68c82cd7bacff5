import json
import math
from fractions import Fraction

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from wsss.data.voc import VocDataset
from wsss.methods.base import BaselineCAM
from wsss.refine import irn
from wsss.refine import irn_boundary as ib
from wsss.refine.randomwalk import pair_indices, pair_labels, pair_offsets
from wsss.store import CamWriter, LabelReader, StoreError
from wsss.train import seed_everything

RED, GREEN, BLUE = (200, 40, 40), (40, 200, 40), (40, 40, 200)

# tiny enough for a few seconds on a laptop CPU: 2 steps on 32-pixel crops (8×8 grid)
TINY_CFG = {
    "train_radius": 3,
    "radius": 3,
    "exp_times": 4,
    "crf": {"iterations": 5},
    "training": {"epochs": 1, "batch_size": 2, "crop_size": 32, "resize_long": [40, 56],
                 "lr": 0.05, "checkpoint_every": 100},
}
# long enough for the boundary to learn the tiny dataset's edges: 80 steps, well under a second
LEARN_CFG = {**TINY_CFG, "training": {**TINY_CFG["training"], "epochs": 40, "lr": 0.1}}


# --- relation labels ---------------------------------------------------------------------

def test_relation_label_confident_background_foreground_and_unsure():
    image = np.zeros((24, 36, 3), np.uint8)
    image[:, :12], image[:, 12:24], image[:, 24:] = RED, GREEN, BLUE
    cams = np.zeros((2, 24, 36), np.float32)
    cams[0, :, 12:24] = 0.9  # confident: class 4 -> label 5
    cams[1, :, 24:] = 0.1  # between conf_bg 0.05 and conf_fg 0.30: unsure
    label = irn.relation_label(image, cams, np.array([4, 7]), 0.30, 0.05, irn.settings(None)["crf"])
    expected = np.zeros((24, 36), np.uint8)
    expected[:, 12:24], expected[:, 24:] = 5, 255
    assert label.dtype == np.uint8
    np.testing.assert_array_equal(label, expected)
    empty = irn.relation_label(image, cams[:0], np.array([], np.int64), 0.3, 0.05,
                               irn.settings(None)["crf"])
    np.testing.assert_array_equal(empty, np.zeros((24, 36), np.uint8))


# --- paths, affinities, pair labels ----------------------------------------------------------

def _segment_distance_below_one(cell, offset) -> bool:
    """Exact (rational) test: is the cell's centre closer than 1 to the segment (0, 0)-offset?"""
    (y, x), (dy, dx) = cell, offset
    t = min(max(Fraction(y * dy + x * dx, dy * dy + dx * dx), Fraction(0)), Fraction(1))
    return (y - t * dy) ** 2 + (x - t * dx) ** 2 < 1


def _four_connected(cells: set) -> bool:
    start = next(iter(cells))
    seen, todo = {start}, [start]
    while todo:
        y, x = todo.pop()
        for n in ((y + 1, x), (y - 1, x), (y, x + 1), (y, x - 1)):
            if n in cells and n not in seen:
                seen.add(n)
                todo.append(n)
    return seen == cells


def _cells(dy, dx) -> set:
    return {tuple(c) for c in ib.path_cells(dy, dx).tolist()}


def test_path_cells_by_hand():
    # on an axis: the cells between the ends (the neighbouring row is exactly 1 away, not < 1)
    assert ib.path_cells(0, 2).tolist() == [[0, 0], [0, 1], [0, 2]]
    # (2, 1): distance to the line |2x - y| / √5 < 1 holds for all six cells of the 3×2 box,
    # (2, 0) and (0, 1) included (2 / √5 ≈ 0.89); a thin path would leave two of them out
    cells = ib.path_cells(2, 1)
    assert cells[0].tolist() == [0, 0] and cells[-1].tolist() == [2, 1]
    assert _cells(2, 1) == {(y, x) for y in range(3) for x in range(2)}
    # (2, 3): |3y - 2x| < √13, i.e. |3y - 2x| <= 3, keeps 8 of the 12 cells of the box
    assert _cells(2, 3) == {(0, 0), (0, 1), (1, 0), (1, 1), (1, 2), (1, 3), (2, 2), (2, 3)}


def test_path_cells_are_the_cells_closer_than_one_to_the_segment():
    # an independent formulation (exact distance to the segment, over a window wider than the
    # bounding box) for every offset of IRN's training radius and its reverse
    for dy, dx in pair_offsets(10).tolist() + (-pair_offsets(10)).tolist():
        cells = ib.path_cells(dy, dx)
        window = range(-11, 12)
        expected = {(y, x) for y in window for x in window
                    if _segment_distance_below_one((y, x), (dy, dx))}
        assert _cells(dy, dx) == expected, (dy, dx)
        assert len(cells) == len(expected)  # no cell twice
        assert cells[0].tolist() == [0, 0] and cells[-1].tolist() == [dy, dx]
        assert _four_connected(expected)


@pytest.mark.parametrize("offset", [(1, 1), (2, 1), (1, -3), (3, -2), (4, 1), (0, 3)])
def test_path_cells_symmetric_in_x_y_and_in_the_ends(offset):
    dy, dx = offset
    cells = _cells(dy, dx)
    assert _cells(dx, dy) == {(x, y) for y, x in cells}  # transposed
    assert _cells(dy, -dx) == {(y, -x) for y, x in cells}  # mirrored
    # the path from the other end, (dy, dx) -> (0, 0), covers the same cells
    assert {(dy + y, dx + x) for y, x in _cells(-dy, -dx)} == cells


@pytest.mark.parametrize("transpose", [False, True])
def test_one_cell_boundary_cuts_a_diagonal_pair(transpose):
    # in a 2×2 grid, a boundary on either off-diagonal cell separates the two diagonal cells
    # (a y-first path (0,0)->(1,0)->(1,1) would walk round a boundary at (0,1))
    index = ib.pair_index(2, 2, 2)
    pairs = {(s, d): p for p, (s, d) in enumerate(zip(index.src.tolist(), index.dst.tolist(),
                                                       strict=True))}
    for (a, b), cuts in (((0, 3), (1, 2)), ((1, 2), (0, 3))):
        for cut in cuts:
            boundary = torch.zeros(2, 2)
            boundary.view(-1)[cut] = 1.0
            if transpose:
                boundary = boundary.T.contiguous()
            aff = ib.path_affinity(boundary, index.path)
            # transposing the map swaps cells 1 and 2 and keeps both diagonals
            assert aff[pairs[a, b]].item() == 0.0, (a, b, cut, transpose)
    # and an empty map leaves every pair at affinity 1
    assert (ib.path_affinity(torch.zeros(2, 2), index.path) == 1).all()


def test_path_affinity_across_and_within_a_boundary_line():
    h, w, radius = 6, 9, 4
    boundary = torch.zeros(h, w)
    boundary[:, 4] = 1.0  # a vertical boundary line
    index = ib.pair_index(h, w, radius)
    aff = ib.path_affinity(boundary, index.path)
    xs, xd = index.src % w, index.dst % w
    crosses = (torch.minimum(xs, xd) <= 4) & (torch.maximum(xs, xd) >= 4)
    assert crosses.any() and (~crosses).any()
    assert (aff[crosses] == 0).all()
    assert (aff[~crosses] == 1).all()
    # a soft map: the affinity is 1 - the largest value on the path
    soft = torch.zeros(h, w)
    soft[2, 2], soft[2, 3] = 0.3, 0.6
    a = ib.path_affinity(soft[None], index.path)[0]
    pair = ((index.src == 2 * w + 1) & (index.dst == 2 * w + 4)).nonzero().item()
    assert a[pair].item() == pytest.approx(0.4)


def test_diagonal_boundary_blocks_diagonal_pairs():
    boundary = torch.zeros(4, 4)
    boundary[0, 1] = boundary[1, 0] = 1.0  # 8-connected anti-diagonal line
    index = ib.pair_index(4, 4, 2)
    aff = ib.path_affinity(boundary, index.path)
    pair = ((index.src == 0) & (index.dst == 5)).nonzero().item()  # (0,0) -> (1,1)
    assert aff[pair].item() == 0.0


def test_pair_index_matches_pair_indices_and_paths_stay_between_ends():
    h, w, radius = 7, 5, 4
    index = ib.pair_index(h, w, radius)
    src, dst = pair_indices(h, w, radius)
    np.testing.assert_array_equal(index.src.numpy(), src)
    np.testing.assert_array_equal(index.dst.numpy(), dst)
    path = index.path.numpy()
    assert (path[:, 0] == src).all() and (path[:, -1] == dst).all()
    py, px = path // w, path % w
    sy, sx, ty, tx = src // w, src % w, dst // w, dst % w
    assert (py >= np.minimum(sy, ty)[:, None]).all() and (py <= np.maximum(sy, ty)[:, None]).all()
    assert (px >= np.minimum(sx, tx)[:, None]).all() and (px <= np.maximum(sx, tx)[:, None]).all()
    # every pair's row holds exactly its offset's path, moved to the pair's source cell
    for p, (s, d) in enumerate(zip(src.tolist(), dst.tolist(), strict=True)):
        dy, dx = d // w - s // w, d % w - s % w
        expected = {(s // w + y) * w + s % w + x for y, x in ib.path_cells(dy, dx).tolist()}
        assert set(path[p].tolist()) == expected, (s, d)


def test_pair_labels_match_brute_force():
    rng = np.random.default_rng(0)
    h, w, radius = 6, 7, 3
    grid = rng.choice([0, 1, 2, 255], size=(2, h, w), p=[0.4, 0.25, 0.25, 0.1])
    index = ib.pair_index(h, w, radius)
    masks = pair_labels(torch.from_numpy(grid), index.src, index.dst)
    got = {}
    for b in range(2):
        for p, (s, d) in enumerate(zip(index.src.tolist(), index.dst.tolist(), strict=True)):
            kinds = [name for name, m in zip(("bg", "fg", "neg"), masks, strict=True) if m[b, p]]
            assert len(kinds) <= 1
            got[b, min(s, d), max(s, d)] = kinds[0] if kinds else None
    expected = {}
    cells = [(y, x) for y in range(h) for x in range(w)]
    for b in range(2):
        for i, (y0, x0) in enumerate(cells):
            for j, (y1, x1) in enumerate(cells[i + 1:], start=i + 1):
                if (y1 - y0) ** 2 + (x1 - x0) ** 2 >= radius**2:
                    continue
                a, c = grid[b, y0, x0], grid[b, y1, x1]
                kind = None
                if a != 255 and c != 255:
                    kind = "neg" if a != c else ("bg" if a == 0 else "fg")
                expected[b, i, j] = kind
    assert got == expected


def test_affinity_loss_terms_and_empty_terms():
    aff = torch.tensor([[0.5, 0.25, 0.9, 0.2]])
    bg = torch.tensor([[True, False, False, False]])
    fg = torch.tensor([[False, True, False, False]])
    neg = torch.tensor([[False, False, True, True]])
    terms = ib.affinity_loss(aff, bg, fg, neg)
    eps = ib.LOG_EPS
    assert terms["bg_pos"].item() == pytest.approx(-math.log(0.5 + eps))
    assert terms["fg_pos"].item() == pytest.approx(-math.log(0.25 + eps))
    neg_mean = -(math.log(0.1 + eps) + math.log(0.8 + eps)) / 2
    assert terms["neg"].item() == pytest.approx(neg_mean, rel=1e-5)
    total = (terms["bg_pos"] / 2 + terms["fg_pos"] / 2 + terms["neg"]) / 2
    assert terms["loss"].item() == pytest.approx(total.item())
    none = torch.zeros_like(bg)
    empty = ib.affinity_loss(aff, none, none, none)
    assert all(v.item() == 0.0 for v in empty.values())


def test_label_grid_samples_cell_centres():
    labels = torch.arange(16 * 12).reshape(1, 16, 12)
    grid = ib.label_grid(labels, (4, 3))
    assert grid.shape == (1, 4, 3)
    assert grid[0, 1, 2].item() == labels[0, 6, 10].item()


# --- the three stages over the tiny VOC dataset ----------------------------------------------

def _blurred(onehot: torch.Tensor) -> torch.Tensor:
    x = onehot[None]
    for _ in range(2):
        x = F.avg_pool2d(x, 5, stride=1, padding=2, count_include_pad=False)
    return x[0]


def write_cams(ds: VocDataset, split: str, path, drop: str | None = None) -> None:
    """CAMs = blurred one-hot GT planes of the image's classes, with stride-4 copies."""
    with CamWriter(path, {"classes": list(ds.classes), "split": split}) as writer:
        for image_id in ds.ids(split):
            if image_id == drop:
                continue
            mask = ds.load_mask(image_id)
            keys = ds.image_labels(image_id)
            h, w = mask.shape
            onehot = torch.from_numpy(np.stack([mask == k + 1 for k in keys]).astype(np.float32))
            cam = _blurred(onehot)
            cam = cam / cam.flatten(1).amax(dim=1).clamp_min(1e-5)[:, None, None]
            low = F.adaptive_avg_pool2d(cam[None], (math.ceil(h / 4), math.ceil(w / 4)))[0]
            writer.add(image_id, cam.numpy(), keys, cam_lowres=low.numpy())


def write_classifier(path, num_classes: int) -> None:
    cfg = {"method": "baseline",
           "backbone": {"name": "tiny", "output_stride": 8, "pretrained": "none"},
           "training": {"new_layer_lr_mult": 10}}
    torch.manual_seed(0)
    method = BaselineCAM(cfg, num_classes)
    torch.save({"config": cfg, "method": method.state_dict(),
                "backbone": method.trunk.state_dict()}, path)


def _edge_minus_inside(net: ib.BoundaryNet, ds: VocDataset, split: str) -> float:
    """Mean boundary on the stride-4 cells at a GT label change minus the mean on cells whose
    4-neighbours all share their (non-void) label, over the images of `split`."""
    edge_values, inside_values = [], []
    for image_id in ds.ids(split):
        b = ib.boundary_map(net, ds.load_image(image_id), flip=True)
        mask = torch.from_numpy(ds.load_mask(image_id).astype(np.int64))[None]
        g = F.pad(ib.label_grid(mask, b.shape)[0], (1, 1, 1, 1), value=255)
        core = g[1:-1, 1:-1]
        sides = (g[:-2, 1:-1], g[2:, 1:-1], g[1:-1, :-2], g[1:-1, 2:])
        edge = (core != 255) & torch.stack([(n != core) & (n != 255) for n in sides]).any(0)
        inside = (core != 255) & torch.stack([n == core for n in sides]).all(0)
        edge_values.append(b[edge])
        inside_values.append(b[inside])
    return (torch.cat(edge_values).mean() - torch.cat(inside_values).mean()).item()


def test_make_labels_train_refine_end_to_end(tiny_voc_config, tmp_path):
    ds = VocDataset.from_config(tiny_voc_config)
    cams, labels = tmp_path / "cams.h5", tmp_path / "ir_labels.h5"
    write_cams(ds, "train", cams)
    irn.make_labels(cams, ds, "train", TINY_CFG, labels, threads=1)
    with LabelReader(labels) as reader:
        assert reader.ids == ds.ids("train") and reader.classes == list(ds.classes)
        assert reader.attr("refiner")["conf_fg"] == 0.30
        for image_id in reader.ids:
            label, mask = reader.get(image_id), ds.load_mask(image_id)
            assert label.shape == mask.shape
            present = set(np.unique(label).tolist())
            allowed = {0, 255} | {k + 1 for k in ds.image_labels(image_id).tolist()}
            assert present <= allowed and present & (allowed - {0, 255})
            inside = (mask != 255) & (label != 255)
            assert (label[inside] == mask[inside]).mean() > 0.9
    parallel = tmp_path / "ir_labels_2.h5"
    irn.make_labels(cams, ds, "train", TINY_CFG, parallel, threads=2)
    with LabelReader(labels) as one, LabelReader(parallel) as two:
        for image_id in one.ids:
            np.testing.assert_array_equal(one.get(image_id), two.get(image_id))

    classifier = tmp_path / "classifier.pt"
    write_classifier(classifier, ds.num_classes)
    weights = irn.train(ds, "train", labels, LEARN_CFG, classifier, tmp_path / "irn" / "net.pt",
                        "cpu")
    assert weights == tmp_path / "irn" / "net.pt" and weights.is_file()
    assert {p.name for p in (tmp_path / "irn").iterdir()} == {
        "net.pt", "irn.log.csv", "irn.checkpoint.pt"}

    net = irn.load_boundary_net(weights, torch.device("cpu"))
    # the stage learned the edges of the stored relation labels: the boundary, flat at the
    # start, rises on the GT edges relative to object and background interiors (measured over
    # training seeds 0-5: before -0.03 to 0.04, after 0.27 to 0.46). Labels misaligned with
    # their images, pair labels mixed up or a path that misses the boundary would not get there.
    seed_everything(0)  # an untrained branch on the same frozen trunk
    untrained = ib.BoundaryNet(net.cfg, ds.num_classes, net.backbone).eval()
    before, after = _edge_minus_inside(untrained, ds, "train"), _edge_minus_inside(net, ds, "train")
    assert after > before + 0.15 and after > 0.15, (before, after)
    b = net.boundary(torch.zeros(2, 3, 36, 44))
    assert b.shape == (2, 1, 9, 11) and ((b > 0) & (b < 1)).all()
    image = ds.load_image(ds.ids("train")[0])
    bmap = ib.boundary_map(net, image, flip=True)
    assert bmap.shape == (math.ceil(image.shape[0] / 4), math.ceil(image.shape[1] / 4))

    out = tmp_path / "irn_labels.h5"
    irn.refine(cams, ds, "train", TINY_CFG, weights, out, "cpu", threads=2)
    with LabelReader(out) as reader:
        assert reader.ids == ds.ids("train") and reader.classes == list(ds.classes)
        assert reader.attr("split") == "train"
        assert json.loads(json.dumps(reader.attr("refiner")))["radius"] == 3
        for image_id in reader.ids:
            label, mask = reader.get(image_id), ds.load_mask(image_id)
            assert label.dtype == np.uint8 and label.shape == mask.shape
            allowed = {0} | {k + 1 for k in ds.image_labels(image_id).tolist()}
            assert set(np.unique(label).tolist()) <= allowed
            valid = mask != 255
            assert (label[valid] == mask[valid]).mean() > 0.7  # GT-like CAMs stay GT-like
    serial = tmp_path / "irn_labels_1.h5"
    irn.refine(cams, ds, "train", TINY_CFG, weights, serial, "cpu", threads=1)
    with LabelReader(out) as two, LabelReader(serial) as one:
        for image_id in one.ids:
            np.testing.assert_array_equal(one.get(image_id), two.get(image_id))


def test_propagate_without_keys_is_background():
    label = irn.propagate(torch.zeros(0, 3, 4), torch.zeros(3, 4), np.array([], np.int64),
                          (10, 13), irn.settings(None))
    np.testing.assert_array_equal(label, np.zeros((10, 13), np.uint8))


def test_missing_cam_id_fails_before_writing(tiny_voc_config, tmp_path):
    ds = VocDataset.from_config(tiny_voc_config)
    missing = ds.ids("train")[2]
    run = tmp_path / "run"
    run.mkdir()
    cams = run / "cams.h5"
    write_cams(ds, "train", cams, drop=missing)
    out = run / "labels.h5"
    with pytest.raises(StoreError, match=rf"cams\.h5.*'{missing}'"):
        irn.make_labels(cams, ds, "train", TINY_CFG, out, threads=1)
    assert not out.exists()
    with pytest.raises(StoreError, match=rf"cams\.h5.*'{missing}'"):
        irn.refine(cams, ds, "train", TINY_CFG, run / "irn.pt", out, "cpu", threads=1)
    assert not out.exists()
    assert list(run.iterdir()) == [cams]  # no temporary files left behind either


def test_train_checks_the_label_file(tiny_voc_config, tmp_path):
    ds = VocDataset.from_config(tiny_voc_config)
    cams, labels = tmp_path / "cams.h5", tmp_path / "ir_labels.h5"
    write_cams(ds, "val", cams)
    irn.make_labels(cams, ds, "val", TINY_CFG, labels, threads=1)
    with pytest.raises(StoreError, match=rf"ir_labels\.h5.*'{ds.ids('train')[0]}'"):
        irn.train(ds, "train", labels, TINY_CFG, tmp_path / "classifier.pt",
                  tmp_path / "irn" / "net.pt", "cpu")
    assert not (tmp_path / "irn").exists()
