"""Bulk work over many tensors or many keys, shared by :mod:`.stats` and :mod:`.diff`: chunking a tensor (a numpy
array or a torch tensor), spreading the chunks over threads (torch's own intra-op threads set to 1 meanwhile, when
torch is imported at all), cancellation. Nothing here imports torch."""
from __future__ import annotations

import contextlib
import itertools
import sys
import threading
from typing import Callable, Iterator

import numpy as np

from ..errors import Cancelled

CHUNK = 1 << 20              # elements per chunk: stays in cache, amortises the per-op overhead
THREADS = 2                  # worker threads for large tensors
PARALLEL_MIN = 4 * CHUNK     # below this, one thread

ProgressFn = Callable[[int, int], None]       # progress(done, total): elements processed so far of total
StopFn = Callable[[], bool]


# ---- threads ---------------------------------------------------------------------------------------------------------
_intraop_lock = threading.Lock()
_intraop_users = 0
_intraop_saved: int | None = None   # torch's thread count before the first user (None: torch was not imported)


@contextlib.contextmanager
def single_intraop():
    """torch intra-op threads = 1 while our own threads run (restored by the last user); nothing when torch is not
    imported (a later import inside the scope calls :func:`torch_imported`)."""
    global _intraop_users
    with _intraop_lock:
        if _intraop_users == 0:
            _take_threads()
        _intraop_users += 1
    try:
        yield
    finally:
        with _intraop_lock:
            _intraop_users -= 1
            if _intraop_users == 0:
                _give_threads()


def _take_threads() -> None:
    global _intraop_saved
    torch = sys.modules.get("torch")
    if torch is not None and _intraop_saved is None:
        _intraop_saved = torch.get_num_threads()
        torch.set_num_threads(1)


def _give_threads() -> None:
    global _intraop_saved
    if _intraop_saved is not None:
        sys.modules["torch"].set_num_threads(_intraop_saved)
        _intraop_saved = None


def torch_imported() -> None:
    """Called after importing torch lazily: inside a :func:`single_intraop` scope, its threads become 1 now."""
    with _intraop_lock:
        if _intraop_users:
            _take_threads()


def check_stop(should_stop: StopFn | None) -> None:
    """Raise :class:`explorer.errors.Cancelled` when ``should_stop()`` says so."""
    if should_stop is not None and should_stop():
        raise Cancelled("cancelled")


def run_chunked(n_chunks: int, make_state: Callable[[], object], work: Callable[[object, int], int],
                *, total: int, progress: ProgressFn | None = None, should_stop: StopFn | None = None,
                threads: int = THREADS, dynamic: bool = False) -> list:
    """Call ``work(state, i)`` for every chunk index, spread over ``threads`` threads, each with its own state.

    ``work`` returns the number of elements it handled (for progress). The calling thread is one of the workers and
    the only one calling ``progress``/``should_stop``. Returns the states, to be merged by the caller.
    ``dynamic``: each thread takes the next chunk not yet taken (a thread the OS holds back leaves its share to
    the others; which state gets which chunk then varies from run to run), else thread ``w`` takes chunks
    ``w, w + threads, ...``.
    """
    threads = max(1, min(threads, n_chunks))
    states = [make_state() for _ in range(threads)]
    if threads == 1:
        done = 0
        with single_intraop():  # torch's own threads on ~1M-element ops cost more than they give here
            for i in range(n_chunks):
                check_stop(should_stop)
                done += work(states[0], i)
                if progress is not None:
                    progress(done, total)
        return states
    done = [0] * threads
    stop = threading.Event()
    errors: list[BaseException] = []
    taken = itertools.count()   # next() is atomic under the GIL

    def indices(w: int) -> Iterator[int]:
        if not dynamic:
            yield from range(w, n_chunks, threads)
            return
        while (i := next(taken)) < n_chunks:
            yield i

    def loop(w: int, main: bool):
        try:
            for i in indices(w):
                if stop.is_set():
                    return
                if main:
                    if should_stop is not None and should_stop():
                        stop.set()
                        raise Cancelled("cancelled")
                done[w] += work(states[w], i)
                if main and progress is not None:
                    progress(sum(done), total)
        except BaseException as e:  # noqa: BLE001 - re-raised in the calling thread
            stop.set()
            errors.append(e)

    with single_intraop():
        helpers = [threading.Thread(target=loop, args=(w, False), daemon=True, name=f"stats-{w}")
                   for w in range(1, threads)]
        for t in helpers:
            t.start()
        loop(0, True)
        for t in helpers:
            t.join()
    if errors:
        for e in errors:
            if isinstance(e, Cancelled):
                raise e
        raise errors[0]
    if progress is not None:
        progress(total, total)
    return states


# ---- chunks ----------------------------------------------------------------------------------------------------------
# A chunk source is a numpy array or a torch tensor: the same split either way (it depends only on the shape and on
# whether the values are contiguous, which numpy and torch judge alike, size-1 dimensions aside).
def _is_np(t) -> bool:
    return isinstance(t, np.ndarray)


def _contiguous(t) -> bool:
    return t.flags.c_contiguous if _is_np(t) else t.is_contiguous()


def _size(t) -> int:
    return t.size if _is_np(t) else t.numel()


def _dense_copy(t):
    return np.ascontiguousarray(t) if _is_np(t) else t.contiguous()


def dense_order(t):
    """A permutation of ``t``'s dimensions that is contiguous when ``t`` is a permuted dense block (a saved
    transpose); order-free statistics use it to read memory sequentially."""
    if _contiguous(t) or t.ndim < 2:
        return t
    strides = t.strides if _is_np(t) else t.stride()
    order = sorted(range(t.ndim), key=lambda d: (-strides[d], -t.shape[d]))
    p = t.transpose(order) if _is_np(t) else t.permute(order)
    return p if _contiguous(p) else t


def iter_chunks(t, chunk: int = CHUNK) -> Iterator:
    """1-D chunks of ``t`` in its logical (row-major) order, each at most ``chunk`` elements; views when possible,
    a bounded copy per chunk otherwise. The split depends only on the shape and whether ``t`` is contiguous."""
    n = _size(t)
    if n == 0:
        return
    if t.ndim == 0:
        yield t.reshape(1)
        return
    if _contiguous(t):
        flat = t.reshape(-1)
        for i in range(0, n, chunk):
            yield flat[i:i + chunk]
        return
    yield from _row_chunks(t, chunk)


def _row_chunks(t, chunk: int) -> Iterator:
    if t.ndim <= 1:
        for i in range(0, _size(t), chunk):
            yield _dense_copy(t[i:i + chunk])
        return
    row = _size(t[0]) if t.shape[0] else 0
    if row == 0:
        return
    if row > chunk:
        for r in range(t.shape[0]):
            yield from _row_chunks(t[r], chunk)
        return
    rows = max(1, chunk // row)
    for i in range(0, t.shape[0], rows):
        yield t[i:i + rows].reshape(-1)


def paired_chunks(a, b, chunk: int = CHUNK) -> Iterator[tuple]:
    """Aligned 1-D chunks of two tensors (or arrays) of the same shape, in logical order."""
    if _contiguous(a) and _contiguous(b):
        return zip(iter_chunks(a, chunk), iter_chunks(b, chunk))
    if a.ndim == 0:
        return iter([(a.reshape(1), b.reshape(1))])
    return zip(_row_chunks(a, chunk), _row_chunks(b, chunk))
