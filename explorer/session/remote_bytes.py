"""How many bytes the window fetched over the network for each side opened by URL (the status bar's figure).

Plain Python (no Qt). A side's files are its URL, and for a shard index the shards it names (a folder URL: the
checkpoint files in it). The bytes fetched for them are counted by each process that reads them: the window's own
(values of small tensors, a simulation), the parse process (the header, when the side is opened) and the compute
process (histograms of large tensors, the value diff). :func:`measure` asks all three; a child process is asked
only when it runs and is not busy (the question is never worth waiting for), and :class:`Tally` keeps a figure
from going down when a child restarts (its counts start again from zero).
"""
from __future__ import annotations

import json

from ..core.remote.files import files_in, is_folder_url, is_remote, open_binary

WINDOW, PARSE, COMPUTE = "window", "parse", "compute"   # the processes that count

_URLS: dict[str, list[str]] = {}    # a side's label -> its URLs (a folder is listed once per session)


def side_urls(label: str) -> list[str]:
    """The URLs a side reads: ``label`` itself, an index's shards, or a folder URL's checkpoint files; [] when the
    side is local (or a model). Reads the index from its mirror (already fetched by the open: no transfer)."""
    if not is_remote(label):
        return []
    if label in _URLS:
        return _URLS[label]
    if is_folder_url(label):
        from ..core.loaders.sharded import SHARD_PATTERNS
        urls = sorted({u for pattern in SHARD_PATTERNS for u in files_in(label, pattern)})
    else:
        urls = [label] + (_shard_urls(label) if label.endswith(".index.json") else [])
    _URLS[label] = urls
    return urls


def _shard_urls(index_url: str) -> list[str]:
    from ..core.remote.urls import join
    try:
        with open_binary(index_url) as f:
            weight_map = json.loads(f.read().decode("utf-8")).get("weight_map") or {}
    except (OSError, ValueError, AttributeError):
        return []
    out = []
    for name in dict.fromkeys(v for v in weight_map.values() if isinstance(v, str)):
        try:
            out.append(join(index_url, name))
        except ValueError:
            continue
    return out


def fetched_here(urls_by_side: dict, *, progress=None, should_stop=None) -> dict:
    """side -> bytes this process fetched for that side's URLs (its open mirrors' counts). Run in each process."""
    from ..core.remote import mirror_of
    out = {}
    for side, urls in urls_by_side.items():
        total = 0
        for url in urls:
            mirror = mirror_of(url)
            total += mirror.transferred if mirror is not None else 0
        out[side] = total
    return out


def measure(labels_by_side: dict, engines: dict, *, progress=None, should_stop=None) -> dict:
    """{process: {side: bytes}} for the remote sides among ``labels_by_side`` (side -> label): this process's
    counts, and those of each of ``engines`` (process name -> ``ComputeProcess``) that runs and is free now."""
    urls = {side: side_urls(label) for side, label in labels_by_side.items()}
    urls = {side: u for side, u in urls.items() if u}
    if not urls:
        return {}
    out = {WINDOW: fetched_here(urls)}
    for name, eng in engines.items():
        try:
            got = eng.call_if_idle(fetched_here, urls, timeout=10.0)
        except Exception:  # noqa: BLE001 - a figure for the status bar: a child that cannot answer is left out
            got = None
        if got is not None:
            out[name] = got
    return out


class Tally:
    """Per side, the bytes fetched by every process, added up. A process's count only grows; when it is lower than
    before, the process restarted, and what it had counted is kept."""

    def __init__(self):
        self._last: dict = {}     # (side, process) -> the process's last count
        self._base: dict = {}     # (side, process) -> what earlier lives of the process counted

    def reset(self, side) -> None:
        for table in (self._last, self._base):
            for k in [k for k in table if k[0] == side]:
                del table[k]

    def update(self, measured: dict) -> None:
        for process, by_side in measured.items():
            for side, n in by_side.items():
                k = (side, process)
                last = self._last.get(k, 0)
                if n < last:
                    self._base[k] = self._base.get(k, 0) + last
                self._last[k] = n

    def total(self, side) -> int:
        return sum(n for (s, _), n in self._last.items() if s == side) + \
            sum(n for (s, _), n in self._base.items() if s == side)


def size_text(n: int) -> str:
    """``0.97 MB``: decimal units, as download tools count (below 10 kB, in bytes)."""
    if n < 10_000:
        return f"{n:,} bytes" if n != 1 else "1 byte"
    if n < 1_000_000_000:
        return f"{n / 1e6:.2f} MB"
    return f"{n / 1e9:.2f} GB"


def status_text(labels_by_side: dict, totals: dict) -> str:
    """``hf://org/repo/model.safetensors — 0.97 MB transferred`` for each remote side (both: side by side)."""
    parts = [f"{label} — {size_text(totals.get(side, 0))} transferred" for side, label in labels_by_side.items()
             if is_remote(label)]
    return "   ·   ".join(parts)

