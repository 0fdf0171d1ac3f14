"""A remote file seen as a local one: a sparse mirror in the cache, filled block by block on demand.

Readers reach a remote file through the same two doors as a local one: a seekable file object
(:meth:`Mirror.file`, whose reads fetch their range first) and the mirror's local path, memory-mapped, after
:meth:`Mirror.ensure` of the slice (:func:`ensure_local`). A block is recorded as present only after all of its
bytes were written; a short or failed fetch records nothing.
"""
from __future__ import annotations

import io
import os
import threading
import time
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from typing import Callable, Iterable

from . import cache
from .backends import TransientError, TruncatedBody, backend_for
from ...errors import Cancelled, RangeNotSupportedError, RemoteError, RemoteTruncatedError, RemoteUnavailableError

BLOCK = 32 << 10        # the unit fetched and recorded: a safetensors header of a shard fits one
CHUNK = 8 << 20         # the most one request asks for; a longer run is split and fetched in parallel
ATTEMPTS = 4            # tries of one request before its failure is the answer
BACKOFF = 0.25          # seconds before the second try, doubling
EVICT_EVERY = 256 << 20  # bytes written between checks of the cache's size

_FETCHERS = ThreadPoolExecutor(16, thread_name_prefix="remote-fetch")   # leaf requests only: never waits on itself
_open_lock = threading.Lock()
_by_path: dict[str, "Mirror"] = {}     # local path -> open mirror (the readers' hook looks paths up here)
_by_url: dict[str, "Mirror"] = {}
_total = [0]                           # bytes fetched by this process
_failures: list[RemoteError] = []      # every remote failure raised in this process, oldest first


class _WholeFiles:
    """Which URLs whose server ignores Range requests may be fetched whole, once, into their mirror instead of being
    refused: every one (the command line's ``--download``, which says so through ``note``) or those the user agreed
    to (the window asks, per URL)."""
    every = False
    note: Callable[[str], None] | None = None
    urls: set[str] = set()

    @classmethod
    def allowed(cls, url: str) -> bool:
        return cls.every or url in cls.urls


def allow_whole_files(allowed: bool = True, note: Callable[[str], None] | None = None) -> None:
    """Let any URL whose server ignores Range requests be downloaded whole, saying so through ``note`` (or stop)."""
    _WholeFiles.every, _WholeFiles.note = allowed, note


def allow_whole_file(url: str) -> None:
    """Let this one URL be downloaded whole if its server ignores Range requests (the user said yes to it)."""
    with _open_lock:
        _WholeFiles.urls.add(url)


def transferred_total() -> int:
    """Bytes fetched over the network by this process so far (``--json``'s ``transferred_bytes``)."""
    return _total[0]


def failures() -> list[RemoteError]:
    """The remote failures raised so far in this process (oldest first): a command whose core turns a failed read
    into a per-key note (diff's "not compared") asks here whether the network failed, which is no answer."""
    return list(_failures)


def _noted(e: RemoteError) -> RemoteError:
    with _open_lock:
        _failures.append(e)
        del _failures[:-64]
    return e


def _retrying(what: Callable, url: str, should_stop: Callable[[], bool] | None):
    """``what()``, retried with backoff on a :class:`TransientError`; then one clear error naming ``url``."""
    delay = BACKOFF
    for attempt in range(1, ATTEMPTS + 1):
        if should_stop is not None and should_stop():
            raise Cancelled(f"{url}: reading was cancelled")
        try:
            return what()
        except TransientError as e:
            if attempt == ATTEMPTS:
                if isinstance(e, TruncatedBody):
                    raise RemoteTruncatedError(f"{url}: the server's answer was cut short ({e}, {ATTEMPTS} tries) "
                                               "— nothing of it is used; try again later") from e
                raise RemoteUnavailableError(f"{url}: {e} ({ATTEMPTS} tries) — check the connection or the "
                                             "server, then try again") from e
            time.sleep(delay)
            delay *= 2


