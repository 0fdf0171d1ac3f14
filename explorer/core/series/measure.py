"""Per key, per checkpoint figures of a series, streamed.

A key is measured across every checkpoint in the run's order before the next key is read. Its tensors are
memory-mapped views of the files (no copy), taken ``WINDOW`` checkpoints at a time and measured chunk-major: chunk k
(``CHUNK`` elements) of every checkpoint of the window before chunk k + 1, each checkpoint's chunk compared with
the previous and the first checkpoint's chunk while those are still in the processor's cache. So each file's bytes
come from memory once, every figure of a chunk is taken in one visit, and the memory a worker adds is a few chunks,
never a tensor or a checkpoint. A chunk equal to the previous checkpoint's costs one comparison (its figures are
the previous ones). Keys are spread over a small pool of threads; ``should_stop()`` is asked between chunks.
"""
from __future__ import annotations

import math
import threading
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from ...errors import Cancelled, ExplorerError, UnsupportedDtypeError
from ..np_values import NATIVE, RAW, Values, widen
from ..records import RUNNING_STAT_NAMES

CHUNK = 1 << 18          # elements per step of the figures (1 MB of float32: stays in the processor cache)
THREADS = 2              # keys measured at once
WINDOW = 16              # checkpoints of a key measured together, chunk-major
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


AS_THEY_ARE = ("float32", "float64", "complex64", "complex128")   # measured in their own type (a view, no copy)


def _numbers(a: np.ndarray, dtype: str) -> np.ndarray:
    """The values as numpy computes the figures: float16, bfloat16 and float8 widened to float32 (exactly), complex32
    to complex64, integers and bool to float64 (exact up to 2**53); float32/float64/complex as they are."""
    if dtype in AS_THEY_ARE:
        return a
    if dtype in RAW:
        return widen(a, dtype)
    return a.astype(np.float32 if dtype == "float16" else np.float64)


def _sq(a: np.ndarray) -> float:
    """‖a‖² (BLAS dot: accumulated in a's precision within a chunk; chunks add up in float64). A float32 sum that
    overflows with finite values is done again in float64."""
    s = float(np.vdot(a, a).real)
    if math.isinf(s) and a.dtype.itemsize < 8 and np.isfinite(a).all():
        w = a.astype(np.complex128 if np.iscomplexobj(a) else np.float64)
        s = float(np.vdot(w, w).real)
    return s


def _rel(sq: float, ref_norm: float) -> float:
    diff = math.sqrt(sq) if not math.isnan(sq) else float("nan")
    if ref_norm == 0:
        return 0.0 if diff == 0 else float("inf")
    return diff / ref_norm


class _Memo:
    """The figures of one checkpoint's tensor, chunk by chunk: ‖c‖², non-finite count, sum, ‖c − first‖². A chunk of
    the next checkpoint equal to it element for element has the same figures: it is compared, not measured again."""

    __slots__ = ("sq", "nonfinite", "total", "to_first")

    def __init__(self):
        self.sq: list[float] = []
        self.nonfinite: list[int] = []
        self.total: list[float] = []
        self.to_first: list[float] = []


class _Buffers:
    """Scratch space of one chunk (a difference, a comparison), reused from chunk to chunk."""

    def __init__(self):
        self.diff: np.ndarray | None = None
        self.same = np.empty(CHUNK, dtype=bool)

    def sub(self, c: np.ndarray, r: np.ndarray) -> np.ndarray:
        kind = c.dtype if c.dtype == r.dtype else np.result_type(c, r)
        if self.diff is None or self.diff.dtype != kind:
            self.diff = np.empty(CHUNK, dtype=kind)
        return np.subtract(c, r, out=self.diff[:len(c)])


def _changed(c: np.ndarray, r: np.ndarray, same: np.ndarray, equal: int, sq: float) -> int:
    """Elements of ``c`` that differ from ``r`` (``same`` holds ``c == r``, ``equal`` its count); a NaN at the same
    place on both sides is no change (only looked for when ``sq``, ‖c − r‖², says a NaN or an Inf is there)."""
    if not math.isfinite(sq):
        same |= np.isnan(c) & np.isnan(r)
        equal = int(np.count_nonzero(same))
    return len(c) - equal


