"""One registry of checkpoint readers. Each reader says whether it knows a path (cheaply, from names and the first
bytes) and opens it into a :class:`~explorer.core.checkpoint.Checkpoint` without reading tensor bytes.

Order of dispatch: readers by priority (highest first); the first whose ``identify`` answers yes opens the path.
"""
from __future__ import annotations

import importlib
import os
import re
import stat
import threading
from dataclasses import dataclass
from typing import Callable

from ...errors import CorruptFileError, ExplorerError, InputNotFoundError, RemoteError, UnsupportedFormatError
from ..checkpoint import Checkpoint
from ..remote.files import (basename, exists, files_in, getsize, is_remote, isdir, isfile, open_binary, prefetch_heads,
                            size_of)

__all__ = ["Reader", "SUPPORTED", "basename", "check_regular", "exists", "files_in", "getsize", "is_remote", "isdir",
           "isfile", "open_binary", "open_checkpoint", "open_regular", "prefetch_heads", "read_head", "readers",
           "register", "size_of"]


@dataclass(frozen=True)
class Reader:
    label: str
    identify: Callable[[str], bool]
    open: Callable[[str], Checkpoint]
    priority: int = 0


_READERS: list[Reader] = []


def register(reader: Reader) -> Reader:
    _READERS.append(reader)
    _READERS.sort(key=lambda r: -r.priority)
    return reader


def readers() -> list[Reader]:
    _ensure_builtin()
    return list(_READERS)


SUPPORTED = (".pt, .pth, .bin, .ckpt (torch.save zip or legacy), .safetensors, *.index.json (sharded), "
             "a folder of shards, a torch.distributed.checkpoint folder (.metadata + *.distcp)")


_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")


def open_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Open a checkpoint file or folder (or a URL: see :mod:`explorer.core.remote`) with the first reader that
    recognises it."""
    _ensure_builtin()
    path = os.fspath(path)
    if is_remote(path):
        return _open_remote(path)
    if not os.path.exists(path):
        scheme = _SCHEME.match(path)
        if scheme:   # ftp://, file://, a typo in a scheme: said as such, not as a missing local path
            raise UnsupportedFormatError(f"{path}: {scheme.group(0)} is not a place this tool reads from — use a "
                                         "local path, or an http(s)://, hf://, s3:// or gs:// URL")
        raise InputNotFoundError(f"{path}: no such file or folder — check the path")
    is_dir = os.path.isdir(path)
    if not os.access(path, os.R_OK | (os.X_OK if is_dir else 0)):
        raise UnsupportedFormatError(f"{path}: permission denied — check the {'folder' if is_dir else 'file'}'s "
                                     "permissions (or run as a user who may read it)")
    if not is_dir:
        check_regular(path)
    if not is_dir and os.path.getsize(path) == 0:
        raise CorruptFileError(f"{path}: the file is empty (0 bytes); it was not fully written or downloaded — "
                               "re-download or re-save it")
    try:
        for reader in _READERS:
            if reader.identify(path):
                return reader.open(path)
    except PermissionError as e:
        raise UnsupportedFormatError(f"{path}: permission denied reading {e.filename or path} — check the "
                                     "permissions of the checkpoint's files") from e
    except IsADirectoryError as e:
        raise UnsupportedFormatError(f"{path}: expected a file but {e.filename or path} is a folder") from e
    except OSError as e:
        raise CorruptFileError(f"{path}: could not be read ({e.strerror or e}); check the disk and the file") from e
    _unrecognised(path, is_dir)


def _open_remote(url: str) -> Checkpoint:
    """A URL: its size and version first (one request; a 404 or 403 is the answer), then the readers, whose reads go
    through the URL's sparse mirror. Errors of the network pass as they are (each names the URL)."""
    is_dir = isdir(url)
    if not is_dir and getsize(url) == 0:
        raise CorruptFileError(f"{url}: the file is empty (0 bytes) — check the URL, or the upload")
    try:
        for reader in _READERS:
            if reader.identify(url):
                return reader.open(url)
    except ExplorerError:
        raise
    except OSError as e:
        raise CorruptFileError(f"{url}: could not be read ({e.strerror or e}); check the URL and try again") from e
    _unrecognised(url, is_dir)


def _unrecognised(path: str, is_dir: bool):
    if is_dir:
        raise UnsupportedFormatError(f"{path}: the folder holds no checkpoint this tool can read (no .metadata, no "
                                     "*.index.json, no *.safetensors/*.bin/*.pt/*.pth files) — open a checkpoint file "
                                     f"or the folder that holds one. Supported: {SUPPORTED}")
    raise UnsupportedFormatError(f"{path}: not a checkpoint this tool can read (neither a torch.save file, "
                                 f"safetensors, a shard index nor a DCP folder) — check that it is the right file. "
                                 f"Supported: {SUPPORTED}")


_loaded = False
_loading = threading.Lock()


def _ensure_builtin() -> None:
    """Import the built-in readers once; safe when two threads open files at the same time."""
    global _loaded
    if _loaded:
        return
    with _loading:
        if _loaded:
            return
        _import_builtin()
        _loaded = True


def _import_builtin() -> None:
    """Import the built-in readers: each registers itself when imported."""
    for name in ("torch_zip", "legacy", "safetensors_reader", "sharded", "dcp"):
        importlib.import_module(f"{__name__}.{name}")


def read_head(path: str, n: int = 16) -> bytes:
    try:
        with open_regular(path) as f:
            return f.read(n)
    except RemoteError:   # the network failed: that is the answer, not "not this format"
        raise
    except (IsADirectoryError, PermissionError, OSError, UnsupportedFormatError):
        return b""


def _kind(mode: int) -> str | None:
    """What a path is when it is not a regular file or a folder (None when it is one of those)."""
    for test, what in ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return what
    return None if stat.S_ISREG(mode) or stat.S_ISDIR(mode) else "not a regular file"


def _not_a_file(path: str, what: str) -> UnsupportedFormatError:
    return UnsupportedFormatError(f"{path}: is {what}, not a checkpoint file (reading a FIFO or a device may block "
                                  "or never end) — open the checkpoint file itself")


def check_regular(path: str) -> None:
    """Refuse a FIFO, a device or a socket by what ``stat`` says (following links), before anything opens it."""
    if is_remote(path):
        return
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return  # the open that follows says what is wrong
    what = _kind(mode)
    if what is not None:
        raise _not_a_file(path, what)


def open_regular(path: str, mode: str = "rb"):
    """``open(path, mode)`` for reading, that never blocks: opened non-blocking, then checked to be a regular file
    (a FIFO swapped in after a ``stat`` cannot hang us either). Raises :class:`UnsupportedFormatError` for anything
    else (a folder raises ``IsADirectoryError``, as ``open`` does). A URL opens over its sparse mirror."""
    if is_remote(path):
        return open_binary(path)
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise IsADirectoryError(21, "Is a directory", path)
        what = _kind(st.st_mode)
        if what is not None:
            raise _not_a_file(path, what)
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, mode)
    except BaseException:
        os.close(fd)
        raise
