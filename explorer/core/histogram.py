"""Histogram bins: choosing the edges, and binning values exactly as ``edges[i] <= x < edges[i+1]`` (the last bin
closed), from a sorted support (narrow dtypes) or value by value (wide dtypes)."""
from __future__ import annotations

import math

import numpy as np

from ..errors import ExplorerError


EDGE_EPS = 1e-9   # in bin widths: float64 binning can misplace only values this close to an edge


def bin_values(v: np.ndarray, f: np.ndarray, idx: np.ndarray, lo: float, norm: float, nb: int,
               edges: np.ndarray, clip: bool) -> np.ndarray:
    """Bin index of each value into ``idx`` (an intp buffer as long as ``v``; ``f`` a float64 one), exactly as
    ``edges[i] <= x < edges[i+1]`` (last bin closed).

    ``clip``: every value is inside, bins 0..nb-1. Otherwise 0 = below, 1..nb = the bins, nb+1 = above.
    Binning is ``(x - lo) * norm`` in float64; the few values within ``EDGE_EPS`` bin widths of an edge are then
    placed by comparing them with the edges themselves (as numpy.histogram does).
    """
    np.copyto(f, v, casting="unsafe")
    np.subtract(f, lo, out=f)
    np.multiply(f, norm, out=f)
    if not clip:                      # (clamped values sit mid-bin, away from the ambiguity test)
        np.clip(f, -0.5, nb + 0.5, out=f)
        np.add(f, 1, out=f)
    np.copyto(idx, f, casting="unsafe")    # f >= 0: truncation is floor
    np.subtract(f, idx, out=f)        # the fraction, in [0, 1) (exact)
    if clip:                          # x >= lo exactly, so f >= 0; x == max may give f == nb: clamped
        np.minimum(idx, nb - 1, out=idx)
    if f.min() < EDGE_EPS or f.max() > 1 - EDGE_EPS:
        np.subtract(f, 0.5, out=f)
        np.abs(f, out=f)              # distance of the fraction from 1/2
        amb = np.flatnonzero(f > 0.5 - EDGE_EPS)
        x = v[amb].astype(np.float64)
        b = np.searchsorted(edges, x, side="right") - 1
        b[x == edges[-1]] = nb - 1
        if clip:
            np.clip(b, 0, nb - 1, out=b)
        else:
            np.clip(b, -1, nb, out=b)
            b += 1
        idx[amb] = b
    return idx


def choose_edges(lo: float | None, hi: float | None, bins: int, integer: bool, rng) -> tuple[np.ndarray, bool, bool]:
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


def hist_from_support(v: np.ndarray, c: np.ndarray, edges: np.ndarray) -> tuple[np.ndarray, int, int]:
    idx = np.searchsorted(edges, v, side="right") - 1
    nb = len(edges) - 1
    idx[v == edges[-1]] = nb - 1
    below = int(c[idx < 0].sum())
    above = int(c[idx >= nb].sum())
    ok = (idx >= 0) & (idx < nb)
    return np.bincount(idx[ok], weights=c[ok], minlength=nb).astype(np.int64), below, above
