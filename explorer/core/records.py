"""Plain records the core hands out: what a tensor is and where its bytes are, without the bytes."""
from __future__ import annotations

import copy
import math
from itertools import repeat
from operator import or_
from collections import OrderedDict
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Literal

EntryPath = tuple[str, ...]


class Kind(StrEnum):
    """What an entry of a state dict is (a str: it is written to JSON and compared with text as its value)."""
    TENSOR = "tensor"                  # a tensor in a checkpoint whose role we cannot know
    PARAMETER = "parameter"
    BUFFER = "buffer"
    NON_PERSISTENT = "non_persistent"  # a buffer that state_dict() leaves out
    EXTRA_STATE = "extra_state"
    NUMPY_ARRAY = "numpy_array"        # a numpy array in the checkpoint (torch.load gives it as an array)


TENSOR, PARAMETER, BUFFER, NON_PERSISTENT, EXTRA_STATE, NUMPY_ARRAY = Kind




class PlainStateDict(dict):
    """A dict that can carry ``_metadata`` (torch only checks for a Mapping, and copies it into its own
    OrderedDict: a dict of 10**6 items is made and copied twice as fast as an OrderedDict)."""


def read_mask(keys: list, read_keys, read_prefixes: tuple = ()) -> list[bool]:
    """For each of ``keys`` (strings): is it in ``read_keys`` or does it start with one of ``read_prefixes``? (The
    keys model code can read: see ``simulate._ModelIndex.read_keys``.) One C call per key."""
    mask = list(map(read_keys.__contains__, keys))
    if read_prefixes:
        mask = list(map(or_, mask, map(str.startswith, keys, repeat(read_prefixes))))
    return mask

def contiguous_strides(shape) -> tuple[int, ...]:
    """The strides of a contiguous (C-order) tensor of ``shape``, as torch gives them."""
    stride, acc = [], 1
    for s in reversed(shape):
        stride.append(acc)
        acc *= max(s, 1)
    return tuple(reversed(stride))

# not frozen: a frozen dataclass pays object.__setattr__ per field, 4x slower for 10**6 entries; treat as
# immutable all the same (hashable by value)
@dataclass(slots=True, unsafe_hash=True)
class Location:
    """Where a tensor's bytes are: a file (or a record inside a zip) and the tensor's view on its storage."""

    file: str                     # file on disk holding the bytes
    record: str | None = None     # zip record name (torch.save zip format), None for raw files
    offset: int | None = None     # byte offset of the storage in ``file`` (None: resolved lazily from ``record``)
    storage_nbytes: int = 0       # bytes of the whole storage
    storage_offset: int = 0       # element offset of the tensor inside its storage
    stride: tuple[int, ...] = ()
    storage_key: str = ""         # the storage's id inside the file (tensors sharing it are views of one buffer)


class Same:
    """A column of :class:`Locations` with one value for every tensor."""

    __slots__ = ("value",)

    def __init__(self, value):
        self.value = value

    def __getitem__(self, i):
        return self.value


class Computed:
    """A column of :class:`Locations` whose value at ``i`` is ``fn(start + i)`` (made when read); ``bulk(first,
    stop)``, when given, makes the values of ``first..stop`` at once (in C)."""

    __slots__ = ("fn", "start", "bulk")

    def __init__(self, fn, start: int = 0, bulk=None):
        self.fn, self.start, self.bulk = fn, start, bulk

    def __getitem__(self, i):
        return self.fn(self.start + i)

    def take(self, ats: list) -> list[list]:
        """The columns of the tensors at indexes ``ats``, as lists (no Location made)."""
        return [[c.value] * len(ats) if type(c) is Same else list(map(c.__getitem__, ats)) for c in self.columns]

    def span(self, a: int, b: int) -> list:
        first, stop = self.start + a, self.start + b
        return self.bulk(first, stop) if self.bulk is not None else list(map(self.fn, range(first, stop)))


class Numbered:
    """A column of :class:`Locations` holding ``f"{prefix}{start + i}"`` at ``i`` (made when read; pickled as it is)."""

    __slots__ = ("prefix", "start")

    def __init__(self, prefix: str, start: int = 0):
        self.prefix, self.start = prefix, start

    def __getitem__(self, i):
        return f"{self.prefix}{self.start + i}"


