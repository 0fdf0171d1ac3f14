"""A pickle reader that runs none of the file's code.

Python's C unpickler does the parsing; we override ``find_class`` so that every global the file names is replaced:
tensor machinery by our own record builders (which read no bytes), a handful of harmless containers and torch value
types by themselves, and everything else -- ``os.system``, ``__main__.MyModel``, ``omegaconf.ListConfig`` -- by an
inert placeholder class that only remembers what it was called with. ``persistent_load`` turns storage ids into
:class:`StorageRef` records. The globals a file names are collected as information.
"""
from __future__ import annotations


import _compat_pickle
import io
import os
import pickle
import sys
import threading
from collections import OrderedDict
from typing import Any, Callable

import numpy as np
from .chunks import gc_paused

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
    "float4_e2m1fn_x2": 1, "qint8": 1, "quint8": 1, "qint32": 4, "quint4x2": 1, "quint2x4": 1,
    "bits8": 1, "bits16": 2, "bits1x8": 1, "bits2x4": 1, "bits4x2": 1,
    # sub-byte integer dtypes are stored one element per byte
    **{f"int{i}": 1 for i in range(1, 8)}, **{f"uint{i}": 1 for i in range(1, 8)},
}

TORCH_DTYPE_NAMES = set(ITEMSIZE)
# names a pickle may use for a dtype besides the canonical one
DTYPE_ALIASES = {"float": "float32", "double": "float64", "half": "float16", "long": "int64", "int": "int32",
                 "short": "int16", "cfloat": "complex64", "cdouble": "complex128", "chalf": "complex32"}


class StorageType:
    """What ``torch.FloatStorage`` (or ``torch.storage.UntypedStorage``) stands for: a dtype, nothing callable."""

    __slots__ = ("dtype",)

    def __init__(self, dtype: str | None):
        self.dtype = dtype

    def __setstate__(self, state):  # a pickle's BUILD on a storage type changes nothing
        pass

    def __repr__(self):
        return f"StorageType({self.dtype})"


class StorageRef:
    """A storage the file holds, by key: no bytes read."""

    __slots__ = ("key", "dtype", "device", "numel", "nbytes", "view", "source")

    def __init__(self, key: str, dtype: str | None, device: str, numel: int, view=None, source=None):
        self.key = key
        self.dtype = dtype
        self.device = device
        self.numel = numel = numel if type(numel) is int else int(numel)
        # typed storages count elements, untyped ones (torch >= 2.1, dtype carried by the tensor) count bytes
        self.nbytes = numel * ITEMSIZE.get(dtype, 1) if dtype else numel
        self.view = view  # legacy format: (view_key, element offset, view size) into a root storage
        self.source = source  # the ByteSource that can read this storage's bytes

    def __repr__(self):
        return f"StorageRef({self.key!r}, {self.dtype}, {self.device}, {self.nbytes} bytes)"


def _int_tuple(values, what: str) -> tuple:
    if type(values) is tuple and all(type(v) is int for v in values):
        return values
    try:
        out = tuple(operator_index(v) for v in values)
    except TypeError:
        raise pickle.UnpicklingError(f"a tensor's {what} is not a sequence of integers: {_quote(values)}") from None
    return out


def _quote(value) -> str:
    """A value from the file, quoted in a message: bounded and printable (see :func:`explorer.errors.shorten`)."""
    from ..errors import shorten
    return shorten(value, 80)


def operator_index(v) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise TypeError
    return int(v)


class TensorRecord:
    """A tensor as the file describes it: its storage, view and dtype, and whether it was an ``nn.Parameter``.

    While a zip pickle is parsed, ``storage`` holds the raw persistent id (a tuple); it becomes a :class:`StorageRef`
    the first time it is asked for (one Python call less per tensor of the file: parsing is most of listing).
    """

    __slots__ = ("_storage", "_ctx", "storage_offset", "shape", "stride", "dtype", "requires_grad", "is_parameter",
                 "numel", "subclass")   # subclass: set only for a tensor subclass the file names (read with getattr)

    _file_ctx = None  # per-file subclasses (see PickleContext) know how to turn a persistent id into a StorageRef

    def __init__(self, storage, storage_offset, shape, stride, dtype, requires_grad=False):
        self._storage = storage
        self._set(storage_offset, shape, stride)
        self.dtype = dtype
        self.requires_grad = requires_grad is True
        self.is_parameter = False

    def _set(self, storage_offset, shape, stride):
        # the checks are inlined: this runs once per tensor of a file, 50,000 times for a large one
        if type(storage_offset) is not int or storage_offset < 0 or storage_offset >= 1 << 62:
            storage_offset = operator_index_or_fail(storage_offset, "storage offset")
            if storage_offset < 0 or storage_offset >= 1 << 62:
                raise pickle.UnpicklingError(f"a tensor has a storage offset {_quote(storage_offset)} outside "
                                             "0..2**62")
        self.storage_offset = storage_offset
        if type(shape) is not tuple:
            shape = _int_tuple(shape, "shape")
        n = 1
        for s in shape:
            if type(s) is not int or s < 0 or s >= 1 << 62:
                raise pickle.UnpicklingError(f"a tensor's shape is not a sequence of sizes below 2**62: "
                                             f"{_quote(shape)}")
            n *= s
        if n >= 1 << 62:
            raise pickle.UnpicklingError(f"a tensor claims {n} elements, more than any machine holds")
        self.numel = n
        self.shape = shape
        if type(stride) is not tuple:
            stride = _int_tuple(stride, "stride")
        self.stride = stride  # its items are checked when the tensor is read

    @property
    def storage(self):
        ref = self._storage
        if type(ref) is tuple:
            ctx = getattr(self, "_ctx", None) or self._file_ctx
            if ctx is None:
                raise pickle.UnpicklingError("a tensor refers to a storage but the file has none")
            ref = self._storage = ctx.resolve(ref)
        return ref

    @storage.setter
    def storage(self, value):
        self._storage = value

    @property
    def nbytes(self) -> int:
        return self.numel * ITEMSIZE.get(self.dtype, 1)

    @property
    def device(self) -> str:
        ref = self.storage
        return ref.device if isinstance(ref, StorageRef) else "meta"

    def __repr__(self):
        return f"TensorRecord({list(self.shape)}, {self.dtype})"


class _SealedClass(type):
    """Metaclass of classes a pickle may name (our stand-ins and the shared placeholder classes): a BUILD or any
    other attribute write on the class itself changes nothing."""

    def __setattr__(cls, name, value):
        pass

    def __delattr__(cls, name):
        pass


class _NoState:
    def __get__(self, obj, cls=None):
        return _ignore


def _ignore(*args, **kwargs):
    return None


