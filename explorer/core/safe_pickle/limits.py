"""How a pickle stream is read within bounds: lengths checked against the file before they are read, and the
address space capped while the C unpickler runs (its memo is as long as the largest index a pickle names)."""
from __future__ import annotations

import io
import mmap
import os
import pickle
import sys
import threading


class BoundedReader:
    """A binary file seen by the unpickler, refusing reads past the end of the file *before* they are attempted.

    A corrupt length field (``BINBYTES8`` of 2**40...) otherwise makes the C unpickler allocate that much and then
    fail; here it is an ``UnpicklingError`` at once. ``peek`` lets the unpickler read ahead in large blocks and then
    consume exactly the pickle's bytes, so the file stays positioned right after it (the legacy format relies on it).
    """

    __slots__ = ("_f", "_end")

    def __init__(self, f, end: int):
        self._f = f
        self._end = end

    def read(self, n: int = -1) -> bytes:
        if n is not None and n > self._end - self._f.tell():
            raise pickle.UnpicklingError(f"a length field claims {n} bytes, past the end of the file")
        return self._f.read(n)

    def readline(self) -> bytes:
        return self._f.readline()

    def peek(self, n: int = 0) -> bytes:
        return self._f.peek(n)


class quiet_bytearray_bug:
    """CPython 3.11's C unpickler: when a BYTEARRAY8 opcode claims more memory than can be allocated, the half-built
    bytearray is freed with an uninitialised export count and CPython may print "SystemError: deallocated bytearray
    object has exported buffers" through ``sys.excepthook`` -- a second stderr line -- before the load raises
    MemoryError (which every reader reports as a corrupt file). Drop that one message while a pickle loads."""

    def __enter__(self):
        self._hook = hook = sys.excepthook

        def quiet(tp, value, tb):
            if tp is SystemError and "deallocated bytearray object has exported buffers" in str(value):
                return
            hook(tp, value, tb)
        sys.excepthook = quiet
        return self

    def __exit__(self, *exc):
        sys.excepthook = self._hook
        return False


def size_of(file) -> int:
    """Bytes a pickle stream holds (what a BoundedReader has left, a file's size, a BytesIO's length); a large guess
    when unknown (then the cap is loose)."""
    if isinstance(file, BoundedReader):
        return max(0, file._end - file._f.tell())
    try:
        return os.fstat(file.fileno()).st_size
    except (AttributeError, OSError, io.UnsupportedOperation):
        pass
    try:
        return len(file.getbuffer())
    except (AttributeError, TypeError):
        return 1 << 30


# Held while a pickle loads under an address-space cap in a process with other threads (the window), and by
# whoever maps a file (bytesource.FileMaps): a big mapping must not meet the cap, nor the cap a big mapping.
address_space_lock = threading.RLock()
MULTI_THREAD_HEADROOM = 1 << 30   # above what parsing needs: other threads' ordinary allocations go on meanwhile


def others_may_allocate() -> bool:
    """May another thread allocate while this one parses? Yes off the main thread -- the window parses in Qt's pool
    threads, which Python's ``threading`` does not count until they ask for ``current_thread()``, while its GUI
    thread runs -- or when Python knows of other threads."""
    return threading.current_thread() is not threading.main_thread() or threading.active_count() > 1


class memo_cap:
    """CPython's C unpickler keeps its memo in an array as long as the largest index a PUT / LONG_BINPUT names, and
    zeroes it up front: a 9-byte pickle naming index 2**27 allocates and touches 2 GB (2**30: 16 GB), before any
    of our code runs. Cap the address space while a pickle loads so such a claim fails at once as MemoryError (a
    corrupt file) instead of as gigabytes of RSS. Linux only; never raises an existing lower limit.

    The limit is process-wide while it lasts. With one thread (the command line, the window's compute process) the
    headroom is what parsing needs; with other threads (the window) another :data:`MULTI_THREAD_HEADROOM` is left
    for their ordinary allocations, and :data:`address_space_lock` keeps our own file mappings from starting
    meanwhile (a claim beyond ~1 GB still fails at once; a smaller one is bounded by the headroom)."""

    def __init__(self, pickle_bytes: int):
        # what parsing may add: objects for every opcode (~40x the pickle for a file of 10**6 tensors), never the
        # 16 bytes per memo index a hostile PUT claims
        self.headroom = (256 << 20) + 64 * pickle_bytes

    def __enter__(self):
        self._old = None
        self._locked = False
        if others_may_allocate():
            address_space_lock.acquire()
            self._locked = True
            headroom = self.headroom + MULTI_THREAD_HEADROOM
        else:
            headroom = self.headroom
        try:
            import resource
            with open("/proc/self/statm") as f:
                vm = int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
            old = resource.getrlimit(resource.RLIMIT_AS)
            soft = vm + headroom
            if old[1] != resource.RLIM_INFINITY:
                soft = min(soft, old[1])
            if old[0] == resource.RLIM_INFINITY or old[0] > soft:
                resource.setrlimit(resource.RLIMIT_AS, (soft, old[1]))
                self._old = old
        except (ImportError, OSError, ValueError):
            pass
        return self

    def __exit__(self, *exc):
        try:
            if self._old is not None:
                import resource
                resource.setrlimit(resource.RLIMIT_AS, self._old)
        finally:
            if self._locked:
                address_space_lock.release()
        return False


def pickle_buffer(file):
    """``(buffer, start, end, release)`` for the bytes an unpickler is about to read from ``file``, without moving
    it; None when they cannot be seen (then the walk is skipped)."""
    if isinstance(file, io.BytesIO):
        return file.getvalue(), file.tell(), len(file.getbuffer()), None
    f, end = (file._f, file._end) if isinstance(file, BoundedReader) else (file, None)
    try:
        start = f.tell()
        fd = f.fileno()
        size = os.fstat(fd).st_size
    except (AttributeError, OSError, io.UnsupportedOperation, ValueError):
        return None
    if size == 0 or start >= size:
        return None
    with address_space_lock:  # a mapping must not meet another thread's address-space cap
        try:
            m = mmap.mmap(fd, size, access=mmap.ACCESS_READ)
        except (OSError, ValueError):
            return None
    return m, start, min(size, end if end is not None else size), m.close