class Locations:
    """Where the bytes of a run of tensors are, column-wise: the :class:`Location` of the ``i``-th is made the first
    time its :class:`TensorInfo`'s ``location`` is read. Made at once, 10**6 locations cost ~0.7 s and ~170 MB, and
    a listing, a comparison or a simulation reads none of them.

    Each column (``file``, ``record``, ``offset``, ``storage_nbytes``, ``storage_offset``, ``stride``,
    ``storage_key``, as :class:`Location`'s fields) is a sequence with one value per tensor, :class:`Same`,
    :class:`Numbered` or :class:`Computed`."""

    __slots__ = ("columns",)

    def __init__(self, file, record, offset, storage_nbytes, storage_offset, stride, storage_key):
        self.columns = (file, record, offset, storage_nbytes, storage_offset, stride, storage_key)

    def __getitem__(self, i: int) -> Location:
        return Location(*[c[i] for c in self.columns])

    def take(self, ats: list) -> list[list]:
        """The columns of the tensors at indexes ``ats``, as lists (no Location made)."""
        return [[c.value] * len(ats) if type(c) is Same else list(map(c.__getitem__, ats)) for c in self.columns]

    def span(self, a: int, b: int) -> list:
        """The columns of tensors ``a..b`` (no Location made): lists, but :class:`Same` and :class:`Numbered` ones as
        they are (small to pickle, and a column all the same)."""
        return [c if type(c) is Same else Numbered(c.prefix, c.start + a) if type(c) is Numbered
                else c.span(a, b) if type(c) is Computed else list(c[a:b]) for c in self.columns]

    def __reduce__(self):
        raise TypeError("Locations are not pickled: a TensorInfo pickles its own location")


LOCATION_FIELDS = ("file", "record", "offset", "storage_nbytes", "storage_offset", "stride", "storage_key")
INFO_FIELDS = ("path", "shape", "dtype", "nbytes", "location", "device", "kind", "requires_grad")


