"""The one process-pool mechanism of the package.

Per-image CPU work (dense CRFs, decoding and checking images) is spread over processes, because
pydensecrf and PIL's decoders hold the GIL. Three shapes of use:

- `ordered_map`: a stream of items mapped in order (`Pool.imap`), with an initializer that puts
  per-process state in place once instead of pickling it with every item;
- `background_pool`: single calls submitted while the caller does other work (a CRF that
  overlaps the network's next image), collected with `.get()`;
- `persistent_pool`: a pool kept for the life of the process, for work that recurs at every
  training step, where forking a new pool each time would cost more than the work;
- `thread_map`: the ordered map over threads, for work that releases the GIL (numpy, torch)
  and reads from handles that cannot cross a process boundary (an open HDF5 file).

With `threads <= 1` everything runs inline in the calling process, the same code path the
workers run, so results do not depend on the thread count.
"""

from __future__ import annotations

import atexit
import contextlib
import multiprocessing
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from multiprocessing.pool import Pool
from typing import Any


def _context(fork: bool):
    # fork: workers inherit the parent's imports and state (warm, nothing pickled); otherwise the
    # platform's default start method
    return multiprocessing.get_context("fork") if fork else multiprocessing.get_context()


def ordered_map(
    fn: Callable[[Any], Any],
    items: Iterable[Any],
    threads: int,
    initializer: Callable[..., None] | None = None,
    initargs: tuple = (),
    chunksize: int = 1,
    fork: bool = False,
) -> Iterator[Any]:
    """Yield fn(item) for every item, in item order, over `threads` processes.

    Items are consumed lazily, so only a few are in flight. `initializer(*initargs)` runs once
    in each worker before its first item; with `threads <= 1` it runs once in this process and
    the items are mapped inline. `fn` and `initializer` must be picklable (module-level).
    The pool is created on the first `next()` and terminated when the generator finishes or
    is closed.
    """
    if threads <= 1:
        if initializer is not None:
            initializer(*initargs)
        yield from map(fn, items)
        return
    with _context(fork).Pool(threads, initializer, initargs) as pool:
        yield from pool.imap(fn, items, chunksize=max(1, int(chunksize)))


def thread_map(fn: Callable[[Any], Any], items: Iterable[Any], threads: int) -> Iterator[Any]:
    """Yield fn(item) in item order over a pool of `threads` threads, with at most
    2 × threads items in flight; items are drawn in the calling thread (so e.g. HDF5 reads
    stay there). Inline with `threads <= 1`."""
    if threads <= 1:
        yield from map(fn, items)
        return
    with ThreadPoolExecutor(threads) as pool:
        pending: deque = deque()
        for item in items:
            pending.append(pool.submit(fn, item))
            if len(pending) >= 2 * threads:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


class _Done:
    """The result of an inline call, with the `get()` of an AsyncResult (which re-raises)."""

    def __init__(self, fn: Callable[..., Any], args: tuple):
        self._value: Any = None
        self._error: BaseException | None = None
        try:
            self._value = fn(*args)
        except Exception as err:  # raised at get(), where a pool's error would surface
            self._error = err

    def get(self, timeout: float | None = None) -> Any:
        if self._error is not None:
            raise self._error
        return self._value


class BackgroundPool:
    """`submit(fn, *args)` -> a handle whose `get()` returns fn(*args); see `background_pool`."""

    def __init__(self, pool: Pool | None):
        self._pool = pool

    def submit(self, fn: Callable[..., Any], *args: Any):
        if self._pool is None:
            return _Done(fn, args)
        return self._pool.apply_async(fn, args)


@contextlib.contextmanager
def background_pool(threads: int, fork: bool = True) -> Iterator[BackgroundPool]:
    """A pool of `threads` processes for calls that overlap the caller's own work.

    The workers are started on entry: enter it before starting any thread (forking a process
    whose other threads hold locks is unsafe). With `threads <= 1` a submitted call runs at
    once, inline. On exit the workers are terminated, finished or not.
    """
    if threads <= 1:
        yield BackgroundPool(None)
        return
    pool = _context(fork).Pool(threads)
    try:
        yield BackgroundPool(pool)
    finally:
        pool.terminate()
        pool.join()


_PERSISTENT: dict[int, Pool] = {}


def persistent_pool(threads: int) -> Pool:
    """A fork pool of `threads` processes, created on the first call and reused by every later
    call with the same count until the process exits.

    Forked: the workers start with the caller's imports. Kept at module level, not in the
    caller's objects, so those stay picklable and deep-copyable. Work sent to it must not use
    torch in the workers (forking after CUDA or OpenMP initialisation is safe only for numpy-
    and C-extension-only work).
    """
    threads = int(threads)
    if threads < 1:
        raise ValueError(f"a pool needs at least one process, got {threads}")
    pool = _PERSISTENT.get(threads)
    if pool is None:
        pool = multiprocessing.get_context("fork").Pool(threads)
        _PERSISTENT[threads] = pool
    return pool


@atexit.register
def _close_persistent() -> None:
    for pool in _PERSISTENT.values():
        pool.terminate()
    _PERSISTENT.clear()
