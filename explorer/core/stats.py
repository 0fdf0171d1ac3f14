"""Statistics, histogram and health flags of one tensor, for every dtype a checkpoint can hold.

How it is computed:

* The values are numpy arrays (a checkpoint's read as numpy views of its memory map, ``Checkpoint.read_key_array``;
  a torch tensor -- a model's -- handed over as numpy without a copy, ``np_values.tensor_array``): torch is never
  imported here. bfloat16 and float8 come as their raw bits (``np_values``), their values from a table.
* The tensor is read in chunks of 512K elements straight from its memory map, by two threads (numpy's ufuncs and
  reductions release the GIL), each reusing its own buffers: memory stays bounded (a few tens of MB) whatever the
  size.
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
* Threads: while our two threads run, torch's intra-op threads are set to 1 when torch is imported (process-wide;
  restored after).

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

import dataclasses
import math
from typing import Iterator, Sequence

import numpy as np

from ..errors import ExplorerError
from .chunks import CHUNK, PARALLEL_MIN, THREADS, ProgressFn, StopFn, dense_order, iter_chunks, run_chunked, \
    single_intraop
from .dtype_plan import Plan, value_table, values_of
from .health import explain_flags, flags_of
from .histogram import bin_values, choose_edges, hist_from_support
from .stats_records import Histogram, TensorStats
from .value_buckets import kth, lerp, ranks_of
from .wide_stats import WidePasses, WideState, WideSteps, finite_values

STATS_CHUNK = CHUNK // 2     # elements per chunk of tensor_stats: its ~8 ops per chunk then mostly hit L2
NARROW_CHUNK = 2 * CHUNK     # narrow dtypes: one bincount per chunk (its fixed cost, a 65,536-entry output, amortised)
DEFAULT_PERCENTILES = (1, 5, 25, 50, 75, 95, 99)


class _NarrowState:
    def __init__(self, bits: int):
        self.bits = bits
        self.counts = np.zeros(1 << bits, dtype=np.int64)


def _narrow_work(chunks: list, bits: int):
    view = np.uint8 if bits == 8 else np.uint16

    def work(st: _NarrowState, i: int) -> int:
        c = chunks[i]
        st.counts += np.bincount(c.view(view), minlength=1 << bits)
        return c.size
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


def with_context(s: TensorStats, key: str, siblings) -> TensorStats:
    """``s`` with its flags explained for ``key`` (see :func:`explain_flags`): a copy when anything moved."""
    flags, info = explain_flags(key, s.flags, siblings, s.min if s.min == s.max else None)
    if not info:
        return s
    return dataclasses.replace(s, flags=flags, info=list(s.info) + info)


def _prepare(t):
    a, plan = values_of(t)
    a = dense_order(a)
    chunks = list(iter_chunks(a, NARROW_CHUNK if plan.narrow else STATS_CHUNK))
    # a strided view that no permutation makes dense is read in bounded copies, by one thread
    parallel = a.flags.c_contiguous and a.size >= PARALLEL_MIN
    return a, plan, chunks, parallel


def tensor_stats(t, *, bins: int = 256, range: tuple[float, float] | None = None,
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
    with single_intraop():  # our ops are small: torch's own threads only add barrier waits (awful under load)
        return next(_stats_steps(t, bins, range, percentiles, progress, should_stop, exact, False))


def tensor_stats_steps(t, *, bins: int = 256, range: tuple[float, float] | None = None,
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
    with single_intraop():
        yield from _stats_steps(t, bins, range, percentiles, progress, should_stop, True, True)


def _stats_steps(t, bins, range, percentiles, progress, should_stop, exact, estimate_first) -> Iterator[TensorStats]:
    t, plan, chunks, parallel = _prepare(t)
    numel = t.size
    threads = THREADS if parallel else 1
    total = numel * (1 if plan.narrow or not (exact or range is not None) else 2)
    if plan.narrow:
        states = run_chunked(len(chunks), lambda: _NarrowState(plan.bits), _narrow_work(chunks, plan.bits),
                             total=total, progress=progress, should_stop=should_stop, threads=threads, dynamic=True)
        counts = sum(s.counts for s in states[1:]) + states[0].counts if len(states) > 1 else states[0].counts
        first = _finish_narrow(plan, counts, numel, bins, range, percentiles)
        rng2 = yield first
        if estimate_first:   # steps: the second value, on the range sent (every figure follows from the counts)
            yield first if rng2 is None else _finish_narrow(plan, counts, numel, bins, rng2, percentiles)
        return
    yield from _wide_steps(WideSteps(plan, chunks, numel, threads, bins, percentiles, exact, progress, should_stop,
                                     total), range, bool(exact) or range is not None, estimate_first)



def _wide_steps(steps: WideSteps, rng, second_pass: bool, estimate_first: bool) -> Iterator[TensorStats]:
    """Yields the statistics: once, or -- with ``estimate_first`` when a second pass follows -- first the figures
    pass 1 alone gives (histogram and percentiles estimated from the value buckets, ``exact`` False), then the
    result of both passes. A range sent between the two is the final histogram's."""
    steps.run_pass1(rng)
    if not (second_pass and steps.count):
        rng2 = yield steps.estimate()
        if estimate_first:   # steps: the second value, on the range sent (the same buckets: no pass)
            steps.take_range(rng2)
            yield steps.estimate()
        return
    if estimate_first:
        steps.take_range((yield steps.estimate()))
    yield steps.final()