class TensorInfo:
    """One tensor: its path from the loaded object's root, shape, dtype and size, and where its bytes are.

    A plain record (treat it as immutable; equal and hashed by value). ``location`` may be given as a
    :class:`Locations` and the index ``at`` of this tensor in it: its :class:`Location` is then made when first read
    (a pickled TensorInfo carries the Location itself)."""

    __slots__ = ("path", "shape", "dtype", "nbytes", "_location", "device", "kind", "requires_grad", "_at")

    def __init__(self, path: EntryPath, shape: tuple[int, ...], dtype: str, nbytes: int,
                 location: "Location | Locations | None" = None, device: str = "cpu", kind: str = TENSOR,
                 requires_grad: bool = False, at: int = 0):
        self.path = path
        self.shape = shape
        self.dtype = dtype            # as torch prints it without ``torch.``: "float32", "bfloat16", "int64"
        self.nbytes = nbytes
        self._location = location     # where its bytes are (None: the file holds none)
        self.device = device          # the device it was saved from ("cuda:0" opens on CPU all the same)
        self.kind = kind
        self.requires_grad = requires_grad
        self._at = at

    @property
    def location(self) -> Location | None:
        loc = self._location
        if type(loc) is Locations:
            loc = self._location = loc[self._at]
        return loc

    def _values(self) -> tuple:
        return (self.path, self.shape, self.dtype, self.nbytes, self.location, self.device, self.kind,
                self.requires_grad)

    def __eq__(self, other):
        if other.__class__ is not self.__class__:
            return NotImplemented
        return self._values() == other._values()

    def __hash__(self) -> int:
        return hash(self._values())

    def __repr__(self) -> str:
        return "TensorInfo(" + ", ".join(f"{name}={value!r}" for name, value in zip(INFO_FIELDS, self._values())) + ")"

    def __reduce__(self):
        return (TensorInfo, self._values())

    @property
    def key(self) -> str:
        """The state-dict key (the last path element)."""
        return self.path[-1] if self.path else ""

    @property
    def has_data(self) -> bool:
        """False for a tensor saved from the meta device: the file holds its shape and dtype, no values
        ("no data (meta)")."""
        return self.device != "meta"

    @property
    def numel(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n


@dataclass(frozen=True)
class StateDictRef:
    """A mapping of tensors found inside a loaded object, and how good a candidate state dict it is."""

    path: EntryPath
    tensors: int
    score: float = 0.0
    reason: str = ""


@dataclass
class ModuleInfo:
    """A module of a model (or of a pickled ``torch.save(model)``): its dotted name and class."""

    name: str
    class_name: str
    qualname: str = ""            # "torch.nn.modules.batchnorm.BatchNorm1d"


@dataclass
class SideSummary:
    """Totals shown under a tree."""

    tensors: int = 0
    parameters: int = 0           # elements
    nbytes: int = 0
    bytes_per_dtype: dict[str, int] = field(default_factory=dict)

    @classmethod
    def of(cls, shapes, dtypes, nbytes) -> "SideSummary":
        """Totals of tensors given column-wise (their shapes, dtypes and sizes in bytes)."""
        s = cls()
        per_dtype = s.bytes_per_dtype
        for shape, dtype, nb in zip(shapes, dtypes, nbytes):
            s.tensors += 1
            s.parameters += math.prod(shape)
            s.nbytes += nb
            per_dtype[dtype] = per_dtype.get(dtype, 0) + nb
        return s


def copy_metadata(meta: Any) -> Any:
    """A private copy of a state dict's ``_metadata`` (module name -> {"version": ...}). torch writes into the
    per-module dicts (``assign_to_params_buffers``), so each load gets its own; two levels deep is enough and ~10x
    cheaper than ``copy.deepcopy`` on thousands of modules."""
    if type(meta) in (dict, OrderedDict) and all(type(v) is dict for v in meta.values()):
        return type(meta)((k, dict(v)) for k, v in meta.items())
    return copy.deepcopy(meta)


def dtype_name(dtype: Any) -> str:
    """``torch.float32`` -> ``"float32"``."""
    text = str(dtype)
    return text[len("torch."):] if text.startswith("torch.") else text


# ---- statuses shared by simulation, diff and the views --------------------------------------------------------------
class Status(StrEnum):
    """The status of a key, one value each: load simulation (per key of the model's state dict, and unexpected
    checkpoint keys) and the diff of two sides share ``CHANGED``."""
    MATCHED = "matched"                 # loads, value identical to before
    CHANGED = "changed"                 # loads (or differs between two sides) with other values
    MISSING = "missing"                 # in the model, not in the checkpoint
    UNEXPECTED = "unexpected"           # in the checkpoint, not taken by the model
    SHAPE_MISMATCH = "shape_mismatch"   # both, shapes differ: torch raises (even with strict=False)
    DTYPE_CAST = "dtype_cast"           # loads with a dtype conversion (fp16 -> fp32 ...)
    RUNNING_STAT = "running_stat_overwritten"  # a BatchNorm/norm running statistic replaced by the checkpoint's
    NOT_LOADED = "not_loaded"           # would have loaded, but the load raised before reaching it
    IDENTICAL = "identical"             # diff: same shape, dtype and values
    ONLY_A = "only_a"
    ONLY_B = "only_b"
    SHAPE_DIFFERS = "shape_differs"
    DTYPE_DIFFERS = "dtype_differs"
    NOT_COMPARED = "not_compared"       # diff: both sides have the key, but a side's values could not be read


(MATCHED, CHANGED, MISSING, UNEXPECTED, SHAPE_MISMATCH, DTYPE_CAST, RUNNING_STAT, NOT_LOADED, IDENTICAL, ONLY_A,
 ONLY_B, SHAPE_DIFFERS, DTYPE_DIFFERS, NOT_COMPARED) = Status

# the two kinds of side (explorer.core.side): what the user opened
CHECKPOINT: Literal["checkpoint"] = "checkpoint"
MODEL: Literal["model"] = "model"
RUNNING_STAT_NAMES = ("running_mean", "running_var", "num_batches_tracked")
