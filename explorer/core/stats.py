"""Statistics, histogram and health flags of one tensor, for every dtype a checkpoint can hold.

How it is computed (see ``/work/shared/PERFORMANCE.md`` for the measurements behind these choices):

* The tensor is read in chunks of 512K elements straight from its memory map, by two threads (torch intra-op threads
  set to 1 meanwhile), each reusing its own buffers: memory stays bounded (a few tens of MB) whatever the size.
* **Narrow dtypes** (bool, int8, uint8, int16, uint16, float16, bfloat16, every float8): one pass counts each raw bit
  pattern (at most 65,536 of them). Every figure then follows *exactly* from those counts: each pattern is one value.
* **Wide dtypes** (float32, float64, int32, uint32, int64, uint64, and the magnitude of complex numbers):
  pass 1 computes count, finite min/max, NaN/+Inf/-Inf counts and mean/variance per chunk, merged across chunks with
  Chan's method (accurate even for ``1 + 1e-3*noise``), plus a count of the top 16 bits of each value (65,536
  buckets in value order). Pass 2 (``exact=True``, the default) bins values into the histogram (float64
  arithmetic; the rare values within 1e-9 bin widths of an edge are placed by comparing them with the edge, as
  numpy does) and, for float32/int32, counts the low 16 bits of the values in the few buckets that hold the wanted
  percentiles and the zeros -- which makes percentiles and the zero count exact. For float32/int32 (range = min..max)
  a bucket whose whole value span lies inside one bin gives that bin its count from pass 1; pass 2 then picks out
  (one 65,536-entry table lookup per value, then numpy compaction) and bins only the values of the buckets that
  straddle a bin edge or are refined -- ~10% of the values for Gaussian data -- unless they are more than
  :data:`SELECT_MAX` of them (then every value is binned); when there are none, there is no pass 2 at all.
  For 64-bit values the elements of
  the percentile buckets are gathered (exact) unless there are more than :data:`GATHER_LIMIT`, when the percentile
  is interpolated inside its bucket (said in ``notes``); zeros are counted in pass 1.
  With ``exact=False`` there is no pass 2: histogram and percentiles are interpolated from the 65,536 buckets
  (a bucket spans <= 0.8% of its value for float32), float32 zeros are the zero buckets (|x| < 2**-133);
  ``TensorStats.exact`` is then False and ``notes`` says what was estimated. Roughly 3-4x faster.
* Threads: while our two threads run, torch's intra-op threads are set to 1 (process-wide; restored after).

Health flags (``nan``, ``inf``, ``all_zeros``, ``constant``, ``extreme``) say what the values are; what a key is
meant to hold (a fresh BatchNorm's zero ``running_mean``, ones ``running_var``, 0 ``num_batches_tracked``, its
initial weight of ones and bias of zeros) is told
in ``info`` instead, by :func:`with_context` / :func:`explain_flags` from the key's name and its sibling keys.

Conventions: min, max, mean, std, L2, max |x|, percentiles and the histogram cover the *finite* values; NaN and
+/-Inf are counted aside (they never break the range). ``std`` is the population standard deviation (ddof=0, as
``numpy.std``). Percentiles use numpy's default (linear) interpolation. Complex tensors are measured by their
magnitude |z| (a NaN in either part makes |z| NaN; an infinite part makes it +Inf). Integer and bool data get
integer-aligned bins (edges on half-integers). A constant tensor gets the range ``v +/- max(0.5, |v|/1000)``.
Values of int64/uint64 beyond 2**53 are measured as float64 (rounded).
"""
from __future__ import annotations

import contextlib
import dataclasses
import itertools
import math
import threading
from dataclasses import dataclass, field
from typing import Callable, Iterator, Sequence

import numpy as np
import torch

from ..errors import Cancelled, ExplorerError, UnsupportedDtypeError
from .records import RUNNING_STAT_NAMES, dtype_name

CHUNK = 1 << 20              # elements per chunk: stays in cache, amortises the per-op overhead
STATS_CHUNK = CHUNK // 2     # elements per chunk of tensor_stats: its ~8 ops per chunk then mostly hit L2
PASS2_CHUNK = CHUNK // 2     # pass 2 holds ~7 bytes of buffers per element of a chunk
THREADS = 2                  # worker threads for large tensors
PARALLEL_MIN = 4 * CHUNK     # below this, one thread
SELECT_MAX = 0.6             # pass 2 bins only the values of edge-straddling/refined buckets, if at most this share
GATHER_LIMIT = 4 << 20       # 64-bit values gathered for exact percentiles, at most (32 MB)
EXTREME = 1e4                # a float tensor with max |x| above this is flagged "extreme"
DEFAULT_PERCENTILES = (1, 5, 25, 50, 75, 95, 99)

NAN, INF, ALL_ZEROS, CONSTANT, EXTREME_FLAG = "nan", "inf", "all_zeros", "constant", "extreme"
NO_DATA = "no_data"   # saved from the meta device: a shape and a dtype, no values ("no data (meta)")

ProgressFn = Callable[[int, int], None]       # progress(done, total): elements processed so far of total
StopFn = Callable[[], bool]


# ---- results ---------------------------------------------------------------------------------------------------------
@dataclass
class Histogram:
    """Bin ``i`` counts the finite values ``edges[i] <= x < edges[i+1]`` (the last bin also holds ``x == edges[-1]``).

    NaN and +/-Inf are counted aside; values outside an explicit range are counted in ``below``/``above``.
    """

    edges: np.ndarray
    counts: np.ndarray
    nan: int = 0
    posinf: int = 0
    neginf: int = 0
    below: int = 0
    above: int = 0
    integer: bool = False       # bins are integer-aligned (edges on half-integers)
    exact: bool = True          # False: interpolated from 65,536 value buckets (see TensorStats.notes)

    @property
    def centers(self) -> np.ndarray:
        return (self.edges[:-1] + self.edges[1:]) / 2

    def to_json(self) -> dict:
        return {"edges": [float(e) for e in self.edges], "counts": [int(c) for c in self.counts],
                "nan": self.nan, "posinf": self.posinf, "neginf": self.neginf, "below": self.below,
                "above": self.above, "integer": self.integer, "exact": self.exact}


@dataclass
class TensorStats:
    """What the detail pane shows for one tensor. Figures are over finite values; None when there are none."""

    dtype: str
    numel: int                      # every element, NaN/Inf included
    count: int                      # finite values
    min: float | None
    max: float | None
    mean: float | None
    std: float | None
    l2: float | None
    absmax: float | None
    zero_count: int
    nan: int
    posinf: int
    neginf: int
    percentiles: dict[float, float | None]
    histogram: Histogram
    flags: list[str]
    exact: bool = True
    notes: list[str] = field(default_factory=list)
    measured: str = "value"         # "magnitude" for complex tensors
    info: list[str] = field(default_factory=list)   # what the values mean that is no problem (see explain_flags)

    @property
    def zeros(self) -> float:
        """Fraction of zeros among all elements (0.0 for an empty tensor)."""
        return self.zero_count / self.numel if self.numel else 0.0

    def to_json(self, key: str, shape: Sequence[int], dtype: str) -> dict:
        return {
            "key": key, "shape": list(shape), "dtype": dtype, "count": self.count, "numel": self.numel,
            "min": _num(self.min), "max": _num(self.max), "mean": _num(self.mean), "std": _num(self.std),
            "l2": _num(self.l2), "absmax": _num(self.absmax), "zeros": self.zeros, "zero_count": self.zero_count,
            "nan": self.nan, "posinf": self.posinf, "neginf": self.neginf,
            "percentiles": {_pkey(p): _num(v) for p, v in self.percentiles.items()},
            "histogram": self.histogram.to_json(), "flags": list(self.flags), "exact": self.exact,
            "notes": list(self.notes), "measured": self.measured, "info": list(self.info),
        }


def _num(v):
    if v is None:
        return None
    v = float(v)
    return v if math.isfinite(v) else None


def _pkey(p) -> str:
    p = float(p)
    return str(int(p)) if p.is_integer() else repr(p)


