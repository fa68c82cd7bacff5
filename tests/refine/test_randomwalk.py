import numpy as np
import pytest
import torch

from wsss.refine.randomwalk import (
    pair_indices,
    pair_offsets,
    random_walk,
    walk_memory_bytes,
)

GRIDS = [(1, 1, 3), (1, 7, 3), (7, 1, 3), (3, 4, 10), (5, 6, 2), (6, 5, 4), (4, 4, 1), (2, 9, 5)]


def _brute_pairs(h, w, radius):
    """Offset-major, raster-order pairs by a plain double loop over the grid."""
    src, dst = [], []
    for dy, dx in pair_offsets(radius).tolist():
        for y in range(h):
            for x in range(w):
                if 0 <= y + dy < h and 0 <= x + dx < w:
                    src.append(y * w + x)
                    dst.append((y + dy) * w + x + dx)
    return src, dst


def _unordered_pairs_within(h, w, radius):
    cells = [(y, x) for y in range(h) for x in range(w)]
    return {
        frozenset((y1 * w + x1, y2 * w + x2))
        for y1, x1 in cells
        for y2, x2 in cells
        if (y1, x1) != (y2, x2) and (y1 - y2) ** 2 + (x1 - x2) ** 2 < radius**2
    }


def _one_step_numpy(probs, src, dst, affinity, beta):
    """One averaging step written out independently: out_i = sum_j A_ij p_j / sum_j A_ij."""
    labels, h, w = probs.shape
    n = h * w
    a = np.eye(n)
    for s, d, v in zip(src, dst, affinity, strict=True):
        a[s, d] += v**beta
        a[d, s] += v**beta
    t = a / a.sum(axis=1, keepdims=True)
    return (t @ probs.reshape(labels, n).T).T.reshape(labels, h, w)


def _two_region_chain(length=10, boundary=5, radius=3):
    """1×length chain, radius reaching 2 cells: affinity 1 within each side, 0 across."""
    src, dst = pair_indices(1, length, radius)
    same = (src < boundary) == (dst < boundary)
    return src, dst, same.astype(np.float32)


def test_pair_offsets_half_disc():
    assert pair_offsets(0).shape == (0, 2) and pair_offsets(1).shape == (0, 2)
    assert pair_offsets(2).tolist() == [[0, 1], [1, -1], [1, 0], [1, 1]]
    for radius in range(1, 8):
        offsets = pair_offsets(radius)
        assert offsets.dtype == np.int64
        disc = sum(
            dy * dy + dx * dx < radius * radius
            for dy in range(-radius, radius + 1)
            for dx in range(-radius, radius + 1)
        )
        assert len(offsets) == (disc - 1) // 2  # the disc minus its centre, halved
        full = {tuple(o) for o in offsets} | {tuple(-o) for o in offsets}
        assert len(full) == disc - 1  # no offset is the negative of another
        assert offsets.tolist() == sorted(offsets.tolist())
    with pytest.raises(ValueError):
        pair_offsets(-1)


@pytest.mark.parametrize("h,w,radius", GRIDS)
def test_pair_indices_match_double_loop(h, w, radius):
    src, dst = pair_indices(h, w, radius)
    assert src.dtype == dst.dtype == np.int64
    brute_src, brute_dst = _brute_pairs(h, w, radius)
    assert src.tolist() == brute_src and dst.tolist() == brute_dst
    pairs = [frozenset(p) for p in zip(src.tolist(), dst.tolist(), strict=True)]
    assert len(pairs) == len(set(pairs))  # every unordered pair once
    assert set(pairs) == _unordered_pairs_within(h, w, radius)


def test_walk_stays_inside_zero_affinity_boundary():
    src, dst, affinity = _two_region_chain()
    probs = np.zeros((2, 1, 10), np.float32)
    probs[0, 0, 0] = 1.0  # seed at the far end of region A
    probs[1, 0, 9] = 1.0  # and one at the far end of region B
    for max_dense in (4096, 0):
        out = random_walk(torch.from_numpy(probs), src, dst, affinity, 8.0, 4, max_dense)
        out = out.numpy()[:, 0]
        assert (out[0, :5] > 0.05).all() and (out[0, 5:] == 0).all()
        assert (out[1, 5:] > 0.05).all() and (out[1, :5] == 0).all()


