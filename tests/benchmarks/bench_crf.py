"""Dense CRF throughput with 1 and 2 worker processes (run as a script; not a pytest test).

python tests/benchmarks/bench_crf.py [--small 64] [--large 16]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from wsss.refine.crf import DEFAULT_CRF, crf_task
from wsss.refine.pool import label_stream

BG = {"mode": "constant", "threshold": 0.3}


def _smooth(rng: np.random.Generator, shape: tuple[int, ...], size: int) -> np.ndarray:
    """Random field with blobs about size/8 wide: coarse noise upsampled by block repeat."""
    cells = max(1, size // 8)
    coarse = rng.random((*shape, cells, cells), dtype=np.float32)
    up = coarse.repeat(-(-size // cells), axis=-2).repeat(-(-size // cells), axis=-1)
    return up[..., :size, :size]


def load_image(image_id: str) -> np.ndarray:
    """Deterministic blocky RGB image for an id of the form '<size>-<index>'."""
    size, index = (int(part) for part in image_id.split("-"))
    rng = np.random.default_rng(index)
    image = _smooth(rng, (3,), size) * 255
    return np.ascontiguousarray(image.transpose(1, 2, 0).astype(np.uint8))


def _tasks(size: int, count: int, planes: int) -> list[tuple[str, np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(size)
    tasks = []
    for index in range(count):
        cams = _smooth(rng, (planes,), size)
        cams /= cams.max(axis=(1, 2), keepdims=True)
        tasks.append((f"{size}-{index}", cams, np.arange(planes)))
    return tasks


def _bench(size: int, count: int, labels: int) -> None:
    tasks = _tasks(size, count, labels - 1)
    for threads in (1, 2):
        start, cpu_start = time.perf_counter(), time.process_time()
        cfg = {"bg": BG, **DEFAULT_CRF}
        for _ in label_stream(tasks, load_image, crf_task, cfg, threads, len(tasks)):
            pass
        rate = count / (time.perf_counter() - start)
        # With one process the CPU time of this process is the CRF's cost, whatever else
        # runs on the machine; with a pool it is only the parent's share, so not shown.
        cpu = f", {1e3 * (time.process_time() - cpu_start) / count:6.1f} CPU ms/image"
        print(
            f"{count:3d} images {size}x{size}, {labels:2d} labels, {threads} process(es): "
            f"{rate:7.1f} images/s{cpu if threads == 1 else ''}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--small", type=int, default=64, help="number of 96x96 images")
    parser.add_argument("--large", type=int, default=16, help="number of 320x320 images")
    args = parser.parse_args()
    print(f"CRF parameters: {DEFAULT_CRF}")
    _bench(96, args.small, 3)
    _bench(320, args.large, 21)


if __name__ == "__main__":
    main()
