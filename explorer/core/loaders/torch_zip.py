"""torch.save's zip format (torch >= 1.6): ``<archive>/data.pkl`` plus one record per storage.

Opening reads the zip's central directory and ``data.pkl`` -- the very records torch's own reader would read, found
the way it finds them (:mod:`.zip_directory`), not the file's first local header. A stored ``data.pkl`` streams
straight from the file; a deflated one is inflated within its declared size and a plausible limit. Storage records
are looked up when a value is first read: stored ones are memory-mapped, deflated ones inflated (never shown as
values while compressed). :func:`read_archive` reads an archive embedded in a larger file (a DCP chunk or value) the
same way as a whole file.
"""
from __future__ import annotations

import io
import os
import pickle
import struct
import threading
from collections import OrderedDict
from itertools import repeat
from operator import add
from typing import TYPE_CHECKING

from ...errors import CorruptFileError, UnsupportedFormatError
from ..bytesource import ByteSource
from ..checkpoint import Checkpoint
from ..gc_pause import gc_paused
from ..safe_pickle.hash_work import check_pickle_stream
from ..safe_pickle.limits import BoundedReader
from ..safe_pickle.stand_ins import PickleContext
from ..safe_pickle.unpickler import SafeUnpickler
from . import Reader, isfile, open_binary, read_head, register, size_of
from .zip_directory import (DATA_PKL_LIMIT, DATA_PKL_MAX_RATIO, STORAGE_LIMIT, STORED,
                             ZipDirectory)

if TYPE_CHECKING:   # opening a file needs no torch; a stored value becomes a tensor in storage_bytes
    import torch

ZIP_MAGIC = b"PK\x03\x04"

PARSE_ERRORS = (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError,
                RecursionError, MemoryError, UnicodeDecodeError, OverflowError, LookupError, struct.error)


def identify(path: str) -> bool:
    return isfile(path) and read_head(path, 4) == ZIP_MAGIC


def unpickle(stream, label: str, source: ByteSource, hash_checked: bool = False):
    """Parse a ``data.pkl`` stream into (root, references); storages become :class:`StorageRef` records lazily.
    ``hash_checked``: its hashing work is being checked elsewhere (:func:`precheck`), not here."""
    up = SafeUnpickler(stream, context=PickleContext(source, label))
    up.hash_checked_elsewhere = hash_checked
    try:
        with gc_paused():
            root = up.load()
    except PARSE_ERRORS as e:
        raise _unparsable(label, e) from e
    return root, up.references


def _unparsable(label: str, e: BaseException) -> CorruptFileError:
    return CorruptFileError(f"{label}: data.pkl could not be parsed ({type(e).__name__}: {_first_line(e)}); the "
                            "file is corrupt or truncated — re-save it")


class _Window(BoundedReader):
    """A stored record seen by the unpickler: reads, lines and look-aheads all end where the record ends."""

    __slots__ = ()

    def readline(self) -> bytes:
        return self._f.readline(max(0, self._end - self._f.tell()))

    def peek(self, n: int = 0) -> bytes:
        return self._f.peek(n)[:max(0, self._end - self._f.tell())]


class _Shifted:
    """A file seen from ``base`` on (an archive embedded in a larger file, as a DCP chunk is)."""

    __slots__ = ("_f", "_base")

    def __init__(self, f, base: int):
        self._f, self._base = f, base

    def seek(self, pos: int) -> int:
        return self._f.seek(self._base + pos) - self._base

    def read(self, n: int = -1) -> bytes:
        return self._f.read(n)


