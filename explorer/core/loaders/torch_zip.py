"""torch.save's zip format (torch >= 1.6): ``<archive>/data.pkl`` plus one record per storage.

Opening reads ``data.pkl`` only. It is the archive's first record, and a pickle ends itself, so it is read straight
from its local header; the zip's end record is checked to catch truncated files. The zip directory (torch's own C++
reader: fast even with 50,000 records) is opened when a value is first read, to find a storage's byte offset.
"""
from __future__ import annotations

import io
import os
import pickle
import struct
import threading

import torch

from ...errors import CorruptFileError
from ..bytesource import ByteSource
from ..checkpoint import Checkpoint
from ..safe_pickle import BoundedReader, PickleContext, SafeUnpickler, gc_paused
from . import Reader, read_head, register

ZIP_MAGIC = b"PK\x03\x04"
EOCD = b"PK\x05\x06"

PARSE_ERRORS = (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError,
                RecursionError, MemoryError, UnicodeDecodeError, OverflowError, LookupError, struct.error)


def identify(path: str) -> bool:
    return os.path.isfile(path) and read_head(path, 4) == ZIP_MAGIC


def open_archive(path, label: str | None = None):
    """torch's zip reader over ``path`` (a file name or a binary file object); errors name ``label``."""
    label = label or str(path)
    try:
        return torch._C.PyTorchFileReader(path)
    except (RuntimeError, OSError, ValueError) as e:
        size = os.path.getsize(path) if isinstance(path, str) else None
        what = f"{size} bytes, " if size is not None else ""
        raise CorruptFileError(f"{label}: not a readable torch.save archive ({what}{_first_line(e)}); the file is "
                               "truncated or damaged — re-download or re-save it") from e


class _LazyArchive:
    """The zip directory of a file, opened on first use (reading a value), once."""

    def __init__(self, path: str):
        self.path = path
        self._archive = None
        self._lock = threading.Lock()

    def get(self):
        with self._lock:
            if self._archive is None:
                self._archive = open_archive(self.path)
            return self._archive


def _source(archive_of, label: str, file: str, base_offset: int = 0, maps=None) -> ByteSource:
    def resolve(ref):
        name = f"data/{ref.key}"
        archive = archive_of()
        try:
            return file, base_offset + int(archive.get_record_offset(name)), int(archive.get_record_size(name))
        except RuntimeError as e:
            raise CorruptFileError(f"{label}: storage record {name!r} is missing or unreadable "
                                   f"({_first_line(e)}); the archive is incomplete — re-save it") from e

    return ByteSource(resolve, lambda ref: (file, f"data/{ref.key}", None), maps)


def unpickle(stream, label: str, source: ByteSource):
    """Parse a ``data.pkl`` stream into (root, references); storages become :class:`StorageRef` records lazily."""
    up = SafeUnpickler(stream, context=PickleContext(source, label))
    try:
        with gc_paused():
            root = up.load()
    except PARSE_ERRORS as e:
        raise CorruptFileError(f"{label}: data.pkl could not be parsed ({type(e).__name__}: {_first_line(e)}); "
                               "the file is corrupt or truncated — re-save it") from e
    return root, up.references


def parse_archive(archive, label: str, base_offset: int = 0, file: str | None = None, maps=None):
    """Parse ``data.pkl`` of an open :class:`torch._C.PyTorchFileReader` into (root, references). ``maps`` shares
    file maps with other archives in the same file (DCP chunks)."""
    try:
        data = archive.get_record("data.pkl")
    except RuntimeError as e:
        raise CorruptFileError(f"{label}: the zip archive has no data.pkl, so it is not a torch.save file "
                               f"({_first_line(e)}) — open it with a zip tool to see what it holds") from e
    return unpickle(io.BytesIO(data), label, _source(lambda: archive, label, file or label, base_offset, maps))


def _check_end(f, path: str, size: int) -> None:
    """A zip ends with its directory's end record; a file cut short (interrupted download or save) has none."""
    tail = min(size, 22 + 65535)
    f.seek(size - tail)
    data = f.read(tail)
    at = data.rfind(EOCD)
    if at < 0 or len(data) - at < 22:
        raise CorruptFileError(f"{path}: the zip archive has no end record ({size} bytes): the file is truncated "
                               "or still being written — re-download or re-save it")
    entries, cd_size, cd_offset = struct.unpack("<HII", data[at + 10:at + 20])
    if cd_offset != 0xFFFFFFFF and cd_size != 0xFFFFFFFF and cd_offset + cd_size > size:
        raise CorruptFileError(f"{path}: the zip directory lies past the end of the file ({size} bytes): the file is "
                               "truncated — re-download or re-save it")


def _first_record_pickle(f, path: str):
    """The stream position of data.pkl when it is the archive's first record, stored uncompressed; else None."""
    f.seek(0)
    head = f.read(30)
    if len(head) < 30 or head[:4] != ZIP_MAGIC:
        return None
    method, name_len, extra_len = struct.unpack("<H", head[8:10])[0], *struct.unpack("<HH", head[26:30])
    name = f.read(name_len)
    if method != 0 or not name.endswith(b"/data.pkl") or name.count(b"/") != 1:
        return None
    return 30 + name_len + extra_len


def open_zip(path: str) -> Checkpoint:
    size = os.path.getsize(path)
    lazy = _LazyArchive(path)
    with open(path, "rb") as f:
        _check_end(f, path, size)
        start = _first_record_pickle(f, path)
        if start is not None:
            f.seek(start)
            root, refs = unpickle(BoundedReader(f, size), path, _source(lazy.get, path, path))
        else:  # an unusual writer: let torch's reader find data.pkl
            root, refs = parse_archive(lazy.get(), path)
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
