"""Functions tests run in the window's parse process (``parse_engine().call(fn, ...)``): the child imports this
module by name, so it imports nothing heavy (no torch, no Qt: the parse process never has them)."""
from __future__ import annotations

import time


def listing_kept(text, *, progress=None, should_stop=None) -> bool:
    """Is ``text``'s listing kept there (parsed, and served again without parsing while unchanged)?"""
    from explorer.session import listing
    return listing.stamp_of(text) in listing._LISTINGS


def slow_probe(text, *, progress=None, should_stop=None):
    """A parse that takes 30 s (and heeds no cancel, as a parse stuck in C code)."""
    time.sleep(30)


def sleep(seconds, *, progress=None, should_stop=None):
    """``time.sleep(seconds)``; returns ``seconds``."""
    time.sleep(seconds)
    return seconds


def parts_then_sleep(n, seconds, *, progress=None, should_stop=None, partial=None):
    """Send ``n`` partial answers (0, 1, ...), then sleep ``seconds`` (heeding no cancel)."""
    for i in range(n):
        partial(i)
    time.sleep(seconds)
    return n
