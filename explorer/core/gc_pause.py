"""Bulk work that shares the interpreter with a window's GUI thread (no torch import: the readers use it to list a
file): pausing the cyclic garbage collector around bulk parsing, and cutting C-level passes over 10**6 items into
slices.

A single C call (``list(map(int, texts))``, ``set(keys)``, ``dict(zip(...))``) holds the interpreter lock from start
to end: over 10**6 items that is 100-250 ms in which no other thread of the process runs Python -- a window's GUI
thread included. Bytecode lets other threads in every few milliseconds; one C call does not. :func:`mapped`,
:func:`distinct` and :func:`slices` make the same pass ``SLICE`` items at a time and :func:`let_others_run` between
slices, so the longest hold is a few milliseconds; their results equal the one-call pass.
"""
from __future__ import annotations

import gc
import threading
import time
from itertools import islice
from typing import Callable, Iterable, Iterator

SLICE = 50_000     # items per C-level pass: 3-10 ms of work for the passes the readers make


class gc_paused:
    """Pause the cyclic garbage collector around bulk parsing: after ``import torch`` it costs 2-3x otherwise.

    The collector is one per process: pauses of several threads overlap, and it runs again when the last of them
    ends (if it ran before the first began) -- not when the first ends, under another thread's bulk work."""

    _lock = threading.Lock()
    _depth = 0               # pauses in progress, in every thread
    _was = False             # was the collector enabled when the first of them began?

    def __enter__(self):
        with gc_paused._lock:
            if gc_paused._depth == 0:
                gc_paused._was = gc.isenabled()
                gc.disable()
            gc_paused._depth += 1
        return self

    def __exit__(self, *exc):
        with gc_paused._lock:
            gc_paused._depth -= 1
            if gc_paused._depth == 0 and gc_paused._was:
                gc.enable()
        return False


def let_others_run() -> None:
    """Give the interpreter lock to a thread waiting for it (the GUI thread), if any: ``time.sleep(0)`` drops it."""
    time.sleep(0)


def slices(n: int, step: int | None = None) -> Iterator[tuple[int, int]]:
    """``(start, stop)`` of ``range(n)`` cut ``step`` (default ``SLICE``) at a time, other threads let run between two
    slices."""
    step = step or SLICE
    for start in range(0, n, step):
        if start:
            let_others_run()
        yield start, min(start + step, n)


def mapped(fn: Callable, *columns: list, step: int | None = None) -> list:
    """``list(map(fn, *columns))`` (equal-length lists), ``step`` items per C call."""
    step = step or SLICE
    n = min(map(len, columns)) if columns else 0
    if n <= step:
        return list(map(fn, *columns))
    out: list = []
    for a, b in slices(n, step):
        out += map(fn, *(c[a:b] for c in columns))
    return out


def distinct(items: list, step: int | None = None) -> set:
    """``set(items)``, ``step`` items per C call (hashing 10**6 fresh strings at once is ~0.2 s)."""
    step = step or SLICE
    if len(items) <= step:
        return set(items)
    out: set = set()
    for a, b in slices(len(items), step):
        out.update(items[a:b])
    return out


def each_slice(items: list, step: int | None = None) -> Iterable[list]:
    """``items`` as consecutive slices of at most ``step`` (other threads let run between two)."""
    return (items[a:b] for a, b in slices(len(items), step))


def batches(iterable: Iterable, step: int | None = None) -> Iterator[list]:
    """The items of ``iterable`` as lists of at most ``step`` (default ``SLICE``), other threads let run between two
    (``list(d.items())`` of 10**6 items is itself a long C call: this takes them ``step`` at a time)."""
    step = step or SLICE
    items = iter(iterable)
    part = list(islice(items, step))
    while part:
        yield part
        part = list(islice(items, step))
        if part:
            let_others_run()


def drop(items: list, step: int | None = None) -> None:
    """Empty ``items`` from the end, ``step`` (default ``SLICE``) items per C call, other threads let run between two:
    the last reference to 10**6 strings, dropped at once, frees them all in one C-level cascade (~50 ms)."""
    step = step or SLICE
    while items:
        del items[-step:]
        if items:
            let_others_run()