class ZipSource(ByteSource):
    """Storage records found as torch's reader finds them (:class:`ZipDirectory`): stored ones are memory-mapped,
    deflated ones inflated -- exactly their declared size, which must be what the pickle says the storage holds
    (as torch requires). The archive lies at ``base_offset`` in ``file``. The last few inflated storages are kept
    (up to :data:`INFLATED_CACHE` bytes) so that reading many views of one storage inflates it once."""

    INFLATED_CACHE = 64 << 20

    def __init__(self, file: str, directory: ZipDirectory, base_offset: int = 0, maps=None):
        super().__init__(None, lambda ref: (file, f"data/{ref.key}", None), maps)
        self._file = file
        self._base = base_offset
        self._dir = directory
        self._found: dict[str, tuple] = {}
        self._inflated: OrderedDict[str, torch.Tensor] = OrderedDict()
        self._lock = threading.Lock()

    def describe_keys(self, keys: list[str]) -> tuple[str, list[str], None]:
        """:meth:`describe` of storages given by key, at once: ``(file, their records, None)``."""
        return self._file, list(map(add, repeat("data/"), keys)), None

    def _record(self, ref):
        with self._lock:
            hit = self._found.get(ref.key)
        if hit is not None:
            return hit
        name = f"data/{ref.key}"
        e = self._dir.find(name)
        if e is None:
            raise CorruptFileError(f"{self._dir.label}: storage record {name!r} is missing from the zip directory; "
                                   "the archive is incomplete — re-save it")
        self._dir.check_readable(e)
        with open_binary(self._file) as f:
            start, _ = self._dir.local_header(_Shifted(f, self._base), e)
        with self._lock:
            hit = self._found[ref.key] = (e, start)
        return hit

    def region(self, ref):
        e, start = self._record(ref)
        if e.method != STORED:
            raise CorruptFileError(f"{self._dir.label}: storage record {e.text!r} is compressed; its bytes in the "
                                   "file are not the tensor's values (read it through the checkpoint instead)")
        if e.usize != ref.nbytes:   # torch.load requires the exact size, longer or shorter
            raise CorruptFileError(f"{self._dir.label}: storage record {e.text!r} holds {e.usize:,} bytes, but its "
                                   f"tensors' storage holds {ref.nbytes:,}; the archive is inconsistent (torch refuses "
                                   "it too) — re-download or re-save it")
        return self._file, self._base + start, e.usize

    def array_bytes(self, ref):
        """A stored record's bytes mapped in place (no torch); a deflated one's inflated, as :meth:`storage_bytes`."""
        e, _ = self._record(ref)
        return super().array_bytes(ref) if e.method == STORED else self.storage_bytes(ref).numpy()

    def storage_bytes(self, ref) -> "torch.Tensor":
        import torch
        e, start = self._record(ref)
        if e.method == STORED:
            return super().storage_bytes(ref)
        need = ref.nbytes
        if e.usize != need:
            raise CorruptFileError(f"{self._dir.label}: storage record {e.text!r} is compressed and inflates to "
                                   f"{e.usize:,} bytes, but its tensors' storage holds {need:,}; the archive is "
                                   "inconsistent (torch refuses it too) — refusing to show its values")
        with self._lock:
            hit = self._inflated.get(ref.key)
            if hit is not None:
                self._inflated.move_to_end(ref.key)
                return hit
        with open_binary(self._file) as f:
            data = self._dir.inflate(_Shifted(f, self._base), e, start, STORAGE_LIMIT, "storage record")
        out = torch.frombuffer(data, dtype=torch.uint8) if data else torch.empty(0, dtype=torch.uint8)
        if len(data) <= self.INFLATED_CACHE // 4:
            with self._lock:
                self._inflated[ref.key] = out
                while sum(t.numel() for t in self._inflated.values()) > self.INFLATED_CACHE:
                    self._inflated.popitem(last=False)
        return out


def read_archive(f, size: int, label: str, file: str | None = None, base_offset: int = 0, maps=None):
    """(root, references) of the torch.save archive in the binary file ``f`` (``size`` bytes, lying at
    ``base_offset`` in ``file``): the ``data.pkl`` torch's reader would read (see :mod:`.zip_directory`), parsed by
    the safe unpickler; storages are found the same way when a value is read. Where the zip's directory and its
    local headers disagree, or names repeat, notes lead the references (listed with the objects the file names)."""
    directory, entry, start, local_name = _data_pkl(f, size, label)
    notes = directory.anomalies(f, entry, local_name)
    source = ZipSource(file or label, directory, base_offset, maps)
    f.seek(start)
    checked = False
    if entry.method != STORED:
        limit = min(DATA_PKL_LIMIT, DATA_PKL_MAX_RATIO * entry.csize + (1 << 20))
        stream = io.BytesIO(directory.inflate(f, entry, start, limit, "data.pkl"))
    elif hasattr(f, "peek"):   # streamed straight from the file, never past the record
        stream = _Window(f, start + entry.usize)
        checked = file is None and base_offset == 0 and _checked_elsewhere(f, entry)
    else:
        stream = io.BytesIO(f.read(entry.usize))
    root, refs = unpickle(stream, label, source, hash_checked=checked)
    return root, notes + refs


