"""Letting go of a replaced comparison (and of the sides only it still held) a slice at a time, in a worker.

A comparison of 50,000 keys with its side is ~500,000 objects; dropped at once, reference counting frees them in one
C-level cascade that holds the interpreter lock -- 50-100 ms on the GUI thread for 50,000 keys, seconds for 10**6.
Here the big containers are emptied a slice at a time with a pause between slices, so the GUI thread gets the lock.

Only what nothing else holds is taken apart: each container's reference count is checked first (a side still shown
in the other pane, a row the detail pane holds, a job still reading the old comparison keep theirs). Plain Python.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import functools
import sys
import threading
import time

SLICE = 4096      # objects freed between two pauses (about 1-2 ms of work)
PAUSE = 0.001     # seconds between two slices: the GUI thread and an open's worker go first (a yield, sleep(0),
                  # left the GUI thread 250-500 ms stalls while a 10**6-key comparison was taken apart beside an open)
_OWN = 3          # references to a container we hold alone: its owner's attribute, our local, getrefcount's argument


_pending = [0]
_pending_lock = threading.Lock()


def release_later(objects: list) -> None:
    """:func:`release` in a thread of its own: not a window job (nothing to show or cancel); :func:`pending` says
    whether one still runs (a window is not idle until its memory is given back)."""
    def run():
        try:
            release(objects)
            give_back_free_memory()
        finally:
            with _pending_lock:
                _pending[0] -= 1
    with _pending_lock:
        _pending[0] += 1
    threading.Thread(target=run, name="dispose", daemon=True).start()


@functools.cache
def _malloc_trim():
    """glibc's ``malloc_trim`` (None elsewhere)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return trim


def give_back_free_memory() -> None:
    """Return the C heap's free pages to the system once a replaced comparison is gone: its big dicts and lists come
    from malloc, and glibc keeps freed pages in its arenas (ctypes drops the interpreter lock for the call)."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


def pending() -> int:
    """How many :func:`release_later` threads are still taking something apart."""
    return _pending[0]


def release(objects: list, *, progress=None, should_stop=None) -> None:
    """Take apart and drop each object of ``objects`` (the caller's list: it is emptied, so the caller holds none).
    A cancel is not heeded: what is left would be freed at once on the thread that drops it last."""
    while objects:
        obj = objects.pop()
        if sys.getrefcount(obj) == 2:          # our local and the argument: nobody else can reach it
            _take_apart(obj, depth=3)
        del obj


def _take_apart(obj, depth: int) -> None:
    """Take apart ``obj`` (held by nobody else): its objects first -- each held by nobody else is taken apart and
    let go of what it holds, so a container it shared with ``obj`` (a listed side's infos are its SideData's too) is
    then ``obj``'s alone -- then its containers, a slice at a time."""
    tree = getattr(obj, "tree", None)
    if tree is not None and sys.getrefcount(tree) == _OWN and hasattr(tree, "root") and hasattr(tree, "by_key"):
        _take_apart_tree(tree)
    del tree
    names = _attribute_names(obj)
    if depth > 0:
        for name in names:
            value = getattr(obj, name, None)
            if value is not None and sys.getrefcount(value) == _OWN \
                    and not isinstance(value, (dict, list, str, bytes, int, float, tuple)):
                _take_apart(value, depth - 1)
                _let_go(value)
            del value
    for name in names:
        value = getattr(obj, name, None)
        if isinstance(value, (dict, list)) and sys.getrefcount(value) == _OWN:
            _shrink(value)
        del value


def _let_go(obj) -> None:
    """Drop what ``obj`` (taken apart, held by nobody else) still refers to."""
    for name in _attribute_names(obj):
        try:
            setattr(obj, name, None)
        except (AttributeError, TypeError, ValueError):   # read-only, frozen: left as it is
            pass


def _attribute_names(obj) -> list[str]:
    names = list(getattr(obj, "__dict__", {}))
    for cls in type(obj).__mro__:
        slots = cls.__dict__.get("__slots__", ())
        names.extend([slots] if isinstance(slots, str) else slots)
    return [n for n in names if n not in ("__dict__", "__weakref__")]


def _take_apart_tree(tree) -> None:
    """A :class:`explorer.core.tree.Tree`: its nodes unlinked and dropped a slice at a time
    (dropping the root would free every node in one cascade)."""
    tree.forget_keys()
    nodes = list(tree.root.walk_built())     # the levels made so far (the tree makes the others only when asked)
    for i, node in enumerate(nodes):
        node.unlink()
        if i % SLICE == SLICE - 1:
            time.sleep(PAUSE)
    _shrink(nodes)


def _shrink(container) -> None:
    if isinstance(container, dict):
        pop = container.popitem
        while container:
            for _ in range(min(SLICE, len(container))):
                pop()
            time.sleep(PAUSE)              # lets the GUI thread take the interpreter lock
    else:
        while container:
            del container[-SLICE:]
            time.sleep(PAUSE)
