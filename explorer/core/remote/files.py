"""The readers' one door to a checkpoint's bytes: a local path, or a URL read through its sparse mirror.

Readers ask here whether a path is a file, its size, for a binary file object, for the files of a folder that
match a pattern, and for the local path to memory-map a slice of (after the slice is present). For a local path
each answer is what ``os``/``open``/``glob`` give, unchanged; for a URL (:func:`is_remote`) the header is read by
range through :meth:`Mirror.file`, and a tensor's bytes are fetched only when its value is asked for
(:func:`mapped`). Nothing of the network is imported until a URL is seen.
"""
from __future__ import annotations

import fnmatch
import glob
import io
import os
import posixpath


def is_remote(path: object) -> bool:
    """True for an ``http(s)://``, ``hf://``, ``s3://`` or ``gs://`` path (cheap for a local one)."""
    if not isinstance(path, str) or "://" not in path:
        return False
    from .urls import is_url
    return is_url(path)


def is_folder_url(url: str) -> bool:
    """A URL names a folder when it ends with ``/`` (or is a Hub repository's root: ``hf://ORG/REPO[@REV]``)."""
    if url.endswith("/"):
        return True
    from .urls import parse_hf, scheme_of
    return scheme_of(url) == "hf" and parse_hf(url).path == ""


def isfile(path: str) -> bool:
    if is_remote(path):
        return not is_folder_url(path)
    return os.path.isfile(path)


def isdir(path: str) -> bool:
    if is_remote(path):
        return is_folder_url(path)
    return os.path.isdir(path)


def exists(path: str) -> bool:
    """A URL exists until its server says otherwise (the first read asks)."""
    return True if is_remote(path) else os.path.exists(path)


def getsize(path: str) -> int:
    if is_remote(path):
        from .mirror import opened
        return opened(path).size
    return os.path.getsize(path)


def open_binary(path: str):
    """``open(path, "rb")``; for a URL a buffered, seekable file over its mirror (every read fetches its range)."""
    if is_remote(path):
        from .mirror import BLOCK, opened
        return io.BufferedReader(opened(path).file(), buffer_size=BLOCK)
    return open(path, "rb")


def size_of(f) -> int:
    """The size of the file behind the binary file object ``f`` (local or remote)."""
    try:
        return os.fstat(f.fileno()).st_size
    except (io.UnsupportedOperation, AttributeError):
        raw = getattr(f, "raw", f)
        return raw.mirror.size


def mapped(path: str, offset: int, length: int) -> str:
    """The local file to memory-map for bytes ``[offset, offset + length)`` of ``path``: ``path`` itself, or the
    URL's sparse mirror once that slice is in it (fetched now if it is not)."""
    if "://" not in path or not is_remote(path):
        return path
    from .mirror import opened
    mirror = opened(path)
    mirror.ensure([(offset, length)])
    return mirror.local_path


def files_in(folder: str, pattern: str) -> list[str]:
    """The files directly in ``folder`` whose name matches the glob ``pattern`` (a folder URL is listed: hf://,
    s3://, gs://; plain HTTP cannot list and says so)."""
    if is_remote(folder):
        from .mirror import list_folder
        return sorted(u for u in list_folder(folder) if fnmatch.fnmatchcase(posixpath.basename(u), pattern))
    return glob.glob(os.path.join(glob.escape(folder), pattern))


def basename(path: str) -> str:
    if is_remote(path):
        from .urls import display_name
        return display_name(path)
    return os.path.basename(path)


def transferred() -> int:
    """Bytes fetched over the network by this process so far (``--json``'s ``transferred_bytes`` is a difference)."""
    from .mirror import transferred_total
    return transferred_total()


def failures() -> list:
    """The remote failures raised so far in this process, oldest first (see :func:`.mirror.failures`)."""
    from .mirror import failures as mirror_failures
    return mirror_failures()


def prefetch_heads(paths: list[str]) -> None:
    """Open the URLs among ``paths`` and fetch their first block, in parallel: a sharded checkpoint's 28 shard
    headers cost about one round trip's time, not 28. Nothing for local paths. A failure is raised in the order of
    ``paths`` (the first shard that cannot be read is the one named)."""
    urls = [p for p in paths if is_remote(p) and not is_folder_url(p)]
    if len(urls) < 2:
        return
    from concurrent.futures import ThreadPoolExecutor

    from .mirror import opened
    with ThreadPoolExecutor(min(16, len(urls)), thread_name_prefix="remote-heads") as pool:
        list(pool.map(lambda url: opened(url).ensure([(0, 1)]), urls))
