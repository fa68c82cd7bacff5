"""The one process pool: order, per-worker initialisation, the inline path, background calls and
the persistent pool."""

import os

import pytest

from wsss.ops import pool as P

_STATE: dict = {}


def _init(offset: int) -> None:
    _STATE["offset"] = offset
    _STATE["init_pid"] = os.getpid()
    _STATE["inits"] = _STATE.get("inits", 0) + 1


def _shifted(x: int) -> tuple[int, int, int, int]:
    """x + the initializer's offset, with where it ran and where the initializer did."""
    return x + _STATE["offset"], os.getpid(), _STATE["init_pid"], _STATE["inits"]


def _square(x: int) -> int:
    return x * x


def _fail_at_three(x: int) -> int:
    if x == 3:
        raise ValueError("item 3 failed")
    return x


@pytest.fixture(autouse=True)
def clean_state():
    _STATE.clear()
    yield
    _STATE.clear()


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("fork", [False, True])
def test_ordered_map_keeps_item_order_and_initialises_each_worker(threads, fork):
    # uneven chunks and many items: a pool that returned results as they finish would reorder
    out = list(P.ordered_map(_shifted, iter(range(40)), threads, _init, (100,), chunksize=3,
                             fork=fork))
    assert [v for v, *_ in out] == [100 + i for i in range(40)]
    for _, pid, init_pid, inits in out:
        assert pid == init_pid and inits == 1  # the initializer ran once, in that process
        assert (pid == os.getpid()) == (threads == 1)


def test_ordered_map_inline_runs_the_initializer_once_here():
    out = list(P.ordered_map(_shifted, [1, 2, 3], 1, _init, (5,)))
    assert [v for v, *_ in out] == [6, 7, 8]
    assert _STATE["inits"] == 1 and _STATE["init_pid"] == os.getpid()
    assert list(P.ordered_map(_square, [3, 4], 0)) == [9, 16]  # no initializer, threads 0


@pytest.mark.parametrize("threads", [1, 2])
def test_ordered_map_raises_a_worker_error(threads):
    with pytest.raises(ValueError, match="item 3 failed"):
        list(P.ordered_map(_fail_at_three, range(6), threads))


@pytest.mark.parametrize("threads", [1, 2])
def test_background_pool_get_returns_each_call_result(threads):
    with P.background_pool(threads) as bg:
        handles = [bg.submit(_shifted_pid, i, 10) for i in range(6)]
        results = [h.get() for h in handles]
        failed = bg.submit(_fail_at_three, 3)
        with pytest.raises(ValueError, match="item 3 failed"):
            failed.get()
    assert [v for v, _ in results] == [i + 10 for i in range(6)]
    assert all((pid == os.getpid()) == (threads == 1) for _, pid in results)


def _shifted_pid(x: int, offset: int) -> tuple[int, int]:
    return x + offset, os.getpid()


def test_background_pool_workers_end_with_the_block():
    with P.background_pool(2) as bg:
        pid = bg.submit(os.getpid).get()
        assert pid != os.getpid()
    with pytest.raises(ValueError):  # terminated on exit, not left running
        bg.submit(os.getpid)


def test_persistent_pool_is_reused_and_runs_elsewhere():
    first = P.persistent_pool(2)
    assert P.persistent_pool(2) is first
    pids = set(first.map(_worker_pid, range(8), chunksize=1))
    assert os.getpid() not in pids and 1 <= len(pids) <= 2
    assert P.persistent_pool(1) is not first
    with pytest.raises(ValueError):
        P.persistent_pool(0)


def _worker_pid(_: int) -> int:
    return os.getpid()


def test_thread_map_keeps_order_and_draws_items_lazily():
    """Slow early items still come first, and the items are drawn only a bounded window ahead
    of what was consumed (a lazy producer, e.g. the network of the next images, stays lazy)."""
    import time

    from wsss.ops.pool import thread_map

    drawn = []

    def items():
        for i in range(20):
            drawn.append(i)
            yield i

    def slow_first(i):
        time.sleep(0.02 if i < 2 else 0.0)
        return i * i

    out = thread_map(slow_first, items(), 2)
    first = next(out)
    assert first == 0 and len(drawn) <= 4
    assert [first, *out] == [i * i for i in range(20)]
    assert list(thread_map(slow_first, iter(range(5)), 1)) == [0, 1, 4, 9, 16]