class PickleContext:
    """One file's storages: turns persistent ids into shared :class:`StorageRef` records, on demand."""

    def __init__(self, source=None, label: str = ""):
        self.source = source
        self.label = label
        self.refs: dict[str, StorageRef] = {}
        ctx = self
        sizes = {}.setdefault  # only plain tuples of plain ints reach it (checked before)

        class TensorV2(TensorRecord, metaclass=_SealedClass):
            """``torch._utils._rebuild_tensor_v2`` for this file: called by the C unpickler, one frame per tensor."""

            __slots__ = ()
            _file_ctx = ctx
            __setstate__ = _NoState()

            def __init__(self, storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None,
                         metadata=None):
                self._storage = storage
                st = storage[1] if type(storage) is tuple and len(storage) > 1 else storage
                self.dtype = st.dtype if type(st) is StorageType or type(st) is StorageRef else None
                # TensorRecord._set inlined for the usual values (one Python call less per tensor of the file)
                if type(storage_offset) is int and 0 <= storage_offset < 1 << 62 and type(size) is tuple \
                        and type(stride) is tuple:
                    n = 1
                    for s in size:
                        if type(s) is not int or s < 0 or s >= 1 << 62:
                            raise pickle.UnpicklingError(
                                f"a tensor's shape is not a sequence of sizes below 2**62: {_quote(size)}")
                        n *= s
                    if n >= 1 << 62:
                        raise pickle.UnpicklingError(f"a tensor claims {n} elements, more than any machine holds")
                    self.storage_offset = storage_offset
                    self.numel = n
                    # one tuple per distinct shape and stride (the pickle makes new ones for every tensor)
                    self.shape = sizes(size, size)
                    self.stride = sizes(stride, stride)
                else:
                    self._set(storage_offset, size, stride)
                self.requires_grad = requires_grad is True
                self.is_parameter = False

        self.tensor_v2 = TensorV2

        def tensor_v3(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None, dtype=None,
                      metadata=None):
            rec = TensorRecord(storage, storage_offset, size, stride, _dtype_of(dtype), requires_grad)
            rec._ctx = ctx
            return rec

        def tensor_v1(storage, storage_offset, size, stride, *rest):
            rec = TensorRecord(storage, storage_offset, size, stride, _storage_dtype(storage))
            rec._ctx = ctx
            return rec

        def qtensor(storage, storage_offset, size, stride, quantizer_params=None, requires_grad=False, *rest):
            rec = _rebuild_qtensor(storage, storage_offset, size, stride, quantizer_params, requires_grad)
            rec._ctx = ctx
            return rec

        self.stand_ins = {"_rebuild_tensor_v2": TensorV2, "_rebuild_tensor_v3": _sealed(tensor_v3),
                          "_rebuild_tensor": _sealed(tensor_v1), "_rebuild_qtensor": _sealed(qtensor)}

    def resolve(self, pid) -> StorageRef:
        key = pid[2] if type(pid) is tuple and len(pid) > 2 else None
        ref = self.refs.get(key) if type(key) is str else None
        if ref is None:
            try:
                ref = storage_from_pid(pid, self.source)
            except pickle.UnpicklingError as e:
                from ..errors import CorruptFileError
                raise CorruptFileError(f"{self.label}: {e}; the file is corrupt") from None
            self.refs[ref.key] = ref
        return ref


def operator_index_or_fail(v, what: str) -> int:
    try:
        return operator_index(v)
    except TypeError:
        raise pickle.UnpicklingError(f"a tensor's {what} is not an integer: {_quote(v)}") from None


class _StateSetter:
    """``__setstate__`` that works on instances and is a no-op when a pickle BUILDs the placeholder class itself."""

    def __get__(self, obj, cls=None):
        if obj is None:
            return _ignore
        return lambda state: object.__setattr__(obj, "_state", state)


class Inert(metaclass=_SealedClass):
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

    __setstate__ = _StateSetter()

    def __setattr__(self, name, value):  # only through __setstate__
        pass

    # list-like and dict-like pickles push their items through these
    def append(self, item):
        self._items.append(item)

    def extend(self, items):
        if isinstance(items, (list, tuple)):
            self._items.extend(items)

    def __setitem__(self, key, value):
        try:
            self._dict_items[key] = value
        except TypeError:  # unhashable key: keep it in the item list
            self._items.append((key, value))

    def __call__(self, *args, **kwargs):
        """A pickle may call what it built (``getattr(x, 'system')(...)``): the result is one more placeholder."""
        return type(self)(*args, **kwargs)

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
        cls = _SealedClass(safe_name, (Inert,), {"_global": full, "__module__": "explorer.inert"})
        _placeholder_classes[full] = cls
    return cls


def is_module_state(obj: Any) -> bool:
    """Does this placeholder look like a pickled ``nn.Module`` (its ``__dict__`` has the module registries)?"""
    if not isinstance(obj, Inert):
        return False
    st = obj.state_dict()
    return isinstance(st, dict) and isinstance(st.get("_parameters"), dict) and isinstance(st.get("_modules"), dict)


# ---- safe stand-ins for the globals tensor pickles need ---------------------------------------------------------

def _storage_dtype(storage) -> str | None:
    if isinstance(storage, StorageRef):
        return storage.dtype
    if type(storage) is tuple and len(storage) > 1 and isinstance(storage[1], StorageType):
        return storage[1].dtype
    return None


def _rebuild_tensor(storage, storage_offset, size, stride, *rest):
    return TensorRecord(storage, storage_offset, size, stride, _storage_dtype(storage))


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None,
                       metadata=None):
    return TensorRecord(storage, storage_offset, size, stride, _storage_dtype(storage), requires_grad)


def _rebuild_tensor_v3(storage, storage_offset, size, stride, requires_grad, backward_hooks, dtype,
                       metadata=None):
    return TensorRecord(storage, storage_offset, size, stride, _dtype_of(dtype), requires_grad)


def _rebuild_meta_tensor_no_storage(dtype, size, stride, requires_grad=False, *rest):
    """A tensor saved from the ``meta`` device: a shape and a dtype, no bytes anywhere."""
    return TensorRecord(None, 0, size, stride, _dtype_of(dtype), requires_grad)


class QuantizedRecord(TensorRecord):
    """A quantized tensor (``torch._utils._rebuild_qtensor``): its integer values are the storage's bytes, and
    ``qparams`` holds what the file gave torch's rebuild: ``(qscheme, scale, zero_point)`` or
    ``(qscheme, scales, zero_points, axis)`` (scales and zero points are records or lists)."""

    __slots__ = ("qparams",)


def _rebuild_qtensor(storage, storage_offset, size, stride, quantizer_params=None, requires_grad=False, *rest):
    rec = QuantizedRecord(storage, storage_offset, size, stride, _storage_dtype(storage), requires_grad)
    rec.qparams = quantizer_params if type(quantizer_params) is tuple else None
    return rec


class QScheme(str):
    """``torch.per_tensor_affine`` and its kin, named in a pickle: kept as the name."""

    __slots__ = ()

    def __setstate__(self, state):
        pass


