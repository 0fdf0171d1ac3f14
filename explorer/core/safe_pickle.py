"""A pickle reader that runs none of the file's code.

Python's C unpickler does the parsing; we override ``find_class`` so that every global the file names is replaced:
tensor machinery by our own record builders (which read no bytes), a handful of harmless containers and torch value
types by themselves, and everything else -- ``os.system``, ``__main__.MyModel``, ``omegaconf.ListConfig`` -- by an
inert placeholder class that only remembers what it was called with. ``persistent_load`` turns storage ids into
:class:`StorageRef` records. The globals a file names are collected as information.
"""
from __future__ import annotations

import io
import pickle
from collections import OrderedDict
from typing import Any, Callable

import numpy as np

# torch storage class name -> dtype name
STORAGE_DTYPES = {
    "DoubleStorage": "float64", "FloatStorage": "float32", "HalfStorage": "float16", "BFloat16Storage": "bfloat16",
    "LongStorage": "int64", "IntStorage": "int32", "ShortStorage": "int16", "CharStorage": "int8",
    "ByteStorage": "uint8", "BoolStorage": "bool", "ComplexFloatStorage": "complex64",
    "ComplexDoubleStorage": "complex128", "QInt8Storage": "qint8", "QUInt8Storage": "quint8",
    "QInt32Storage": "qint32", "ComplexHalfStorage": "complex32",
}

ITEMSIZE = {
    "float64": 8, "float32": 4, "float16": 2, "bfloat16": 2, "int64": 8, "int32": 4, "int16": 2, "int8": 1,
    "uint8": 1, "uint16": 2, "uint32": 4, "uint64": 8, "bool": 1, "complex64": 8, "complex128": 16, "complex32": 4,
    "float8_e4m3fn": 1, "float8_e5m2": 1, "float8_e4m3fnuz": 1, "float8_e5m2fnuz": 1, "float8_e8m0fnu": 1,
    "qint8": 1, "quint8": 1, "qint32": 4,
}

TORCH_DTYPE_NAMES = set(ITEMSIZE) | {"float4_e2m1fn_x2", "quint4x2", "quint2x4"}


class StorageType:
    """What ``torch.FloatStorage`` (or ``torch.storage.UntypedStorage``) stands for: a dtype, nothing callable."""

    def __init__(self, dtype: str | None):
        self.dtype = dtype

    def __repr__(self):
        return f"StorageType({self.dtype})"


class StorageRef:
    """A storage the file holds, by key: no bytes read."""

    __slots__ = ("key", "dtype", "device", "numel", "nbytes", "view", "source")

    def __init__(self, key: str, dtype: str | None, device: str, numel: int, view=None, source=None):
        self.key = key
        self.dtype = dtype
        self.device = device
        self.numel = int(numel)
        # typed storages count elements, untyped ones (torch >= 2.1, dtype carried by the tensor) count bytes
        self.nbytes = self.numel * ITEMSIZE.get(dtype, 1) if dtype else self.numel
        self.view = view  # legacy format: (view_key, element offset, view size) into a root storage
        self.source = source  # the ByteSource that can read this storage's bytes


