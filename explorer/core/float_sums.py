"""The float64 sums and dot products behind diff's and statistics' figures, computed by torch's own kernels.

Why torch here, and only here: every figure is defined to the last bit by these kernels (``torch.dot`` is the BLAS
``ddot`` torch links, ``Tensor.sum`` ATen's vectorised cascade sum), and ``tests/golden`` keeps every figure byte
for byte. numpy's pairwise sum and OpenBLAS's ddot add in another order: the same numbers, rounded differently in
the last bits. So everything else is numpy, and torch is imported on the first call of :func:`dot` or
:func:`total` -- when a figure needs a sum of float values (a changed tensor's differences) -- never to read, compare
bytes, count or bin. The arrays must be float64, 1-D, contiguous and writable (our own buffers). MKL's ddot rounds
differently with the address's alignment: torch's allocations are 64-byte aligned, so must ours be
(:func:`aligned_empty`); an array that is not is copied into one that is.
"""
from __future__ import annotations

from functools import cache

import numpy as np


@cache
def _torch():
    import torch

    from .chunks import torch_imported
    torch_imported()   # inside a single_intraop scope: torch's threads become 1 now, as they are for every sum
    return torch


ALIGN = 64


def aligned_empty(n: int, dtype=np.float64) -> np.ndarray:
    """An uninitialised 1-D array whose data starts on a 64-byte boundary, as torch's allocator places a tensor."""
    itemsize = np.dtype(dtype).itemsize
    raw = np.empty(n * itemsize + ALIGN, dtype=np.uint8)
    start = -raw.ctypes.data % ALIGN
    return raw[start:start + n * itemsize].view(dtype)


def _aligned(x: np.ndarray) -> np.ndarray:
    if x.ctypes.data % ALIGN == 0:
        return x
    out = aligned_empty(x.size, x.dtype)
    out[...] = x
    return out


def dot(x: np.ndarray, y: np.ndarray) -> float:
    """``float(torch.dot(x, y))`` of two float64 arrays, as torch computes it on its own (aligned) tensors."""
    t = _torch()
    x = _aligned(x)
    return float(t.dot(t.from_numpy(x), t.from_numpy(x if y is x else _aligned(y))))


def total(x: np.ndarray) -> float:
    """``float(x.sum())`` as torch sums a float64 tensor."""
    t = _torch()
    return float(t.from_numpy(x).sum())