def _data_pkl(f, size: int, label: str):
    """``(directory, entry, start, local name)`` of the ``data.pkl`` torch's reader would read in the archive ``f``
    (``start``: where its bytes begin)."""
    directory = ZipDirectory(f, size, label)
    entry = directory.find("data.pkl")
    if entry is None:
        raise CorruptFileError(f"{label}: the zip archive has no "
                               f"{directory.key_of('data.pkl').decode('utf-8', 'backslashreplace')!r}, so it is not a "
                               "torch.save file — open it with a zip tool to see what it holds")
    directory.check_readable(entry)
    start, local_name = directory.local_header(f, entry)
    return directory, entry, start, local_name


# ---- the hashing-work check, made by the window while the parse process unpickles -----------------------------
# A file's first open waits for its parse in the parse process (session/parse_guard.py): the zip directory, the
# hashing-work walk of data.pkl (:mod:`..safe_pickle.hash_work`: ~65 ms of a 50,000-tensor file's ~0.45 s), the
# unpickle, the listing. The walk needs no result of the others, and the window's process is idle meanwhile: so the
# window walks it (:func:`precheck`) while the parse process unpickles without it, and the parse process's listing is
# used only once the window's walk passed. A pickle the walk refuses may keep the C unpickler hashing for ever: the
# window then kills the parse process (which runs nothing else) and parses the file again there the usual way, which
# refuses it with the usual message. Only the top-level stored ``data.pkl`` of a local file is checked elsewhere, and
# only while the file is the one the window checked (device, inode, modification and change times, size).
PRECHECK_MAX = 32 << 20   # bytes of data.pkl: a larger one is walked in the parse process (the walk's longest call
                          # holds the window's interpreter lock for a time that grows with one SETITEMS batch)


def file_token(f) -> tuple:
    """What says an open file is the one another process checked: its device, inode, modification and change times
    and size (the change time no one can set back)."""
    return token_of_stat(os.fstat(f.fileno()))


def token_of_stat(st: os.stat_result) -> tuple:
    """:func:`file_token` of a file's ``os.stat``."""
    return (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_ctime_ns, st.st_size)


class hash_checked_elsewhere:
    """``with hash_checked_elsewhere(token) as scope:`` -- opening the file whose :func:`file_token` is ``token``
    (not None) skips the walk of its ``data.pkl``, which :func:`precheck` makes in another process;
    ``scope.skipped`` says whether it was skipped. The scope is the calling thread's."""

    _local = threading.local()

    def __init__(self, token: tuple | None):
        self.token = tuple(token) if token is not None else None
        self.skipped = False

    def __enter__(self):
        self._local.active = self if self.token is not None else None
        return self

    def __exit__(self, *exc):
        self._local.active = None
        return False


def _checked_elsewhere(f, entry) -> bool:
    scope = getattr(hash_checked_elsewhere._local, "active", None)
    if scope is None or entry.usize > PRECHECK_MAX:
        return False
    try:
        same = file_token(f) == scope.token
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        return False
    scope.skipped = scope.skipped or same
    return same


def precheck(path: str, token: tuple) -> bool:
    """The hashing-work walk of the ``data.pkl`` the parse process unpickles unchecked when told ``token`` (the
    file's :func:`file_token`): True when it was walked and is within budget; False when the parse process walks it
    itself (not a stored ``data.pkl``, or too large for the window) or never gets to unpickle it (no readable
    ``data.pkl``: the parse process stops at the same place with the same error). Raises the reader's error when
    the walk refuses it, and whatever else keeps it from walking -- the file changed, its bytes could not be mapped
    (then the parse process's answer is not to be used)."""
    with open_binary(path) as f:
        if file_token(f) != tuple(token):
            raise CorruptFileError(f"{path}: the file changed while it was being opened; open it again")
        try:
            _, entry, start, _ = _data_pkl(f, size_of(f), path)
        except (CorruptFileError, UnsupportedFormatError):   # the parse process stops there with the same error
            return False
        if entry.method != STORED or entry.usize > PRECHECK_MAX:
            return False
        f.seek(start)
        try:
            check_pickle_stream(_Window(f, start + entry.usize), strict=True)
        except PARSE_ERRORS as e:
            raise _unparsable(path, e) from e
    return True


def open_zip(path: str) -> Checkpoint:
    with open_binary(path) as f:
        root, refs = read_archive(f, size_of(f), path)
    try:
        return Checkpoint(path, "torch-zip", root, refs)
    except CorruptFileError:
        raise
    except (RecursionError, TypeError, ValueError, AttributeError) as e:
        raise CorruptFileError(f"{path}: the pickled object has an unexpected structure ({type(e).__name__}: "
                               f"{_first_line(e)}); the file is corrupt or not a checkpoint") from e


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0][:200] if text else type(e).__name__


register(Reader("torch.save (zip)", identify, open_zip, priority=50))
