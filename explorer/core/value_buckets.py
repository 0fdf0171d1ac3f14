"""The 65,536 value buckets of wide dtypes (the top 16 bits of each value) and order statistics.

A bucket number is the raw top 16 bits of a value; :func:`key_order` lists them in ascending value order. From the
bucket counts alone a histogram and percentiles can be interpolated; refining a bucket (counting the low bits of its
values, or gathering them) makes them exact."""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from ..errors import ExplorerError


def key_order(bits: int, is_float: bool) -> np.ndarray:
    """Raw top-16 bucket numbers in ascending value order."""
    r = np.arange(65536, dtype=np.int64)
    if is_float:
        key = np.where(r & 0x8000, r ^ 0xFFFF, r | 0x8000)
    else:
        key = r ^ 0x8000
    return np.argsort(key, kind="stable")


def decode(raw: np.ndarray, bits: int, is_float: bool) -> np.ndarray:
    """float64 values of raw bit patterns (given as int64 holding the unsigned pattern)."""
    if bits == 32:
        u = (raw & 0xFFFFFFFF).astype(np.uint32)
        return (u.view(np.float32) if is_float else u.view(np.int32)).astype(np.float64)
    u = raw.astype(np.uint64)
    return (u.view(np.float64) if is_float else u.view(np.int64)).astype(np.float64)


def bucket_bounds(raws: np.ndarray, bits: int, is_float: bool) -> tuple[np.ndarray, np.ndarray]:
    """Value interval [low, high] covered by each raw top-16 bucket."""
    shift = bits - 16
    base = raws.astype(np.int64) << np.int64(shift) if bits == 32 else (raws.astype(np.uint64) << np.uint64(shift))
    span = (1 << shift) - 1
    if bits == 32:
        a, b = decode(base, 32, is_float), decode(base + span, 32, is_float)
    else:
        a = decode(base.view(np.int64), 64, is_float)
        b = decode((base + np.uint64(span)).view(np.int64), 64, is_float)
    return np.minimum(a, b), np.maximum(a, b)


def top16(values: np.ndarray, out: np.ndarray, width: int) -> np.ndarray:
    """Raw top 16 bits of each value (0..65535), into ``out`` (an intp buffer of the same length: ready for
    ``numpy.bincount`` and table lookups without a conversion)."""
    return np.right_shift(values.view(np.uint32 if width == 32 else np.uint64), width - 16, out=out,
                          casting="unsafe")


def bucket_bins(counts: np.ndarray, is_float: bool, edges: np.ndarray, mn: float, mx: float):
    """For each non-empty raw top-16 bucket of 32-bit data (``raws``): the bin of its lowest value and whether its
    values may fall in more than one bin (an edge inside its span; bins as ``edges[i] <= x < edges[i+1]``, the
    last one closed, every value within ``[mn, mx] = [edges[0], edges[-1]]``)."""
    raws = np.flatnonzero(counts).astype(np.int64)
    lo, hi = bucket_bounds(raws, 32, is_float)
    lo, hi = np.clip(lo, mn, mx), np.clip(hi, mn, mx)
    nb = len(edges) - 1
    b_lo = np.clip(np.searchsorted(edges, lo, side="right") - 1, 0, nb - 1)
    b_hi = np.clip(np.searchsorted(edges, hi, side="right") - 1, 0, nb - 1)
    return raws, b_lo, b_lo != b_hi


def bucket_estimate(rank, kc, cum, order, bits, is_float, mn, mx) -> float:
    p = int(np.searchsorted(cum, rank, side="right"))
    lo, hi = bucket_bounds(np.array([order[p]]), bits, is_float)
    a, b = max(float(lo[0]), mn), min(float(hi[0]), mx)
    before = int(cum[p - 1]) if p else 0
    n = int(kc[p])
    if n <= 1 or b <= a:
        return a
    return a + (b - a) * (rank - before) / (n - 1)


def hist_from_buckets(kc, order, bits, is_float, mn, mx, edges, integer):
    """Histogram interpolated from value buckets: a piecewise-linear CDF through each bucket's [low, high]."""
    nz = kc > 0
    raws = order[nz]
    cnt = kc[nz].astype(np.float64)
    lo, hi = bucket_bounds(raws, bits, is_float)
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


def lerp(a: float, b: float, t: float) -> float:
    """numpy's interpolation between neighbouring order statistics (``numpy.percentile``, method 'linear')."""
    d = b - a
    return b - d * (1 - t) if t >= 0.5 else a + d * t


def ranks_of(n: int, percentiles: Sequence[float]) -> dict[float, tuple[int, int, float]]:
    out = {}
    for p in percentiles:
        if not 0 <= float(p) <= 100:
            raise ExplorerError(f"percentile {p} is outside 0..100")
        h = (n - 1) * float(p) / 100.0
        lo = int(math.floor(h))
        out[p] = (lo, min(lo + 1, n - 1), h - lo)
    return out


def kth(sorted_values: np.ndarray, counts: np.ndarray, ranks: np.ndarray) -> np.ndarray:
    cum = np.cumsum(counts)
    return sorted_values[np.searchsorted(cum, ranks, side="right")]


def store_exact(values_at, vals, cnts, raw, order, cum, need, pos):
    """Exact order statistics from the full value counts of one bucket."""
    srt = np.argsort(vals, kind="stable")
    vals, cnts = vals[srt], cnts[srt]
    for r, p in zip(need, pos):
        if int(order[p]) != raw:
            continue
        before = int(cum[p - 1]) if p else 0
        values_at[r] = float(kth(vals, cnts, np.array([r - before]))[0])


def store_gathered(values_at, g, target_raws, order, kc, cum, need, pos):
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