class Mirror:
    """One remote file, mirrored sparsely in the cache. Open with :meth:`Mirror.open`."""

    def __init__(self, url: str, backend, info, root=None):
        self.url = url
        self.size = info.size
        self.version = info.version
        self.block = BLOCK
        self._backend = backend
        self._entry = cache.Entry(root or cache.cache_root(), cache.key_of(url, info.version, info.size), url,
                                  info.version, info.size, BLOCK)
        self.local_path = self._entry.data_path
        self.transferred = 0
        self.should_stop: Callable[[], bool] | None = None          # the default for ensure()
        self.progress: Callable[[int], None] | None = None          # called with ``transferred`` after each request
        self._lock = threading.Lock()
        self._fd = os.open(self.local_path, os.O_RDWR | getattr(os, "O_CLOEXEC", 0))
        self._since_evict = 0

    @classmethod
    def open(cls, url: str, *, should_stop: Callable[[], bool] | None = None) -> "Mirror":
        """Ask the server for the file's size and version (one request), and open its mirror: the same object
        while the version is unchanged, a new mirror when it changed."""
        try:
            backend = backend_for(url)
            info = _retrying(backend.stat, url, should_stop)
        except RemoteError as e:
            raise _noted(e)
        key = cache.key_of(url, info.version, info.size)
        with _open_lock:
            old = _by_url.get(url)
            if old is not None and info.version is not None and old._entry.key == key and not old.closed:
                old._entry.touch()
                return old
            mirror = cls(url, backend, info)
            _by_url[url] = mirror
            _by_path[mirror.local_path] = mirror
            cache.evict(mirror._entry.root, keep={m._entry.key for m in _by_path.values()})
        return mirror

    @property
    def closed(self) -> bool:
        return self._fd < 0

    def close(self) -> None:
        """Forget the mirror in this process (its cached blocks stay for the next look)."""
        with _open_lock, self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1
            if _by_path.get(self.local_path) is self:
                del _by_path[self.local_path]
            if _by_url.get(self.url) is self:
                del _by_url[self.url]

    def missing(self, ranges: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
        """Runs ``(first block, end block)`` not yet present for ``(offset, length)`` ranges, each at most CHUNK."""
        want = set()
        for offset, length in ranges:
            start, end = max(0, offset), min(self.size, offset + length)
            if end > start:
                want.update(range(start // self.block, -(-end // self.block)))
        todo = sorted(b for b in want if not self._entry.present[b])
        runs: list[tuple[int, int]] = []
        per_chunk = CHUNK // self.block
        for b in todo:
            if runs and runs[-1][1] == b and b - runs[-1][0] < per_chunk:
                runs[-1] = (runs[-1][0], b + 1)
            else:
                runs.append((b, b + 1))
        return runs

    def ensure(self, ranges: Iterable[tuple[int, int]], should_stop: Callable[[], bool] | None = None) -> int:
        """Fetch whatever of the ``(offset, length)`` ranges is not in the mirror yet (whole blocks, adjacent ones in
        one request, requests in parallel) and record it. Returns the bytes fetched. Raises the first failure
        (after retries) or :class:`Cancelled`; the blocks that did arrive stay recorded."""
        should_stop = should_stop if should_stop is not None else self.should_stop
        try:
            return self._ensure(ranges, should_stop)
        except RangeNotSupportedError as e:
            if not _WholeFiles.allowed(self.url):
                raise _noted(e)
        if _WholeFiles.note is not None:
            _WholeFiles.note(f"{self.url}: the server does not support range requests; downloading the whole file "
                             f"({self.size:,} bytes) once")
        return self.download(should_stop)

    def _ensure(self, ranges, should_stop) -> int:
        with self._lock:
            if self._fd < 0:
                raise ValueError(f"{self.url}: the mirror is closed")
            runs = self.missing(ranges)
            if not runs:
                return 0
            before = self.transferred
            try:
                if len(runs) == 1:
                    self._fetch(runs[0], should_stop)
                else:
                    futures = [_FETCHERS.submit(self._fetch, run, should_stop) for run in runs]
                    done, pending = wait(futures, return_when=FIRST_EXCEPTION)
                    for f in pending:
                        f.cancel()
                    wait(pending)
                    for f in futures:
                        if f.done() and not f.cancelled() and f.exception() is not None:
                            raise f.exception()
            except RangeNotSupportedError:
                raise                      # ensure() decides: refused, or the whole file fetched
            except RemoteError as e:
                raise _noted(e)
            finally:
                if self.transferred > before:
                    os.fdatasync(self._fd)   # the data is on disk before the sidecar says so
                    self._entry.save()
                    self._maybe_evict(self.transferred - before)
            return self.transferred - before

    def download(self, should_stop: Callable[[], bool] | None = None) -> int:
        """Fetch the whole file in one request (what a server without Range support allows; ``size`` says how much
        first), with ``progress`` and ``should_stop``; recorded only once complete. Returns the bytes fetched."""
        should_stop = should_stop if should_stop is not None else self.should_stop
        with self._lock:
            if self._entry.present.all():
                return 0
            before = self.transferred

            def write(offset: int, piece: bytes) -> None:
                os.pwrite(self._fd, piece, offset)
                self._count(len(piece))

            _retrying(lambda: self._backend.read_whole(write, should_stop), self.url, should_stop)
            os.fdatasync(self._fd)
            self._entry.present[:] = True
            self._entry.save()
            return self.transferred - before

    def _count(self, n: int) -> None:
        with _open_lock:
            self.transferred += n
            _total[0] += n
        if self.progress is not None:
            self.progress(self.transferred)

    def _fetch(self, run: tuple[int, int], should_stop) -> None:
        start, end = run[0] * self.block, min(self.size, run[1] * self.block)
        data = _retrying(lambda: self._backend.read(start, end), self.url, should_stop)
        os.pwrite(self._fd, data, start)
        self._entry.present[run[0]:run[1]] = True
        self._count(len(data))

    def _maybe_evict(self, written: int) -> None:
        self._since_evict += written
        if self._since_evict >= EVICT_EVERY:
            self._since_evict = 0
            with _open_lock:
                cache.evict(self._entry.root, keep={m._entry.key for m in _by_path.values()})

    def read(self, offset: int, length: int) -> bytes:
        """The bytes ``[offset, offset + length)`` (fewer at the end of the file)."""
        length = max(0, min(length, self.size - offset))
        self.ensure([(offset, length)])
        return os.pread(self._fd, length, offset) if length else b""

    def file(self) -> "MirrorFile":
        """A seekable read-only file object over the remote file (its ``name`` is the URL)."""
        return MirrorFile(self)


class MirrorFile(io.RawIOBase):
    """What ``open()`` gives for a local file, for a mirror: every read fetches its range first."""

    def __init__(self, mirror: Mirror):
        super().__init__()
        self.mirror, self.name, self._pos = mirror, mirror.url, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self.mirror.size}[whence]
        if base + offset < 0:
            raise ValueError(f"negative seek position {base + offset}")
        self._pos = base + offset
        return self._pos

    def readinto(self, buffer) -> int:
        data = self.mirror.read(self._pos, len(buffer))
        buffer[:len(data)] = data
        self._pos += len(data)
        return len(data)

    def readall(self) -> bytes:
        data = self.mirror.read(self._pos, self.mirror.size - self._pos)
        self._pos += len(data)
        return data


def close_all() -> None:
    """Close every mirror open in this process (a session ends; tests)."""
    for mirror in list(_by_path.values()) + list(_by_url.values()):
        mirror.close()
    with _open_lock:
        _listings.clear()


def mirror_of(path: str) -> Mirror | None:
    """The open mirror whose local path (or URL) is ``path``, else None: a dictionary look-up, cheap per read."""
    return _by_path.get(path) or _by_url.get(path)


def opened(url: str) -> Mirror:
    """The mirror of ``url`` already open in this process, else a newly opened one (one request): what the readers
    call on every ``os.path.getsize`` / ``open`` of a URL, so that only the first asks the server."""
    mirror = _by_url.get(url)
    return mirror if mirror is not None and not mirror.closed else Mirror.open(url)


def ensure_local(path: str, offset: int, length: int) -> None:
    """The readers' hook before memory-mapping ``path``: when it is a mirror, fetch ``[offset, offset+length)``."""
    mirror = _by_path.get(path)
    if mirror is not None:
        mirror.ensure([(offset, length)])


LISTING_TTL_S = 30.0
_listings: dict[str, tuple[float, list[str]]] = {}    # folder URL -> (when listed, its files)


def list_folder(url: str) -> list[str]:
    """The URLs of the files directly in a folder URL (hf://, s3://, gs://; plain HTTP cannot list). A listing is
    kept for :data:`LISTING_TTL_S` seconds: the readers' ``identify`` calls and the open of one folder ask for it
    several times in a row (it was requested up to 5 times per command); a later look lists again."""
    now = time.monotonic()
    with _open_lock:
        hit = _listings.get(url)
    if hit is not None and now - hit[0] < LISTING_TTL_S:
        return list(hit[1])
    backend = backend_for(url)
    files = _retrying(backend.list_folder, url, None)
    with _open_lock:
        _listings[url] = (now, list(files))
    return files
