"""Per key, per checkpoint figures of a series, streamed.

A key is measured across every checkpoint in the run's order before the next key is read: the worker holds the
key's tensor at the first checkpoint it appears in, at the previous checkpoint and at the current one (memory-mapped
views of the files where the format allows, so no copy), and computes every figure in chunks of ``CHUNK``
elements: the memory a worker adds is a few chunks, not a tensor, and never a checkpoint. Each tensor of each file is
read once. Keys are spread over a small pool of threads; ``should_stop()`` is asked between tensors.
"""
from __future__ import annotations

import math
import threading
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from ...errors import Cancelled, ExplorerError
from ..records import RUNNING_STAT_NAMES, dtype_name

CHUNK = 1 << 18          # elements per step of the figures (1 MB of float32: stays in the processor cache)
THREADS = 2              # keys measured at once
MEAN_TRACKED = tuple(n for n in RUNNING_STAT_NAMES if n.startswith("running_"))   # running_mean, running_var


@dataclass
class Track:
    """One key across the series; every list is indexed like the checkpoints (None where the key is absent or the
    figure does not apply: no previous checkpoint, a shape change). ``rel_change_first`` compares with the first
    checkpoint that holds the key. ``mean``: the mean of a BatchNorm running statistic, else None."""

    key: str
    present: list[bool]
    shape: list[tuple | None]
    dtype: list[str | None]
    norm: list[float | None]
    rel_change_prev: list[float | None]
    rel_change_first: list[float | None]
    frac_changed: list[float | None]
    nonfinite: list[int | None]
    mean: list[float | None] | None = None
    errors: list[str] = field(default_factory=list)

    @property
    def is_running_stat(self) -> bool:
        return self.key.rsplit(".", 1)[-1] in MEAN_TRACKED

    def to_json(self) -> dict:
        return {"key": self.key, "present": self.present,
                "shape": [list(s) if s is not None else None for s in self.shape], "dtype": self.dtype,
                "norm": self.norm, "rel_change_prev": self.rel_change_prev,
                "rel_change_first": self.rel_change_first, "frac_changed": self.frac_changed,
                "nonfinite": self.nonfinite, "mean": self.mean, "errors": self.errors}

    @classmethod
    def from_json(cls, d: dict) -> "Track":
        shape = [tuple(s) if s is not None else None for s in d["shape"]]
        return cls(d["key"], d["present"], shape, d["dtype"], d["norm"], d["rel_change_prev"], d["rel_change_first"],
                   d["frac_changed"], d["nonfinite"], d["mean"], d["errors"])


_NATIVE = (torch.float32, torch.float64, torch.complex64, torch.complex128)


def _array(t: torch.Tensor) -> np.ndarray:
    """The values as numpy computes the figures: float16/bfloat16/float8 widened to float32, integers and bool to
    float64 (exact up to 2**53); float32/float64/complex as they are (a view, no copy)."""
    if t.dtype in _NATIVE:
        return t.resolve_conj().resolve_neg().numpy()
    return (t.float() if t.is_floating_point() else t.double()).numpy()


def _sq(a: np.ndarray) -> float:
    """‖a‖² (BLAS dot: accumulated in a's precision within a chunk; chunks add up in float64). A float32 sum that
    overflows with finite values is done again in float64."""
    s = float(np.vdot(a, a).real)
    if math.isinf(s) and a.dtype.itemsize < 8 and np.isfinite(a).all():
        w = a.astype(np.complex128 if np.iscomplexobj(a) else np.float64)
        s = float(np.vdot(w, w).real)
    return s


class _Pair:
    """‖x − ref‖² (and, when ``count``, the number of differing elements) summed over chunks."""

    __slots__ = ("sq", "changed", "count")

    def __init__(self, count: bool):
        self.sq = 0.0
        self.changed = 0
        self.count = count

    def add(self, c: np.ndarray, r: np.ndarray, buf: np.ndarray) -> None:
        d = np.subtract(c, r, out=buf[:len(c)]) if buf.dtype == np.result_type(c, r) else c - r
        sq = _sq(d)
        self.sq += sq
        if self.count:
            same = c == r
            if not math.isfinite(sq):   # a NaN at the same place on both sides is no change
                same |= np.isnan(c) & np.isnan(r)
            self.changed += len(c) - int(np.count_nonzero(same))


def _equal(x: torch.Tensor, y: torch.Tensor) -> bool:
    """Every element equal (NaN never is), chunk by chunk: a trained tensor differs in its first chunk already."""
    xf, yf = x.reshape(-1), y.reshape(-1)
    return all(np.array_equal(_array(xf[i:i + CHUNK]), _array(yf[i:i + CHUNK])) for i in range(0, xf.numel(), CHUNK))


def _rel(sq: float, ref_norm: float) -> float:
    diff = math.sqrt(sq) if not math.isnan(sq) else float("nan")
    if ref_norm == 0:
        return 0.0 if diff == 0 else float("inf")
    return diff / ref_norm


