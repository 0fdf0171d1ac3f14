"""The results of :mod:`.stats`: a :class:`Histogram` and the :class:`TensorStats` of one tensor."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np


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