QSCHEMES = ("per_tensor_affine", "per_channel_affine", "per_tensor_symmetric", "per_channel_symmetric",
            "per_channel_affine_float_qparams")


def _rebuild_parameter(data, requires_grad=True, backward_hooks=None, *rest):
    if isinstance(data, TensorRecord):
        data.requires_grad = requires_grad is True
        data.is_parameter = True
    return data


def _rebuild_from_type_v2(func, new_type, args, state):
    # a tensor subclass: rebuild the plain tensor record; the subclass is information only
    if isinstance(args, tuple) and (isinstance(func, _Sealed) or (type(func) is _SealedClass
                                                                  and issubclass(func, TensorRecord))):
        rec = func(*args)
        name = getattr(new_type, "_global", None) if type(new_type) is _SealedClass else None
        if isinstance(rec, TensorRecord) and isinstance(name, str) and name not in _PLAIN_TENSOR_TYPES:
            rec.subclass = name   # torch.load would rebuild it as that class (the file's code): information
        return rec
    return placeholder("torch._tensor", "_rebuild_from_type_v2")(func, new_type, args, state)


_PLAIN_TENSOR_TYPES = {"torch.Tensor", "torch._tensor.Tensor", "torch.nn.parameter.Parameter"}


def _dtype_of(value) -> str | None:
    if isinstance(value, TorchDtype):
        return str(value)
    return None


class TorchDtype(str):
    """A torch dtype named in a pickle, kept as its name (``"float32"``)."""

    __slots__ = ()

    def __setstate__(self, state):
        pass

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


class _Sealed:
    """Base of our stand-in callables: no attributes, and a pickle's BUILD on them changes nothing."""

    __slots__ = ()

    def __setstate__(self, state):
        pass


def _sealed(fn):
    """Wrap a stand-in function in an instance that has no attributes a pickle's BUILD could overwrite."""
    cls = type(fn.__name__, (_Sealed,), {"__slots__": (), "__call__": staticmethod(fn),
                                         "__repr__": lambda self: f"<safe {fn.__name__}>"})
    return cls()


def _simple(kind):
    def build(*args):
        try:
            if kind is complex:
                return complex(*[a for a in args if isinstance(a, (int, float, str))][:2])
            if kind is slice:
                return slice(*[a if isinstance(a, int) or a is None else None for a in args][:3])
            return kind(args[0]) if args and isinstance(args[0], (list, tuple, set, frozenset)) else kind()
        except (TypeError, ValueError):  # unhashable items: keep them in a tuple
            return tuple(args[0]) if args and isinstance(args[0], (list, tuple)) else ()
    build.__name__ = kind.__name__
    return _sealed(build)


class SafeUnpickler(pickle.Unpickler):
    """Unpickles with every global replaced (see module doc). ``references`` lists what the file named.

    Every object a global can stand for here is ours: records, inert placeholders, or sealed functions that build
    plain containers. Nothing the file names is imported, looked up or called.
    """

    ALLOWED_BUILTINS = {"set": _simple(set), "frozenset": _simple(frozenset), "complex": _simple(complex),
                        "slice": _simple(slice)}

    TENSOR_MACHINERY = {
        ("torch._utils", "_rebuild_tensor"): _sealed(_rebuild_tensor),
        ("torch._utils", "_rebuild_tensor_v2"): _sealed(_rebuild_tensor_v2),
        ("torch._utils", "_rebuild_tensor_v3"): _sealed(_rebuild_tensor_v3),
        ("torch._utils", "_rebuild_parameter"): _sealed(_rebuild_parameter),
        ("torch._utils", "_rebuild_parameter_with_state"): _sealed(_rebuild_parameter),
        ("torch._utils", "_rebuild_meta_tensor_no_storage"): _sealed(_rebuild_meta_tensor_no_storage),
        ("torch._utils", "_rebuild_qtensor"): _sealed(_rebuild_qtensor),
        ("torch._tensor", "_rebuild_from_type_v2"): _sealed(_rebuild_from_type_v2),
        # real classes, and C callables: a BUILD on them raises (the file does not open), nothing else happens
        ("collections", "OrderedDict"): OrderedDict,
        ("torch", "Size"): tuple,
        ("_codecs", "encode"): _sealed(_codecs_encode),
    }

    def __init__(self, file, persistent_load: Callable[[Any], Any] | None = None,
                 context: PickleContext | None = None):
        """``persistent_load`` turns each persistent id into a storage record as it is read (legacy format);
        with a ``context`` instead, ids stay raw tuples until a tensor's storage is first asked for (zip format)."""
        super().__init__(file, encoding="utf-8")
        self._file = file
        self.references: list[str] = []
        self._seen: set[str] = set()
        self._context = context
        if persistent_load is not None:
            self.persistent_load = persistent_load
        elif context is not None:
            self.persistent_load = tuple  # a C callable: the raw id, no Python frame per tensor

    def load(self):
        # nothing the C unpickler would hash takes longer than the budget; note strings no output could print
        surrogates = check_pickle_stream(self._file)
        with _quiet_bytearray_bug(), _memo_cap(_size_of(self._file)):
            obj = super().load()
        if surrogates:
            make_keys_printable(obj, getattr(self._context, "label", ""))
        clean_metadata(obj)
        return obj

    def _note(self, full: str) -> None:
        if full not in self._seen:
            self._seen.add(full)
            self.references.append(full)

    def find_class(self, module: str, name: str):  # noqa: D401 - pickle API
        module, name = printable_key(str(module)), printable_key(str(name))
        if (module, name) in _compat_pickle.NAME_MAPPING:  # protocol-2 pickles use Python 2 names
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        elif module in _compat_pickle.IMPORT_MAPPING:
            module = _compat_pickle.IMPORT_MAPPING[module]
        key = (module, name)
        if module == "torch._utils" and self._context is not None and name in self._context.stand_ins:
            return self._context.stand_ins[name]
        found = self.TENSOR_MACHINERY.get(key)
        if found is not None:
            return found
        if module == "torch":
            if name.endswith("Storage") and name in STORAGE_DTYPES:
                return StorageType(STORAGE_DTYPES[name])
            if name in TORCH_DTYPE_NAMES:
                return TorchDtype(name)
            if name in DTYPE_ALIASES:
                return TorchDtype(DTYPE_ALIASES[name])
            if name in QSCHEMES:
                return QScheme(name)
        if module in ("torch.storage", "torch") and name in ("UntypedStorage", "TypedStorage", "_UntypedStorage"):
            return StorageType(None)
        if module in ("builtins", "__builtin__") and name in self.ALLOWED_BUILTINS:
            return self.ALLOWED_BUILTINS[name]
        self._note(f"{module}.{name}")
        if module == "numpy" and name == "dtype":
            return NumpyDtype
        if module in ("numpy.core.multiarray", "numpy._core.multiarray") and name == "scalar":
            return _NUMPY_SCALAR
        if module in ("numpy.core.multiarray", "numpy._core.multiarray") and name == "_reconstruct":
            return _NUMPY_RECONSTRUCT
        if module == "torch.nn.parameter" and name in _UNINITIALIZED:
            return _UNINITIALIZED[name]
        return placeholder(module, name)
    # no ``persistent_load`` method: without one given, a persistent id is an UnpicklingError of the C unpickler