def _finish_narrow(plan: Plan, counts: np.ndarray, numel: int, bins: int, rng, percentiles) -> TensorStats:
    table = value_table(plan.name)
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
        for p, (lo, hi, frac) in ranks_of(count, percentiles).items():
            a, b = kth(v, c, np.array([lo, hi]))
            pct[p] = lerp(float(a), float(b), frac)
    else:
        mn = mx = mean = std = l2 = absmax = None
        zeros = 0
        pct = {p: None for p in percentiles}
    edges, integer, _ = choose_edges(mn, mx, bins, plan.integer, rng)
    hc, below, above = hist_from_support(v, c, edges)
    hist = Histogram(edges, hc, nan, posinf, neginf, below, above, integer, True)
    flags = flags_of(plan, count, mn, mx, absmax, nan, posinf, neginf, numel)
    return TensorStats(plan.name, numel, count, mn, mx, mean, std, l2, absmax, zeros, nan, posinf, neginf, pct,
                       hist, flags, True, [], plan.measured)


def histogram(t, bins: int = 256, range: tuple[float, float] | None = None, *,
              progress: ProgressFn | None = None, should_stop: StopFn | None = None) -> Histogram:
    """The exact histogram of ``t`` alone (e.g. to re-bin, or of ``right - left`` for a delta histogram).

    With an explicit ``range`` this is one pass over the values (values outside it land in ``below``/``above``);
    without, the range is the finite min..max as in :func:`tensor_stats`.
    """
    if range is None:
        return tensor_stats(t, bins=bins, percentiles=(), progress=progress, should_stop=should_stop).histogram
    with single_intraop():
        return _range_histogram(t, bins, range, progress, should_stop)


def _range_histogram(t, bins, range, progress, should_stop) -> Histogram:
    original = t
    t, plan, chunks, parallel = _prepare(t)
    if plan.narrow:   # (the values as given: a bfloat16's raw bits are no uint16 values)
        return tensor_stats(original, bins=bins, range=range, percentiles=(), progress=progress,
                            should_stop=should_stop).histogram
    edges, _, _ = choose_edges(None, None, bins, plan.integer, range)
    lo, hi = float(edges[0]), float(edges[-1])
    nb = len(edges) - 1
    norm = nb / (hi - lo)
    edges = np.ascontiguousarray(edges, dtype=np.float64)
    eng = WidePasses(plan, chunks, True)

    def work(st: WideState, i: int) -> int:
        with np.errstate(all="ignore"):   # values far outside the range: binned below/above (inf in float64)
            return _work(st, i)

    def _work(st: WideState, i: int) -> int:
        v = eng.values(i)
        n_all = v.size
        if eng.float and not (math.isfinite(float(v.min())) and math.isfinite(float(v.max()))):
            v = finite_values(v, st)
        n = v.size
        if n == 0:
            return n_all
        idx = bin_values(v, st.f64[:n], st.ibuf[:n], lo, norm, nb, edges, False)
        h = np.bincount(idx, minlength=nb + 2)
        if st.hist is None:
            st.hist = h
        else:
            st.hist += h
        return n_all

    chunk_len = max((c.size for c in chunks), default=1)
    states = run_chunked(len(chunks), lambda: WideState(plan, max(chunk_len, 1), second=True), work,
                         total=t.size, progress=progress, should_stop=should_stop,
                         threads=THREADS if parallel else 1, dynamic=True)
    st = states[0]
    for o in states[1:]:
        st.merge(o)
    h = st.hist if st.hist is not None else np.zeros(nb + 2, np.int64)
    return Histogram(edges, h[1:nb + 1].copy(), st.nan, st.posinf, st.neginf, int(h[0]), int(h[nb + 1]), False,
                     True)
