"""A training run: the checkpoints of one model, in step order, measured key by key.

    series = open_series(["runs/exp1"])          # discover, open (no tensor read), order by step
    result = series.measure(progress=..., should_stop=...)   # cached: a second look reads no tensor
    result.tracks[j].norm[i]; result.findings; result.to_json()
    series.histogram("fc.weight", i, bins=128)   # one key at one checkpoint, on demand
    series.close()

A window drives the same object from a worker thread: ``progress(done_bytes, total_bytes)`` is called in the thread
that called ``measure``; ``should_stop()`` returning True raises :class:`explorer.errors.Cancelled`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ...errors import ExplorerError, UnsupportedFormatError, shorten
from ..side import CHECKPOINT, open_side
from . import cache
from .discover import Member, discover, file_step, order
from .findings import Finding, findings, first_nonfinite, frozen_keys
from .measure import THREADS, ProgressFn, Track, measure

if TYPE_CHECKING:
    import torch

    from ..np_values import Values

NUMBERS = 'figures that are NaN or +-Inf are the strings "nan", "inf", "-inf"; null: the key is not there or the ' \
          "figure does not apply"


def json_number(v):
    """A figure for JSON: NaN and +-Inf as the strings "nan", "inf", "-inf" (JSON has no such numbers)."""
    if v is None or isinstance(v, int) or math.isfinite(v):
        return v
    return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf")


def _numbers(values: list) -> list:
    return [json_number(v) for v in values]


@dataclass
class SeriesResult:
    checkpoints: list[Member]
    tracks: list[Track]
    findings: list[Finding]
    cached: bool = False

    @property
    def frozen(self) -> list[str]:
        return frozen_keys(self.tracks) if len(self.checkpoints) >= 2 else []

    @property
    def first_nonfinite(self) -> dict[str, int]:
        return first_nonfinite(self.tracks)

    def track(self, key: str) -> Track:
        for t in self.tracks:
            if t.key == key:
                return t
        raise KeyError(key)

    def to_json(self) -> dict:
        return {
            "checkpoints": [{"path": m.path, "step": m.step, "step_source": m.step_source or None}
                            for m in self.checkpoints],
            "keys": [{"key": t.key, "present": t.present, "norm": _numbers(t.norm),
                      "rel_change_prev": _numbers(t.rel_change_prev), "rel_change_first": _numbers(t.rel_change_first),
                      "nonfinite": t.nonfinite, "frac_changed": _numbers(t.frac_changed),
                      "shape": [list(s) if s is not None else None for s in t.shape], "dtype": t.dtype,
                      **({"errors": t.errors} if t.errors else {})} for t in self.tracks],
            "frozen": self.frozen,
            "first_nonfinite": self.first_nonfinite,
            "running_stats": {t.key: {"mean": _numbers(t.mean)} for t in self.tracks if t.mean is not None},
            "findings": [f.to_json() for f in self.findings],
        }


class Series:
    """Opened checkpoints of one run, in step order (``members[i]`` is opened as ``sides[i]``)."""

    def __init__(self, members: list[Member], sides: list, entries: list):
        self.members = members
        self.sides = sides
        self.entries = entries
        self.columns = [side.state_dict_infos(entry) for side, entry in zip(sides, entries)]

    def read(self, key: str, index: int) -> "torch.Tensor":
        """The tensor of ``key`` at checkpoint ``index`` (KeyError when it is not there)."""
        if key not in self.columns[index]:
            raise KeyError(f"{shorten(key)} is not in checkpoint {index}")
        return self.sides[index].read_key(key, self.entries[index])

    def histogram(self, key: str, index: int, bins: int = 128,
                  value_range: tuple[float, float] | None = None) -> "tuple[torch.Tensor, torch.Tensor]":
        """(edges, counts) of the finite values of ``key`` at checkpoint ``index``; give ``value_range`` to overlay two
        checkpoints on the same bins."""
        import torch
        x = self.read(key, index).reshape(-1)
        x = x.abs() if x.is_complex() else x   # of a complex tensor: its magnitudes, as the stats command
        x = x.double() if not x.is_floating_point() else x.float()
        x = x[torch.isfinite(x)]
        lo, hi = value_range if value_range is not None else \
            ((float(x.min()), float(x.max())) if x.numel() else (0.0, 1.0))
        if hi <= lo:
            lo, hi = lo - 0.5, hi + 0.5
        counts = torch.histc(x, bins=bins, min=lo, max=hi)
        return torch.linspace(lo, hi, bins + 1, dtype=torch.float64), counts.to(torch.int64)

    def cache_key(self) -> str:
        return cache.cache_key([m.path for m in self.members], self.columns)

    def measure(self, *, threads: int = THREADS, should_stop=None, progress: ProgressFn | None = None,
                use_cache: bool = True) -> SeriesResult:
        """The figures of every key at every checkpoint, and what they say. Read from the cache when it holds them."""
        name = self.cache_key() if use_cache else None
        if name is not None:
            data = cache.load(name)
            if data is not None:
                tracks = [Track.from_json(d) for d in data["tracks"]]
                return SeriesResult(self.members, tracks, findings(tracks, len(self.members)), cached=True)

        def read(i: int, key: str) -> "Values":   # numpy views of the files' bytes: measuring imports no torch
            return self.sides[i].read_key_array(key, self.entries[i])

        tracks = measure(self.columns, read, threads=threads, should_stop=should_stop, progress=progress)
        if name is not None:
            cache.store(name, {"tracks": [t.to_json() for t in tracks]})
        return SeriesResult(self.members, tracks, findings(tracks, len(self.members)))

    def close(self) -> None:
        for side in self.sides:
            side.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


def _open_member(member: Member):
    side = open_side(member.path)
    if side.kind != CHECKPOINT:
        side.close()
        raise UnsupportedFormatError(f"{shorten(member.path)}: a series is made of checkpoint files or folders")
    return side


def open_series(paths: list[str]) -> Series:
    """The checkpoints ``paths`` name (a folder of checkpoints, or several files/folders), opened without reading a
    tensor and ordered by step. Raises an ExplorerError naming the path that is wrong."""
    members = discover(paths)
    sides, entries = {}, {}
    try:
        for m in members:
            side = sides[m.path] = _open_member(m)
            entries[m.path] = side.resolve_entry(None)
            m.step, m.step_source = file_step(side, m.path)
    except ExplorerError:
        for side in sides.values():
            side.close()
        raise
    ordered = order(members)
    return Series(ordered, [sides[m.path] for m in ordered], [entries[m.path] for m in ordered])
