"""Meta tensors: shape, stride and dtype without storage. The one place the explorer makes them (for key matching,
simulated loads and models too big to allocate)."""
from __future__ import annotations

import torch

from .bytesource import torch_dtypes
from .gc_pause import gc_paused
from .records import contiguous_strides


def meta_like(t: torch.Tensor) -> torch.Tensor:
    """A meta tensor of ``t``'s shape, stride (for strided tensors) and dtype."""
    if t.layout == torch.strided:
        return torch.empty_strided(tuple(t.shape), tuple(t.stride()), dtype=t.dtype, device="meta")
    return torch.empty(tuple(t.shape), dtype=t.dtype, device="meta")


def meta_strided(shape, stride, dtype):
    return torch.empty_strided(shape, stride, dtype=dtype, device="meta")


def meta_of(shape, stride, dtype: torch.dtype) -> torch.Tensor:
    """A meta tensor of ``shape`` and ``dtype``, with ``stride`` when it is one non-negative int per dimension (else
    contiguous). Raises what torch raises for an impossible layout."""
    if len(stride) == len(shape) and all(type(s) is int and s >= 0 for s in stride):
        return torch.empty_strided(shape, stride, dtype=dtype, device="meta")
    return torch.empty(shape, dtype=dtype, device="meta")


def meta_bulk(shapes: list, strides: list | None, dtypes: list) -> list | None:
    """Meta tensors of these shapes, strides (None: contiguous) and dtype names, one C call each; None when a dtype
    is unknown, a layout is unusual or torch refuses one (the caller then goes the careful way, with its error)."""
    try:
        made = list(map(torch_dtypes().get, dtypes))
        if any(d is None for d in set(made)):
            return None
        with gc_paused():
            if strides is None:   # one stride tuple per distinct shape (empty_strided is the faster call)
                stride_of = {shape: contiguous_strides(shape) for shape in set(shapes)}
                strides = list(map(stride_of.__getitem__, shapes))
            for shape, stride in set(zip(shapes, strides)):   # each distinct layout checked once
                if len(stride) != len(shape) or not all(type(s) is int and s >= 0 for s in stride):
                    return None
            return list(map(meta_strided, shapes, strides, made))
    except (RuntimeError, TypeError, ValueError, OverflowError):
        return None
