"""Checkpoints where they live: ``http(s)://``, ``hf://ORG/REPO[@REV]/PATH``, ``s3://``, ``gs://``, read in ranges
through a sparse local mirror in the user's cache.

``urls`` says what a remote path is and joins an index's shard names to it; ``backends`` asks a server for a size,
a version and byte ranges; ``cache`` keeps the mirrors on disk (size-bounded, keyed by URL + version); ``mirror``
makes a remote file look local to the readers (a file object, or a local path to memory-map after ``ensure``);
``files`` is the readers' one door to bytes, a local path or a URL.

The names below are imported on first use: reading local files never loads the HTTP client.
"""
from __future__ import annotations

import importlib

_WHERE = {"Mirror": "mirror", "close_all": "mirror", "ensure_local": "mirror", "list_folder": "mirror",
          "mirror_of": "mirror", "opened": "mirror", "transferred_total": "mirror", "failures": "mirror",
          "display_name": "urls", "is_url": "urls", "join": "urls"}

__all__ = sorted(_WHERE)


def __getattr__(name: str):
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)
