"""The measured figures of a series kept in the user's cache folder, so a second look costs no tensor read.

An entry is named by a hash of what the figures depend on: every file of every checkpoint (absolute path, size,
modification time in ns), each checkpoint's keys with shape and dtype, and the version of the figures. A file that
changes changes the name, so an entry is never stale. A cache that cannot be written is skipped silently (the
figures are measured again next time).
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile

VERSION = 1


def cache_dir() -> str:
    """``$XDG_CACHE_HOME/state-dict-explorer/series`` (``~/.cache/...`` when unset)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "state-dict-explorer", "series")


def _files_of(path: str) -> list[str]:
    """The files a checkpoint consists of: the file and the regular files beside an index or in a folder."""
    folder = path if os.path.isdir(path) else None
    if path.endswith(".index.json") or os.path.basename(path) == ".metadata":
        folder = os.path.dirname(path)
    if folder is None:
        return [path]
    try:
        return sorted(os.path.join(folder, n) for n in os.listdir(folder) if os.path.isfile(os.path.join(folder, n)))
    except OSError:
        return [path]


def cache_key(paths: list[str], columns: list[dict]) -> str:
    """The hash naming the figures of checkpoints ``paths`` (in the run's order) with keys ``columns``."""
    h = hashlib.sha256(f"series v{VERSION}\n".encode())
    for path, col in zip(paths, columns):
        for f in _files_of(path):
            st = os.stat(f)
            h.update(f"{os.path.abspath(f)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode("utf-8", "backslashreplace"))
        h.update("\n".join(f"{key}\0{tuple(info.shape)}\0{info.dtype}" for key, info in col.items())
                 .encode("utf-8", "backslashreplace"))
        h.update(b"\1")
    return h.hexdigest()


def load(key: str) -> dict | None:
    try:
        with open(os.path.join(cache_dir(), key + ".json"), encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError, RecursionError):
        return None
    return data if isinstance(data, dict) and data.get("version") == VERSION else None


def store(key: str, data: dict) -> None:
    folder = cache_dir()
    try:
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".json", dir=folder)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump({**data, "version": VERSION}, f)
            os.replace(tmp, os.path.join(folder, key + ".json"))
        except BaseException:
            os.unlink(tmp)
            raise
    except OSError:
        pass