class TensorRecord:
    """A tensor as the file describes it: its storage, view and dtype, and whether it was an ``nn.Parameter``."""

    __slots__ = ("storage", "storage_offset", "shape", "stride", "dtype", "requires_grad", "is_parameter")

    def __init__(self, storage, storage_offset, shape, stride, dtype, requires_grad=False):
        self.storage = storage
        self.storage_offset = int(storage_offset)
        self.shape = tuple(int(s) for s in shape)
        self.stride = tuple(int(s) for s in stride)
        self.dtype = dtype
        self.requires_grad = bool(requires_grad)
        self.is_parameter = False

    @property
    def numel(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n

    @property
    def nbytes(self) -> int:
        return self.numel * ITEMSIZE.get(self.dtype, 1)

    def __repr__(self):
        return f"TensorRecord({list(self.shape)}, {self.dtype})"


class Inert:
    """Stands for an object of a class the file names. It remembers its arguments and state and does nothing."""

    _global = "?"

    def __new__(cls, *args, **kwargs):
        obj = object.__new__(cls)
        object.__setattr__(obj, "_args", args)
        object.__setattr__(obj, "_kwargs", kwargs)
        object.__setattr__(obj, "_state", None)
        object.__setattr__(obj, "_items", [])
        object.__setattr__(obj, "_dict_items", {})
        return obj

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        object.__setattr__(self, "_state", state)

    # list-like and dict-like pickles push their items through these
    def append(self, item):
        self._items.append(item)

    def extend(self, items):
        self._items.extend(items)

    def __setitem__(self, key, value):
        try:
            self._dict_items[key] = value
        except TypeError:  # unhashable key: keep it in the item list
            self._items.append((key, value))

    def __reduce_ex__(self, protocol):  # never re-pickled into something live
        raise TypeError(f"{self._global} is an inert placeholder")

    def __repr__(self):
        return f"<{self._global} (not loaded)>"

    @property
    def global_name(self) -> str:
        return type(self)._global

    def state_dict(self) -> dict | None:
        """The instance's ``__dict__``-like state, when it has one."""
        st = self._state
        if isinstance(st, tuple) and len(st) == 2 and (st[0] is None or isinstance(st[0], dict)):
            merged = dict(st[0] or {})
            if isinstance(st[1], dict):
                merged.update(st[1])
            return merged
        return st if isinstance(st, dict) else None


_placeholder_classes: dict[str, type] = {}


def placeholder(module: str, name: str) -> type:
    full = f"{module}.{name}"
    cls = _placeholder_classes.get(full)
    if cls is None:
        safe_name = name.replace(".", "_") or "anonymous"
        cls = type(safe_name, (Inert,), {"_global": full, "__module__": "explorer.inert"})
        _placeholder_classes[full] = cls
    return cls


def is_module_state(obj: Any) -> bool:
    """Does this placeholder look like a pickled ``nn.Module`` (its ``__dict__`` has the module registries)?"""
    if not isinstance(obj, Inert):
        return False
    st = obj.state_dict()
    return isinstance(st, dict) and isinstance(st.get("_parameters"), dict) and isinstance(st.get("_modules"), dict)


# ---- safe stand-ins for the globals tensor pickles need ---------------------------------------------------------

def _rebuild_tensor(storage, storage_offset, size, stride, *rest):
    dtype = storage.dtype if isinstance(storage, StorageRef) else None
    return TensorRecord(storage, storage_offset, size, stride, dtype)


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None,
                       metadata=None):
    return TensorRecord(storage, storage_offset, size, stride,
                        storage.dtype if isinstance(storage, StorageRef) else None, requires_grad)


def _rebuild_tensor_v3(storage, storage_offset, size, stride, requires_grad, backward_hooks, dtype,
                       metadata=None):
    name = _dtype_of(dtype)
    if isinstance(storage, StorageRef):
        storage.dtype = storage.dtype or name
    return TensorRecord(storage, storage_offset, size, stride, name, requires_grad)


def _rebuild_parameter(data, requires_grad=True, backward_hooks=None, *rest):
    if isinstance(data, TensorRecord):
        data.requires_grad = bool(requires_grad)
        data.is_parameter = True
    return data


def _rebuild_from_type_v2(func, new_type, args, state):
    # a tensor subclass: rebuild the plain tensor record; the subclass is information only
    return func(*args) if callable(func) else None


class _DType:
    """``torch.float32`` and friends are plain values; we keep their names."""


def _dtype_of(value) -> str | None:
    if isinstance(value, str):
        return value
    name = getattr(value, "_dtype_name", None)
    return name


class TorchDtype(str):
    """A torch dtype named in a pickle, kept as its name (``"float32"``)."""

    @property
    def _dtype_name(self):
        return str(self)


def _codecs_encode(obj, encoding="utf-8", *rest):
    # protocol-2 pickles spell bytes as _codecs.encode(text, "latin1")
    if isinstance(obj, str) and isinstance(encoding, str) and encoding.lower() in ("latin1", "latin-1"):
        return obj.encode("latin1")
    return placeholder("_codecs", "encode")(obj, encoding, *rest)


class NumpyDtype(Inert):
    """``numpy.dtype('f8', ...)``: kept as its type code so numpy scalars can be decoded without numpy's unpickler."""

    _global = "numpy.dtype"


_NUMPY_SIMPLE = set("?bBhHiIlLqQefdgFD") | {"b1", "i1", "i2", "i4", "i8", "u1", "u2", "u4", "u8", "f2", "f4", "f8",
                                            "c8", "c16"}