def test_dense_and_sparse_agree_on_a_grid():
    h, w = 6, 7
    src, dst = pair_indices(h, w, 3)
    rng = np.random.default_rng(0)
    affinity = rng.random(len(src)).astype(np.float32)
    # Left and right halves cut apart, as in a two-region image.
    affinity[(src % w < 3) != (dst % w < 3)] = 0.0
    probs = torch.from_numpy(rng.random((3, h, w)).astype(np.float32))
    for logt in (0, 1, 3, 6):
        dense = random_walk(probs, src, dst, affinity, 2.0, logt)
        sparse = random_walk(probs, src, dst, affinity, 2.0, logt, max_dense_nodes=0)
        assert dense.dtype == sparse.dtype == torch.float32 and dense.shape == (3, h, w)
        torch.testing.assert_close(dense, sparse, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("max_dense", [4096, 0])
def test_logt_zero_is_one_step_and_steps_compose(max_dense):
    h, w = 3, 5
    src, dst = pair_indices(h, w, 2)
    rng = np.random.default_rng(1)
    affinity = rng.random(len(src))
    probs = rng.random((2, h, w))
    one = random_walk(torch.from_numpy(probs), src, dst, affinity, 3.0, 0, max_dense)
    expected = _one_step_numpy(probs, src, dst, affinity, 3.0)
    np.testing.assert_allclose(one.numpy(), expected, atol=1e-6)
    four = random_walk(torch.from_numpy(probs), src, dst, affinity, 3.0, 2, max_dense)
    for _ in range(3):
        expected = _one_step_numpy(expected, src, dst, affinity, 3.0)
    np.testing.assert_allclose(four.numpy(), expected, atol=1e-5)


@pytest.mark.parametrize("max_dense", [4096, 0])
def test_walk_averages_and_conserves_degree_weighted_mass(max_dense):
    h, w = 5, 6
    src, dst = pair_indices(h, w, 3)
    rng = np.random.default_rng(2)
    affinity = rng.random(len(src))
    beta = 2.0
    probs = rng.random((2, h, w)).astype(np.float32)
    out = random_walk(torch.from_numpy(probs), src, dst, affinity, beta, 3, max_dense).numpy()
    degree = np.ones(h * w)  # self-loop
    np.add.at(degree, src, affinity**beta)
    np.add.at(degree, dst, affinity**beta)
    # d^T T = 1^T A = d^T: the degree-weighted sum is invariant (the plain sum is not).
    np.testing.assert_allclose(
        out.reshape(2, -1) @ degree, probs.reshape(2, -1) @ degree, rtol=1e-5
    )
    # Every output is a convex combination of inputs: constants are fixed points.
    assert (out >= probs.min() - 1e-6).all() and (out <= probs.max() + 1e-6).all()
    constant = torch.full((1, h, w), 0.7)
    flat = random_walk(constant, src, dst, affinity, beta, 3, max_dense)
    torch.testing.assert_close(flat, constant)


def test_no_pairs_is_identity_and_inputs_are_checked():
    probs = torch.rand(2, 3, 3)
    src, dst = pair_indices(3, 3, 1)
    assert len(src) == 0
    for max_dense in (4096, 0):
        out = random_walk(probs, src, dst, np.empty(0), 8.0, 3, max_dense)
        torch.testing.assert_close(out, probs)
    src, dst = pair_indices(3, 3, 2)
    with pytest.raises(ValueError, match="same length"):
        random_walk(probs, src, dst, np.ones(len(src) - 1), 8.0, 1)
    with pytest.raises(ValueError, match=r"\[0, 9\)"):
        random_walk(probs, src, dst + 1, np.ones(len(src)), 8.0, 1)
    with pytest.raises(ValueError, match="labels, h, w"):
        random_walk(probs[0], src, dst, np.ones(len(src)), 8.0, 1)
    with pytest.raises(ValueError, match="logt"):
        random_walk(probs, src, dst, np.ones(len(src)), 8.0, -1)


def test_float64_input_and_tiny_grids():
    one = torch.rand(3, 1, 1, dtype=torch.float64)
    src, dst = pair_indices(1, 1, 5)
    out = random_walk(one, src, dst, np.empty(0), 8.0, 2)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, one.float())


def _peak_cpu_bytes(fn):
    """(fn(), the peak of the CPU memory fn allocates beyond what was live at the call): every
    allocation and free inside `fn`, as torch's profiler records them, summed in time order."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU],
                                profile_memory=True) as prof:
        out = fn()
    events = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events()
                    if e.name() == "[memory]")
    assert events, "the profiler recorded no allocation"
    return out, int(np.cumsum([nbytes for _, nbytes in events]).max())


@pytest.mark.parametrize("h,w,radius,max_dense", [(96, 96, 5, 0), (40, 30, 10, 0),
                                                  (24, 24, 5, 4096)])
def test_walk_stays_within_its_memory_bound(h, w, radius, max_dense):
    # The module's claim, measured while walking: `walk_memory_bytes` bounds what the walk
    # allocates (and is not a loose guess: at least half of it is used), and the sparse path
    # never needs anything near one n×n float32 matrix, which the dense path does hold.
    labels, n = 3, h * w
    src, dst = (torch.from_numpy(a) for a in pair_indices(h, w, radius))
    g = torch.Generator().manual_seed(0)
    affinity = torch.rand(len(src), generator=g)
    probs = torch.rand(labels, h, w, generator=g)
    out, peak = _peak_cpu_bytes(
        lambda: random_walk(probs, src, dst, affinity, 4.0, 2, max_dense_nodes=max_dense))
    bound = walk_memory_bytes(h, w, radius, labels, max_dense_nodes=max_dense)
    assert bound / 2 < peak <= bound, (peak, bound)
    if max_dense:
        assert peak >= 2 * n * n * 4  # T and the product buffer
    elif n >= 96 * 96:
        assert peak < n * n * 4 / 10
    # it did walk: the scores were smoothed, within the range of the inputs
    assert out.shape == probs.shape and out.std() < probs.std() / 2
    assert probs.min() <= out.min() and out.max() <= probs.max()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    h, w = 9, 11
    src, dst = pair_indices(h, w, 4)
    rng = np.random.default_rng(3)
    affinity = torch.from_numpy(rng.random(len(src)).astype(np.float32))
    probs = torch.from_numpy(rng.random((3, h, w)).astype(np.float32))
    cpu = random_walk(probs, src, dst, affinity, 4.0, 3)
    for max_dense in (4096, 0):
        gpu = random_walk(probs.cuda(), src, dst, affinity.cuda(), 4.0, 3, max_dense)
        assert gpu.device.type == "cuda"
        torch.testing.assert_close(gpu.cpu(), cpu, atol=1e-5, rtol=1e-5)
