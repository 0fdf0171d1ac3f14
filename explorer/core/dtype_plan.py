"""How :mod:`.stats` measures each dtype: a :class:`Plan` per tensor (narrow dtypes count bit patterns, wide ones
are measured in a wide dtype), and the value of every bit pattern of a narrow dtype."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from ..errors import UnsupportedDtypeError
from .records import dtype_name

_NARROW = {"bool", "int8", "uint8", "int16", "uint16", "float16", "bfloat16", "float8_e4m3fn", "float8_e5m2",
           "float8_e4m3fnuz", "float8_e5m2fnuz", "float8_e8m0fnu"}
_INTEGER = {"bool", "int8", "uint8", "int16", "uint16", "int32", "uint32", "int64", "uint64"}
_table_cache: dict[str, np.ndarray] = {}


def value_table(name: str, dtype: torch.dtype) -> np.ndarray:
    """float64 value of every raw bit pattern of a narrow dtype."""
    tab = _table_cache.get(name)
    if tab is not None:
        return tab
    bits = 8 if torch.empty((), dtype=dtype).element_size() == 1 else 16
    raw = np.arange(1 << bits, dtype=np.uint8 if bits == 8 else np.uint16)
    if name == "bool":
        tab = (raw != 0).astype(np.float64)
    elif name in ("int8", "uint8", "int16", "uint16", "float16"):
        tab = raw.view({"int8": np.int8, "uint8": np.uint8, "int16": np.int16, "uint16": np.uint16,
                        "float16": np.float16}[name]).astype(np.float64)
    else:  # bfloat16, float8: numpy cannot hold them; torch can
        tab = torch.from_numpy(raw.view(np.int8 if bits == 8 else np.int16).copy()).view(dtype).float().double() \
            .numpy()
    tab.setflags(write=False)
    _table_cache[name] = tab
    return tab


@dataclass
class Plan:
    name: str
    narrow: bool
    integer: bool
    measured: str = "value"
    wide: torch.dtype | None = None     # the dtype values are measured in (wide dtypes)
    bits: int = 0                       # 8/16 (narrow) or 32/64 (wide)
    convert: Callable | None = None     # chunk -> values in ``wide`` dtype


def plan_for(t: torch.Tensor) -> Plan:
    name = dtype_name(t.dtype)
    if t.device.type == "meta":
        raise UnsupportedDtypeError(f"no data (meta): this tensor ({name}) was saved from the meta device and has no "
                                    "values to measure")
    if t.is_quantized or name.startswith(("qint", "quint")) or name in ("float4_e2m1fn_x2",):
        raise UnsupportedDtypeError(f"statistics of {name} tensors are not supported (quantized or packed values); "
                                    "dequantize them first")
    if name in _NARROW:
        return Plan(name, True, name in _INTEGER, bits=8 if t.element_size() == 1 else 16)
    if name in ("float32", "int32"):
        return Plan(name, False, name == "int32", wide=t.dtype, bits=32)
    if name in ("float64", "int64"):
        return Plan(name, False, name == "int64", wide=t.dtype, bits=64)
    if name == "uint32":
        return Plan(name, False, True, wide=torch.int64, bits=64, convert=lambda c: c.to(torch.int64))
    if name == "uint64":
        return Plan(name, False, True, wide=torch.float64, bits=64, convert=lambda c: c.to(torch.float64))
    if name in ("complex64", "complex32"):
        return Plan(name, False, False, "magnitude", torch.float32, 32,
                     lambda c: (c if c.dtype == torch.complex64 else c.to(torch.complex64)).abs())
    if name == "complex128":
        return Plan(name, False, False, "magnitude", torch.float64, 64, lambda c: c.abs())
    raise UnsupportedDtypeError(f"statistics of {name} tensors are not supported")


INT_VIEW = {32: torch.int32, 64: torch.int64}
