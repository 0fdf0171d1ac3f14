"""What the safe unpickler makes of a tensor pickle: records that describe tensors and storages, read no bytes and
run nothing (:class:`TensorRecord`, :class:`StorageRef`, dtypes kept as their names)."""
from __future__ import annotations

import pickle

from ...errors import shorten

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

QSCHEMES = ("per_tensor_affine", "per_channel_affine", "per_tensor_symmetric", "per_channel_symmetric",
            "per_channel_affine_float_qparams")

LIMIT = 1 << 62   # no size, offset or element count reaches it on any machine


def quote(value) -> str:
    """A value from the file, quoted in a message: bounded and printable."""
    return shorten(value, 80)


def operator_index(v) -> int:
    """``v`` when it is a true int (not a bool), else TypeError."""
    if isinstance(v, bool) or not isinstance(v, int):
        raise TypeError
    return int(v)


def index_or_fail(v, what: str) -> int:
    try:
        return operator_index(v)
    except TypeError:
        raise pickle.UnpicklingError(f"a tensor's {what} is not an integer: {quote(v)}") from None


def int_tuple(values, what: str) -> tuple:
    """``values`` as a tuple of ints, or an UnpicklingError naming ``what``."""
    if type(values) is tuple and all(type(v) is int for v in values):
        return values
    try:
        return tuple(operator_index(v) for v in values)
    except TypeError:
        raise pickle.UnpicklingError(f"a tensor's {what} is not a sequence of integers: {quote(values)}") from None


class StorageType:
    """What ``torch.FloatStorage`` (or ``torch.storage.UntypedStorage``) stands for: a dtype, nothing callable."""

    __slots__ = ("dtype",)

    def __init__(self, dtype: str | None):
        self.dtype = dtype

    def __setstate__(self, state):  # a pickle's BUILD on a storage type changes nothing
        pass

    def __repr__(self):
        return f"StorageType({self.dtype})"


class TorchDtype(str):
    """A torch dtype named in a pickle, kept as its name (``"float32"``)."""

    __slots__ = ()

    def __setstate__(self, state):
        pass


class QScheme(str):
    """``torch.per_tensor_affine`` and its kin, named in a pickle: kept as the name."""

    __slots__ = ()

    def __setstate__(self, state):
        pass


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


def storage_from_pid(pid, source=None) -> StorageRef:
    """Interpret a torch persistent id ``('storage', type, key, location, numel[, view])``."""
    if type(pid) is not tuple or len(pid) < 5 or pid[0] != "storage":
        raise pickle.UnpicklingError(f"unexpected persistent id {quote(pid)}")
    storage_type, key, location, numel = pid[1], pid[2], pid[3], pid[4]
    dtype = storage_type.dtype if isinstance(storage_type, StorageType) else None
    if type(numel) is not int or numel < 0:
        raise pickle.UnpicklingError(f"storage {quote(key)} has an invalid size {quote(numel)}")
    view = pid[5] if len(pid) > 5 else None
    if view is not None and not (type(view) is tuple and len(view) == 3 and type(view[1]) is int
                                 and type(view[2]) is int and view[1] >= 0 and view[2] >= 0):
        raise pickle.UnpicklingError(f"storage {quote(key)} has an invalid view {quote(view)}")
    if type(key) is not str:  # torch writes str keys; anything else (a nested tuple...) is not a storage name
        if type(key) is not int:
            raise pickle.UnpicklingError(f"storage key {quote(key)} is not a name")
        key = str(key)
    if numel >= LIMIT:
        raise pickle.UnpicklingError(f"storage {quote(key)} claims {numel} elements, more than any machine holds")
    return StorageRef(key, dtype, location if type(location) is str else quote(location), numel, view, source)


class TensorRecord:
    """A tensor as the file describes it: its storage, view and dtype, and whether it was an ``nn.Parameter``.

    While a zip pickle is parsed, ``storage`` holds the raw persistent id (a tuple); it becomes a :class:`StorageRef`
    the first time it is asked for (one Python call less per tensor of the file: parsing is most of listing).
    """

    __slots__ = ("_storage", "_ctx", "storage_offset", "shape", "stride", "dtype", "requires_grad", "is_parameter",
                 "numel", "subclass")   # subclass: set only for a tensor subclass the file names (read with getattr)

    _file_ctx = None  # per-file subclasses (see PickleContext) know how to turn a persistent id into a StorageRef

    def __init__(self, storage, storage_offset, shape, stride, dtype, requires_grad=False, ctx=None):
        self._storage = storage
        if ctx is not None:
            self._ctx = ctx
        self.set_view(storage_offset, shape, stride)
        self.dtype = dtype
        self.requires_grad = requires_grad is True
        self.is_parameter = False

    def set_view(self, storage_offset, shape, stride):
        """Check and set the offset, shape and stride the file gives (its stride's items are checked when read)."""
        if type(storage_offset) is not int or storage_offset < 0 or storage_offset >= LIMIT:
            storage_offset = index_or_fail(storage_offset, "storage offset")
            if storage_offset < 0 or storage_offset >= LIMIT:
                raise pickle.UnpicklingError(f"a tensor has a storage offset {quote(storage_offset)} outside "
                                             "0..2**62")
        self.storage_offset = storage_offset
        if type(shape) is not tuple:
            shape = int_tuple(shape, "shape")
        # the checks are inlined: this runs once per tensor of a file, 10**6 times for a large one
        n = 1
        for s in shape:
            if type(s) is not int or s < 0 or s >= LIMIT:
                raise pickle.UnpicklingError(f"a tensor's shape is not a sequence of sizes below 2**62: "
                                             f"{quote(shape)}")
            n *= s
        if n >= LIMIT:
            raise pickle.UnpicklingError(f"a tensor claims {n} elements, more than any machine holds")
        self.numel = n
        self.shape = shape
        self.stride = stride if type(stride) is tuple else int_tuple(stride, "stride")

    @classmethod
    def validated(cls, storage, shape: tuple, stride: tuple, dtype: str, numel: int) -> "TensorRecord":
        """A record at offset 0 whose shape its reader has already checked for every tensor at once (a safetensors
        header: sizes below 2**62, element counts that fit the file's byte spans): the per-record checks of
        :meth:`set_view` are skipped -- this runs 10**6 times for a large file."""
        rec = cls.__new__(cls)
        rec._storage = storage
        rec.storage_offset = 0
        rec.shape, rec.stride, rec.numel, rec.dtype = shape, stride, numel, dtype
        rec.requires_grad = rec.is_parameter = False
        return rec

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


class QuantizedRecord(TensorRecord):
    """A quantized tensor (``torch._utils._rebuild_qtensor``): its integer values are the storage's bytes, and
    ``qparams`` holds what the file gave torch's rebuild: ``(qscheme, scale, zero_point)`` or
    ``(qscheme, scales, zero_points, axis)`` (scales and zero points are records or lists)."""

    __slots__ = ("qparams",)