# ---- threads ---------------------------------------------------------------------------------------------------------
_threads_lock = threading.Lock()
_threads_users = 0
_threads_saved = 1


@contextlib.contextmanager
def _single_intraop():
    """torch intra-op threads = 1 while our own threads run (restored by the last user)."""
    global _threads_users, _threads_saved
    with _threads_lock:
        if _threads_users == 0:
            _threads_saved = torch.get_num_threads()
            torch.set_num_threads(1)
        _threads_users += 1
    try:
        yield
    finally:
        with _threads_lock:
            _threads_users -= 1
            if _threads_users == 0:
                torch.set_num_threads(_threads_saved)


def _check_stop(should_stop):
    if should_stop is not None and should_stop():
        raise Cancelled("cancelled")


def run_chunked(n_chunks: int, make_state: Callable[[], object], work: Callable[[object, int], int],
                *, total: int, progress: ProgressFn | None = None, should_stop: StopFn | None = None,
                threads: int = THREADS, dynamic: bool = False) -> list:
    """Call ``work(state, i)`` for every chunk index, spread over ``threads`` threads, each with its own state.

    ``work`` returns the number of elements it handled (for progress). The calling thread is one of the workers and
    the only one calling ``progress``/``should_stop``. Returns the states, to be merged by the caller.
    ``dynamic``: each thread takes the next chunk not yet taken (a thread the OS holds back leaves its share to
    the others; which state gets which chunk then varies from run to run), else thread ``w`` takes chunks
    ``w, w + threads, ...``.
    """
    threads = max(1, min(threads, n_chunks))
    states = [make_state() for _ in range(threads)]
    if threads == 1:
        done = 0
        with _single_intraop():  # torch's own threads on ~1M-element ops cost more than they give here
            for i in range(n_chunks):
                _check_stop(should_stop)
                done += work(states[0], i)
                if progress is not None:
                    progress(done, total)
        return states
    done = [0] * threads
    stop = threading.Event()
    errors: list[BaseException] = []
    taken = itertools.count()   # next() is atomic under the GIL

    def indices(w: int) -> Iterator[int]:
        if not dynamic:
            yield from range(w, n_chunks, threads)
            return
        while (i := next(taken)) < n_chunks:
            yield i

    def loop(w: int, main: bool):
        try:
            for i in indices(w):
                if stop.is_set():
                    return
                if main:
                    if should_stop is not None and should_stop():
                        stop.set()
                        raise Cancelled("cancelled")
                done[w] += work(states[w], i)
                if main and progress is not None:
                    progress(sum(done), total)
        except BaseException as e:  # noqa: BLE001 - re-raised in the calling thread
            stop.set()
            errors.append(e)

    with _single_intraop():
        helpers = [threading.Thread(target=loop, args=(w, False), daemon=True, name=f"stats-{w}")
                   for w in range(1, threads)]
        for t in helpers:
            t.start()
        loop(0, True)
        for t in helpers:
            t.join()
    if errors:
        for e in errors:
            if isinstance(e, Cancelled):
                raise e
        raise errors[0]
    if progress is not None:
        progress(total, total)
    return states


# ---- chunks ----------------------------------------------------------------------------------------------------------
def dense_order(t: torch.Tensor) -> torch.Tensor:
    """A permutation of ``t``'s dimensions that is contiguous when ``t`` is a permuted dense block (a saved
    transpose); order-free statistics use it to read memory sequentially."""
    if t.is_contiguous() or t.dim() < 2:
        return t
    order = sorted(range(t.dim()), key=lambda d: (-t.stride(d), -t.shape[d]))
    p = t.permute(order)
    return p if p.is_contiguous() else t


def iter_chunks(t: torch.Tensor, chunk: int = CHUNK) -> Iterator[torch.Tensor]:
    """1-D chunks of ``t`` in its logical (row-major) order, each at most ``chunk`` elements; views when possible,
    a bounded copy per chunk otherwise. The split depends only on the shape and whether ``t`` is contiguous."""
    n = t.numel()
    if n == 0:
        return
    if t.dim() == 0:
        yield t.reshape(1)
        return
    if t.is_contiguous():
        flat = t.view(-1)
        for i in range(0, n, chunk):
            yield flat[i:i + chunk]
        return
    yield from _row_chunks(t, chunk)