_NUMPY_SCALAR = _sealed(_numpy_scalar)


# ---- uninitialized (lazy) parameters: a flag, no data ----------------------------------------------------------

class Uninitialized(Inert):
    """``torch.nn.parameter.UninitializedParameter(requires_grad)`` / ``UninitializedBuffer``: what a lazy module's
    state dict holds before its first forward. Only its arguments are kept; :func:`uninitialized_tensor` makes the
    torch object of the same class for code that must see it (the simulation)."""

    _global = "torch.nn.parameter.UninitializedParameter"

    @property
    def is_buffer(self) -> bool:
        return type(self) is UninitializedBufferRecord


class UninitializedBufferRecord(Uninitialized):
    _global = "torch.nn.parameter.UninitializedBuffer"


def _uninitialized_parameter(*args, **kwargs):
    return Uninitialized(*args, **kwargs)


def _uninitialized_buffer(*args, **kwargs):
    return UninitializedBufferRecord(*args, **kwargs)


_UNINITIALIZED = {"UninitializedParameter": _sealed(_uninitialized_parameter),
                  "UninitializedBuffer": _sealed(_uninitialized_buffer)}


def uninitialized_tensor(obj: Uninitialized):
    """The ``torch.nn.UninitializedParameter`` (or buffer) ``obj`` stands for: its ``requires_grad`` is the only
    argument taken from the file (when it is a bool); device and dtype are torch's defaults, as when unpickled."""
    import torch
    grad = obj._args[0] if obj._args and type(obj._args[0]) is bool else not obj.is_buffer
    cls = torch.nn.UninitializedBuffer if obj.is_buffer else torch.nn.UninitializedParameter
    return cls(requires_grad=grad)


# ---- numpy arrays: data, read without numpy's unpickler ----------------------------------------------------------

class NumpyArray(Inert):
    """``numpy.core.multiarray._reconstruct(ndarray, (0,), b'b')`` and the BUILD that follows: the array's state
    ``(version, shape, dtype, is_fortran, raw bytes)`` is only remembered; :func:`numpy_record` reads it."""

    _global = "numpy.ndarray"


def _numpy_reconstruct(*args):
    return NumpyArray(*args)


_NUMPY_RECONSTRUCT = _sealed(_numpy_reconstruct)

# numpy dtype (kind + item size) -> the torch dtype name a tensor of the same values has
_NUMPY_TO_TORCH = {"f2": "float16", "f4": "float32", "f8": "float64", "i1": "int8", "i2": "int16", "i4": "int32",
                   "i8": "int64", "u1": "uint8", "u2": "uint16", "u4": "uint32", "u8": "uint64", "b1": "bool",
                   "c8": "complex64", "c16": "complex128"}


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
        dt = np.dtype(code)
        return dt.newbyteorder(order) if order in ("<", ">") else dt
    except (TypeError, ValueError):
        return None


class NumpyRecord(TensorRecord):
    """A numpy array the pickle holds inline: its bytes are in memory (little-endian), read like a tensor's."""

    __slots__ = ("np_dtype", "fortran")


class _InlineBytes:
    """The byte source of arrays held inside the pickle itself (no file region)."""

    __slots__ = ("data", "label")

    def __init__(self, data: bytes, label: str = "the pickle"):
        self.data = data
        self.label = label

    def storage_bytes(self, ref):
        import torch
        return torch.from_numpy(np.frombuffer(self.data, dtype=np.uint8).copy())

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
        shape = _int_tuple(shape, "shape")
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
        data = np.frombuffer(data, dtype=dt.newbyteorder(">")).astype(dt).tobytes()
    stride, acc = [], 1
    for d in (shape if fortran else reversed(shape)):
        stride.append(acc)
        acc *= max(d, 1)
    stride = tuple(stride if fortran else reversed(stride))
    ref = StorageRef(f"numpy-{id(obj)}", "uint8", "cpu", len(data), source=_InlineBytes(bytes(data)))
    rec = NumpyRecord(ref, 0, shape, stride, name)
    rec.np_dtype, rec.fortran = dt, fortran
    return rec


def numpy_array(rec: NumpyRecord) -> np.ndarray:
    """The array itself (what ``torch.load`` gives), built from its bytes."""
    arr = np.frombuffer(bytearray(rec.storage.source.data), dtype=rec.np_dtype)
    return arr.reshape(rec.shape, order="F" if rec.fortran else "C")


def storage_from_pid(pid, source=None) -> StorageRef:
    """Interpret a torch persistent id ``('storage', type, key, location, numel[, view])``."""
    if type(pid) is not tuple or len(pid) < 5 or pid[0] != "storage":
        raise pickle.UnpicklingError(f"unexpected persistent id {_quote(pid)}")
    storage_type, key, location, numel = pid[1], pid[2], pid[3], pid[4]
    dtype = storage_type.dtype if isinstance(storage_type, StorageType) else None
    if type(numel) is not int or numel < 0:
        raise pickle.UnpicklingError(f"storage {_quote(key)} has an invalid size {_quote(numel)}")
    view = pid[5] if len(pid) > 5 else None
    if view is not None and not (type(view) is tuple and len(view) == 3 and type(view[1]) is int
                                 and type(view[2]) is int and view[1] >= 0 and view[2] >= 0):
        raise pickle.UnpicklingError(f"storage {_quote(key)} has an invalid view {_quote(view)}")
    if type(key) is not str:  # torch writes str keys; anything else (a nested tuple...) is not a storage name
        if type(key) is not int:
            raise pickle.UnpicklingError(f"storage key {_quote(key)} is not a name")
        key = str(key)
    if numel >= 1 << 62:
        raise pickle.UnpicklingError(f"storage {_quote(key)} claims {numel} elements, more than any machine holds")
    return StorageRef(key, dtype,
                      location if type(location) is str else _quote(location), numel, view, source)


def safe_loads(data: bytes, persistent_load=None) -> tuple[Any, list[str]]:
    """Unpickle ``data`` without running any of its code; return the object and the globals it named."""
    up = SafeUnpickler(io.BytesIO(data), persistent_load)
    with gc_paused():
        obj = up.load()
    return obj, up.references


