"""Per-image work of the refiners over pools (`wsss.ops.pool`), and the label files they write.

pydensecrf holds the GIL, so dense CRFs are spread over processes. `label_stream`: a task is
(id, cams, keys); the worker loads the image itself (the dataset's `load_image` is picklable) and
applies a module-level function `fn(image, cams, keys, cfg) -> uint8 label`. `walk_labels`: the
random walks of the learned refiners in threads, their optional CRF in processes. Results come
back in task order; `store_labels` writes them.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np
from tqdm import tqdm

from wsss.ops.pool import background_pool, ordered_map, thread_map
from wsss.store import CamReader, LabelWriter, StoreError

IGNORE = 255  # the label of unsure pixels in a learned refiner's training labels

LabelFn = Callable[[np.ndarray, np.ndarray, np.ndarray, dict[str, Any]], np.ndarray]
# (image, (K+1)×H×W scores, keys, cfg) -> uint8 label: the last step of a random-walk refiner
ScoreFn = Callable[[np.ndarray, np.ndarray, np.ndarray, dict[str, Any]], np.ndarray]


def plane_labels(keys: np.ndarray, planes: np.ndarray) -> np.ndarray:
    """uint8 labels of plane indices: plane 0 is background (0), plane i > 0 class keys[i-1]
    (label keys[i-1] + 1)."""
    label_of_plane = np.concatenate([[0], np.asarray(keys, np.int64).reshape(-1) + 1])
    return label_of_plane.astype(np.uint8)[planes]


# Per-process state of the pool, set once by the initializer instead of pickled with each task.
_WORKER: dict[str, Any] = {}


def _init_worker(load_image: Callable[[str], np.ndarray], fn: LabelFn, cfg: dict) -> None:
    _WORKER.update(load_image=load_image, fn=fn, cfg=cfg)


def _label_one(task: tuple[str, np.ndarray, np.ndarray]) -> tuple[str, np.ndarray]:
    image_id, cams, keys = task
    image = _WORKER["load_image"](image_id)
    if image.shape[:2] != cams.shape[1:]:
        raise StoreError(
            f"image '{image_id}': CAM size {cams.shape[1:]} differs from image {image.shape[:2]}"
        )
    return image_id, _WORKER["fn"](image, cams, keys, _WORKER["cfg"])


def label_stream(
    tasks: Iterable[tuple[str, np.ndarray, np.ndarray]],
    load_image: Callable[[str], np.ndarray],
    fn: LabelFn,
    cfg: dict[str, Any],
    threads: int = 1,
    total: int | None = None,
) -> Iterator[tuple[str, np.ndarray]]:
    """Yield (id, fn(image, cams, keys, cfg)) per task, in task order.

    Tasks are consumed lazily, so only a few images' CAMs are in flight at a time. `total`
    (number of tasks) only tunes the chunk size.
    """
    # chunks amortise the IPC round trip but stay small enough to keep every worker busy to the end
    chunksize = max(1, min(8, (total or 0) // (4 * max(1, threads))))
    try:
        yield from ordered_map(_label_one, tasks, threads, _init_worker, (load_image, fn, cfg),
                               chunksize)
    finally:
        _WORKER.clear()  # the inline path set this process's state


def write_labels(cam_path: str | os.PathLike, ds, split: str, fn: LabelFn, cfg: dict[str, Any],
                 out_path: str | os.PathLike, threads: int, desc: str) -> None:
    """Apply `fn` to every image of `split` with its full-resolution CAMs; write a label store.

    The CAM file must cover the split's ids with the dataset's class list; on any error no
    output file is left behind. `cfg` is recorded in the file as the refiner's configuration.
    """
    ids = ds.ids(split)
    with CamReader(cam_path) as reader:
        reader.check(ids, list(ds.classes))
        tasks = ((image_id, *reader.get(image_id)) for image_id in ids)
        store_labels(label_stream(tasks, ds.load_image, fn, cfg, threads, len(ids)), ds, split,
                     cfg, out_path, desc)


def store_labels(labels: Iterable[tuple[str, np.ndarray]], ds, split: str, cfg: dict[str, Any],
                 out_path: str | os.PathLike, desc: str) -> None:
    """Write (id, label) pairs of `split` to a label store that records `cfg` as the refiner's
    configuration, with a progress bar; atomic, so an error leaves no file."""
    attrs = {"classes": list(ds.classes), "split": split, "refiner": json.dumps(cfg)}
    bar = tqdm(total=len(ds.ids(split)), desc=desc, file=sys.stderr, mininterval=5.0,
               disable=None)
    with LabelWriter(out_path, attrs) as writer, bar:
        for image_id, label in labels:
            writer.add(image_id, label)
            bar.update(1)


def walk_labels(
    jobs: Iterable[tuple[str, np.ndarray, np.ndarray, Callable[[], Any] | None]],
    threads: int,
    post: ScoreFn | None = None,
    cfg: dict[str, Any] | None = None,
) -> Iterator[tuple[str, np.ndarray]]:
    """Yield (id, uint8 label) per job (id, image, keys, walk), in job order.

    `walk()` returns the (K+1)×H×W scores of the image (background plane first) as a torch
    tensor (`walk` is None for an image without classes: all background); it runs in a pool
    of `threads` threads (torch releases the GIL) while the caller's
    thread, which produces the jobs lazily, runs the network on the next images. The label is
    `post(image, scores, keys, cfg)` (a module-level function, e.g. a dense CRF), computed in a
    pool of `threads` processes (pydensecrf holds the GIL), or without `post` the argmax of the
    scores. A few images are in flight at most.
    """
    threads = max(1, threads)

    def finish(job: tuple[str, np.ndarray, np.ndarray, Callable[[], Any] | None]
               ) -> tuple[str, np.ndarray]:
        image_id, image, keys, walk = job
        if len(keys) == 0:  # nothing to propagate: all background
            return image_id, np.zeros(image.shape[:2], np.uint8)
        scores = walk().float().cpu().numpy()
        if post is None:
            return image_id, plane_labels(keys, scores.argmax(axis=0))
        return image_id, workers.submit(post, image, scores, keys, cfg).get()

    # All CRF workers are forked on entry, before the walk threads start (forking a process
    # whose other threads hold locks is unsafe); they only run numpy and pydensecrf.
    with background_pool(threads if post is not None else 1) as workers:
        yield from thread_map(finish, jobs, threads)
