"""The objects the safe unpickler hands out for the globals a tensor pickle names: record builders in place of
torch's rebuild functions, plain containers for a few builtins, flags for lazy parameters. None of them reads bytes,
imports a module or calls what the file names."""
from __future__ import annotations

import pickle
import weakref
from collections import OrderedDict
from itertools import repeat
from operator import attrgetter, eq, itemgetter, mul

from .inert import Inert, NoState, Sealed, SealedClass, placeholder, sealed
from .records import (ITEMSIZE, LIMIT, QuantizedRecord, StorageRef, StorageType, TensorRecord, TorchDtype, quote,
                      storage_from_pid)


def storage_dtype(storage) -> str | None:
    """The dtype a typed storage (a record or a raw persistent id) names; None for an untyped one."""
    if isinstance(storage, StorageRef):
        return storage.dtype
    if type(storage) is tuple and len(storage) > 1 and isinstance(storage[1], StorageType):
        return storage[1].dtype
    return None


def dtype_of(value) -> str | None:
    return str(value) if isinstance(value, TorchDtype) else None


def rebuild_tensor(storage, storage_offset, size, stride, *rest):
    return TensorRecord(storage, storage_offset, size, stride, storage_dtype(storage))


def rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None,
                      metadata=None):
    return TensorRecord(storage, storage_offset, size, stride, storage_dtype(storage), requires_grad)


def rebuild_tensor_v3(storage, storage_offset, size, stride, requires_grad, backward_hooks, dtype,
                      metadata=None):
    return TensorRecord(storage, storage_offset, size, stride, dtype_of(dtype), requires_grad)


def rebuild_meta_tensor_no_storage(dtype, size, stride, requires_grad=False, *rest):
    """A tensor saved from the ``meta`` device: a shape and a dtype, no bytes anywhere."""
    return TensorRecord(None, 0, size, stride, dtype_of(dtype), requires_grad)


def rebuild_qtensor(storage, storage_offset, size, stride, quantizer_params=None, requires_grad=False, *rest):
    rec = QuantizedRecord(storage, storage_offset, size, stride, storage_dtype(storage), requires_grad)
    rec.qparams = quantizer_params if type(quantizer_params) is tuple else None
    return rec


def rebuild_parameter(data, requires_grad=True, backward_hooks=None, *rest):
    if isinstance(data, TensorRecord):
        data.requires_grad = requires_grad is True
        data.is_parameter = True
    return data


_PLAIN_TENSOR_TYPES = {"torch.Tensor", "torch._tensor.Tensor", "torch.nn.parameter.Parameter"}


def rebuild_from_type_v2(func, new_type, args, state):
    """A tensor subclass: the plain tensor record is rebuilt; the subclass is information only."""
    if isinstance(args, tuple) and (isinstance(func, Sealed) or (type(func) is SealedClass
                                                                 and issubclass(func, TensorRecord))):
        rec = func(*args)
        name = getattr(new_type, "_global", None) if type(new_type) is SealedClass else None
        if isinstance(rec, TensorRecord) and isinstance(name, str) and name not in _PLAIN_TENSOR_TYPES:
            rec.subclass = name   # torch.load would rebuild it as that class (the file's code): information
        return rec
    return placeholder("torch._tensor", "_rebuild_from_type_v2")(func, new_type, args, state)


def codecs_encode(obj, encoding="utf-8", *rest):
    """Protocol-2 pickles spell bytes as ``_codecs.encode(text, "latin1")``."""
    if isinstance(obj, str) and isinstance(encoding, str) and encoding.lower() in ("latin1", "latin-1"):
        return obj.encode("latin1")
    return placeholder("_codecs", "encode")(obj, encoding, *rest)


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
    return sealed(build)


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


UNINITIALIZED = {"UninitializedParameter": sealed(_uninitialized_parameter),
                 "UninitializedBuffer": sealed(_uninitialized_buffer)}


def uninitialized_tensor(obj: Uninitialized):
    """The ``torch.nn.UninitializedParameter`` (or buffer) ``obj`` stands for: its ``requires_grad`` is the only
    argument taken from the file (when it is a bool); device and dtype are torch's defaults, as when unpickled."""
    import torch
    grad = obj._args[0] if obj._args and type(obj._args[0]) is bool else not obj.is_buffer
    cls = torch.nn.UninitializedBuffer if obj.is_buffer else torch.nn.UninitializedParameter
    return cls(requires_grad=grad)


ALLOWED_BUILTINS = {"set": _simple(set), "frozenset": _simple(frozenset), "complex": _simple(complex),
                    "slice": _simple(slice)}