class BoundedReader:
    """A binary file seen by the unpickler, refusing reads past the end of the file *before* they are attempted.

    A corrupt length field (``BINBYTES8`` of 2**40...) otherwise makes the C unpickler allocate that much and then
    fail; here it is an ``UnpicklingError`` at once. ``peek`` lets the unpickler read ahead in large blocks and then
    consume exactly the pickle's bytes, so the file stays positioned right after it (the legacy format relies on it).
    """

    __slots__ = ("_f", "_end")

    def __init__(self, f, end: int):
        self._f = f
        self._end = end

    def read(self, n: int = -1) -> bytes:
        if n is not None and n > self._end - self._f.tell():
            raise pickle.UnpicklingError(f"a length field claims {n} bytes, past the end of the file")
        return self._f.read(n)

    def readline(self) -> bytes:
        return self._f.readline()

    def peek(self, n: int = 0) -> bytes:
        return self._f.peek(n)


class _quiet_bytearray_bug:
    """CPython 3.11's C unpickler: when a BYTEARRAY8 opcode claims more memory than can be allocated, the half-built
    bytearray is freed with an uninitialised export count and CPython may print "SystemError: deallocated bytearray
    object has exported buffers" through ``sys.excepthook`` -- a second stderr line -- before the load raises
    MemoryError (which every reader reports as a corrupt file). Drop that one message while a pickle loads."""

    def __enter__(self):
        self._hook = hook = sys.excepthook

        def quiet(tp, value, tb):
            if tp is SystemError and "deallocated bytearray object has exported buffers" in str(value):
                return
            hook(tp, value, tb)
        sys.excepthook = quiet
        return self

    def __exit__(self, *exc):
        sys.excepthook = self._hook
        return False


def _size_of(file) -> int:
    """Bytes a pickle stream holds (what a BoundedReader has left, a file's size, a BytesIO's length); a large guess
    when unknown (then the cap is loose)."""
    if isinstance(file, BoundedReader):
        return max(0, file._end - file._f.tell())
    try:
        return os.fstat(file.fileno()).st_size
    except (AttributeError, OSError, io.UnsupportedOperation):
        pass
    try:
        return len(file.getbuffer())
    except (AttributeError, TypeError):
        return 1 << 30


# Held while a pickle loads under an address-space cap in a process with other threads (the window), and by
# whoever maps a file (bytesource.FileMaps): a big mapping must not meet the cap, nor the cap a big mapping.
address_space_lock = threading.RLock()
MULTI_THREAD_HEADROOM = 1 << 30   # above what parsing needs: other threads' ordinary allocations go on meanwhile


def _others_may_allocate() -> bool:
    """May another thread allocate while this one parses? Yes off the main thread -- the window parses in Qt's pool
    threads, which Python's ``threading`` does not count until they ask for ``current_thread()``, while its GUI
    thread runs -- or when Python knows of other threads."""
    return threading.current_thread() is not threading.main_thread() or threading.active_count() > 1


class _memo_cap:
    """CPython's C unpickler keeps its memo in an array as long as the largest index a PUT / LONG_BINPUT names, and
    zeroes it up front: a 9-byte pickle naming index 2**27 allocates and touches 2 GB (2**30: 16 GB), before any
    of our code runs. Cap the address space while a pickle loads so such a claim fails at once as MemoryError (a
    corrupt file) instead of as gigabytes of RSS. Linux only; never raises an existing lower limit.

    The limit is process-wide while it lasts. With one thread (the command line, the window's compute process) the
    headroom is what parsing needs; with other threads (the window) another :data:`MULTI_THREAD_HEADROOM` is left
    for their ordinary allocations, and :data:`address_space_lock` keeps our own file mappings from starting
    meanwhile (a claim beyond ~1 GB still fails at once; a smaller one is bounded by the headroom)."""

    def __init__(self, pickle_bytes: int):
        # what parsing may add: objects for every opcode (~40x the pickle for a file of 10**6 tensors), never the
        # 16 bytes per memo index a hostile PUT claims
        self.headroom = (256 << 20) + 64 * pickle_bytes

    def __enter__(self):
        self._old = None
        self._locked = False
        if _others_may_allocate():
            address_space_lock.acquire()
            self._locked = True
            headroom = self.headroom + MULTI_THREAD_HEADROOM
        else:
            headroom = self.headroom
        try:
            import resource
            with open("/proc/self/statm") as f:
                vm = int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
            old = resource.getrlimit(resource.RLIMIT_AS)
            soft = vm + headroom
            if old[1] != resource.RLIM_INFINITY:
                soft = min(soft, old[1])
            if old[0] == resource.RLIM_INFINITY or old[0] > soft:
                resource.setrlimit(resource.RLIMIT_AS, (soft, old[1]))
                self._old = old
        except (ImportError, OSError, ValueError):
            pass
        return self

    def __exit__(self, *exc):
        try:
            if self._old is not None:
                import resource
                resource.setrlimit(resource.RLIMIT_AS, self._old)
        finally:
            if self._locked:
                address_space_lock.release()
        return False


# ---- hashing budget: what the C unpickler would hash, checked before it runs ---------------------------------------
#
# The C unpickler hashes every dict key and set member it inserts, inside C: a 1 KB pickle whose key is a tuple DAG
# (t1 = (t0, t0), t2 = (t1, t1), ... 64 levels through the memo) makes that one insertion 2**64 steps, and nothing
# can interrupt it. So before a pickle loads, :func:`check_hash_work` walks its opcodes once, modelling what each
# stack item would cost to hash (a tuple: 1 + its items; anything else: 1, as ``hash`` of a str, int, record or
# placeholder is cheap and of a list or dict fails at once), and adds up the cost of every insertion the unpickler
# (or a stand-in that builds a set, a dict or a tuple from its arguments) would make. More than
# ``HASH_BUDGET + HASH_BUDGET_PER_BYTE * len(pickle)`` steps is refused, before anything is built.

HASH_BUDGET = 1 << 22
HASH_BUDGET_PER_BYTE = 4


class HashBombError(pickle.UnpicklingError):
    """A pickle whose dict keys / set members would take more hashing than its size allows."""


class _Pass:
    """A callable the model cannot see into (a stand-in that may return or hash what it is given)."""

    __slots__ = ()


class _One:
    """A global that resolves to a placeholder or a record builder (its result hashes by identity)."""

    __slots__ = ()


_PASS = _Pass()
_ONE = _One()
_GLOBALS = (_Pass, _One)
# stand-ins that build records or placeholders from what they are given (cheap to hash: by identity)
_ONE_MACHINERY = {("torch._utils", "_rebuild_tensor"), ("torch._utils", "_rebuild_tensor_v2"),
                  ("torch._utils", "_rebuild_tensor_v3"), ("torch._utils", "_rebuild_meta_tensor_no_storage"),
                  ("_codecs", "encode")}


def _callable_kind(module: str, name: str):
    """``_PASS`` for globals the unpickler resolves to a stand-in that may hash or return its arguments
    (``OrderedDict``, ``set``, ``torch.Size``, ``_rebuild_parameter``...), else 1 (placeholders, record builders)."""
    if (module, name) in _compat_pickle.NAME_MAPPING:
        module, name = _compat_pickle.NAME_MAPPING[(module, name)]
    elif module in _compat_pickle.IMPORT_MAPPING:
        module = _compat_pickle.IMPORT_MAPPING[module]
    key = (module, name)
    if key in _ONE_MACHINERY:
        return _ONE
    if key in SafeUnpickler.TENSOR_MACHINERY or (module in ("builtins", "__builtin__")
                                                 and name in SafeUnpickler.ALLOWED_BUILTINS):
        return _PASS
    return _ONE


