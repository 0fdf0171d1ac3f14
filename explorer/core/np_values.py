"""Tensor values as numpy arrays, without torch: the dtype names a record uses, each held by a numpy dtype.

float32/64, the integers, bool and complex64/128 are numpy's own; float16 is ``np.float16``. The dtypes numpy has
no type for keep their raw bits: bfloat16 as ``np.uint16``, every float8 as ``np.uint8``, complex32 as ``np.uint32``
(two float16 bits per element). :func:`widen` gives their values exactly (bfloat16: the bits shifted into a float32;
float8: a 256-entry table of float32; complex32: two float16 widened to a complex64), as torch's own conversions
do. :func:`tensor_array` hands a torch tensor (a model side's) over the same way, so one engine measures both.
"""
from __future__ import annotations

import sys
from functools import cache
from typing import NamedTuple

import numpy as np

from ..errors import UnsupportedDtypeError

NATIVE = {"float64": np.float64, "float32": np.float32, "float16": np.float16, "int64": np.int64,
          "int32": np.int32, "int16": np.int16, "int8": np.int8, "uint8": np.uint8, "uint16": np.uint16,
          "uint32": np.uint32, "uint64": np.uint64, "bool": np.bool_, "complex64": np.complex64,
          "complex128": np.complex128}
RAW = {"bfloat16": np.uint16, "complex32": np.uint32, "float8_e4m3fn": np.uint8, "float8_e5m2": np.uint8,
       "float8_e4m3fnuz": np.uint8, "float8_e5m2fnuz": np.uint8, "float8_e8m0fnu": np.uint8}
FLOAT8 = ("float8_e4m3fn", "float8_e5m2", "float8_e4m3fnuz", "float8_e5m2fnuz", "float8_e8m0fnu")
FLOATING = {"float64", "float32", "float16", "bfloat16", *FLOAT8}
COMPLEX = {"complex32", "complex64", "complex128"}


class Values(NamedTuple):
    """A tensor's values: ``array`` (a numpy view, raw bits for the dtypes numpy lacks) and torch's dtype name."""
    array: np.ndarray
    dtype: str


def numpy_dtype(name: str):
    """The numpy dtype holding values (or raw bits) of torch dtype ``name``, or None when there is none."""
    return NATIVE.get(name) or RAW.get(name)


def _float8_value(name: str, b: int) -> float:
    """The value of float8 bit pattern ``b`` (0..255), as torch's float8 types define it."""
    if name == "float8_e8m0fnu":
        return float("nan") if b == 0xFF else 2.0 ** (b - 127)
    if name == "float8_e5m2":
        return float(np.array([b << 8], np.uint16).view(np.float16)[0])
    fnuz = name.endswith("fnuz")
    if fnuz and b == 0x80:
        return float("nan")
    mbits = 3 if name.startswith("float8_e4m3") else 2
    ebits = 7 - mbits
    bias = (1 << (ebits - 1)) - 1 + (1 if fnuz else 0)
    sign = -1.0 if b & 0x80 else 1.0
    e, m = (b >> mbits) & ((1 << ebits) - 1), b & ((1 << mbits) - 1)
    if not fnuz and name == "float8_e4m3fn" and e == 0xF and m == 0x7:
        return float("nan")
    if e == 0:
        return sign * m * 2.0 ** (1 - bias - mbits)
    return sign * (1 + m / (1 << mbits)) * 2.0 ** (e - bias)


@cache
def float8_table(name: str) -> np.ndarray:
    """float32 value of every bit pattern of a float8 dtype (read-only)."""
    tab = np.array([_float8_value(name, b) for b in range(256)], dtype=np.float32)
    nan = np.isnan(tab)   # the NaN bits torch's conversion gives (they reach a NaN's payload and sign)
    if name == "float8_e4m3fn":
        tab.view(np.uint32)[nan] = np.where(np.arange(256)[nan] & 0x80, 0xFFF00000, 0x7FF00000)
    elif name != "float8_e5m2":   # (e5m2's come from float16's own conversion)
        tab.view(np.uint32)[nan] = 0x7F800001
    tab.setflags(write=False)
    return tab


def widen(a: np.ndarray, dtype: str) -> np.ndarray:
    """The values of ``a`` (as :class:`Values` holds them) in a numpy float or complex type, exactly: bfloat16 and
    float8 as float32, complex32 as complex64; any other dtype is returned as it is."""
    if dtype == "bfloat16":
        return (a.astype(np.uint32) << 16).view(np.float32)
    if dtype in FLOAT8:
        return float8_table(dtype)[a]
    if dtype == "complex32":
        return a.view(np.float16).astype(np.float32).view(np.complex64)
    return a


def torch_scalar_name(name: str) -> str:
    """torch's C++ name of a dtype (``uint4`` -> ``UInt4``), as its messages say it."""
    for prefix, cap in (("uint", "UInt"), ("int", "Int"), ("bits", "Bits"), ("float", "Float")):
        if name.startswith(prefix):
            return cap + name[len(prefix):]
    return name


def bits_of(a: np.ndarray) -> np.ndarray:
    """The raw bits of ``a`` as unsigned integers of its item size (complex: one per part)."""
    if a.dtype.kind == "c":
        a = a.view(a.real.dtype) if a.flags.c_contiguous else np.ascontiguousarray(a).view(a.real.dtype)
    return a.view({1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}[a.dtype.itemsize])


@cache
def _torch_views() -> dict:
    import torch
    return {"bfloat16": torch.int16, "complex32": torch.int32, **{n: torch.uint8 for n in FLOAT8}}


def tensor_array(t) -> Values:
    """A torch tensor's values as :class:`Values` (no copy for a CPU tensor; the tensor must hold data)."""
    from .records import dtype_name
    name = dtype_name(t.dtype)
    t = t.detach()
    if t.device.type != "cpu":
        t = t.cpu()     # a meta tensor raises here, as any read of its values does
    if name in RAW:
        return Values(t.view(_torch_views()[name]).numpy().view(RAW[name]), name)
    if name not in NATIVE:   # sub-byte, bits, packed float4: their raw bytes (compared as bytes, not as numbers)
        if t.is_quantized:
            raise UnsupportedDtypeError(f"values of {name} tensors cannot be read as numbers; dequantize them first")
        size = t.element_size()
        ints = {1: "uint8", 2: "int16", 4: "int32", 8: "int64"}[size]
        return Values(t.view(getattr(sys.modules["torch"], ints)).numpy().view(f"u{size}"), name)
    if t.is_conj() or t.is_neg():
        t = t.resolve_conj().resolve_neg()
    return Values(t.numpy(), name)