class _Step:
    """One checkpoint's figures of a key, summed chunk by chunk: of ``x``, against the ``prev`` and ``first`` steps
    (of ``x``'s shape, or None; ``first is prev`` is measured once), with ``memo`` the chunks' figures of ``prev``
    when it has ``x``'s dtype (a chunk equal to ``prev``'s costs one comparison)."""

    def __init__(self, i: int, x: Values, prev: "_Step | None", first: "_Step | None", mean: bool,
                 is_first: bool = False):
        a = x.array
        self.i, self.x, self.shape, self.dtype, self.mean = i, a.reshape(-1), tuple(a.shape), x.dtype, mean
        self.a = self.x if x.dtype in AS_THEY_ARE else None   # the values as numpy sees them: a view, no copy
        self.is_first = is_first   # the first checkpoint that holds the key
        self.prev, self.first = prev, first
        self.again = first is not None and first is prev
        self.memo = prev.mine if prev is not None and prev.dtype == x.dtype else None
        self.sq = self.total = self.to_prev = self.to_first = 0.0
        self.nonfinite = self.changed = 0
        self.same = prev is not None   # every element equal to prev's so far
        self.mine = _Memo()

    def release(self) -> None:
        """Measured: keep only what a later checkpoint compares with (the values and the chunks' figures)."""
        self.prev = self.first = self.memo = None

    def part(self, start: int) -> np.ndarray:
        """Elements ``start`` to ``start + CHUNK`` as numpy computes the figures (see ``_numbers``)."""
        a = self.a
        return a[start:start + CHUNK] if a is not None else _numbers(self.x[start:start + CHUNK], self.dtype)

    def _add(self, s: float, nf: int, tot: float, sf: float) -> None:
        m = self.mine
        m.sq.append(s)
        m.nonfinite.append(nf)
        m.total.append(tot)
        m.to_first.append(sf)
        self.sq += s
        self.nonfinite += nf
        self.total += tot
        self.to_first += sf

    def chunk(self, k: int, start: int, bufs: _Buffers) -> None:
        """Add chunk ``k`` (elements ``start`` to ``start + CHUNK``) to every figure."""
        c = self.part(start)
        sp = 0.0
        if self.prev is not None:
            r = self.prev.part(start)
            same = np.equal(c, r, out=bufs.same[:len(c)])
            equal = int(np.count_nonzero(same))
            if equal == len(c):
                memo = self.memo
                if memo is not None and math.isfinite(memo.sq[k]):   # difference 0: prev's figures hold
                    self._add(memo.sq[k], memo.nonfinite[k], memo.total[k], memo.to_first[k])
                    return
            else:
                self.same = False
            sp = _sq(bufs.sub(c, r))
            self.to_prev += sp
            self.changed += _changed(c, r, same, equal, sp)
        s = _sq(c)
        nonfinite = len(c) - int(np.count_nonzero(np.isfinite(c))) if not math.isfinite(s) else 0
        total = float(c.sum(dtype=np.complex128 if np.iscomplexobj(c) else np.float64).real) if self.mean else 0.0
        if self.again:
            sf = sp
        else:
            sf = _sq(bufs.sub(c, self.first.part(start))) if self.first is not None else 0.0
        self._add(s, nonfinite, total, sf)

    def result(self, prev_norm: float | None, first_norm: float | None) -> dict:
        numel = self.x.size
        out = {"norm": math.sqrt(self.sq) if not math.isnan(self.sq) else self.sq, "nonfinite": self.nonfinite,
               "mean": (self.total / numel if numel else None) if self.mean else None}
        if self.prev is not None:
            out["rel_prev"] = _rel(self.to_prev, prev_norm)
            out["frac_prev"] = self.changed / numel if numel else 0.0
        if self.first is not None:
            out["rel_first"] = _rel(self.to_first, first_norm)
        return out


