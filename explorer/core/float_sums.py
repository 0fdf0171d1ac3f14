"""The float64 sums and dot products behind diff's figures (max/mean |Δ|, relative L2, cosine), in numpy.

A sum of many floats depends on the order of its additions in the last bits: numpy's pairwise sum and OpenBLAS's
ddot round differently from torch's kernels by an ulp or so (``tests/core/test_diff_numpy.py`` holds them to torch's
within 1e-12, relative). Doing them here keeps ``diff`` of checkpoint files free of torch: reading, comparing bytes,
counting NaN/Inf and these sums are all numpy.
"""
from __future__ import annotations

import numpy as np


def dot(x: np.ndarray, y: np.ndarray) -> float:
    """The dot product of two 1-D float64 arrays (BLAS ddot)."""
    return float(np.dot(x, y))


def total(x: np.ndarray) -> float:
    """The sum of a 1-D float64 array (numpy's pairwise sum)."""
    return float(x.sum())
