"""Statistics of wide dtypes (float32/64, int32/64, uint32/64, the magnitude of complex numbers), in up to two passes.

Pass 1 (:meth:`WidePasses.pass1`, per chunk) gives count, min/max, moments, NaN/Inf counts and the 65,536 value
buckets; pass 2 (:class:`Pass2`) bins the values into the histogram and refines the buckets holding the wanted
percentiles and the zeros. :class:`WideSteps` runs them and turns their counts into a :class:`TensorStats`.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from .chunks import CHUNK, ProgressFn, StopFn, run_chunked
from .dtype_plan import Plan
from .health import flags_of
from .histogram import bin_values, choose_edges
from .stats_records import Histogram, TensorStats
from .value_buckets import (bucket_bins, bucket_estimate, decode, hist_from_buckets, key_order, lerp, ranks_of,
                            store_exact, store_gathered, top16)

PASS2_CHUNK = CHUNK // 2     # pass 2 holds ~7 bytes of buffers per element of a chunk
SELECT_MAX = 0.6             # pass 2 bins only the values of edge-straddling/refined buckets, if at most this share
GATHER_LIMIT = 4 << 20       # 64-bit values gathered for exact percentiles, at most (32 MB)
ESTIMATED = ("histogram and percentiles estimated from 65,536 value buckets (top 16 bits of each value, a bucket "
             "spans <= 0.8% of its value for float32): counts of a bucket split across bins in proportion to overlap, "
             "percentiles interpolated inside their bucket; run exact for exact figures")


class WideState:
    def __init__(self, plan: Plan, chunk: int, second: bool = False):
        self.n = 0
        self.min = math.inf
        self.max = -math.inf
        self.mean = 0.0
        self.m2 = 0.0
        self.sumsq = 0.0
        self.nan = self.posinf = self.neginf = 0
        self.zeros = 0
        self.buckets = np.zeros(65536, dtype=np.int64)
        self.nonfinite_chunks: set[int] = set()
        fl = plan.wide.kind == "f"
        self.ibuf = np.empty(chunk, dtype=np.intp)     # top-16 bucket numbers, bin indices
        if second:   # pass 2: float64 binning, table lookups
            self.fbuf = None
            self.f64 = np.empty(chunk, dtype=np.float64)
            self.mbuf = np.empty(chunk, dtype=np.bool_)
        else:
            self.fbuf = np.empty(chunk, dtype=plan.wide if fl else np.float64)
        self.hist: np.ndarray | None = None
        self.refine: np.ndarray | None = None
        self.gathered: list[np.ndarray] = []

    def merge(self, o: "WideState"):
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


def finite_values(v: np.ndarray, st: WideState) -> np.ndarray:
    st.nan += int(np.count_nonzero(np.isnan(v)))
    st.posinf += int(np.count_nonzero(np.isposinf(v)))
    st.neginf += int(np.count_nonzero(np.isneginf(v)))
    return v[np.isfinite(v)]


def _count_into(st, idx: np.ndarray, size: int) -> None:
    """st.refine[idx] += 1 for each index, into one persistent accumulator (a large fresh bincount output per
    chunk costs more in page faults than the counting itself)."""
    if st.refine is None:
        st.refine = np.zeros(size, dtype=np.int64)
    np.add.at(st.refine, idx, 1)


class WidePasses:
    """Pass 1 and pass 2 over the chunks of a wide-dtype tensor."""

    def __init__(self, plan: Plan, chunks: list, exact: bool):
        self.plan = plan
        self.chunks = chunks
        self.float = plan.wide.kind == "f"
        self.zero_raw = (0, 0x8000) if self.float else (0,)
        # zeros: 32-bit data counts them exactly in pass 2 (refining the zero buckets) or, estimated, takes the zero
        # buckets (|x| < 2**-133 for float32); otherwise they are counted here, in the chunks whose zero bucket is hit
        self.count_zeros = plan.bits == 64 or (not exact and not self.float)
        self.nonfinite_chunks: set[int] = set()
        self.moments: list[tuple[int, float, float] | None] = [None] * len(chunks)

    def fold_moments(self, st: WideState) -> None:
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

    def values(self, i: int) -> np.ndarray:
        c = self.chunks[i]
        return self.plan.convert(c) if self.plan.convert is not None else c

    # pass 1: moments, min/max, nan/inf, zeros, top-16-bit buckets
    def pass1(self, st: WideState, i: int) -> int:
        with np.errstate(all="ignore"):   # float32 sums overflowing near 3e38 are redone in float64 below
            return self._pass1(st, i)

    def _pass1(self, st: WideState, i: int) -> int:
        v = self.values(i)
        n_all = v.size
        if self.float:
            mn, mx = float(v.min()), float(v.max())
            if not (math.isfinite(mn) and math.isfinite(mx)):
                st.nonfinite_chunks.add(i)
                v = finite_values(v, st)
                if v.size == 0:
                    return n_all
                mn, mx = float(v.min()), float(v.max())
            n = v.size
            s = float(v.sum())
            mean_c = s / n
            buf = st.fbuf[:n]
            np.subtract(v, mean_c, out=buf)
            np.multiply(buf, buf, out=buf)
            m2_c = float(buf.sum())
            if not (math.isfinite(s) and math.isfinite(m2_c)):  # float32 overflow near 3e38: redo in float64
                w = v.astype(np.float64)
                mean_c = float(w.sum()) / n
                w -= mean_c
                m2_c = float(np.dot(w, w))
        else:
            mn, mx = int(v.min()), int(v.max())
            n = v.size
            buf = st.fbuf[:n]
            np.copyto(buf, v, casting="unsafe")
            mean_c = float(buf.sum()) / n
            np.subtract(buf, mean_c, out=buf)
            np.multiply(buf, buf, out=buf)
            m2_c = float(buf.sum())
        self.moments[i] = (n, mean_c, m2_c)    # merged in chunk order afterwards, whichever thread took it
        st.min = min(st.min, mn)
        st.max = max(st.max, mx)
        raw = top16(v, st.ibuf[:n], self.plan.bits)
        bc = np.bincount(raw, minlength=65536)
        st.buckets += bc
        if self.count_zeros and any(int(bc[r]) for r in self.zero_raw):
            st.zeros += n - int(np.count_nonzero(v))
        return n_all


class Pass2:
    """Pass 2 over one wide-dtype tensor's chunks: the histogram (float64 binning) and the refinement of the value
    buckets holding the wanted percentiles and the zeros.

    ``edges`` None: no histogram in this pass. ``lut`` (32-bit data): refinement slot (1..) of each raw top-16 bucket,
    0 for the others; the refined buckets' values are counted by ``slot << 16 | low 16 bits``. ``gather_lut`` (64-bit
    data): the buckets whose values are gathered. ``select`` (bool per raw top-16 bucket, 32-bit data only): only the
    values of the selected buckets are binned/refined (the other buckets' histogram bins follow from pass 1's counts).
    """

    def __init__(self, passes: WidePasses, edges: np.ndarray | None, clip: bool, lut: np.ndarray | None,
                 gather_lut: np.ndarray | None, select: np.ndarray | None = None):
        self.passes = passes
        self.nb = nb = len(edges) - 1 if edges is not None else 0
        self.lo = float(edges[0]) if nb else 0.0
        self.norm = nb / (float(edges[-1]) - self.lo) if nb else 0.0
        self.edges = np.ascontiguousarray(edges, dtype=np.float64) if nb else None
        self.clip = clip
        self.lut = lut
        self.refine_size = (int(lut.max()) + 1) << 16 if lut is not None else 0
        self.refine_sel = (lut > 0) if lut is not None else None
        self.gather_lut = gather_lut
        self.select = select

    def work(self, st: WideState, i: int) -> int:
        """One chunk, in half chunks (pass 2 needs more buffers per element); returns its element count."""
        with np.errstate(all="ignore"):   # values far outside the range: binned below/above (inf in float64)
            return self._work(st, i)

    def _work(self, st: WideState, i: int) -> int:
        v = self.passes.values(i)
        n_all = v.size
        if i in self.passes.nonfinite_chunks:
            v = v[np.isfinite(v)]
        for off in range(0, v.size, PASS2_CHUNK):
            p = v[off:off + PASS2_CHUNK]
            if self.select is not None:
                p = self._selected(st, p)
                if not p.size:
                    continue
            self._piece(st, p)
        return n_all

    def _selected(self, st: WideState, v: np.ndarray) -> np.ndarray:
        """The values of ``v`` whose top-16 bucket is selected (one table lookup per value, then compaction)."""
        n = v.size
        raw = top16(v, st.ibuf[:n], 32)
        return np.compress(self.select[raw], v)

    def _piece(self, st: WideState, v: np.ndarray) -> None:
        n = v.size
        if self.nb:
            idx = bin_values(v, st.f64[:n], st.ibuf[:n], self.lo, self.norm, self.nb, self.edges, self.clip)
            h = np.bincount(idx, minlength=self.nb if self.clip else self.nb + 2)
            if st.hist is None:
                st.hist = h
            else:
                st.hist += h
        if self.lut is not None:
            self._refine32(st, v)
        if self.gather_lut is not None:
            raw = top16(v, st.ibuf[:n], self.passes.plan.bits)
            st.gathered.append(v[np.take(self.gather_lut, raw, out=st.mbuf[:n])])

    def _refine32(self, st: WideState, v: np.ndarray) -> None:
        """Count the values of the refined buckets (picked out by one table lookup and compaction) by slot and low
        16 bits."""
        n = v.size
        raw = top16(v, st.ibuf[:n], 32)
        sb = np.compress(self.refine_sel[raw], v.view(np.uint32))
        if sb.size:
            slot = np.take(self.lut, sb >> 16)
            slot <<= 16
            slot |= sb & 0xFFFF
            _count_into(st, slot, self.refine_size)


class WideSteps:
    """The statistics of one wide-dtype tensor: :meth:`run_pass1` first, then :meth:`estimate` (pass 1's figures,
    histogram and percentiles interpolated from the value buckets) and/or :meth:`final` (runs pass 2 when needed).
    :meth:`take_range` changes the histogram range in between, at no extra pass.

    ``progress`` counts elements over ``total`` (pass 1 then pass 2)."""

    def __init__(self, plan: Plan, chunks: list, numel: int, threads: int, bins: int, percentiles: Sequence[float],
                 exact: bool, progress: ProgressFn | None, should_stop: StopFn | None, total: int):
        self.plan, self.chunks, self.numel, self.threads = plan, chunks, numel, threads
        self.bins, self.percentiles, self.exact = bins, percentiles, exact
        self.progress, self.should_stop, self.total = progress, should_stop, total
        self.passes = WidePasses(plan, chunks, exact)
        self.is_float = self.passes.float
        self.chunk_len = max((c.size for c in chunks), default=0)

    def _progress_from(self, offset: int) -> ProgressFn | None:
        if self.progress is None:
            return None
        return lambda done, tot: self.progress(offset + done, self.total)

    def _run(self, make_state, work, offset: int) -> WideState:
        """One pass over every chunk; the threads' states merged into one."""
        states = run_chunked(len(self.chunks), make_state, work, total=self.numel,
                             progress=self._progress_from(offset), should_stop=self.should_stop,
                             threads=self.threads, dynamic=True)
        st = states[0]
        for o in states[1:]:
            st.merge(o)
        return st

    def run_pass1(self, rng) -> None:
        """Pass 1, then the figures it gives exactly, the histogram edges (on ``rng``, or the data's own range) and
        the value buckets that hold the wanted percentiles and the zeros."""
        st = self._run(lambda: WideState(self.plan, max(self.chunk_len, 1)), self.passes.pass1, 0)
        self.passes.fold_moments(st)
        st.fbuf = st.ibuf = None      # pass 1's buffers, before pass 2 allocates its own
        self.passes.nonfinite_chunks = st.nonfinite_chunks
        self.st = st
        self.count = count = st.n
        if count:
            self.mn, self.mx = float(st.min), float(st.max)
            self.mean = st.mean
            self.std = math.sqrt(max(st.m2, 0.0) / count)
            self.l2 = math.sqrt(max(st.sumsq, 0.0))
            self.absmax = max(abs(self.mn), abs(self.mx))
        else:
            self.mn = self.mx = self.mean = self.std = self.l2 = self.absmax = None
        self._set_edges(rng)
        self._locate_buckets()

    def _set_edges(self, rng) -> None:
        self.edges, self.integer, self.clipped = choose_edges(self.mn, self.mx, self.bins, self.plan.integer, rng)
        self.nb = len(self.edges) - 1

    def take_range(self, rng) -> None:
        """The histogram of the figures still to come on ``rng`` (None: keep the current one)."""
        if rng is not None:
            self._set_edges(rng)

    def _locate_buckets(self) -> None:
        st, passes = self.st, self.passes
        self.order = key_order(self.plan.bits, self.is_float)
        self.kc = st.buckets[self.order]            # bucket counts in value order
        self.cum = np.cumsum(self.kc)
        self.ranks = ranks_of(self.count, self.percentiles) if self.count else {}
        self.need = sorted({r for lo, hi, _ in self.ranks.values() for r in (lo, hi)})
        self.pos = np.searchsorted(self.cum, np.array(self.need, dtype=np.int64), side="right") if self.need \
            else np.array([], np.int64)
        self.target_raws = sorted({int(self.order[p]) for p in self.pos})
        self.zero_raws = [r for r in passes.zero_raw if int(st.buckets[r])] if not passes.count_zeros else []
        self.refine_raws = sorted(set(self.target_raws) | set(self.zero_raws))

    def _zeros_from_buckets(self, notes: list[str]) -> int:
        if self.is_float:
            notes.append("zeros estimated: float32 values with |x| < 2**-133 (9.2e-41) counted as zero")
        return sum(int(self.st.buckets[r]) for r in self.zero_raws)

    def estimate(self) -> TensorStats:
        """Pass 1's figures alone: histogram and percentiles interpolated from the value buckets."""
        notes: list[str] = []
        if self.count:
            hc, below, above = hist_from_buckets(self.kc, self.order, self.plan.bits, self.is_float, self.mn, self.mx,
                                                 self.edges, self.integer)
            notes.append(ESTIMATED)
        else:
            hc, below, above = np.zeros(self.nb, np.int64), 0, 0
        zeros = self._zeros_from_buckets(notes) if self.zero_raws else self.st.zeros
        return self._assemble(hc, below, above, not self.count, {}, not self.count, notes, zeros)

    def final(self) -> TensorStats:
        """Pass 2 (unless pass 1's bucket counts already give every bin), then the figures of both passes."""
        lut, gather_lut = self._refine_tables()
        select, base = self._selection()
        work = Pass2(self.passes, self.edges, self.clipped, lut, gather_lut, select).work
        make2 = lambda: WideState(self.plan, max(min(self.chunk_len, PASS2_CHUNK), 1), second=True)  # noqa: E731
        if select is None or select.any():
            s2 = self._run(make2, work, self.numel)
        else:   # every bin and figure is already exact: no second pass
            s2 = make2()
            if self.progress is not None:
                self.progress(self.total, self.total)
        hc, below, above = self._histogram(s2, base)
        values_at, exact_all, notes, zeros = self._order_statistics(s2, lut, gather_lut)
        return self._assemble(hc, below, above, True, values_at, exact_all, notes, zeros)

    def _refine_tables(self) -> tuple[np.ndarray | None, np.ndarray | None]:
        """(lut, gather_lut) of :class:`Pass2`: how the percentile and zero buckets are refined, if at all."""
        if not (self.exact and self.refine_raws):
            return None, None
        if self.plan.bits == 32:
            lut = np.zeros(65536, dtype=np.int64)
            for s, r in enumerate(self.refine_raws, 1):
                lut[r] = s
            return lut, None
        if int(sum(int(self.st.buckets[r]) for r in self.target_raws)) <= GATHER_LIMIT:
            gather_lut = np.zeros(65536, dtype=np.bool_)
            gather_lut[self.target_raws] = True
            return None, gather_lut
        return None, None

    def _selection(self) -> tuple[np.ndarray | None, np.ndarray | None]:
        """(select, base): for 32-bit data on range = min..max, a bucket whose whole value span lies in one bin gives
        that bin its count (``base``) straight from pass 1; pass 2 then bins only the values of the ``select``-ed
        buckets (straddling an edge, or refined) -- unless they are most of the values: (None, None)."""
        if not (self.exact and self.plan.bits == 32 and self.clipped and 0 < self.nb < 65536):
            return None, None
        buckets = self.st.buckets
        raws, bins_of, straddle = bucket_bins(buckets, self.is_float, self.edges, self.mn, self.mx)
        chosen = straddle | np.isin(raws, np.array(self.refine_raws, dtype=np.int64))
        bc = buckets[raws]
        if int(bc[chosen].sum()) > SELECT_MAX * self.count:
            return None, None
        base = np.bincount(bins_of[~chosen], weights=bc[~chosen], minlength=self.nb)[:self.nb].astype(np.int64)
        select = np.zeros(65536, dtype=np.bool_)
        select[raws[chosen]] = True
        return select, base

    def _histogram(self, s2: WideState, base: np.ndarray | None) -> tuple[np.ndarray, int, int]:
        nb = self.nb
        h = s2.hist if s2.hist is not None else np.zeros(nb + (0 if self.clipped else 2), np.int64)
        if not self.clipped:
            return h[1:nb + 1].copy(), int(h[0]), int(h[nb + 1])
        hc = h[:nb].copy()
        if base is not None:
            hc += base
        return hc, 0, 0

    def _order_statistics(self, s2: WideState, lut, gather_lut) -> tuple[dict[int, float], bool, list[str], int]:
        """(values at the needed ranks, whether they are exact, notes, zero count) after pass 2."""
        values_at: dict[int, float] = {}
        exact_all, notes, zeros = True, [], self.st.zeros
        if lut is not None:
            zeros = self._refined32(s2, values_at)
        elif gather_lut is not None:
            g = np.concatenate(s2.gathered).astype(np.float64) if s2.gathered else np.zeros(0)
            g.sort()
            store_gathered(values_at, g, self.target_raws, self.order, self.kc, self.cum, self.need, self.pos)
        elif self.exact and self.target_raws:
            exact_all = False
            notes.append(f"percentiles interpolated inside their value bucket: the buckets holding them have more "
                         f"than {GATHER_LIMIT:,} values (64-bit data)")
        elif self.target_raws:
            exact_all = False
            notes.append("percentiles interpolated inside their value bucket (top 16 bits of each value; exact=False)")
        if self.zero_raws and not self.exact:
            zeros = self._zeros_from_buckets(notes)
        return values_at, exact_all, notes, zeros

    def _refined32(self, s2: WideState, values_at: dict[int, float]) -> int:
        """32-bit data: the exact values at the needed ranks from the refined buckets' full counts; the zero count."""
        ref = s2.refine if s2.refine is not None else np.zeros((len(self.refine_raws) + 1) << 16, np.int64)
        low = np.arange(65536, dtype=np.int64)
        zeros = 0
        for s, r in enumerate(self.refine_raws, 1):
            cnt = ref[s << 16:(s + 1) << 16]
            if r in self.zero_raws:
                zeros += int(cnt[0])    # +0.0 / -0.0 (or the integer 0): low bits all zero
            nz = cnt > 0
            vals = decode((np.int64(r) << np.int64(16)) | low[nz], 32, self.is_float)
            if r in self.target_raws:
                store_exact(values_at, vals, cnt[nz], r, self.order, self.cum, self.need, self.pos)
        return zeros

    def _assemble(self, hc, below, above, hist_exact: bool, values_at: dict[int, float], exact_all: bool,
                  notes: list[str], zeros: int) -> TensorStats:
        st, plan, count = self.st, self.plan, self.count
        pct: dict = {}
        for p, (lo, hi, frac) in self.ranks.items():
            a, b = values_at.get(lo), values_at.get(hi)
            if a is None or b is None:
                a = bucket_estimate(lo, self.kc, self.cum, self.order, plan.bits, self.is_float, self.mn, self.mx)
                b = bucket_estimate(hi, self.kc, self.cum, self.order, plan.bits, self.is_float, self.mn, self.mx)
            pct[p] = lerp(a, b, frac)
        if not count:
            pct = {p: None for p in self.percentiles}
        hist = Histogram(self.edges, np.asarray(hc, np.int64), st.nan, st.posinf, st.neginf, below, above,
                         self.integer, hist_exact)
        flags = flags_of(plan, count, self.mn, self.mx, self.absmax, st.nan, st.posinf, st.neginf, self.numel)
        notes = list(notes)
        if plan.measured == "magnitude":
            notes.append("complex tensor: statistics of the magnitude |z|")
        if plan.name in ("int64", "uint64", "uint32") and count and max(abs(self.mn), abs(self.mx)) > 2 ** 53:
            notes.append("values beyond 2**53 are measured as float64 (rounded)")
        return TensorStats(plan.name, self.numel, count, self.mn, self.mx, self.mean, self.std, self.l2, self.absmax,
                           zeros, st.nan, st.posinf, st.neginf, pct, hist, flags, exact_all, notes, plan.measured)