def _check(should_stop) -> None:
    if should_stop is not None and should_stop():
        raise Cancelled("cancelled")


def _run(window: list[_Step], t: Track, should_stop) -> None:
    """Measure the checkpoints of ``window`` chunk-major: chunk k of every checkpoint before chunk k + 1, so the
    previous and the first checkpoint's chunk are still in the processor's cache when a checkpoint compares with
    them (each file's bytes come from memory once). Then fill ``t`` in checkpoint order."""
    bufs = _Buffers()
    longest = max(s.x.size for s in window)
    for k, start in enumerate(range(0, longest, CHUNK)):
        _check(should_stop)
        for s in window:
            if start < s.x.size:
                s.chunk(k, start, bufs)
    for s in window:
        i, mean = s.i, s.mean
        if s.memo is not None and s.same:   # unchanged (a frozen key): the previous checkpoint's figures
            j = s.prev.i
            t.norm[i], t.nonfinite[i] = t.norm[j], t.nonfinite[j]
            t.rel_change_prev[i], t.frac_changed[i] = 0.0, 0.0
            t.rel_change_first[i] = t.rel_change_first[j]
            if mean:
                t.mean[i] = t.mean[j]
        else:
            got = s.result(t.norm[s.prev.i] if s.prev is not None else None,
                           t.norm[s.first.i] if s.first is not None else None)
            t.norm[i], t.nonfinite[i] = got["norm"], got["nonfinite"]
            t.rel_change_prev[i], t.frac_changed[i] = got.get("rel_prev"), got.get("frac_prev")
            t.rel_change_first[i] = got.get("rel_first", 0.0 if s.is_first else None)
            if mean:
                t.mean[i] = got["mean"]
        s.release()


def _values(read: Callable[[], Values]) -> Values:
    """What ``read()`` gives, refused when its values are no numbers numpy can hold (sub-byte, packed, quantized)."""
    x = read()
    if x.dtype not in NATIVE and x.dtype not in RAW:
        raise UnsupportedDtypeError(f"values of {x.dtype} tensors are not measured (no numbers to take a norm of)")
    return x


def measure_key(key: str, reads: list[Callable[[], Values] | None], should_stop=None) -> Track:
    """The figures of one key: ``reads[i]()`` gives its tensor at checkpoint i (None: the key is not there).

    Checkpoints are measured WINDOW at a time, chunk-major (see ``_run``): the tensors held are memory-mapped views
    (no copy), except a non-contiguous one, which flattening copies: it closes its window, so at most the first, the
    previous and the current tensor are ever copies. An unchanged tensor costs one comparison per element."""
    n = len(reads)
    t = Track(key, [r is not None for r in reads], *([None] * n for _ in range(7)))
    mean = t.is_running_stat
    t.mean = [None] * n if mean else None
    first = prev = None
    window: list[_Step] = []
    for i, read in enumerate(reads):
        if read is None:
            prev = None
            continue
        _check(should_stop)
        try:
            x = _values(read)
        except (ExplorerError, RuntimeError, TypeError, ValueError) as e:
            t.errors.append(f"checkpoint {i}: {e}")
            prev = None
            continue
        t.shape[i], t.dtype[i] = tuple(x.array.shape), x.dtype
        p = prev if prev is not None and prev.shape == t.shape[i] else None
        f = first if first is not None and first.shape == t.shape[i] else None
        step = _Step(i, x, p, f, mean, is_first=first is None)
        window.append(step)
        if first is None:
            first = step
        prev = step
        if len(window) >= WINDOW or not x.array.flags.c_contiguous:
            _run(window, t, should_stop)
            window = []
    if window:
        _run(window, t, should_stop)
    return t


ProgressFn = Callable[[int, int], None]


def measure(columns: list[dict], read: Callable[[int, str], Values], *, threads: int = THREADS,
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
