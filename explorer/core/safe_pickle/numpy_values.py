"""numpy values in a pickle (scalars, arrays of plain numeric dtypes): data, decoded without numpy's unpickler."""
from __future__ import annotations

import pickle
from typing import TYPE_CHECKING

from .inert import Inert, placeholder, sealed
from .records import StorageRef, TensorRecord, int_tuple

if TYPE_CHECKING:   # numpy is imported where a pickle holds numpy values: a file without any lists without it
    import numpy as np


class NumpyDtype(Inert):
    """``numpy.dtype('f8', ...)``: kept as its type code so numpy scalars can be decoded without numpy's unpickler."""

    _global = "numpy.dtype"


class NumpyArray(Inert):
    """``numpy.core.multiarray._reconstruct(ndarray, (0,), b'b')`` and the BUILD that follows: the array's state
    ``(version, shape, dtype, is_fortran, raw bytes)`` is only remembered; :func:`numpy_record` reads it."""

    _global = "numpy.ndarray"


class NumpyRecord(TensorRecord):
    """A numpy array the pickle holds inline: its bytes are in memory (little-endian), read like a tensor's."""

    __slots__ = ("np_dtype", "fortran")


_NUMPY_SIMPLE = set("?bBhHiIlLqQefdgFD") | {"b1", "i1", "i2", "i4", "i8", "u1", "u2", "u4", "u8", "f2", "f4", "f8",
                                            "c8", "c16"}

# numpy dtype (kind + item size) -> the torch dtype name a tensor of the same values has
_NUMPY_TO_TORCH = {"f2": "float16", "f4": "float32", "f8": "float64", "i1": "int8", "i2": "int16", "i4": "int32",
                   "i8": "int64", "u1": "uint8", "u2": "uint16", "u4": "uint32", "u8": "uint64", "b1": "bool",
                   "c8": "complex64", "c16": "complex128"}

MULTIARRAY = ("numpy.core.multiarray", "numpy._core.multiarray")


def _numpy_scalar(dtype, data=None, *rest):
    code = dtype._args[0] if isinstance(dtype, NumpyDtype) and dtype._args else None
    if isinstance(code, str) and code in _NUMPY_SIMPLE and isinstance(data, bytes):
        try:
            import numpy as np
            np_dtype = np.dtype(code)
            if np_dtype.itemsize == len(data):
                return np.frombuffer(data, dtype=np_dtype)[0].item()
        except (TypeError, ValueError):
            pass
    return placeholder("numpy.core.multiarray", "scalar")(dtype, data, *rest)


def _numpy_reconstruct(*args):
    return NumpyArray(*args)


NUMPY_SCALAR = sealed(_numpy_scalar)
NUMPY_RECONSTRUCT = sealed(_numpy_reconstruct)


def numpy_dtype(obj) -> "np.dtype | None":
    """The numpy dtype a pickled ``numpy.dtype(code, align, copy)`` + BUILD state stands for, when it is a plain
    numeric one (no fields, no sub-array, no object); built by numpy from the type code alone."""
    if type(obj) is not NumpyDtype or not obj._args or type(obj._args[0]) is not str:
        return None
    code = obj._args[0]
    if code not in _NUMPY_SIMPLE:
        return None
    st = obj._state
    order = "|"
    if st is not None:
        if not (type(st) is tuple and len(st) >= 5 and st[1] in ("<", ">", "|", "=") and st[2] is None
                and st[3] is None and st[4] is None):
            return None
        order = st[1]
    try:
        import numpy as np
        dt = np.dtype(code)
        return dt.newbyteorder(order) if order in ("<", ">") else dt
    except (TypeError, ValueError):
        return None


class InlineBytes:
    """The byte source of arrays held inside the pickle itself (no file region)."""

    __slots__ = ("data", "label")

    def __init__(self, data: bytes, label: str = "the pickle"):
        self.data = data
        self.label = label

    def array_bytes(self, ref):
        import numpy as np
        return np.frombuffer(self.data, dtype=np.uint8).copy()

    def storage_bytes(self, ref):
        import torch
        return torch.from_numpy(self.array_bytes(ref))

    def describe(self, ref):
        return self.label, "numpy array (inside the pickle)", None

    def region(self, ref):
        raise OSError("a numpy array inside the pickle has no region of its own in the file")


def numpy_record(obj) -> "NumpyRecord | None":
    """The record of a pickled ``numpy.ndarray`` of a plain numeric dtype, or None (anything else stays an inert
    placeholder: object arrays, structured dtypes, a state that does not add up)."""
    if type(obj) is not NumpyArray:
        return None
    st = obj._state
    if not (type(st) is tuple and len(st) == 5):
        return None
    _version, shape, dtype, fortran, data = st
    dt = numpy_dtype(dtype)
    if dt is None or type(fortran) is not bool or type(data) not in (bytes, bytearray):
        return None
    name = _NUMPY_TO_TORCH.get(f"{dt.kind}{dt.itemsize}")
    try:
        shape = int_tuple(shape, "shape")
    except pickle.UnpicklingError:
        return None
    numel = 1
    for d in shape:
        if d < 0:
            return None
        numel *= d
    if name is None or numel * dt.itemsize != len(data):
        return None
    if dt.byteorder == ">":   # the values, little-endian (what torch and this reader use)
        dt = dt.newbyteorder("<")
        import numpy as np
        data = np.frombuffer(data, dtype=dt.newbyteorder(">")).astype(dt).tobytes()
    stride, acc = [], 1
    for d in (shape if fortran else reversed(shape)):
        stride.append(acc)
        acc *= max(d, 1)
    stride = tuple(stride if fortran else reversed(stride))
    ref = StorageRef(f"numpy-{id(obj)}", "uint8", "cpu", len(data), source=InlineBytes(bytes(data)))
    rec = NumpyRecord(ref, 0, shape, stride, name)
    rec.np_dtype, rec.fortran = dt, fortran
    return rec


def numpy_array(rec: NumpyRecord) -> "np.ndarray":
    """The array itself (what ``torch.load`` gives), built from its bytes."""
    import numpy as np
    arr = np.frombuffer(bytearray(rec.storage.source.data), dtype=rec.np_dtype)
    return arr.reshape(rec.shape, order="F" if rec.fortran else "C")