def _row_chunks(t: torch.Tensor, chunk: int) -> Iterator[torch.Tensor]:
    if t.dim() <= 1:
        for i in range(0, t.numel(), chunk):
            yield t[i:i + chunk].contiguous()
        return
    row = t[0].numel() if t.shape[0] else 0
    if row == 0:
        return
    if row > chunk:
        for r in range(t.shape[0]):
            yield from _row_chunks(t[r], chunk)
        return
    rows = max(1, chunk // row)
    for i in range(0, t.shape[0], rows):
        yield t[i:i + rows].reshape(-1)


def paired_chunks(a: torch.Tensor, b: torch.Tensor, chunk: int = CHUNK) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Aligned 1-D chunks of two tensors of the same shape, in logical order."""
    if a.is_contiguous() and b.is_contiguous():
        return zip(iter_chunks(a, chunk), iter_chunks(b, chunk))
    if a.dim() == 0:
        return iter([(a.reshape(1), b.reshape(1))])
    return zip(_row_chunks(a, chunk), _row_chunks(b, chunk))


# ---- dtype plans -----------------------------------------------------------------------------------------------------
_NARROW = {"bool", "int8", "uint8", "int16", "uint16", "float16", "bfloat16", "float8_e4m3fn", "float8_e5m2",
           "float8_e4m3fnuz", "float8_e5m2fnuz", "float8_e8m0fnu"}
_INTEGER = {"bool", "int8", "uint8", "int16", "uint16", "int32", "uint32", "int64", "uint64"}
_table_cache: dict[str, np.ndarray] = {}


def _value_table(name: str, dtype: torch.dtype) -> np.ndarray:
    """float64 value of every raw bit pattern of a narrow dtype."""
    tab = _table_cache.get(name)
    if tab is not None:
        return tab
    bits = 8 if torch.empty((), dtype=dtype).element_size() == 1 else 16
    raw = np.arange(1 << bits, dtype=np.uint8 if bits == 8 else np.uint16)
    if name == "bool":
        tab = (raw != 0).astype(np.float64)
    elif name in ("int8", "uint8", "int16", "uint16", "float16"):
        tab = raw.view({"int8": np.int8, "uint8": np.uint8, "int16": np.int16, "uint16": np.uint16,
                        "float16": np.float16}[name]).astype(np.float64)
    else:  # bfloat16, float8: numpy cannot hold them; torch can
        tab = torch.from_numpy(raw.view(np.int8 if bits == 8 else np.int16).copy()).view(dtype).float().double() \
            .numpy()
    tab.setflags(write=False)
    _table_cache[name] = tab
    return tab


@dataclass
class _Plan:
    name: str
    narrow: bool
    integer: bool
    measured: str = "value"
    wide: torch.dtype | None = None     # the dtype values are measured in (wide dtypes)
    bits: int = 0                       # 8/16 (narrow) or 32/64 (wide)
    convert: Callable | None = None     # chunk -> values in ``wide`` dtype


def _plan(t: torch.Tensor) -> _Plan:
    name = dtype_name(t.dtype)
    if t.device.type == "meta":
        raise UnsupportedDtypeError(f"no data (meta): this tensor ({name}) was saved from the meta device and has no "
                                    "values to measure")
    if t.is_quantized or name.startswith(("qint", "quint")) or name in ("float4_e2m1fn_x2",):
        raise UnsupportedDtypeError(f"statistics of {name} tensors are not supported (quantized or packed values); "
                                    "dequantize them first")
    if name in _NARROW:
        return _Plan(name, True, name in _INTEGER, bits=8 if t.element_size() == 1 else 16)
    if name in ("float32", "int32"):
        return _Plan(name, False, name == "int32", wide=t.dtype, bits=32)
    if name in ("float64", "int64"):
        return _Plan(name, False, name == "int64", wide=t.dtype, bits=64)
    if name == "uint32":
        return _Plan(name, False, True, wide=torch.int64, bits=64, convert=lambda c: c.to(torch.int64))
    if name == "uint64":
        return _Plan(name, False, True, wide=torch.float64, bits=64, convert=lambda c: c.to(torch.float64))
    if name in ("complex64", "complex32"):
        return _Plan(name, False, False, "magnitude", torch.float32, 32,
                     lambda c: (c if c.dtype == torch.complex64 else c.to(torch.complex64)).abs())
    if name == "complex128":
        return _Plan(name, False, False, "magnitude", torch.float64, 64, lambda c: c.abs())
    raise UnsupportedDtypeError(f"statistics of {name} tensors are not supported")


_INT_VIEW = {32: torch.int32, 64: torch.int64}
_NP_INT = {32: np.int32, 64: np.int64}
_NP_FLOAT = {32: np.float32, 64: np.float64}


# ---- narrow dtypes: count every bit pattern --------------------------------------------------------------------------
class _NarrowState:
    def __init__(self, bits: int):
        self.bits = bits
        self.counts = torch.zeros(1 << bits, dtype=torch.int64)
        self.buf = torch.empty(CHUNK, dtype=torch.int32) if bits == 16 else None


def _narrow_work(chunks: list, bits: int):
    def work(st: _NarrowState, i: int) -> int:
        c = chunks[i]
        n = c.numel()
        if bits == 8:
            st.counts += torch.bincount(c.view(torch.uint8), minlength=256)
        else:
            buf = st.buf[:n]
            buf.copy_(c.view(torch.int16))
            buf.bitwise_and_(0xFFFF)
            st.counts += torch.bincount(buf, minlength=65536)
        return n
    return work


def _sorted_support(counts: np.ndarray, values: np.ndarray):
    """(sorted finite values, their counts) of the non-empty patterns, plus nan/posinf/neginf counts."""
    nz = counts > 0
    v, c = values[nz], counts[nz]
    nan = int(c[np.isnan(v)].sum())
    posinf = int(c[v == np.inf].sum())
    neginf = int(c[v == -np.inf].sum())
    fin = np.isfinite(v)
    v, c = v[fin], c[fin]
    order = np.argsort(v, kind="stable")
    return v[order], c[order], nan, posinf, neginf


# ---- wide dtypes -----------------------------------------------------------------------------------------------------
class _WideState:
    def __init__(self, plan: _Plan, chunk: int, second: bool = False):
        self.n = 0
        self.min = math.inf
        self.max = -math.inf
        self.mean = 0.0
        self.m2 = 0.0
        self.sumsq = 0.0
        self.nan = self.posinf = self.neginf = 0
        self.zeros = 0
        self.buckets = torch.zeros(65536, dtype=torch.int64)
        self.nonfinite_chunks: set[int] = set()
        fl = plan.wide.is_floating_point
        self.ibuf = torch.empty(chunk, dtype=_INT_VIEW[plan.bits])
        if second:   # pass 2: float64 binning, LUT slots
            self.fbuf = None
            self.f64 = torch.empty(chunk, dtype=torch.float64)
            self.sbuf = self.f64.view(torch.int32)[:chunk]   # used once the float64 binning is done
            self.mbuf = torch.empty(chunk, dtype=torch.bool)
        else:
            self.fbuf = torch.empty(chunk, dtype=plan.wide if fl else torch.float64)
        self.hist: torch.Tensor | None = None
        self.refine: torch.Tensor | None = None
        self.gathered: list[torch.Tensor] = []

    def merge(self, o: "_WideState"):
        if o.n:
            if self.n == 0:
                self.mean, self.m2 = o.mean, o.m2
            else:
                n = self.n + o.n
                d = o.mean - self.mean
                self.mean += d * o.n / n
                self.m2 += o.m2 + d * d * self.n * o.n / n
            self.n += o.n
        self.min, self.max = min(self.min, o.min), max(self.max, o.max)
        self.sumsq += o.sumsq
        self.nan += o.nan
        self.posinf += o.posinf
        self.neginf += o.neginf
        self.zeros += o.zeros
        self.buckets += o.buckets
        self.nonfinite_chunks |= o.nonfinite_chunks
        if o.hist is not None:
            self.hist = o.hist if self.hist is None else self.hist + o.hist
        if o.refine is not None:
            self.refine = o.refine if self.refine is None else self.refine + o.refine
        self.gathered += o.gathered


def _finite_values(v: torch.Tensor, st: _WideState) -> torch.Tensor:
    nan = torch.isnan(v)
    st.nan += int(nan.sum())
    st.posinf += int(torch.isposinf(v).sum())
    st.neginf += int(torch.isneginf(v).sum())
    return v[torch.isfinite(v)]


def _top16(bits_view: torch.Tensor, out: torch.Tensor, width: int) -> torch.Tensor:
    """Raw top 16 bits of each value (0..65535), into ``out``."""
    torch.bitwise_right_shift(bits_view, width - 16, out=out)
    return out.bitwise_and_(0xFFFF)


_ONES = torch.ones(1, dtype=torch.int64)


def _count_into(st, idx: torch.Tensor, size: int) -> None:
    """st.refine[idx] += 1 for each index, into one persistent accumulator (a large fresh bincount output per
    chunk costs more in page faults and allocator contention than the counting itself)."""
    if st.refine is None:
        st.refine = torch.zeros(size, dtype=torch.int64)
    st.refine.index_add_(0, idx, _ONES.expand(idx.numel()))


def _compact(v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``v[mask]`` for 1-D ``v`` and ``mask``, through numpy (``flatnonzero`` + ``take``): for sparse masks ~10x
    faster than torch's boolean indexing, whose nonzero costs ~2 ms per 1M elements whatever the density."""
    a = v.numpy()
    return torch.from_numpy(a.take(np.flatnonzero(mask.numpy())))


_EDGE_EPS = 1e-9   # in bin widths: float64 binning can misplace only values this close to an edge


def _ambiguous(f: torch.Tensor, thr: float, block: int = 1024) -> torch.Tensor:
    """Indices where ``f > thr``, found block by block (few blocks hold any: values exactly on an edge)."""
    n = f.numel()
    m = n - n % block
    parts = []
    if m:
        fb = f[:m].view(-1, block)
        blocks = torch.nonzero(fb.amax(dim=1) > thr).squeeze(1)
        if blocks.numel():
            local = torch.nonzero(fb[blocks] > thr)
            parts.append(blocks[local[:, 0]] * block + local[:, 1])
    if m < n:
        parts.append(torch.nonzero(f[m:] > thr).squeeze(1) + m)
    return torch.cat(parts) if parts else torch.empty(0, dtype=torch.int64)


def _bin_values(v: torch.Tensor, f: torch.Tensor, idx: torch.Tensor, lo: float, norm: float, nb: int,
                edges: torch.Tensor, clip: bool) -> torch.Tensor:
    """Bin index of each value into ``idx``, exactly as ``edges[i] <= x < edges[i+1]`` (last bin closed).

    ``clip``: every value is inside, bins 0..nb-1. Otherwise 0 = below, 1..nb = the bins, nb+1 = above.
    Binning is ``(x - lo) * norm`` in float64; the few values within ``_EDGE_EPS`` bin widths of an edge are then
    placed by comparing them with the edges themselves (as numpy.histogram does).
    """
    f.copy_(v)
    f.sub_(lo).mul_(norm)
    if clip:                          # x >= lo exactly, so f >= 0; x == max may give f == nb: clamped below
        pass
    else:                             # (clamped values sit mid-bin, away from the ambiguity test)
        f.clamp_(-0.5, nb + 0.5).add_(1)
    idx.copy_(f)                      # f >= 0: truncation is floor
    if clip:
        idx.clamp_(max=nb - 1)
    fmin, fmax = (float(x) for x in torch.aminmax(f.frac_()))     # f >= 0: the fraction, in [0, 1)
    if fmin < _EDGE_EPS or fmax > 1 - _EDGE_EPS:
        f.sub_(0.5).abs_()            # distance of the fraction from 1/2
        amb = _ambiguous(f, 0.5 - _EDGE_EPS)
        x = v[amb].to(torch.float64)
        b = torch.searchsorted(edges, x, right=True) - 1
        b[x == edges[-1]] = nb - 1
        if clip:
            b.clamp_(0, nb - 1)
        else:
            b.clamp_(-1, nb).add_(1)
        idx[amb] = b.to(idx.dtype)
    return idx


class _Wide:
    """Pass 1 and pass 2 over the chunks of a wide-dtype tensor."""

    def __init__(self, plan: _Plan, chunks: list, exact: bool):
        self.plan = plan
        self.chunks = chunks
        self.float = plan.wide.is_floating_point
        self.zero_raw = (0, 0x8000) if self.float else (0,)
        # zeros: 32-bit data counts them exactly in pass 2 (refining the zero buckets) or, estimated, takes the zero
        # buckets (|x| < 2**-133 for float32); otherwise they are counted here, in the chunks whose zero bucket is hit
        self.count_zeros = plan.bits == 64 or (not exact and not self.float)
        self.nonfinite_chunks: set[int] = set()
        self.moments: list[tuple[int, float, float] | None] = [None] * len(chunks)

    def fold_moments(self, st: _WideState) -> None:
        """Chan et al.: merge the chunks' (n, mean, M2) in chunk order into ``st`` (and the sum of squares)."""
        for m in self.moments:
            if m is None:
                continue
            n, mean_c, m2_c = m
            if st.n == 0:
                st.mean, st.m2 = mean_c, m2_c
            else:
                tot = st.n + n
                d = mean_c - st.mean
                st.mean += d * n / tot
                st.m2 += m2_c + d * d * st.n * n / tot
            st.n += n
            st.sumsq += m2_c + n * mean_c * mean_c

    def values(self, i: int) -> torch.Tensor:
        c = self.chunks[i]
        return self.plan.convert(c) if self.plan.convert is not None else c

    # pass 1: moments, min/max, nan/inf, zeros, top-16-bit buckets
    def pass1(self, st: _WideState, i: int) -> int:
        v = self.values(i)
        n_all = v.numel()
        if self.float:
            mn, mx = torch.aminmax(v)
            mn, mx = float(mn), float(mx)
            if not (math.isfinite(mn) and math.isfinite(mx)):
                st.nonfinite_chunks.add(i)
                v = _finite_values(v, st)
                if v.numel() == 0:
                    return n_all
                mn, mx = (float(x) for x in torch.aminmax(v))
            n = v.numel()
            s = float(v.sum())
            mean_c = s / n
            buf = st.fbuf[:n]
            torch.sub(v, mean_c, out=buf)
            buf.mul_(buf)
            m2_c = float(buf.sum())
            if not (math.isfinite(s) and math.isfinite(m2_c)):  # float32 overflow near 3e38: redo in float64
                w = v.double()
                mean_c = float(w.sum()) / n
                w.sub_(mean_c)
                m2_c = float(torch.dot(w, w))
        else:
            mn, mx = (int(x) for x in torch.aminmax(v))
            n = v.numel()
            buf = st.fbuf[:n]
            buf.copy_(v)
            mean_c = float(buf.sum()) / n
            buf.sub_(mean_c)
            buf.mul_(buf)
            m2_c = float(buf.sum())
        self.moments[i] = (n, mean_c, m2_c)    # merged in chunk order afterwards, whichever thread took it
        st.min = min(st.min, mn)
        st.max = max(st.max, mx)
        raw = _top16(v.view(_INT_VIEW[self.plan.bits]), st.ibuf[:n], self.plan.bits)
        bc = torch.bincount(raw, minlength=65536)
        st.buckets += bc
        if self.count_zeros and any(int(bc[r]) for r in self.zero_raw):
            st.zeros += n - int(torch.count_nonzero(v))
        return n_all

    # pass 2: histogram (float64 binning) and refinement of percentile buckets
    def pass2_factory(self, edges: np.ndarray | None, clip: bool, lut: torch.Tensor | None,
                      gather_lut: torch.Tensor | None, select: torch.Tensor | None = None):
        """``select`` (bool per raw top-16 bucket, 32-bit data only): only the values of the selected buckets are
        binned/refined (the other buckets' histogram bins follow from pass 1's bucket counts)."""
        plan = self.plan
        nb = len(edges) - 1 if edges is not None else 0   # no edges: no histogram in this pass
        lo = float(edges[0]) if nb else 0.0
        norm = nb / (float(edges[-1]) - lo) if nb else 0.0
        edges_t = torch.from_numpy(np.ascontiguousarray(edges, dtype=np.float64)) if nb else None
        refine_size = (int(lut.max()) + 1) << 16 if lut is not None else 0
        # Values of the refined buckets (percentiles, zeros: usually a small share) are picked out by one table
        # lookup and compaction, then counted by (slot << 16 | low 16 bits); every value passed to ``piece`` is
        # binned in float64 (with ``select``, only the values of the selected buckets are).
        refine_sel = (lut > 0) if lut is not None else None

        def work(st: _WideState, i: int) -> int:
            v = self.values(i)
            n_all = v.numel()
            if i in self.nonfinite_chunks:
                v = v[torch.isfinite(v)]
            for off in range(0, v.numel(), PASS2_CHUNK):  # half chunks: pass 2 needs more buffers per element
                p = v[off:off + PASS2_CHUNK]
                if select is not None:
                    p = selected(st, p)
                    if not p.numel():
                        continue
                piece(st, p)
            return n_all

        def selected(st: _WideState, v: torch.Tensor) -> torch.Tensor:
            """The values of ``v`` whose top-16 bucket is selected (one table lookup per value, then compaction)."""
            n = v.numel()
            raw = _top16(v.view(torch.int32), st.ibuf[:n], 32)
            mask = torch.index_select(select, 0, raw, out=st.mbuf[:n])
            return _compact(v, mask)

        def piece(st: _WideState, v: torch.Tensor) -> None:
            n = v.numel()
            if nb:
                idx = _bin_values(v, st.f64[:n], st.ibuf[:n], lo, norm, nb, edges_t, clip)
                h = torch.bincount(idx, minlength=nb if clip else nb + 2)
                if st.hist is None:
                    st.hist = h
                else:
                    st.hist += h
            if lut is not None:   # 32-bit data
                bits = v.view(torch.int32)
                raw = _top16(bits, st.ibuf[:n], 32)
                mask = torch.index_select(refine_sel, 0, raw, out=st.mbuf[:n])
                sb = _compact(bits, mask)
                k = sb.numel()
                if k:
                    raw = _top16(sb, st.ibuf[:k], 32)
                    slot = torch.index_select(lut, 0, raw, out=st.sbuf[:k])
                    low = torch.bitwise_and(sb, 0xFFFF, out=raw)
                    slot.bitwise_left_shift_(16).bitwise_or_(low)
                    _count_into(st, slot, refine_size)
            if gather_lut is not None:
                raw = _top16(v.view(_INT_VIEW[plan.bits]), st.ibuf[:n], plan.bits)
                mask = torch.index_select(gather_lut, 0, raw)
                st.gathered.append(v[mask].clone())
        return work


def _key_order(bits: int, is_float: bool) -> np.ndarray:
    """Raw top-16 bucket numbers in ascending value order."""
    r = np.arange(65536, dtype=np.int64)
    if is_float:
        key = np.where(r & 0x8000, r ^ 0xFFFF, r | 0x8000)
    else:
        key = r ^ 0x8000
    return np.argsort(key, kind="stable")


def _decode(raw: np.ndarray, bits: int, is_float: bool) -> np.ndarray:
    """float64 values of raw bit patterns (given as int64 holding the unsigned pattern)."""
    if bits == 32:
        u = (raw & 0xFFFFFFFF).astype(np.uint32)
        return (u.view(np.float32) if is_float else u.view(np.int32)).astype(np.float64)
    u = raw.astype(np.uint64)
    return (u.view(np.float64) if is_float else u.view(np.int64)).astype(np.float64)


def _bucket_bounds(raws: np.ndarray, bits: int, is_float: bool) -> tuple[np.ndarray, np.ndarray]:
    """Value interval [low, high] covered by each raw top-16 bucket."""
    shift = bits - 16
    base = raws.astype(np.int64) << np.int64(shift) if bits == 32 else (raws.astype(np.uint64) << np.uint64(shift))
    span = (1 << shift) - 1
    if bits == 32:
        a, b = _decode(base, 32, is_float), _decode(base + span, 32, is_float)
    else:
        a = _decode(base.view(np.int64), 64, is_float)
        b = _decode((base + np.uint64(span)).view(np.int64), 64, is_float)
    return np.minimum(a, b), np.maximum(a, b)


# ---- shared finishing ------------------------------------------------------------------------------------------------
def _lerp(a: float, b: float, t: float) -> float:
    """numpy's interpolation between neighbouring order statistics (``numpy.percentile``, method 'linear')."""
    d = b - a
    return b - d * (1 - t) if t >= 0.5 else a + d * t


def _ranks(n: int, percentiles: Sequence[float]) -> dict[float, tuple[int, int, float]]:
    out = {}
    for p in percentiles:
        if not 0 <= float(p) <= 100:
            raise ExplorerError(f"percentile {p} is outside 0..100")
        h = (n - 1) * float(p) / 100.0
        lo = int(math.floor(h))
        out[p] = (lo, min(lo + 1, n - 1), h - lo)
    return out


def _kth(sorted_values: np.ndarray, counts: np.ndarray, ranks: np.ndarray) -> np.ndarray:
    cum = np.cumsum(counts)
    return sorted_values[np.searchsorted(cum, ranks, side="right")]


def _choose_edges(lo: float | None, hi: float | None, bins: int, integer: bool, rng) -> tuple[np.ndarray, bool, bool]:
    """Bin edges: (edges, integer_aligned, clipped_to_data)."""
    if bins < 1:
        raise ExplorerError(f"--bins must be at least 1 (got {bins})")
    if rng is not None:
        a, b = float(rng[0]), float(rng[1])
        if not (math.isfinite(a) and math.isfinite(b)) or not a < b:
            raise ExplorerError(f"histogram range {rng!r} must be two finite numbers, low < high")
        # every finite value inside: binned as with the data's own range (no below/above, edge-straddling buckets)
        covers = lo is None or (a <= lo and hi <= b)
        return np.linspace(a, b, bins + 1), False, covers
    if lo is None:
        return np.linspace(0.0, 1.0, bins + 1), False, True
    if integer:
        span = int(round(hi - lo)) + 1
        width = max(1, -(-span // bins))
        nb = -(-span // width)
        return lo - 0.5 + width * np.arange(nb + 1, dtype=np.float64), True, True
    if lo == hi:
        half = max(0.5, abs(lo) / 1000.0)
        return np.linspace(lo - half, lo + half, bins + 1), False, True
    with np.errstate(over="ignore", invalid="ignore"):
        edges = np.linspace(lo, hi, bins + 1)
        if not np.all(np.isfinite(edges)):  # a range wider than float64 (values near +/-1.8e308)
            t = np.arange(bins + 1) / bins
            edges = lo * (1 - t) + hi * t
    return edges, False, True


def _hist_from_support(v: np.ndarray, c: np.ndarray, edges: np.ndarray) -> tuple[np.ndarray, int, int]:
    idx = np.searchsorted(edges, v, side="right") - 1
    nb = len(edges) - 1
    idx[v == edges[-1]] = nb - 1
    below = int(c[idx < 0].sum())
    above = int(c[idx >= nb].sum())
    ok = (idx >= 0) & (idx < nb)
    return np.bincount(idx[ok], weights=c[ok], minlength=nb).astype(np.int64), below, above


def _flags(plan: _Plan, count: int, mn, mx, absmax, nan: int, posinf: int, neginf: int, numel: int) -> list[str]:
    flags = []
    if nan:
        flags.append(NAN)
    if posinf or neginf:
        flags.append(INF)
    if count and count == numel and mn == 0 and mx == 0:
        flags.append(ALL_ZEROS)
    elif count > 1 and mn == mx:
        flags.append(CONSTANT)
    if not plan.integer and absmax is not None and absmax > EXTREME:
        flags.append(EXTREME_FLAG)
    return flags


FRESH_BN_MEAN = "fresh BatchNorm running_mean (zeros): what BatchNorm holds before its first training step"
FRESH_BN_VAR = "fresh BatchNorm running_var (ones): what BatchNorm holds before its first training step"
FRESH_BN_COUNT = "fresh BatchNorm num_batches_tracked (0): no training step counted yet"
FRESH_BN_WEIGHT = "BatchNorm weight of ones: its initial value (untrained, or never updated)"
FRESH_BN_BIAS = "BatchNorm bias of zeros: its initial value (untrained, or never updated)"
_BN_NAMES = RUNNING_STAT_NAMES + ("weight", "bias")


def bn_siblings(key: str, has: Callable[[str], bool]) -> list[str]:
    """The BatchNorm buffers beside ``key`` (same module) that ``has(k)`` says exist: what :func:`explain_flags`
    needs to know about a key's siblings."""
    prefix, dot, name = key.rpartition(".")
    if name not in _BN_NAMES:
        return []
    return [k for k in (f"{prefix}{dot}{b}" for b in RUNNING_STAT_NAMES) if k != key and has(k)]


def explain_flags(key: str, flags: Sequence[str], siblings, constant: float | None = None) \
        -> tuple[list[str], list[str]]:
    """(flags, info): health flags that are what the key is meant to hold move to ``info``, said in words.

    A ``running_mean`` of zeros beside a ``running_var`` of the same module is what a freshly built BatchNorm (or
    another norm layer tracking running statistics) holds, as is a ``running_var`` of ones (``constant`` is the
    tensor's value when flagged "constant"). Decided from the key's name and its sibling keys (``siblings``: keys of
    the same state dict, e.g. from :func:`bn_siblings`); so is a ``num_batches_tracked`` of 0, and the affine
    ``weight`` of ones / ``bias`` of zeros of such a layer (its initial values: said, not flagged). An all-zero
    weight (of a norm layer too) or any other tensor stays flagged.
    """
    flags, info = list(flags), []
    prefix, dot, name = key.rpartition(".")
    sib = set(siblings or ())
    if name == "running_mean" and ALL_ZEROS in flags and f"{prefix}{dot}running_var" in sib:
        flags.remove(ALL_ZEROS)
        info.append(FRESH_BN_MEAN)
    elif name == "running_var" and CONSTANT in flags and constant == 1.0 and f"{prefix}{dot}running_mean" in sib:
        flags.remove(CONSTANT)
        info.append(FRESH_BN_VAR)
    elif name == "num_batches_tracked" and ALL_ZEROS in flags and f"{prefix}{dot}running_mean" in sib:
        flags.remove(ALL_ZEROS)
        info.append(FRESH_BN_COUNT)
    elif name in ("weight", "bias") and {f"{prefix}{dot}running_mean", f"{prefix}{dot}running_var"} <= sib:
        if name == "weight" and CONSTANT in flags and constant == 1.0:
            flags.remove(CONSTANT)
            info.append(FRESH_BN_WEIGHT)
        elif name == "bias" and ALL_ZEROS in flags:
            flags.remove(ALL_ZEROS)
            info.append(FRESH_BN_BIAS)
    return flags, info


def with_context(s: TensorStats, key: str, siblings) -> TensorStats:
    """``s`` with its flags explained for ``key`` (see :func:`explain_flags`): a copy when anything moved."""
    flags, info = explain_flags(key, s.flags, siblings, s.min if s.min == s.max else None)
    if not info:
        return s
    return dataclasses.replace(s, flags=flags, info=list(s.info) + info)


# ---- entry points ----------------------------------------------------------------------------------------------------
def _prepare(t: torch.Tensor):
    if not isinstance(t, torch.Tensor):
        raise ExplorerError(f"expected a tensor, got {type(t).__name__}")
    t = t.detach()
    if t.device.type not in ("cpu", "meta"):
        t = t.cpu()
    plan = _plan(t)
    t = dense_order(t)
    if t.is_contiguous():
        chunks = list(iter_chunks(t, STATS_CHUNK))
        parallel = t.numel() >= PARALLEL_MIN
    else:  # a strided view that no permutation makes dense: bounded copies, one thread
        chunks = list(iter_chunks(t, STATS_CHUNK))
        parallel = False
    return t, plan, chunks, parallel


def tensor_stats(t: torch.Tensor, *, bins: int = 256, range: tuple[float, float] | None = None,
                 percentiles: Sequence[float] = DEFAULT_PERCENTILES, progress: ProgressFn | None = None,
                 should_stop: StopFn | None = None, exact: bool = True) -> TensorStats:
    """Statistics, percentiles, histogram and health flags of ``t`` (any dtype, any size; read in chunks).

    ``range``: histogram range (default: the finite min..max, integer-aligned for integer data).
    ``exact`` matters for float32/64 and int32/64 data only (narrow dtypes are always exact in one pass):
    ``True`` every figure exact (two passes); ``False`` one pass (3-4x faster), histogram and percentiles
    interpolated from 65,536 value buckets. Whatever is estimated is said in ``notes``, and ``exact`` /
    ``histogram.exact`` are then False.
    ``progress(done, total)`` is called with elements processed; ``should_stop()`` returning True raises
    :class:`explorer.errors.Cancelled`.
    """
    if not isinstance(exact, bool):
        raise ExplorerError(f"exact must be True or False, not {exact!r}")
    with _single_intraop():  # our ops are small: torch's own threads only add barrier waits (awful under load)
        return next(_stats_steps(t, bins, range, percentiles, progress, should_stop, exact, False))


def tensor_stats_steps(t: torch.Tensor, *, bins: int = 256, range: tuple[float, float] | None = None,
                       percentiles: Sequence[float] = DEFAULT_PERCENTILES, progress: ProgressFn | None = None,
                       should_stop: StopFn | None = None) -> Iterator[TensorStats]:
    """The exact statistics of ``t`` (as ``tensor_stats``), in two steps, with no work done twice.

    Yields twice. First what pass 1 gives: when the exact figures need a second pass over the values (float32/64,
    int32/64, complex data) every figure but the histogram, percentiles and float zeros is exact, those are
    estimated from 65,536 value buckets, said in ``notes``, and ``exact`` is False; otherwise the exact result.
    Then the exact result. Between the two the caller may ``send`` a histogram range for the final figures -- e.g.
    one shared by two tensors so that their histograms overlay bin for bin -- at no extra pass.
    Progress covers both passes.
    """
    with _single_intraop():
        yield from _stats_steps(t, bins, range, percentiles, progress, should_stop, True, True)


def _stats_steps(t, bins, range, percentiles, progress, should_stop, exact, estimate_first) -> Iterator[TensorStats]:
    t, plan, chunks, parallel = _prepare(t)
    numel = t.numel()
    threads = THREADS if parallel else 1
    total = numel * (1 if plan.narrow or not (exact or range is not None) else 2)
    if plan.narrow:
        states = run_chunked(len(chunks), lambda: _NarrowState(plan.bits), _narrow_work(chunks, plan.bits),
                             total=total, progress=progress, should_stop=should_stop, threads=threads, dynamic=True)
        counts = sum(s.counts for s in states[1:]) + states[0].counts if len(states) > 1 else states[0].counts
        first = _finish_narrow(plan, counts.numpy(), numel, bins, range, percentiles)
        rng2 = yield first
        if estimate_first:   # steps: the second value, on the range sent (every figure follows from the counts)
            yield first if rng2 is None else _finish_narrow(plan, counts.numpy(), numel, bins, rng2, percentiles)
        return
    yield from _wide_steps(plan, chunks, numel, threads, bins, range, percentiles, bool(exact) or range is not None,
                           exact, progress, should_stop, total, estimate_first)


def _finish_narrow(plan: _Plan, counts: np.ndarray, numel: int, bins: int, rng, percentiles) -> TensorStats:
    table = _value_table(plan.name, getattr(torch, plan.name))
    v, c, nan, posinf, neginf = _sorted_support(counts, table)
    count = int(c.sum())
    if count:
        mn, mx = float(v[0]), float(v[-1])
        cf = c.astype(np.float64)
        mean = float((cf * v).sum() / count)
        var = float((cf * (v - mean) ** 2).sum() / count)
        std = math.sqrt(var)
        l2 = math.sqrt(float((cf * v * v).sum()))
        absmax = max(abs(mn), abs(mx))
        zeros = int(c[v == 0].sum())
        pct = {}
        for p, (lo, hi, frac) in _ranks(count, percentiles).items():
            a, b = _kth(v, c, np.array([lo, hi]))
            pct[p] = _lerp(float(a), float(b), frac)
    else:
        mn = mx = mean = std = l2 = absmax = None
        zeros = 0
        pct = {p: None for p in percentiles}
    edges, integer, _ = _choose_edges(mn, mx, bins, plan.integer, rng)
    hc, below, above = _hist_from_support(v, c, edges)
    hist = Histogram(edges, hc, nan, posinf, neginf, below, above, integer, True)
    flags = _flags(plan, count, mn, mx, absmax, nan, posinf, neginf, numel)
    return TensorStats(plan.name, numel, count, mn, mx, mean, std, l2, absmax, zeros, nan, posinf, neginf, pct,
                       hist, flags, True, [], plan.measured)


def _wide_steps(plan, chunks, numel, threads, bins, rng, percentiles, second_pass, exact, progress, should_stop,
                total, estimate_first: bool = False) -> Iterator[TensorStats]:
    """Yields the statistics: once, or -- with ``estimate_first`` when a second pass follows -- first the figures
    pass 1 alone gives (histogram and percentiles estimated from the value buckets, ``exact`` False), then the
    result of both passes."""
    eng = _Wide(plan, chunks, exact)
    chunk_len = max((c.numel() for c in chunks), default=0)

    def make():
        return _WideState(plan, max(chunk_len, 1))

    def report(offset):
        if progress is None:
            return None
        return lambda done, tot: progress(offset + done, total)

    states = run_chunked(len(chunks), make, eng.pass1, total=numel, progress=report(0), should_stop=should_stop,
                         threads=threads, dynamic=True)
    st = states[0]
    for o in states[1:]:
        st.merge(o)
    del states
    eng.fold_moments(st)
    st.fbuf = st.ibuf = None      # pass 1's buffers, before pass 2 allocates its own
    eng.nonfinite_chunks = st.nonfinite_chunks
    notes: list[str] = []
    count = st.n
    if count:
        mn, mx = (float(st.min), float(st.max))
        mean = st.mean
        std = math.sqrt(max(st.m2, 0.0) / count)
        l2 = math.sqrt(max(st.sumsq, 0.0))
        absmax = max(abs(mn), abs(mx))
    else:
        mn = mx = mean = std = l2 = absmax = None
    edges, integer, clipped = _choose_edges(mn, mx, bins, plan.integer, rng)
    nb = len(edges) - 1
    is_float = eng.float
    order = _key_order(plan.bits, is_float)
    kc = st.buckets.numpy()[order]            # bucket counts in value order
    cum = np.cumsum(kc)
    ranks = _ranks(count, percentiles) if count else {}
    need = sorted({r for lo, hi, _ in ranks.values() for r in (lo, hi)})
    pos = np.searchsorted(cum, np.array(need, dtype=np.int64), side="right") if need else np.array([], np.int64)
    target_raws = sorted({int(order[p]) for p in pos})
    exact_all = True
    values_at: dict[int, float] = {}
    zero_raws = [r for r in eng.zero_raw if int(st.buckets[r])] if not eng.count_zeros else []
    zeros = st.zeros
    refine_raws = sorted(set(target_raws) | set(zero_raws))

    def zeros_from_buckets(notes: list[str]) -> int:
        if eng.float:
            notes.append("zeros estimated: float32 values with |x| < 2**-133 (9.2e-41) counted as zero")
        return sum(int(st.buckets[r]) for r in zero_raws)

    def assemble(hc, below, above, hist_exact, values_at, exact_all, notes, zeros) -> TensorStats:
        pct: dict = {}
        for p, (lo, hi, frac) in ranks.items():
            a = values_at.get(lo)
            b = values_at.get(hi)
            if a is None or b is None:
                a = _bucket_estimate(lo, kc, cum, order, plan.bits, is_float, mn, mx)
                b = _bucket_estimate(hi, kc, cum, order, plan.bits, is_float, mn, mx)
            pct[p] = _lerp(a, b, frac)
        if not count:
            pct = {p: None for p in percentiles}
        hist = Histogram(edges, np.asarray(hc, np.int64), st.nan, st.posinf, st.neginf, below, above, integer,
                         hist_exact)
        flags = _flags(plan, count, mn, mx, absmax, st.nan, st.posinf, st.neginf, numel)
        notes = list(notes)
        if plan.measured == "magnitude":
            notes.append("complex tensor: statistics of the magnitude |z|")
        if plan.name in ("int64", "uint64", "uint32") and count and max(abs(mn), abs(mx)) > 2 ** 53:
            notes.append("values beyond 2**53 are measured as float64 (rounded)")
        return TensorStats(plan.name, numel, count, mn, mx, mean, std, l2, absmax, zeros, st.nan, st.posinf,
                           st.neginf, pct, hist, flags, exact_all, notes, plan.measured)

    def estimate() -> TensorStats:
        """Pass 1's figures alone: histogram and percentiles interpolated from the value buckets."""
        est_notes: list[str] = []
        if count:
            hc, below, above = _hist_from_buckets(kc, order, plan.bits, is_float, mn, mx, edges, integer)
            est_notes.append("histogram and percentiles estimated from 65,536 value buckets (top 16 bits of each "
                             "value, a bucket spans <= 0.8% of its value for float32): counts of a bucket split "
                             "across bins in proportion to overlap, percentiles interpolated inside their bucket; "
                             "run exact for exact figures")
        else:
            hc, below, above = np.zeros(nb, np.int64), 0, 0
        est_zeros = zeros_from_buckets(est_notes) if zero_raws else zeros
        return assemble(hc, below, above, not count, {}, not count, est_notes, est_zeros)

    def take_range(rng2) -> None:
        """The histogram of the final figures on ``rng2`` (sent between the steps), not on this tensor's own."""
        nonlocal edges, integer, clipped, nb
        if rng2 is not None:
            edges, integer, clipped = _choose_edges(mn, mx, bins, plan.integer, rng2)
            nb = len(edges) - 1

    if not (second_pass and count):
        rng2 = yield estimate()
        if estimate_first:   # steps: the second value, on the range sent (the same buckets: no pass)
            take_range(rng2)
            yield estimate()
        return
    if estimate_first:
        take_range((yield estimate()))
    lut = gather_lut = None
    if exact and refine_raws:
        if plan.bits == 32:
            lut = torch.zeros(65536, dtype=torch.int32)
            for s, r in enumerate(refine_raws, 1):
                lut[r] = s
        elif int(sum(int(st.buckets[r]) for r in target_raws)) <= GATHER_LIMIT:
            gather_lut = torch.zeros(65536, dtype=torch.bool)
            gather_lut[target_raws] = True
    # 32-bit data, range = min..max: a bucket whose whole value span lies in one bin gives that bin its count
    # straight from pass 1; pass 2 then bins only the values of the buckets that straddle an edge, plus those
    # of the refined buckets (percentiles, zeros) -- unless they are most of the values.
    select = base = None
    run2 = True
    if exact and plan.bits == 32 and clipped and 0 < nb < 65536:
        raws, bins_of, straddle = _bucket_bins(st.buckets.numpy(), is_float, edges, mn, mx)
        chosen = straddle | np.isin(raws, np.array(refine_raws, dtype=np.int64))
        bc = st.buckets.numpy()[raws]
        n_sel = int(bc[chosen].sum())
        if n_sel <= SELECT_MAX * count:
            base = np.bincount(bins_of[~chosen], weights=bc[~chosen], minlength=nb)[:nb].astype(np.int64)
            select = torch.zeros(65536, dtype=torch.bool)
            select[torch.from_numpy(raws[chosen])] = True
            run2 = n_sel > 0     # else every bin and figure is already exact: no second pass
    work = eng.pass2_factory(edges, clipped, lut, gather_lut, select)

    def make2():
        return _WideState(plan, max(min(chunk_len, PASS2_CHUNK), 1), second=True)
    if run2:
        states2 = run_chunked(len(chunks), make2, work, total=numel, progress=report(numel),
                              should_stop=should_stop, threads=threads, dynamic=True)
    else:
        states2 = [make2()]
        if progress is not None:
            progress(total, total)
    s2 = states2[0]
    for o in states2[1:]:
        s2.merge(o)
    h = s2.hist.numpy() if s2.hist is not None else np.zeros(nb + (0 if clipped else 2), np.int64)
    if clipped:
        hc, below, above = h[:nb].copy(), 0, 0
        if base is not None:
            hc += base
    else:
        hc = h[1:nb + 1].copy()
        below, above = int(h[0]), int(h[nb + 1])
    hist_exact = True
    if lut is not None:
        ref = s2.refine.numpy() if s2.refine is not None else np.zeros((len(refine_raws) + 1) << 16, np.int64)
        low = np.arange(65536, dtype=np.int64)
        zeros = 0
        for s, r in enumerate(refine_raws, 1):
            cnt = ref[s << 16:(s + 1) << 16]
            if r in zero_raws:
                zeros += int(cnt[0])    # +0.0 / -0.0 (or the integer 0): low bits all zero
            nz = cnt > 0
            vals = _decode((np.int64(r) << np.int64(16)) | low[nz], 32, is_float)
            if r in target_raws:
                _store_exact(values_at, vals, cnt[nz], r, order, cum, need, pos)
    elif gather_lut is not None:
        g = torch.cat(s2.gathered).double().numpy() if s2.gathered else np.zeros(0)
        g.sort()
        _store_gathered(values_at, g, target_raws, order, kc, cum, need, pos)
    elif exact and target_raws:
        exact_all = False
        notes.append(f"percentiles interpolated inside their value bucket: the buckets holding them have more "
                     f"than {GATHER_LIMIT:,} values (64-bit data)")
    elif target_raws:
        exact_all = False
        notes.append("percentiles interpolated inside their value bucket (top 16 bits of each value; exact=False)")
    if zero_raws and not exact:
        zeros = zeros_from_buckets(notes)
    yield assemble(hc, below, above, hist_exact, values_at, exact_all, notes, zeros)


def _bucket_bins(counts: np.ndarray, is_float: bool, edges: np.ndarray, mn: float, mx: float):
    """For each non-empty raw top-16 bucket of 32-bit data (``raws``): the bin of its lowest value and whether its
    values may fall in more than one bin (an edge inside its span; bins as ``edges[i] <= x < edges[i+1]``, the
    last one closed, every value within ``[mn, mx] = [edges[0], edges[-1]]``)."""
    raws = np.flatnonzero(counts).astype(np.int64)
    lo, hi = _bucket_bounds(raws, 32, is_float)
    lo, hi = np.clip(lo, mn, mx), np.clip(hi, mn, mx)
    nb = len(edges) - 1
    b_lo = np.clip(np.searchsorted(edges, lo, side="right") - 1, 0, nb - 1)
    b_hi = np.clip(np.searchsorted(edges, hi, side="right") - 1, 0, nb - 1)
    return raws, b_lo, b_lo != b_hi


def _store_exact(values_at, vals, cnts, raw, order, cum, need, pos):
    """Exact order statistics from the full value counts of one bucket."""
    srt = np.argsort(vals, kind="stable")
    vals, cnts = vals[srt], cnts[srt]
    for r, p in zip(need, pos):
        if int(order[p]) != raw:
            continue
        before = int(cum[p - 1]) if p else 0
        values_at[r] = float(_kth(vals, cnts, np.array([r - before]))[0])


def _store_gathered(values_at, g, target_raws, order, kc, cum, need, pos):
    """Exact order statistics from the sorted values of all target buckets (64-bit data)."""
    # g holds the values of several buckets; bucket p's values are those between its value bounds
    offset = {}
    acc = 0
    for p in sorted(set(int(x) for x in pos)):
        offset[p] = acc
        acc += int(kc[p])
    for r, p in zip(need, pos):
        before = int(cum[p - 1]) if p else 0
        values_at[r] = float(g[offset[int(p)] + (r - before)])


def _bucket_estimate(rank, kc, cum, order, bits, is_float, mn, mx) -> float:
    p = int(np.searchsorted(cum, rank, side="right"))
    lo, hi = _bucket_bounds(np.array([order[p]]), bits, is_float)
    a, b = max(float(lo[0]), mn), min(float(hi[0]), mx)
    before = int(cum[p - 1]) if p else 0
    n = int(kc[p])
    if n <= 1 or b <= a:
        return a
    return a + (b - a) * (rank - before) / (n - 1)


def _hist_from_buckets(kc, order, bits, is_float, mn, mx, edges, integer):
    """Histogram interpolated from value buckets: a piecewise-linear CDF through each bucket's [low, high]."""
    nz = kc > 0
    raws = order[nz]
    cnt = kc[nz].astype(np.float64)
    lo, hi = _bucket_bounds(raws, bits, is_float)
    lo = np.clip(lo, mn, mx)
    hi = np.clip(hi, mn, mx)
    if integer:  # integer values: a bucket holds whole numbers; the CDF steps at half-integers
        lo, hi = np.ceil(lo) - 0.5, np.floor(hi) + 0.5
    # a bucket reduced to one value (clipped to min == max, or a constant): its step is just after the value, so a
    # value on an edge counts in the bin that starts there (edges[i] <= x)
    hi = np.where(hi > lo, hi, np.nextafter(lo, np.inf))
    cum = np.cumsum(cnt)
    xp = np.empty(2 * len(cnt))
    fp = np.empty(2 * len(cnt))
    xp[0::2], xp[1::2] = lo, hi
    fp[0::2], fp[1::2] = cum - cnt, cum
    xp = np.maximum.accumulate(xp)
    e = edges.copy()
    cdf = np.interp(e, xp, fp, left=0.0, right=cum[-1])
    cdf[-1] = cum[-1] if e[-1] >= mx else cdf[-1]
    c = np.diff(np.round(cdf)).astype(np.int64)
    return np.maximum(c, 0), 0, 0


def histogram(t: torch.Tensor, bins: int = 256, range: tuple[float, float] | None = None, *,
              progress: ProgressFn | None = None, should_stop: StopFn | None = None) -> Histogram:
    """The exact histogram of ``t`` alone (e.g. to re-bin, or of ``right - left`` for a delta histogram).

    With an explicit ``range`` this is one pass over the values (values outside it land in ``below``/``above``);
    without, the range is the finite min..max as in :func:`tensor_stats`.
    """
    if range is None:
        return tensor_stats(t, bins=bins, percentiles=(), progress=progress, should_stop=should_stop).histogram
    with _single_intraop():
        return _range_histogram(t, bins, range, progress, should_stop)


def _range_histogram(t, bins, range, progress, should_stop) -> Histogram:
    t, plan, chunks, parallel = _prepare(t)
    if plan.narrow:
        return tensor_stats(t, bins=bins, range=range, percentiles=(), progress=progress,
                            should_stop=should_stop).histogram
    edges, _, _ = _choose_edges(None, None, bins, plan.integer, range)
    lo, hi = float(edges[0]), float(edges[-1])
    nb = len(edges) - 1
    norm = nb / (hi - lo)
    edges_t = torch.from_numpy(edges.astype(np.float64))
    eng = _Wide(plan, chunks, True)

    def work(st: _WideState, i: int) -> int:
        v = eng.values(i)
        n_all = v.numel()
        if eng.float:
            a, b = torch.aminmax(v)
            if not (math.isfinite(float(a)) and math.isfinite(float(b))):
                v = _finite_values(v, st)
        n = v.numel()
        if n == 0:
            return n_all
        idx = _bin_values(v, st.f64[:n], st.ibuf[:n], lo, norm, nb, edges_t, False)
        h = torch.bincount(idx, minlength=nb + 2)
        if st.hist is None:
            st.hist = h
        else:
            st.hist += h
        return n_all

    chunk_len = max((c.numel() for c in chunks), default=1)
    states = run_chunked(len(chunks), lambda: _WideState(plan, max(chunk_len, 1), second=True), work,
                         total=t.numel(), progress=progress, should_stop=should_stop,
                         threads=THREADS if parallel else 1, dynamic=True)
    st = states[0]
    for o in states[1:]:
        st.merge(o)
    h = st.hist.numpy() if st.hist is not None else np.zeros(nb + 2, np.int64)
    return Histogram(edges, h[1:nb + 1].copy(), st.nan, st.posinf, st.neginf, int(h[0]), int(h[nb + 1]), False,
                     True)


# ---- health ----------------------------------------------------------------------------------------------------------
def tensor_flags(t: torch.Tensor, should_stop: StopFn | None = None) -> list[str]:
    """Health flags of one tensor from one cheap min/max pass (NaN/Inf counted only in chunks that hold them)."""
    with _single_intraop():
        return _tensor_flags(t, should_stop)


def _tensor_flags(t: torch.Tensor, should_stop: StopFn | None) -> list[str]:
    t = t.detach()
    if t.device.type == "meta":
        return [NO_DATA]
    plan = _plan(t)
    t = dense_order(t)
    mn, mx = math.inf, -math.inf
    nan = posinf = neginf = count = 0
    numel = t.numel()
    for c in iter_chunks(t, 4 * CHUNK):
        _check_stop(should_stop)
        if plan.measured == "magnitude":
            c = plan.convert(c)
        elif plan.name == "bool" or plan.name.startswith("float8"):
            c = c.view(torch.uint8) if plan.name == "bool" else c.float()
        a, b = torch.aminmax(c)
        a, b = float(a), float(b)
        if not (math.isfinite(a) and math.isfinite(b)) and c.is_floating_point():
            nan += int(torch.isnan(c).sum())
            posinf += int(torch.isposinf(c).sum())
            neginf += int(torch.isneginf(c).sum())
            c = c[torch.isfinite(c)]
            if c.numel() == 0:
                continue
            a, b = (float(x) for x in torch.aminmax(c))
        count += c.numel()
        mn, mx = min(mn, a), max(mx, b)
    if not count:
        return _flags(plan, 0, None, None, None, nan, posinf, neginf, numel)
    return _flags(plan, count, mn, mx, max(abs(mn), abs(mx)), nan, posinf, neginf, numel)


def health_scan(side, entry=None, progress: ProgressFn | None = None,
                should_stop: StopFn | None = None) -> dict[str, list[str]]:
    """key -> health flags for every tensor of a side's state dict, in one pass over the bytes.

    ``progress(done, total)`` counts bytes. Tensors that cannot be measured (quantized, no storage) get
    ``["unreadable"]``. What a key is meant to hold is no problem (a fresh BatchNorm's zero ``running_mean``, see
    :func:`explain_flags`): not flagged.
    """
    infos = side.state_dict_infos(entry)
    total = sum(i.nbytes for i in infos.values())
    done = 0
    out: dict[str, list[str]] = {}
    with _single_intraop():
        for key, info in infos.items():
            _check_stop(should_stop)
            if info.device == "meta":
                out[key] = [NO_DATA]
                continue
            try:
                t = side.read_key(key, entry)
                flags = tensor_flags(t, should_stop)
                if (ALL_ZEROS in flags or CONSTANT in flags) and key.endswith(_BN_NAMES):
                    value = float(t.reshape(-1)[0]) if CONSTANT in flags else None
                    flags = explain_flags(key, flags, bn_siblings(key, infos.__contains__), value)[0]
                out[key] = flags
            except Cancelled:
                raise
            except ExplorerError:
                out[key] = ["unreadable"]
            done += info.nbytes
            if progress is not None:
                progress(done, total)
    return out