def _w(item) -> int:
    t = type(item)
    return item if t is int else item[0] if t is list else 1


def check_hash_work(buf, pos: int = 0, end: int | None = None) -> int:
    """Walk the pickle in ``buf`` (bytes or mmap) from ``pos`` to its STOP; raise :class:`HashBombError` when its
    insertions would hash more than the budget allows. Returns the position after STOP (or where the walk stopped:
    at an opcode the unpickler itself rejects, everything before it was checked, and the unpickler fails there).

    Stack items are modelled as ints (what hashing an immutable value costs) or one-element lists (a mutable
    container, shared by the memo: what ``tuple(it)`` would cost grows as items are added). Runs of state-dict items
    as torch.save writes them are checked at once by :class:`_TorchBatches` (a 10**6-tensor pickle in about a second).
    """
    import struct
    end = len(buf) if end is None else end
    budget = HASH_BUDGET + HASH_BUDGET_PER_BYTE * max(0, end - pos)
    cap = budget + 1
    u4, u8 = struct.Struct("<I").unpack_from, struct.Struct("<Q").unpack_from
    stack: list = []
    push, pop = stack.append, stack.pop
    marks: list = []
    memo: dict = {}
    memo_gen: dict = {}  # index >= 256 -> fast batches seen when it was written (LONG_BINPUT may overwrite it later)
    batches = _TorchBatches(memo)
    fast = 0             # fast batches so far
    unseen = 1           # what a GET of an index the walk did not record may cost (a fast batch wrote it)
    work = 0

    def line(p):
        q = buf.find(b"\n", p, end)
        if q < 0:
            raise _Stop
        return q + 1

    def fence():
        return marks[-1] if marks else 0

    def to_mark():
        if not marks:
            raise _Stop
        m = marks.pop()
        items = stack[m:]
        del stack[m:]
        return items

    def pop1():
        if len(stack) <= fence():
            raise _Stop
        return pop()

    def top():
        if len(stack) <= fence():
            raise _Stop
        return stack[-1]

    def charge(n):
        nonlocal work
        work += n
        if work > budget:
            raise HashBombError(f"the pickle's dict keys or set members would take more than {budget:,} hashing "
                                "steps (tuples that share themselves through the memo: a hash bomb); refusing to "
                                "build them")

    def tuple_of(items):
        w = 1 + sum(map(_w, items))
        return w if w < cap else cap

    def call(fn, args_w):
        if fn is _PASS:
            charge(args_w)
            return [min(1 + args_w, cap)]
        return [1]

    def put(idx, item):
        memo[idx] = item
        if idx >= 256:
            memo_gen[idx] = fast
        batches.changed()

    def get(idx):
        item = memo.get(idx)
        if item is None:
            return unseen
        if fast and idx >= 256 and memo_gen.get(idx, -1) < fast:  # a fast batch may have written it since
            if type(item) is list:
                item[0] = max(item[0], unseen)
                return item
            return item if type(item) is not int else max(item, unseen)
        return item

    try:
        while pos < end:
            op = buf[pos]
            pos += 1
            if op == 0x4B or op == 0x43 or op == 0x8C or op == 0x55:  # K, C, SHORT_BINUNICODE, U
                n = buf[pos]
                pos += 1 + (0 if op == 0x4B else n)
                push(1)
            elif op == 0x71:  # q BINPUT
                put(buf[pos], top())
                pos += 1
            elif op == 0x68:  # h BINGET
                push(get(buf[pos]))
                pos += 1
            elif op == 0x58 or op == 0x42 or op == 0x54:  # X, B, T: 4-byte length
                pos += 4 + u4(buf, pos)[0]
                push(1)
            elif op == 0x72:  # r LONG_BINPUT
                put(u4(buf, pos)[0], top())
                pos += 4
            elif op == 0x6A:  # j LONG_BINGET
                push(get(u4(buf, pos)[0]))
                pos += 4
            elif op == 0x28:  # ( MARK
                if pos < end and buf[pos] == 0x58 and len(stack) > fence():
                    stop = batches.match(buf, pos - 1, end)
                    if stop is not None:  # a whole SETITEMS batch of str keys and torch tensors: no mark left
                        keys = (stop - pos) // 10
                        charge(keys)
                        target = stack[-1]
                        if type(target) is list:
                            target[0] = min(target[0] + keys, cap)
                        fast += 1
                        unseen = _TorchBatches.MAX_WEIGHT
                        pos = stop
                        continue
                marks.append(len(stack))
            elif op == 0x74:  # t TUPLE
                push(tuple_of(to_mark()))
            elif 0x85 <= op <= 0x87:  # TUPLE1..3
                n = op - 0x84
                if len(stack) - fence() < n:
                    raise _Stop
                items = stack[-n:]
                del stack[-n:]
                push(tuple_of(items))
            elif op == 0x29:  # ) EMPTY_TUPLE
                push(1)
            elif op == 0x52:  # R REDUCE
                args = pop1()
                fn = pop1()
                push(call(fn, _w(args)))
            elif op == 0x81:  # NEWOBJ
                args = pop1()
                cls = pop1()
                push(call(cls, _w(args)))
            elif op == 0x92:  # NEWOBJ_EX
                kwargs = pop1()
                args = pop1()
                cls = pop1()
                push(call(cls, _w(args) + _w(kwargs)))
            elif op == 0x51:  # Q BINPERSID: persistent_load may hand the id back (a tuple)
                pid = pop1()
                push(min(1 + _w(pid), cap))
            elif op == 0x50:  # P PERSID (text)
                pos = line(pos)
                push(2)
            elif op == 0x4A or op == 0x84:  # J, EXT4
                pos += 4
                push(1 if op == 0x4A else _PASS)
            elif op == 0x4D or op == 0x83:  # M, EXT2
                pos += 2
                push(1 if op == 0x4D else _PASS)
            elif op == 0x82:  # EXT1
                pos += 1
                push(_PASS)
            elif op == 0x47:  # G BINFLOAT
                pos += 8
                push(1)
            elif op == 0x8A:  # LONG1
                pos += 1 + buf[pos]
                push(1)
            elif op == 0x8B:  # LONG4
                pos += 4 + u4(buf, pos)[0]
                push(1)
            elif op == 0x8D or op == 0x8E or op == 0x96:  # BINUNICODE8, BINBYTES8, BYTEARRAY8
                pos += 8 + u8(buf, pos)[0]
                push(1 if op != 0x96 else [1])
            elif op in (0x4E, 0x88, 0x89):  # None, True, False
                push(1)
            elif op == 0x5D or op == 0x7D or op == 0x8F:  # EMPTY_LIST, EMPTY_DICT, EMPTY_SET
                push([1])
            elif op == 0x6C:  # l LIST
                push([tuple_of(to_mark())])
            elif op == 0x64:  # d DICT
                items = to_mark()
                keys = sum(map(_w, items[0::2]))
                charge(keys)
                push([min(1 + keys, cap)])
            elif op == 0x75:  # u SETITEMS
                items = to_mark()
                keys = sum(map(_w, items[0::2]))
                charge(keys)
                target = top()
                if type(target) is list:
                    batches.changed()
                    target[0] = min(target[0] + keys, cap)
            elif op == 0x73:  # s SETITEM
                pop1()
                key = _w(pop1())
                charge(key)
                target = top()
                if type(target) is list:
                    batches.changed()
                    target[0] = min(target[0] + key, cap)
            elif op == 0x65 or op == 0x90:  # APPENDS, ADDITEMS
                items = sum(map(_w, to_mark()))
                if op == 0x90:
                    charge(items)
                target = top()
                if type(target) is list:
                    batches.changed()
                    target[0] = min(target[0] + items, cap)
            elif op == 0x61:  # a APPEND
                item = _w(pop1())
                target = top()
                if type(target) is list:
                    batches.changed()
                    target[0] = min(target[0] + item, cap)
            elif op == 0x91:  # FROZENSET
                items = sum(map(_w, to_mark()))
                charge(items)
                push(min(1 + items, cap))
            elif op == 0x62:  # b BUILD
                pop1()
                top()
            elif op == 0x30:  # 0 POP
                if marks and marks[-1] == len(stack):
                    marks.pop()
                else:
                    pop1()
            elif op == 0x31:  # 1 POP_MARK
                to_mark()
            elif op == 0x32:  # 2 DUP
                push(top())
            elif op == 0x94:  # MEMOIZE: the unpickler's index counts what fast batches wrote, which the walk did not
                if fast:
                    raise HashBombError("the pickle memoizes objects in a way torch.save never writes (MEMOIZE after "
                                        "protocol-2 state-dict items); refusing to build it")
                put(len(memo), top())
            elif op == 0x63 or op == 0x69:  # c GLOBAL, i INST
                a = line(pos)
                b = line(a)
                kind = _callable_kind(bytes(buf[pos:a - 1]).decode("utf-8", "replace"),
                                      bytes(buf[a:b - 1]).decode("utf-8", "replace"))
                pos = b
                if op == 0x63:
                    push(kind)
                else:
                    push(call(kind, tuple_of(to_mark())))
            elif op == 0x93:  # STACK_GLOBAL
                pop1()
                pop1()
                push(_PASS)
            elif op == 0x6F:  # o OBJ
                items = to_mark()
                if not items:
                    raise _Stop
                push(call(items[0], tuple_of(items[1:])))
            elif op == 0x67 or op == 0x70:  # g GET, p PUT (text index)
                a = line(pos)
                try:
                    idx = int(bytes(buf[pos:a - 1]))
                except ValueError:
                    raise _Stop from None
                pos = a
                if op == 0x67:
                    push(get(idx))
                else:
                    put(idx, top())
            elif op in (0x49, 0x4C, 0x46, 0x53, 0x56):  # INT, LONG, FLOAT, STRING, UNICODE (text)
                pos = line(pos)
                push(1)
            elif op == 0x80:  # PROTO
                pos += 1
            elif op == 0x95:  # FRAME: its bytes follow inline
                pos += 8
            elif op == 0x97:  # NEXT_BUFFER
                push([1])
            elif op == 0x98:  # READONLY_BUFFER
                top()
            elif op == 0x2E:  # STOP
                return pos
            else:  # an opcode the unpickler rejects: it fails there
                return pos
    except (_Stop, IndexError, struct.error):
        pass
    return pos