def _numpy_scalar(dtype, data=None, *rest):
    code = dtype._args[0] if isinstance(dtype, NumpyDtype) and dtype._args else None
    if isinstance(code, str) and code in _NUMPY_SIMPLE and isinstance(data, bytes):
        try:
            np_dtype = np.dtype(code)
            if np_dtype.itemsize == len(data):
                return np.frombuffer(data, dtype=np_dtype)[0].item()
        except (TypeError, ValueError):
            pass
    return placeholder("numpy.core.multiarray", "scalar")(dtype, data, *rest)


def _sealed(fn):
    """Wrap a stand-in function in an instance that has no attributes a pickle's BUILD could overwrite."""
    cls = type(fn.__name__, (), {"__slots__": (), "__call__": staticmethod(fn),
                                 "__repr__": lambda self: f"<safe {fn.__name__}>"})
    return cls()


class SafeUnpickler(pickle.Unpickler):
    """Unpickles with every global replaced (see module doc). ``references`` lists what the file named."""

    ALLOWED_BUILTINS = {"set": set, "frozenset": frozenset, "complex": complex, "slice": slice}

    TENSOR_MACHINERY = {
        ("torch._utils", "_rebuild_tensor"): _sealed(_rebuild_tensor),
        ("torch._utils", "_rebuild_tensor_v2"): _sealed(_rebuild_tensor_v2),
        ("torch._utils", "_rebuild_tensor_v3"): _sealed(_rebuild_tensor_v3),
        ("torch._utils", "_rebuild_parameter"): _sealed(_rebuild_parameter),
        ("torch._utils", "_rebuild_parameter_with_state"): _sealed(_rebuild_parameter),
        ("torch._tensor", "_rebuild_from_type_v2"): _sealed(_rebuild_from_type_v2),
        ("collections", "OrderedDict"): OrderedDict,
        ("torch", "Size"): tuple,
        ("_codecs", "encode"): _sealed(_codecs_encode),
    }

    def __init__(self, file, persistent_load: Callable[[Any], Any] | None = None):
        super().__init__(file, encoding="utf-8")
        self.references: list[str] = []
        self._seen: set[str] = set()
        self._persistent_load = persistent_load

    def _note(self, full: str) -> None:
        if full not in self._seen:
            self._seen.add(full)
            self.references.append(full)

    def find_class(self, module: str, name: str):  # noqa: D401 - pickle API
        module, name = str(module), str(name)
        key = (module, name)
        if key in self.TENSOR_MACHINERY:
            return self.TENSOR_MACHINERY[key]
        if module == "torch" and name.endswith("Storage"):
            return StorageType(STORAGE_DTYPES.get(name))
        if module in ("torch.storage", "torch") and name in ("UntypedStorage", "TypedStorage", "_UntypedStorage"):
            return StorageType(None)
        if module == "torch" and name in TORCH_DTYPE_NAMES:
            return TorchDtype(name)
        if module in ("builtins", "__builtin__") and name in self.ALLOWED_BUILTINS:
            return self.ALLOWED_BUILTINS[name]
        self._note(f"{module}.{name}")
        if module == "numpy" and name == "dtype":
            return NumpyDtype
        if module in ("numpy.core.multiarray", "numpy._core.multiarray") and name == "scalar":
            return _sealed(_numpy_scalar)
        return placeholder(module, name)

    def persistent_load(self, pid):
        if self._persistent_load is None:
            raise pickle.UnpicklingError("the pickle refers to external storage but this file has none")
        return self._persistent_load(pid)


def storage_from_pid(pid) -> StorageRef:
    """Interpret a torch persistent id ``('storage', type, key, location, numel[, view])``."""
    if not isinstance(pid, tuple) or len(pid) < 5 or pid[0] != "storage":
        raise pickle.UnpicklingError(f"unexpected persistent id {str(pid)[:80]!r}")
    storage_type, key, location, numel = pid[1], pid[2], pid[3], pid[4]
    dtype = storage_type.dtype if isinstance(storage_type, StorageType) else None
    if not isinstance(numel, int) or numel < 0:
        raise pickle.UnpicklingError(f"storage {key!r} has an invalid size {numel!r}")
    view = pid[5] if len(pid) > 5 else None
    return StorageRef(str(key), dtype, str(location), numel, view)


def safe_loads(data: bytes, persistent_load=None) -> tuple[Any, list[str]]:
    """Unpickle ``data`` without running any of its code; return the object and the globals it named."""
    up = SafeUnpickler(io.BytesIO(data), persistent_load)
    obj = up.load()
    return obj, up.references