# (module, name) -> what the unpickler hands out. Every one is ours: sealed record builders, or real classes and C
# callables on which a BUILD raises (the file does not open) and nothing else happens.
TENSOR_MACHINERY = {
    ("torch._utils", "_rebuild_tensor"): sealed(rebuild_tensor),
    ("torch._utils", "_rebuild_tensor_v2"): sealed(rebuild_tensor_v2),
    ("torch._utils", "_rebuild_tensor_v3"): sealed(rebuild_tensor_v3),
    ("torch._utils", "_rebuild_parameter"): sealed(rebuild_parameter),
    ("torch._utils", "_rebuild_parameter_with_state"): sealed(rebuild_parameter),
    ("torch._utils", "_rebuild_meta_tensor_no_storage"): sealed(rebuild_meta_tensor_no_storage),
    ("torch._utils", "_rebuild_qtensor"): sealed(rebuild_qtensor),
    ("torch._tensor", "_rebuild_from_type_v2"): sealed(rebuild_from_type_v2),
    ("collections", "OrderedDict"): OrderedDict,
    ("torch", "Size"): tuple,
    ("_codecs", "encode"): sealed(codecs_encode),
}

# stand-ins that build records or placeholders from what they are given, hashing none of it (a file's
# ``_rebuild_tensor_v2`` hashes its shape and stride: it is not one of them)
RECORD_BUILDERS = {("torch._utils", "_rebuild_tensor"), ("torch._utils", "_rebuild_tensor_v3"),
                   ("torch._utils", "_rebuild_meta_tensor_no_storage"), ("_codecs", "encode")}


class PickleContext:
    """One file's storages: turns persistent ids into shared :class:`StorageRef` records, on demand."""

    def __init__(self, source=None, label: str = ""):
        self.source = source
        self.label = label
        self.refs: dict[str, StorageRef] = {}
        self._listed: dict[str, tuple] = {}   # key -> the persistent id a listing took for it (no StorageRef made)
        self._listed_parts: list[tuple[list, list]] = []   # (keys, ids) listed since, not yet in _listed
        # The stand-ins reach this context weakly, the records it makes strongly: no reference cycle, so when a
        # checkpoint's records go, its storages and file maps go with them (a per-file class is always in a cycle
        # of its own, freed only by a full collection: it must not hold the file's 10**5 storages).
        this = weakref.ref(self)
        self.tensor_v2 = _file_tensor_v2(this)

        def tensor_v3(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None, dtype=None,
                      metadata=None):
            return TensorRecord(storage, storage_offset, size, stride, dtype_of(dtype), requires_grad, this())

        def tensor_v1(storage, storage_offset, size, stride, *rest):
            return TensorRecord(storage, storage_offset, size, stride, storage_dtype(storage), ctx=this())

        def qtensor(storage, storage_offset, size, stride, quantizer_params=None, requires_grad=False, *rest):
            rec = rebuild_qtensor(storage, storage_offset, size, stride, quantizer_params, requires_grad)
            rec._ctx = this()
            return rec

        self.stand_ins = {"_rebuild_tensor_v2": self.tensor_v2, "_rebuild_tensor_v3": sealed(tensor_v3),
                          "_rebuild_tensor": sealed(tensor_v1), "_rebuild_qtensor": sealed(qtensor)}

    def resolve(self, pid) -> StorageRef:
        key = pid[2] if type(pid) is tuple and len(pid) > 2 else None
        ref = self.refs.get(key) if type(key) is str else None
        if ref is None:
            if type(key) is str and (self._listed or self._listed_parts):
                pid = self.listed.get(key, pid)   # a key listed before (storage_columns) stands for the id listed
            try:
                ref = storage_from_pid(pid, self.source)
            except pickle.UnpicklingError as e:
                from ...errors import CorruptFileError
                raise CorruptFileError(f"{self.label}: {e}; the file is corrupt") from None
            self.refs[ref.key] = ref
        return ref

    @property
    def listed(self) -> dict[str, tuple]:
        """Key -> the persistent id a listing took for it (ids of one key listed so far are equal)."""
        if self._listed_parts:
            parts, self._listed_parts = self._listed_parts, []
            for keys, pids in parts:
                self._listed.update(zip(keys, pids))
        return self._listed

    def storage_columns(self, pids: list) -> tuple[list, list, list] | None:
        """``(keys, devices, storage nbytes)`` of raw persistent ids of this file, one per id, exactly as
        :meth:`resolve` would give them (the :class:`StorageRef` of each), column-wise and without making any: 10**5
        storages cost no Python call each. None unless every id is a regular torch.save one (``('storage', typed
        storage, str key, str location, int numel)``, valid), at most half of them share a key with another (views
        of a few storages resolve each storage once at less cost), and ids sharing a key agree with each other and
        with any resolved or listed before (then which of them is resolved first does not matter): the careful way
        then.
        The ids' first one per key is remembered as listed (:meth:`resolve` takes it for that key)."""
        if not pids or set(map(len, pids)) != {5}:
            return None
        sample = list(map(_KEY, pids[:1024]))   # views of a few storages are seen from the first ids on
        if set(map(type, sample)) != {str} or 2 * len(set(sample)) < len(sample):
            return None
        keys = list(map(_KEY, pids))
        if set(map(type, keys)) != {str}:
            return None
        distinct = len(set(keys))
        if 2 * distinct < len(keys):   # mostly views of a few storages: resolving each storage once costs less
            return None
        heads, types, places, numels = (list(map(f, pids)) for f in _PID_FIELDS)
        if set(map(type, heads)) != {str} or set(heads) != {"storage"} or set(map(type, types)) != {StorageType} \
                or set(map(type, places)) != {str} \
                or set(map(type, numels)) != {int} or min(numels) < 0 or max(numels) >= LIMIT:
            return None
        first = None
        if distinct != len(keys):   # ids sharing a key must agree
            first = dict(zip(reversed(keys), reversed(pids)))
            if not all(map(eq, map(first.__getitem__, keys), pids)):
                return None
        refs = self.refs
        if refs or self._listed or self._listed_parts:   # ... and agree with those resolved or listed before
            listed = self.listed
            first = first if first is not None else dict(zip(keys, pids))
            for key in filter(listed.__contains__, first) if listed else ():
                if listed[key] != first[key]:
                    return None
            for key in filter(refs.__contains__, first) if refs else ():
                ref, pid = refs[key], first[key]
                if (ref.dtype, ref.device, ref.numel, ref.view, ref.source) != (pid[1].dtype, pid[3], pid[4], None,
                                                                               self.source):
                    return None
        self._listed_parts.append((keys, pids))
        dtypes = list(map(_DTYPE, types))
        if None in dtypes:   # untyped storages count bytes
            nbytes = [n * ITEMSIZE.get(d, 1) if d else n for n, d in zip(numels, dtypes)]
        else:
            nbytes = list(map(mul, numels, map(ITEMSIZE.get, dtypes, repeat(1))))
        return keys, places, nbytes


