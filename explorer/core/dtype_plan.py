"""How :mod:`.stats` measures each dtype: a :class:`Plan` per tensor (narrow dtypes count bit patterns, wide ones
are measured in a wide numpy dtype), and the value of every bit pattern of a narrow dtype. No torch: values come as
numpy arrays (:class:`~.np_values.Values`: raw bits for bfloat16/float8/complex32)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from ..errors import UnsupportedDtypeError
from .np_values import FLOAT8, float8_table

_NARROW = {"bool", "int8", "uint8", "int16", "uint16", "float16", "bfloat16", "float8_e4m3fn", "float8_e5m2",
           "float8_e4m3fnuz", "float8_e5m2fnuz", "float8_e8m0fnu"}
_INTEGER = {"bool", "int8", "uint8", "int16", "uint16", "int32", "uint32", "int64", "uint64"}
_BITS8 = {"bool", "int8", "uint8", *FLOAT8}
_table_cache: dict[str, np.ndarray] = {}


def value_table(name: str) -> np.ndarray:
    """float64 value of every raw bit pattern of a narrow dtype (as torch's conversions give them)."""
    tab = _table_cache.get(name)
    if tab is not None:
        return tab
    bits = 8 if name in _BITS8 else 16
    raw = np.arange(1 << bits, dtype=np.uint8 if bits == 8 else np.uint16)
    if name == "bool":
        tab = (raw != 0).astype(np.float64)
    elif name in ("int8", "uint8", "int16", "uint16", "float16"):
        tab = raw.view({"int8": np.int8, "uint8": np.uint8, "int16": np.int16, "uint16": np.uint16,
                        "float16": np.float16}[name]).astype(np.float64)
    else:   # bfloat16: the bits of a float32's top half; float8: torch's values
        with np.errstate(invalid="ignore"):   # (signalling NaN bits)
            f32 = (raw.astype(np.uint32) << 16).view(np.float32) if name == "bfloat16" else float8_table(name)
            tab = f32.astype(np.float64)
        tab[np.isnan(tab)] = np.nan           # quiet NaNs: only their being NaN counts
    tab.setflags(write=False)
    _table_cache[name] = tab
    return tab


def _magnitude(c: np.ndarray) -> np.ndarray:
    """|z| as torch computes it: ``hypot(re, im)`` (numpy's ``abs`` of a complex64 rounds differently from torch's
    in ~1/3 of the values; its ``hypot`` matches torch's for complex64 bit for bit)."""
    return np.hypot(c.real, c.imag)


def _magnitude_complex32(c: np.ndarray) -> np.ndarray:
    return _magnitude(c.view(np.float16).astype(np.float32).view(np.complex64))


@dataclass
class Plan:
    name: str
    narrow: bool
    integer: bool
    measured: str = "value"
    wide: np.dtype | None = None        # the numpy dtype values are measured in (wide dtypes)
    bits: int = 0                       # 8/16 (narrow) or 32/64 (wide)
    convert: Callable | None = None     # chunk (numpy) -> values in ``wide`` dtype


def plan_for(name: str) -> Plan:
    """How a tensor of dtype ``name`` (torch's name: 'float32', 'bfloat16') is measured."""
    if name.startswith(("qint", "quint")) or name in ("float4_e2m1fn_x2",):
        raise UnsupportedDtypeError(f"statistics of {name} tensors are not supported (quantized or packed values); "
                                    "dequantize them first")
    if name in _NARROW:
        return Plan(name, True, name in _INTEGER, bits=8 if name in _BITS8 else 16)
    if name in ("float32", "int32"):
        return Plan(name, False, name == "int32", wide=np.dtype(name), bits=32)
    if name in ("float64", "int64"):
        return Plan(name, False, name == "int64", wide=np.dtype(name), bits=64)
    if name == "uint32":
        return Plan(name, False, True, wide=np.dtype(np.int64), bits=64, convert=lambda c: c.astype(np.int64))
    if name == "uint64":
        return Plan(name, False, True, wide=np.dtype(np.float64), bits=64, convert=lambda c: c.astype(np.float64))
    if name == "complex64":
        return Plan(name, False, False, "magnitude", np.dtype(np.float32), 32, _magnitude)
    if name == "complex32":
        return Plan(name, False, False, "magnitude", np.dtype(np.float32), 32, _magnitude_complex32)
    if name == "complex128":
        return Plan(name, False, False, "magnitude", np.dtype(np.float64), 64, _magnitude)
    raise UnsupportedDtypeError(f"statistics of {name} tensors are not supported")


INT_VIEW = {32: np.int32, 64: np.int64}
UINT_VIEW = {32: np.uint32, 64: np.uint64}


_NUMPY_NAMES = {np.dtype(v): k for k, v in {"float64": np.float64, "float32": np.float32, "float16": np.float16,
                                            "int64": np.int64, "int32": np.int32, "int16": np.int16, "int8": np.int8,
                                            "uint8": np.uint8, "uint16": np.uint16, "uint32": np.uint32,
                                            "uint64": np.uint64, "bool": np.bool_, "complex64": np.complex64,
                                            "complex128": np.complex128}.items()}


def values_of(t) -> tuple[np.ndarray, Plan]:
    """(numpy values, plan) of ``t``: a :class:`~.np_values.Values` (raw bits for the dtypes numpy lacks), a numpy
    array, or a torch tensor (a model side's, handed over as numpy without a copy). torch is never imported here."""
    from ..errors import ExplorerError
    from .np_values import Values, tensor_array
    if isinstance(t, Values):
        return t.array, plan_for(t.dtype)
    if isinstance(t, np.ndarray):
        name = _NUMPY_NAMES.get(t.dtype)
        if name is None:
            raise UnsupportedDtypeError(f"statistics of numpy {t.dtype} arrays are not supported")
        return t, plan_for(name)
    import sys
    torch = sys.modules.get("torch")
    if torch is None or not isinstance(t, torch.Tensor):
        raise ExplorerError(f"expected a tensor, got {type(t).__name__}")
    from .records import dtype_name
    name = dtype_name(t.dtype)
    if t.device.type == "meta":
        raise UnsupportedDtypeError(f"no data (meta): this tensor ({name}) was saved from the meta device and has no "
                                    "values to measure")
    plan = plan_for(name)
    return tensor_array(t).array, plan
