import os

import numpy as np
import pytest
import torch

from wsss.refine.pool import walk_labels


def _jobs(n: int, fail_at: int | None = None):
    """Job i: a 3×4 image whose 2-plane scores put class 5 (plane 1) on the first i columns;
    every third job has no classes."""
    for i in range(n):
        keys = np.array([], np.int64) if i % 3 == 2 else np.array([4])
        scores = torch.zeros(2, 3, 4)
        scores[0] = 0.5
        scores[1, :, :i] = 1.0

        def walk(scores=scores, i=i):
            if i == fail_at:
                raise RuntimeError(f"walk {i} failed")
            return scores

        yield f"id{i}", np.zeros((3, 4, 3), np.uint8), keys, walk


def _expected(i: int) -> np.ndarray:
    label = np.zeros((3, 4), np.uint8)
    if i % 3 != 2:
        label[:, :i] = 5
    return label


def _tag_with_pid(image, scores, keys, cfg):
    """A post step that shows where it ran and what it was given."""
    label = np.concatenate([[0], keys + 1]).astype(np.uint8)[scores.argmax(axis=0)]
    return np.where(label > 0, cfg["value"], 0).astype(np.uint8), os.getpid()


@pytest.mark.parametrize("threads", [1, 2])
def test_walk_labels_keeps_job_order_and_empty_images(threads):
    out = list(walk_labels(_jobs(9), threads))
    assert [image_id for image_id, _ in out] == [f"id{i}" for i in range(9)]
    for i, (_, label) in enumerate(out):
        np.testing.assert_array_equal(label, _expected(i))


@pytest.mark.parametrize("threads", [1, 2])
def test_walk_labels_runs_the_post_step_in_worker_processes(threads):
    out = list(walk_labels(_jobs(6), threads, _tag_with_pid, {"value": 9}))
    for i, (_, result) in enumerate(out):
        if i % 3 == 2:  # no classes: no post step
            np.testing.assert_array_equal(result, np.zeros((3, 4), np.uint8))
            continue
        label, pid = result
        np.testing.assert_array_equal(label, np.where(_expected(i) > 0, 9, 0))
        assert (pid == os.getpid()) == (threads == 1)


@pytest.mark.parametrize("threads", [1, 2])
def test_walk_labels_raises_a_failed_walk(threads):
    with pytest.raises(RuntimeError, match="walk 4 failed"):
        list(walk_labels(_jobs(9, fail_at=4), threads, _tag_with_pid, {"value": 1}))
