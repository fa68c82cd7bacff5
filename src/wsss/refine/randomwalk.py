"""Random walk propagation of label scores over a local pixel-affinity graph (PSA / IRN style).

The graph links every pair of grid cells closer than `radius` (Euclidean, strictly) with a
weight `affinity ** beta`, and every cell to itself with weight 1. With A that symmetric weight
matrix and D its row sums, the transition matrix is the row-stochastic T = D^-1 A and the walk
applies it t = 2**logt times to each label's score map seen as a column vector:

    out_l = T^t p_l        (equivalently, with row vectors: out = probs_flat @ (T^T)^t)

Each step therefore replaces a cell's score by the affinity-weighted *mean* of its neighbourhood
(PSA, Ahn & Kwak 2018: vec(M*) = T^t vec(M) with T = D^-1 A; PSA-style code gets the same
by normalising the columns of A and multiplying row vectors from the right).
Properties of this normalisation, all tested:

* it averages: constant maps are fixed points and every output lies between the smallest and
  largest input score of the cell's connected component, so scores keep their scale and an
  absolute threshold (e.g. a background score) means the same before and after the walk;
* it conserves the *degree-weighted* mass sum_i d_i p_i (because d^T T = 1^T A = d^T), not the
  plain sum sum_i p_i, which changes wherever degrees differ (image borders, cut edges);
* nothing leaks through zero-affinity edges: two regions joined only by zero weights stay
  exactly independent (0 ** beta = 0, and the products of exact zeros stay zero).

Two evaluation paths, same result up to float32 rounding, on the device of `probs`:

* dense (n = h*w <= max_dense_nodes): build T as an n×n matrix and square it logt times, like
  PSA. Memory: at most 3 n×n float32 copies (T, the product buffer, a temporary) plus a few
  L×n score buffers, i.e. about 12·n² bytes: 0.2 GB at n = 4096 (64×64), 3.2 GB at 128×128.
* sparse (otherwise): T as a torch CSR matrix with nnz = 2P + n entries (P pairs inside the
  grid) and 2**logt sparse×dense products, all L labels at once. Memory is O(n·P), never n²:
  the CSR matrix itself holds nnz × (8 + 4) bytes (int64 column, float32 value) plus (n+1)
  int64 row pointers, and the walk a few L×n float32 score buffers; building it peaks higher,
  at about nnz × 48 bytes, while the COO entries are sorted by row (then column). At radius 5
  (34 offsets, nnz ≈ 69 n) that is ~3.3 kB per cell: 54 MB for a 128×128 grid.

`walk_memory_bytes` returns these bounds for a grid, so callers can document or guard memory.
No image is ever cropped or tiled to fit: big grids simply switch to the sparse path.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch

# Bytes per stored nonzero at the peak of the sparse build, which is the sort: the int64 key
# row*n + col (8), its sorted copy (8), the int64 permutation (8), the sort's scratch space (16,
# measured on CPU) and the float32 values (4); rounded up. Measured peak: ~46 incl. the weights.
_SPARSE_BUILD_BYTES_PER_NNZ = 48
# Score buffers alive at once: the input copy, its transpose, the current and the next iterate.
_SCORE_BUFFERS = 4
# Dense path: T, the matmul output buffer and one n×n temporary (index_put_/normalisation).
_DENSE_COPIES = 3
_FLOAT = 4


def pair_offsets(radius: int) -> np.ndarray:
    """(P, 2) int64 offsets (dy, dx) of one half-plane of the disc dy² + dx² < radius².

    Only offsets with dy > 0, or dy == 0 and dx > 0, are kept, so that every unordered pair of
    cells appears once; rows are sorted by dy, then dx.
    """
    if radius < 0:
        raise ValueError(f"radius must be >= 0, got {radius}")
    dy, dx = np.meshgrid(np.arange(radius), np.arange(-radius + 1, radius), indexing="ij")
    keep = (dy * dy + dx * dx < radius * radius) & ((dy > 0) | ((dy == 0) & (dx > 0)))
    # meshgrid with "ij" indexing enumerates (dy, dx) lexicographically, so the mask keeps order.
    return np.stack([dy[keep], dx[keep]], axis=1).astype(np.int64).reshape(-1, 2)


def pair_indices(h: int, w: int, radius: int) -> tuple[np.ndarray, np.ndarray]:
    """(src, dst) int64 flat indices (y*w + x) of every unordered cell pair within `radius`.

    Order is offset-major: for each offset of `pair_offsets(radius)`, all source cells whose
    partner lies inside the h×w grid, in raster order. Only the offsets are looped over (a few
    dozen); the cells of one offset are one slice of the index grid.
    """
    if h < 0 or w < 0:
        raise ValueError(f"grid size must be non-negative, got {h}×{w}")
    grid = np.arange(h * w, dtype=np.int64).reshape(h, w)
    srcs, dsts = [np.empty(0, np.int64)], [np.empty(0, np.int64)]
    for dy, dx in pair_offsets(radius).tolist():
        # Source columns x whose partner x + dx stays in [0, w); dy >= 0 always.
        x0, x1 = max(0, -dx), min(w, w - dx)
        if dy >= h or x0 >= x1:
            continue
        srcs.append(grid[: h - dy, x0:x1].ravel())
        dsts.append(grid[dy:, x0 + dx : x1 + dx].ravel())
    return np.concatenate(srcs), np.concatenate(dsts)


def _pair_count(h: int, w: int, radius: int) -> int:
    """Number of pairs `pair_indices(h, w, radius)` returns, without building them."""
    offsets = pair_offsets(radius)
    rows = np.clip(h - np.abs(offsets[:, 0]), 0, None)
    cols = np.clip(w - np.abs(offsets[:, 1]), 0, None)
    return int((rows * cols).sum())


def walk_memory_bytes(h: int, w: int, radius: int, labels: int, max_dense_nodes: int = 4096) -> int:
    """Upper bound (bytes) of the extra memory `random_walk` needs on an h×w grid.

    Covers the path `random_walk` takes for that grid (see the module docstring); the inputs
    (probs, src, dst, affinity) are not counted.
    """
    n = h * w
    scores = _SCORE_BUFFERS * labels * n * _FLOAT
    if n <= max_dense_nodes:
        return _DENSE_COPIES * n * n * _FLOAT + scores
    pairs = _pair_count(h, w, radius)
    nnz = 2 * pairs + n
    # + the pair weights and their clamped copy (float32, P each), the degrees (float32, n),
    # the row counts and row pointers (int64, n and n + 1).
    weights = 2 * pairs * _FLOAT
    return nnz * _SPARSE_BUILD_BYTES_PER_NNZ + weights + n * (_FLOAT + 8 + 8) + 8 + scores


def _check_inputs(
    probs: torch.Tensor, src: torch.Tensor, dst: torch.Tensor, affinity: torch.Tensor, logt: int
) -> None:
    if probs.ndim != 3:
        raise ValueError(f"probs must be (labels, h, w), got shape {tuple(probs.shape)}")
    if not (src.ndim == dst.ndim == affinity.ndim == 1):
        raise ValueError("src, dst and affinity must be 1-D")
    if not (src.shape == dst.shape == affinity.shape):
        raise ValueError(
            f"src {tuple(src.shape)}, dst {tuple(dst.shape)} and affinity "
            f"{tuple(affinity.shape)} must have the same length"
        )
    if logt < 0:
        raise ValueError(f"logt must be >= 0, got {logt}")
    n = probs.shape[1] * probs.shape[2]
    if src.numel() and (
        min(int(src.min()), int(dst.min())) < 0 or max(int(src.max()), int(dst.max())) >= n
    ):
        raise ValueError(f"pair indices must lie in [0, {n})")


def _dense_walk(
    x: torch.Tensor, src: torch.Tensor, dst: torch.Tensor, weight: torch.Tensor, logt: int
) -> torch.Tensor:
    """T^(2**logt) x^T by repeated squaring of the dense n×n transition matrix; x is (L, n)."""
    n = x.shape[1]
    t_mat = torch.zeros(n, n, dtype=torch.float32, device=x.device)
    # accumulate=True sums repeated pairs, exactly like the sparse path's duplicate entries.
    t_mat.index_put_((src, dst), weight, accumulate=True)
    t_mat.index_put_((dst, src), weight, accumulate=True)
    t_mat.diagonal().add_(1.0)
    t_mat.div_(t_mat.sum(dim=1, keepdim=True))
    buffer = torch.empty_like(t_mat)
    for _ in range(logt):  # ping-pong between two buffers: never more than two n×n live
        torch.matmul(t_mat, t_mat, out=buffer)
        t_mat, buffer = buffer, t_mat
    del buffer
    return t_mat @ x.T


def _sparse_transition(
    n: int, src: torch.Tensor, dst: torch.Tensor, weight: torch.Tensor
) -> torch.Tensor:
    """Row-stochastic T = D^-1 A as an n×n CSR matrix (both pair directions + self-loops)."""
    device = weight.device
    diag = torch.arange(n, device=device)
    rows = torch.cat([src, dst, diag])
    cols = torch.cat([dst, src, diag])
    vals = torch.cat([weight, weight, torch.ones(n, dtype=torch.float32, device=device)])
    degree = torch.zeros(n, dtype=torch.float32, device=device).index_add_(0, rows, vals)
    vals.div_(degree[rows])  # self-loops make every degree >= 1: no division by zero
    counts = torch.bincount(rows, minlength=n)
    # CSR wants entries grouped by row, columns sorted within a row (some backends expect it):
    # sort the key row*n + col, built in place of `rows`, and read the columns back from the
    # sorted key, so `cols` can go before the sort, whose buffers make the peak of this build.
    key = rows.mul_(n).add_(cols)
    del rows, cols, degree
    key, order = torch.sort(key)
    values = vals[order]
    del vals, order
    col_indices = key.remainder_(n)
    crow = torch.zeros(n + 1, dtype=torch.int64, device=device)
    torch.cumsum(counts, dim=0, out=crow[1:])
    with warnings.catch_warnings():  # torch flags CSR support as beta on every first use
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support", category=UserWarning)
        return torch.sparse_csr_tensor(crow, col_indices, values, (n, n), check_invariants=False)


def _sparse_walk(
    x: torch.Tensor, src: torch.Tensor, dst: torch.Tensor, weight: torch.Tensor, logt: int
) -> torch.Tensor:
    """T^(2**logt) x^T by 2**logt CSR × dense products (all L columns at once); x is (L, n)."""
    t_mat = _sparse_transition(x.shape[1], src, dst, weight)
    y = x.T.contiguous()
    for _ in range(2**logt):
        y = t_mat @ y
    return y


DENSE_NODES_CUDA = 4096


@torch.no_grad()
def random_walk(
    probs: torch.Tensor,
    src: torch.Tensor,
    dst: torch.Tensor,
    affinity: torch.Tensor,
    beta: float,
    logt: int,
    max_dense_nodes: int | None = None,
) -> torch.Tensor:
    """Propagate (L, h, w) scores 2**logt random-walk steps; returns (L, h, w) float32.

    `src`/`dst` are flat cell indices of unordered pairs (e.g. from `pair_indices`) and
    `affinity` their affinities in [0, 1]; the walk uses both directions of every pair, weight
    affinity ** beta, plus a self-loop of weight 1 per cell. Each step replaces every cell's
    scores by the weighted mean over its neighbourhood (T = D^-1 A applied to column vectors;
    see the module docstring). logt = 0 is one step. Grids with h*w <= max_dense_nodes use a
    dense n×n matrix squared logt times, larger ones a sparse CSR matrix. Index/affinity inputs
    may also be numpy arrays; everything runs in float32 on the device of `probs`.
    `max_dense_nodes` None: 4096 on CUDA (matrix squaring suits the GPU), 0 on the CPU, where
    256 sparse products beat squaring even at 25×25 (3.5×) and by 90× at 64×64.
    """
    if max_dense_nodes is None:
        max_dense_nodes = DENSE_NODES_CUDA if probs.device.type == "cuda" else 0
    device = probs.device
    src = torch.as_tensor(src, dtype=torch.int64, device=device)
    dst = torch.as_tensor(dst, dtype=torch.int64, device=device)
    affinity = torch.as_tensor(affinity, dtype=torch.float32, device=device)
    _check_inputs(probs, src, dst, affinity, logt)
    labels, h, w = probs.shape
    x = probs.reshape(labels, h * w).to(torch.float32)
    # Clamping keeps float noise (e.g. -1e-8) from turning into NaN under a fractional beta.
    weight = affinity.clamp(0.0, 1.0) ** beta
    walk = _dense_walk if h * w <= max_dense_nodes else _sparse_walk
    return walk(x, src, dst, weight, logt).T.reshape(labels, h, w).contiguous()


def pair_labels(grid: torch.Tensor, src: torch.Tensor, dst: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(bg_pos, fg_pos, neg) boolean (B, P) masks of the pairs of a (B, h, w) label grid.

    Positive: same label (background and foreground kept apart); negative: different labels;
    pairs touching an unsure cell (255) are in none. Shared by PSA's and IRN's training.
    """
    flat = grid.flatten(1)
    a, b = flat[:, src], flat[:, dst]
    valid = (a != 255) & (b != 255)
    same = valid & (a == b)
    return same & (a == 0), same & (a > 0), valid & (a != b)


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of `values` where `mask`; an empty mask gives 0 instead of NaN, without a host sync."""
    return (values * mask).sum() / mask.sum().clamp_min(1)