def figures(x: torch.Tensor, prev: torch.Tensor | None, prev_norm: float | None, first: torch.Tensor | None,
            first_norm: float | None, mean: bool = False) -> dict:
    """norm and non-finite count of ``x``; against ``prev`` / ``first`` (of ``x``'s shape, or None; their norms
    given): relative change (and against ``prev`` the fraction of elements changed); the mean when ``mean``. One
    pass over chunks of CHUNK elements, which stay in the processor's cache while each figure reads them."""
    xf = x.reshape(-1)
    pf = prev.reshape(-1) if prev is not None else None
    ff = first.reshape(-1) if first is not None else None
    sq, total = 0.0, 0.0
    to_prev, to_first = _Pair(count=True), _Pair(count=False)
    nonfinite = 0
    numel = xf.numel()
    buf = None
    for start in range(0, numel, CHUNK):
        c = _array(xf[start:start + CHUNK])
        if buf is None:
            buf = np.empty(len(c), dtype=c.dtype)
        s = _sq(c)
        sq += s
        if not math.isfinite(s):   # a finite norm means every element is finite
            nonfinite += len(c) - int(np.count_nonzero(np.isfinite(c)))
        if mean:
            total += float(c.sum(dtype=np.complex128 if np.iscomplexobj(c) else np.float64).real)
        if pf is not None:
            to_prev.add(c, _array(pf[start:start + CHUNK]), buf)
        if ff is not None:
            to_first.add(c, _array(ff[start:start + CHUNK]), buf)
    out = {"norm": math.sqrt(sq) if not math.isnan(sq) else sq, "nonfinite": nonfinite,
           "mean": (total / numel if numel else None) if mean else None}
    if pf is not None:
        out["rel_prev"] = _rel(to_prev.sq, prev_norm)
        out["frac_prev"] = to_prev.changed / numel if numel else 0.0
    if ff is not None:
        out["rel_first"] = _rel(to_first.sq, first_norm)
    return out


def _check(should_stop) -> None:
    if should_stop is not None and should_stop():
        raise Cancelled("cancelled")


def measure_key(key: str, reads: list[Callable[[], torch.Tensor] | None], should_stop=None) -> Track:
    """The figures of one key: ``reads[i]()`` gives its tensor at checkpoint i (None: the key is not there). Holds
    the tensors at the first, the previous and the current checkpoint; an unchanged tensor costs one comparison."""
    n = len(reads)
    t = Track(key, [r is not None for r in reads], *([None] * n for _ in range(7)))
    mean = t.is_running_stat
    t.mean = [None] * n if mean else None
    first = prev = None
    first_norm = prev_norm = None
    for i, read in enumerate(reads):
        if read is None:
            prev = None
            continue
        _check(should_stop)
        try:
            x = read()
        except (ExplorerError, RuntimeError, TypeError, ValueError) as e:
            t.errors.append(f"checkpoint {i}: {e}")
            prev = None
            continue
        t.shape[i], t.dtype[i] = tuple(x.shape), dtype_name(x.dtype)
        p = prev if prev is not None and prev.shape == x.shape else None
        f = first if first is not None and first.shape == x.shape else None
        if p is not None and p.dtype == x.dtype and _equal(x, p):   # unchanged (a frozen key): no other pass
            t.norm[i], t.nonfinite[i] = t.norm[i - 1], t.nonfinite[i - 1]
            t.rel_change_prev[i], t.frac_changed[i] = 0.0, 0.0
            t.rel_change_first[i] = t.rel_change_first[i - 1]
            if mean:
                t.mean[i] = t.mean[i - 1]
        else:
            again = f is not None and f is p   # the previous checkpoint is the first: one comparison serves both
            got = figures(x, p, prev_norm, None if again else f, first_norm, mean)
            if again:
                got["rel_first"] = got["rel_prev"]
            t.norm[i], t.nonfinite[i] = got["norm"], got["nonfinite"]
            t.rel_change_prev[i], t.frac_changed[i] = got.get("rel_prev"), got.get("frac_prev")
            t.rel_change_first[i] = got.get("rel_first", 0.0 if first is None else None)
            if mean:
                t.mean[i] = got["mean"]
        if first is None:
            first, first_norm = x, t.norm[i]
        prev, prev_norm = x, t.norm[i]
    return t


ProgressFn = Callable[[int, int], None]


def measure(columns: list[dict], read: Callable[[int, str], torch.Tensor], *, threads: int = THREADS,
            should_stop: Callable[[], bool] | None = None, progress: ProgressFn | None = None) -> list[Track]:
    """Every key of ``columns`` (one ``{key: TensorInfo}`` per checkpoint, in the run's order) measured across the
    checkpoints; ``read(i, key)`` reads one tensor (called from worker threads, one at a time per checkpoint).
    Keys come in the order they first appear. ``progress(done, total)`` counts bytes, called in this thread."""
    keys = list(dict.fromkeys(k for col in columns for k in col))
    locks = [threading.Lock() for _ in columns]

    def reader(i: int, key: str):
        def go():
            with locks[i]:
                return read(i, key)
        return go

    sizes = [sum(col[k].nbytes for col in columns if k in col) for k in keys]
    total, done = sum(sizes), 0
    stop = threading.Event()
    stopping = (lambda: stop.is_set() or (should_stop is not None and should_stop()))
    out: list[Track | None] = [None] * len(keys)
    if progress is not None:
        progress(0, total)
    with ThreadPoolExecutor(max(1, threads), thread_name_prefix="series") as pool:
        pending: dict = {}
        it = iter(range(len(keys)))
        try:
            while True:
                for j in it:
                    key = keys[j]
                    reads = [reader(i, key) if key in col else None for i, col in enumerate(columns)]
                    pending[pool.submit(measure_key, key, reads, stopping)] = j
                    if len(pending) >= 2 * max(1, threads):
                        break
                if not pending:
                    break
                finished, _ = wait(pending, return_when=FIRST_COMPLETED)
                for fut in finished:
                    j = pending.pop(fut)
                    out[j] = fut.result()
                    done += sizes[j]
                    if progress is not None:
                        progress(done, total)
                _check(should_stop)
        except BaseException:
            stop.set()
            for fut in pending:
                fut.cancel()
            raise
    return out