_PID_FIELDS = [itemgetter(i) for i in (0, 1, 3, 4)]   # of a persistent id: all but its key
_KEY = itemgetter(2)
_DTYPE = attrgetter("dtype")


def _file_tensor_v2(ctx: "weakref.ref[PickleContext]") -> type:
    """``torch._utils._rebuild_tensor_v2`` for one file: a record class the C unpickler calls, one frame per
    tensor; the storage's persistent id stays raw until asked for (the context, held by each record, resolves it)."""
    sizes = {}.setdefault  # one tuple per distinct shape and stride (the pickle makes new ones for every tensor)

    class TensorV2(TensorRecord, metaclass=SealedClass):
        __slots__ = ()
        __setstate__ = NoState()
        file_context = ctx   # every record of this class has this context (a weak reference: no cycle)

        def __init__(self, storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None,
                     metadata=None):
            self._storage = storage
            self._ctx = ctx()
            st = storage[1] if type(storage) is tuple and len(storage) > 1 else storage
            self.dtype = st.dtype if type(st) is StorageType or type(st) is StorageRef else None
            # TensorRecord.set_view inlined for the usual values (one Python call less per tensor of the file)
            if type(storage_offset) is int and 0 <= storage_offset < LIMIT and type(size) is tuple \
                    and type(stride) is tuple:
                n = 1
                for s in size:
                    if type(s) is not int or s < 0 or s >= LIMIT:
                        raise pickle.UnpicklingError(
                            f"a tensor's shape is not a sequence of sizes below 2**62: {quote(size)}")
                    n *= s
                if n >= LIMIT:
                    raise pickle.UnpicklingError(f"a tensor claims {n} elements, more than any machine holds")
                self.storage_offset = storage_offset
                self.numel = n
                self.shape = sizes(size, size)
                self.stride = sizes(stride, stride)   # hashed: the hash-work walk charges this call its arguments
            else:
                self.set_view(storage_offset, size, stride)
            self.requires_grad = requires_grad is True
            self.is_parameter = False

    return TensorV2