class _TorchBatches:
    """One regular expression that checks, at C speed, a whole ``SETITEMS`` batch as torch.save writes a state dict:
    ``( key tensor key tensor ... u``, each key a literal string and each tensor a ``_rebuild_tensor_v2(...)`` call
    over literals, small tuples and memo entries the walk knows to be cheap. Everything such a batch builds hashes in
    at most :data:`MAX_WEIGHT` steps (the grammar bounds it), so the walk need not see inside: the memo entries it
    writes are "unseen" (at most that), and it never overwrites an entry the walk recorded (its PUT indices exclude
    them). Anything else -- one item of another shape -- and the walk checks the batch opcode by opcode."""

    MAX_WEIGHT = 600   # 1 + 8 args of at most 1 + 8 * (1 + 8 * 8) ... (see the grammar): 530, with room
    MAX_COMPILES = 64

    def __init__(self, memo: dict):
        self.memo = memo
        self._cache: dict = {}
        self._rx = None
        self._dirty = True
        self._compiles = 0

    def changed(self):
        self._dirty = True

    def match(self, buf, pos: int, end: int):
        if self._dirty:
            if self._compiles >= self.MAX_COMPILES:
                return None
            self._rx = self._compile()
            self._compiles += 1
            self._dirty = False
        m = self._rx.match(buf, pos, end)
        return m.end() if m is not None else None

    def _compile(self):
        import re
        import struct
        cheap_h, cheap_j, taken = [], [], set()
        for idx, item in self.memo.items():
            cheap = isinstance(item, _GLOBALS) or (_w(item) <= 8 and type(item) in (int, list))
            if idx < 256:
                taken.add(idx)
                if cheap:
                    cheap_h.append(idx)
            elif isinstance(item, _GLOBALS) and len(cheap_j) < 64:
                cheap_j.append(struct.pack("<I", idx))

        def cls(values):
            return b"[" + b"".join(re.escape(bytes([v])) for v in sorted(values)) + b"]" if values else b"(?!)"

        def lengths(n, fmt):
            return b"|".join(re.escape(struct.pack(fmt, k)) + (b".{%d}" % k if k else b"") for k in range(n + 1))

        key = (bytes(sorted(cheap_h)), bytes(sorted(taken)), tuple(cheap_j))
        if key in self._cache:
            return self._cache[key]
        aj = b"|".join(re.escape(x) for x in cheap_j)
        geta = b"(?:h" + cls(cheap_h) + (b"|j(?:" + aj + b")" if aj else b"") + b")"
        put = (b"(?:q" + cls(set(range(256)) - taken) + b"|r" + (b"(?!" + aj + b")" if aj else b"")
               + b"(?!.\x00\x00\x00)....)?")
        a0p = (b"(?:K.|M..|J....|N|\x88|\x89|G.{8}|\x8a(?:" + lengths(8, "<B") + b")|X(?:" + lengths(24, "<I")
               + b")|" + geta + b")" + put)
        tup = b"\\((?:" + a0p + b"){0,8}t" + put
        arg = (b"(?:" + tup + b"(?:Q" + put + b")?|\\)" + put + b"|" + geta + b"(?:\\)R)?" + put + b"|" + a0p
               + b"(?:Q" + put + b"|\x85" + put + b"|" + a0p + b"(?:\x86" + put + b"|" + a0p + b"\x87" + put + b"))?)")
        tensor = geta + put + b"\\((?:" + arg + b"){0,8}t" + put + b"R" + put
        pair = b"X(?:" + lengths(255, "<I") + b")" + put + tensor
        rx = self._cache[key] = re.compile(b"\\((?>" + pair + b")+u", re.DOTALL)
        return rx


