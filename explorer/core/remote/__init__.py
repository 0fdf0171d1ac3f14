"""Checkpoints where they live: ``http(s)://``, ``hf://ORG/REPO[@REV]/PATH``, ``s3://``, ``gs://``, read in ranges
through a sparse local mirror in the user's cache.

``urls`` says what a remote path is and joins an index's shard names to it; ``backends`` asks a server for a size,
a version and byte ranges; ``cache`` keeps the mirrors on disk (size-bounded, keyed by URL + version); ``mirror``
makes a remote file look local to the readers (a file object, or a local path to memory-map after ``ensure``).
"""
from .mirror import Mirror, close_all, ensure_local, list_folder, mirror_of, opened, transferred_total
from .urls import display_name, is_url, join

__all__ = ["Mirror", "close_all", "display_name", "ensure_local", "is_url", "join", "list_folder", "mirror_of",
           "opened", "transferred_total"]
