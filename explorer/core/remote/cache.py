"""The on-disk cache of fetched ranges: one sparse local file per (URL, version, size), with a sidecar of the blocks
that are fully written, bounded in size (least recently used mirrors are evicted first).

Layout under ``$XDG_CACHE_HOME/state-dict-explorer/remote`` (``~/.cache/...``): ``KEY.bin`` (the sparse mirror),
``KEY.json`` (URL, version, size, block size), ``KEY.blocks`` (the data file's inode, then one bit a block; written atomically after the data),
``KEY.lock`` (serialises sidecar updates between processes). ``KEY`` hashes URL + version + size: a new ETag or
revision is a new key, so stale bytes are never served; a URL whose server names no version gets a key of its own
each time it is opened (reused within that open only).
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import tempfile
import uuid
from pathlib import Path

import numpy as np

DEFAULT_MAX_BYTES = 20 << 30
SIZE_ENV = "STATE_DICT_EXPLORER_REMOTE_CACHE_BYTES"
_SUFFIXES = (".bin", ".blocks", ".json", ".lock")


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "state-dict-explorer" / "remote"


def max_bytes() -> int:
    text = os.environ.get(SIZE_ENV, "").strip().upper()
    scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}.get(text[-1:], 1)
    digits = text[:-1] if scale != 1 else text
    return int(float(digits) * scale) if digits.replace(".", "", 1).isdigit() else DEFAULT_MAX_BYTES


def key_of(url: str, version: str | None, size: int) -> str:
    token = version if version is not None else f"unversioned {uuid.uuid4()}"
    return hashlib.sha256(f"{url}\0{token}\0{size}".encode()).hexdigest()[:40]


class Entry:
    """The files of one mirror in the cache and its bitmap of present blocks."""

    def __init__(self, root: Path, key: str, url: str, version: str | None, size: int, block: int):
        root.mkdir(parents=True, exist_ok=True)
        self.root, self.key, self.size, self.block = root, key, size, block
        self.nblocks = -(-size // block)
        self.data_path = str(root / f"{key}.bin")
        self._blocks_path = root / f"{key}.blocks"
        self._lock_path = root / f"{key}.lock"
        meta = {"url": url, "version": version, "size": size, "block": block}
        meta_path = root / f"{key}.json"
        if not meta_path.exists():
            _atomic_write(meta_path, json.dumps(meta).encode())
        with open(self.data_path, "ab") as f:   # creates it; a sparse file of the remote size
            st = os.fstat(f.fileno())
            if st.st_size != size:
                f.truncate(size)
            self.inode = st.st_ino
        self.present = self._load() if st.st_size == size else np.zeros(self.nblocks, dtype=bool)
        self.touch()

    def _load(self) -> np.ndarray:
        """The recorded blocks, if they were recorded for this very data file (not for one evicted and made anew,
        which another process may still be writing to)."""
        with contextlib.suppress(OSError, ValueError):
            raw = self._blocks_path.read_bytes()
            if len(raw) >= 8 and int.from_bytes(raw[:8], "little") == self.inode:
                bits = np.unpackbits(np.frombuffer(raw[8:], np.uint8), count=self.nblocks)
                if len(bits) == self.nblocks:
                    return bits.astype(bool)
        return np.zeros(self.nblocks, dtype=bool)

    def save(self) -> None:
        """Record the present blocks (merged with what another process recorded meanwhile), atomically; nothing
        when the data file was evicted meanwhile (the bytes written went to a file no one will read again)."""
        with open(self._lock_path, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            with contextlib.suppress(OSError):
                if os.stat(self.data_path).st_ino != self.inode:
                    return
            self.present |= self._load()
            _atomic_write(self._blocks_path, self.inode.to_bytes(8, "little") + np.packbits(self.present).tobytes())

    def touch(self) -> None:
        with contextlib.suppress(OSError):
            os.utime(self.root / f"{self.key}.json")


def _atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def usage(root: Path) -> list[tuple[float, int, str]]:
    """``(last used, bytes on disk, key)`` of every mirror in the cache."""
    out = []
    for meta in root.glob("*.json"):
        key = meta.stem
        with contextlib.suppress(OSError):
            used = meta.stat().st_mtime
            disk = sum(os.stat(root / f"{key}{s}").st_blocks * 512 for s in _SUFFIXES if (root / f"{key}{s}").exists())
            out.append((used, disk, key))
    return out


def evict(root: Path, keep: set[str], limit: int | None = None) -> int:
    """Remove least recently used mirrors (never one in ``keep``) until the cache fits ``limit``; bytes freed."""
    limit = max_bytes() if limit is None else limit
    entries = sorted(usage(root))
    total = sum(disk for _, disk, _ in entries)
    freed = 0
    for _, disk, key in entries:
        if total - freed <= limit:
            break
        if key in keep:
            continue
        for s in (".json", ".blocks", ".bin", ".lock"):
            with contextlib.suppress(OSError):
                os.unlink(root / f"{key}{s}")
        freed += disk
    return freed
