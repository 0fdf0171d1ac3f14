"""Histogram bins: choosing the edges, and binning values exactly as ``edges[i] <= x < edges[i+1]`` (the last bin
closed), from a sorted support (narrow dtypes) or value by value (wide dtypes)."""
from __future__ import annotations

import math

import numpy as np
import torch

from ..errors import ExplorerError


EDGE_EPS = 1e-9   # in bin widths: float64 binning can misplace only values this close to an edge


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


def bin_values(v: torch.Tensor, f: torch.Tensor, idx: torch.Tensor, lo: float, norm: float, nb: int,
                edges: torch.Tensor, clip: bool) -> torch.Tensor:
    """Bin index of each value into ``idx``, exactly as ``edges[i] <= x < edges[i+1]`` (last bin closed).

    ``clip``: every value is inside, bins 0..nb-1. Otherwise 0 = below, 1..nb = the bins, nb+1 = above.
    Binning is ``(x - lo) * norm`` in float64; the few values within ``EDGE_EPS`` bin widths of an edge are then
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
    if fmin < EDGE_EPS or fmax > 1 - EDGE_EPS:
        f.sub_(0.5).abs_()            # distance of the fraction from 1/2
        amb = _ambiguous(f, 0.5 - EDGE_EPS)
        x = v[amb].to(torch.float64)
        b = torch.searchsorted(edges, x, right=True) - 1
        b[x == edges[-1]] = nb - 1
        if clip:
            b.clamp_(0, nb - 1)
        else:
            b.clamp_(-1, nb).add_(1)
        idx[amb] = b.to(idx.dtype)
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
