"""Throughput of the metric kernels (run as a script; not collected by pytest).

python tests/benchmarks/bench_metrics.py [--images 64] [--repeat 3]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from wsss.metrics import confusion, seed_confusions

NUM_CLASSES = 20
SHAPE = (375, 500)  # a typical VOC image


def _blocky_labels(rng: np.random.Generator, n: int) -> np.ndarray:
    """Label maps made of 25×25 blocks with a few ignore pixels, like real masks."""
    small = rng.integers(0, NUM_CLASSES + 1, (n, SHAPE[0] // 25 + 1, SHAPE[1] // 25 + 1))
    labels = small.repeat(25, axis=1).repeat(25, axis=2)[:, : SHAPE[0], : SHAPE[1]]
    labels = labels.astype(np.uint8)
    labels[rng.random(labels.shape) < 0.05] = 255
    return labels


def _best_of(repeat: int, fn) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--thresholds", type=int, default=96)
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    gts = _blocky_labels(rng, args.images)
    preds = _blocky_labels(rng, args.images)
    cams = rng.random((args.images, 2, *SHAPE), dtype=np.float32).astype(np.float16)
    keys = [np.sort(rng.choice(NUM_CLASSES, 2, replace=False)) for _ in range(args.images)]
    thresholds = np.linspace(0.0, 0.95, args.thresholds)
    mpix = args.images * SHAPE[0] * SHAPE[1] / 1e6

    def run_confusion() -> None:
        for pred, gt in zip(preds, gts, strict=True):
            confusion(pred, gt, NUM_CLASSES + 1)

    def run_seeds(dtype) -> None:
        for cam, key, gt in zip(cams, keys, gts, strict=True):
            seed_confusions(cam.astype(dtype, copy=False), key, gt, thresholds, NUM_CLASSES)

    t = _best_of(args.repeat, run_confusion)
    print(f"confusion:       {mpix / t:8.1f} Mpix/s  ({args.images} images {SHAPE}, 1 thread)")
    for dtype in (np.float16, np.float32):
        t = _best_of(args.repeat, lambda d=dtype: run_seeds(d))
        print(
            f"seed_confusions: {mpix / t:8.1f} Mpix/s  ({args.thresholds} thresholds, "
            f"K=2 {np.dtype(dtype).name} CAMs, 1 thread)"
        )


if __name__ == "__main__":
    main()