class _Stop(Exception):
    """The model reached something the unpickler itself rejects (it fails there, having built nothing worse)."""


def _pickle_buffer(file):
    """``(buffer, start, end, release)`` for the bytes an unpickler is about to read from ``file``, without moving
    it; None when they cannot be seen (then the walk is skipped)."""
    import mmap
    if isinstance(file, io.BytesIO):
        return file.getvalue(), file.tell(), len(file.getbuffer()), None
    f, end = (file._f, file._end) if isinstance(file, BoundedReader) else (file, None)
    try:
        start = f.tell()
        fd = f.fileno()
        size = os.fstat(fd).st_size
    except (AttributeError, OSError, io.UnsupportedOperation, ValueError):
        return None
    if size == 0 or start >= size:
        return None
    with address_space_lock:  # a mapping must not meet another thread's address-space cap
        try:
            m = mmap.mmap(fd, size, access=mmap.ACCESS_READ)
        except (OSError, ValueError):
            return None
    return m, start, min(size, end if end is not None else size), m.close


def check_pickle_stream(file) -> bool:
    """:func:`check_hash_work` over what ``file`` holds from its position on (its position is left as it was).
    Returns whether the pickle spells a lone surrogate (its keys must then be made printable)."""
    got = _pickle_buffer(file)
    if got is None:
        return False
    buf, start, end, release = got
    try:
        stop = check_hash_work(buf, start, end)
        return holds_surrogates(buf, start, stop)
    finally:
        if release is not None:
            release()


# ---- keys that print, and a ``_metadata`` torch could use ------------------------------------------------------------

def printable_key(key: str) -> str:
    """``key`` as it can be written to any UTF-8 output: lone surrogates (which a pickle's or a JSON header's string
    may hold, and no encoder accepts) become their ``\\udXXX`` escapes; every other key is returned as it is."""
    try:
        key.encode("utf-8")
        return key
    except UnicodeEncodeError:
        return key.encode("utf-8", "backslashreplace").decode("utf-8")


def unprintable(keys) -> bool:
    """Does any of these strings hold a lone surrogate? (One encode of them all, at C speed.)"""
    try:
        try:
            text = "".join(keys)  # at C speed: no Python frame per key
        except TypeError:  # keys that are not all str (a pickle's dict)
            text = "".join([k for k in keys if type(k) is str])
        text.encode("utf-8")
        return False
    except UnicodeEncodeError:
        return True


def printable_keys(mapping: dict, label: str = "") -> dict:
    """``mapping`` with its str keys made printable (:func:`printable_key`), in place and in order; unchanged (and
    nothing copied) when every key prints. Two keys that become one are an error of the file."""
    if not unprintable(_dict_keys(mapping)):
        return mapping
    items = list(mapping.items())
    mapping.clear()
    for k, v in items:
        new = printable_key(k) if type(k) is str else k
        if new in mapping:
            from ..errors import CorruptFileError, shorten
            raise CorruptFileError(f"{label}: keys {shorten(k)} and {shorten(new)} are the same once the first's "
                                   "lone surrogates are spelled out; the file is corrupt — re-save it")
        mapping[new] = v
    return mapping


def _dict_keys(mapping):
    return dict.keys(mapping) if isinstance(mapping, dict) else mapping.keys()


_SURROGATE_UTF8 = None


def holds_surrogates(buf, start: int, end: int) -> bool:
    """Does this pickle spell a lone surrogate (UTF-8 ``ED A0..BF ..``, as its BINUNICODE strings carry them)?"""
    global _SURROGATE_UTF8
    if _SURROGATE_UTF8 is None:
        import re
        _SURROGATE_UTF8 = re.compile(rb"\xed[\xa0-\xbf]")
    return _SURROGATE_UTF8.search(buf, start, end) is not None


def _walk_containers(root, visit, limit: int = 1_000_000, depth: int = 64) -> None:
    """Call ``visit(obj)`` on every dict, list, tuple and placeholder state reachable from ``root`` (each once, at
    most ``limit``, at most ``depth`` levels deep); tensor records and other leaves are skipped at C speed."""
    seen: set = set()
    stack = [(root, 0)]
    while stack and len(seen) < limit:
        obj, d = stack.pop()
        if id(obj) in seen or d > depth:
            continue
        seen.add(id(obj))
        visit(obj)
        if isinstance(obj, dict):
            values = dict.values(obj) if type(obj) in (dict, OrderedDict) else obj.values()
        elif isinstance(obj, (list, tuple)):
            values = obj
        elif isinstance(obj, Inert):
            values = (obj._state, obj._dict_items, obj._items, obj._args)
        else:
            continue
        if any(issubclass(t, (dict, list, tuple, Inert)) for t in set(map(type, values))):
            stack.extend((v, d + 1) for v in values if isinstance(v, (dict, list, tuple, Inert)))


def make_keys_printable(root, label: str = "") -> None:
    """Every dict key of a loaded pickle that holds a lone surrogate, spelled out (see :func:`printable_key`)."""
    def visit(obj):
        if isinstance(obj, dict):
            printable_keys(obj, label)
    _walk_containers(root, visit)


_SIMPLE = (int, str, float, bool, type(None))


def clean_metadata(root) -> None:
    """A state dict's ``_metadata`` (module name -> {"version": 2, ...}) is what ``load_state_dict`` reads; a file may
    put anything there (a placeholder, dicts nested 10**5 deep). Keep only entries of that form (str -> a dict of
    plain values); drop an attribute that is not a mapping at all. Nothing else changes."""
    def visit(obj):
        meta = obj.__dict__.get("_metadata") if type(obj) is OrderedDict and obj.__dict__ else None
        if meta is None:
            return
        if not isinstance(meta, dict):
            del obj.__dict__["_metadata"]
            return
        good = all(type(k) is str and type(v) is dict and all(type(x) is str and type(y) in _SIMPLE
                                                              for x, y in v.items()) for k, v in meta.items())
        if not good:
            clean = OrderedDict()
            for k, v in meta.items():
                if type(k) is str and type(v) is dict:
                    clean[k] = {x: y for x, y in v.items() if type(x) is str and type(y) in _SIMPLE}
            obj.__dict__["_metadata"] = clean
    _walk_containers(root, visit, limit=100_000, depth=16)
