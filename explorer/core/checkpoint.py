"""A checkpoint as the explorer sees it: the loaded object (tensors as records, foreign objects inert), every tensor's
path, the candidate state dicts ranked best first, and on-demand access to values.

Listing is built for files with tens of thousands of tensors: one pass collects every tensor's path and record
(``_walk``); the :class:`~explorer.core.records.TensorInfo` of an entry is made the first time someone looks at it
(``entries`` is a lazy, cached sequence); flat formats (safetensors) hand over a table and their records are made on
demand too.
"""
from __future__ import annotations

import re
import sys
from bisect import bisect_right
from collections import OrderedDict
from collections.abc import Sequence
from itertools import chain, compress, repeat
from operator import attrgetter, itemgetter, mul, not_
from typing import Any, Callable, Iterator

import torch

from ..errors import CorruptFileError, KeyNotFoundError, NoDataError
from .bytesource import TORCH_DTYPES as _TORCH_DTYPES, read_record
from .records import (EntryPath, Location, ModuleInfo, PlainStateDict, StateDictRef, TensorInfo,
                      copy_metadata, read_mask)
from .chunks import gc_paused
from .meta import meta_bulk
from .records import NUMPY_ARRAY
from .safe_pickle.inert import Inert, is_module_state
from .safe_pickle.numpy_values import NumpyRecord, numpy_array, numpy_record
from .safe_pickle.records import ITEMSIZE, QScheme, QuantizedRecord, StorageRef, TensorRecord, TorchDtype
from .safe_pickle.stand_ins import Uninitialized, uninitialized_tensor

# quantized dtype -> the integer dtype its values are stored as
_QUANTIZED_INT = {"qint8": "int8", "quint8": "uint8", "qint32": "int32"}

MAX_DEPTH = 400  # deeper nesting than this is not a checkpoint but a recursion bomb


def has_data(rec: TensorRecord) -> bool:
    """Does the file hold values for this record (not a tensor saved from the meta device)?"""
    return isinstance(rec.storage, StorageRef)


class RecoveredModule(OrderedDict):
    """The state dict of a pickled ``nn.Module`` (``torch.save(model)``), rebuilt from the pickle's structure alone.

    Keys are state-dict keys (``"0.weight"``), values tensor records; ``modules`` lists every submodule's class.
    Non-persistent buffers are left out, as ``state_dict()`` would (they are kept in ``non_persistent``).
    """

    def __init__(self, class_name: str = ""):
        super().__init__()
        self.class_name = class_name
        self.modules: dict[str, ModuleInfo] = {}
        self.kinds: dict[str, str] = {}
        self.non_persistent: dict[str, TensorRecord] = {}
        # what module.state_dict() would attach: per module, {"version": cls._version}
        self._metadata: OrderedDict[str, dict] = OrderedDict()


# mappings iterated through dict's own iterator (see _keys)
_PLAIN_DICTS = (dict, OrderedDict, RecoveredModule)


def _module_version(qualname: str) -> int:
    """``_version`` of a module class, known without importing anything: torch's own classes are already imported
    (torch is); any other class is looked up only if it is already in ``sys.modules``, else ``nn.Module``'s 1."""
    module, _, name = qualname.rpartition(".")
    cls = getattr(sys.modules.get(module), name, None) if module.startswith("torch.") else None
    version = getattr(cls, "_version", 1)
    return version if isinstance(version, int) else 1


def _recover_module(obj: Inert) -> RecoveredModule:
    out = RecoveredModule(obj.global_name)
    stack: list[tuple[str, Any]] = [("", obj)]
    while stack:
        prefix, mod = stack.pop()
        if len(stack) > 1_000_000 or prefix.count(".") > MAX_DEPTH:  # a module that contains itself
            raise CorruptFileError(f"module nesting deeper than {MAX_DEPTH} levels")
        state = mod.state_dict() if isinstance(mod, Inert) else None
        name = prefix[:-1]
        qual = mod.global_name if isinstance(mod, Inert) else type(mod).__name__
        out.modules[name] = ModuleInfo(name, qual.rsplit(".", 1)[-1], qual)
        out._metadata[name] = {"version": _module_version(qual)}
        if not isinstance(state, dict):
            continue
        params = state.get("_parameters") or {}
        buffers = state.get("_buffers") or {}
        non_persistent = state.get("_non_persistent_buffers_set") or set()
        for key, value in (params.items() if isinstance(params, dict) else ()):
            if isinstance(value, TensorRecord):
                out[prefix + str(key)] = value
                out.kinds[prefix + str(key)] = "parameter"
        for key, value in (buffers.items() if isinstance(buffers, dict) else ()):
            if not isinstance(value, TensorRecord):
                continue
            if isinstance(non_persistent, (set, frozenset)) and key in non_persistent:
                out.non_persistent[prefix + str(key)] = value
                continue
            out[prefix + str(key)] = value
            out.kinds[prefix + str(key)] = "buffer"
        submodules = state.get("_modules") or {}
        if isinstance(submodules, dict):  # depth first, in registration order, as state_dict() walks
            stack.extend((f"{prefix}{key}.", child) for key, child in reversed(submodules.items()) if child is not None)
    return out


_CONTAINERS = (dict, list, tuple, Inert)


def _any_container(values) -> bool:
    """``any(isinstance(v, (dict, list, tuple, Inert)) for v in values)``, by the values' distinct types (C speed)."""
    return any(issubclass(t, _CONTAINERS) for t in set(map(type, values)))


def _keys(obj: dict):
    """``obj.keys()``, fast. An ``OrderedDict`` iterates ~10x slower than a dict (a hash lookup per item: 0.4 s for
    10**6 keys); the mappings a checkpoint holds are built by item assignment only (the safe unpickler and our
    readers; nothing calls ``move_to_end``), so the dict's own order is theirs and the dict's iterator is used."""
    return dict.keys(obj) if type(obj) in _PLAIN_DICTS else obj.keys()


def _values(obj: dict):
    """``obj.values()``, fast (see :func:`_keys`)."""
    return dict.values(obj) if type(obj) in _PLAIN_DICTS else obj.values()


def _items(obj: dict):
    """``obj.items()``, fast (see :func:`_keys`)."""
    return dict.items(obj) if type(obj) in _PLAIN_DICTS else obj.items()


def _all_records(values) -> bool:
    """Are all ``values`` tensor records (and is there at least one)? By their distinct types, at C speed."""
    types = set(map(type, values))
    return bool(types) and all(issubclass(t, TensorRecord) for t in types)


def _all_tensor_records(values) -> bool:
    """Are all ``values`` records of plain tensors (not numpy arrays, which torch.load gives as arrays, nor quantized
    tensors, which are rebuilt with their values)?"""
    types = set(map(type, values))
    return bool(types) and NumpyRecord not in types and QuantizedRecord not in types and \
        all(issubclass(t, TensorRecord) for t in types)


def _normalize(obj: Any, depth: int = 0, memo: dict | None = None) -> Any:
    """Replace pickled modules by their recovered state dicts, everywhere in the object.

    A pickle can share one container many times (a "billion laughs" DAG: 64 levels, each holding the level below
    twice, is 2**64 paths); ``memo`` visits each container once and keeps the sharing."""
    if memo is None:
        memo = {}
    key = id(obj)
    if key in memo:
        return memo[key]
    if depth > MAX_DEPTH:
        raise CorruptFileError("nesting deeper than %d levels" % MAX_DEPTH)
    memo[key] = obj  # a cycle back to this container sees it as it is
    if isinstance(obj, Inert):
        if is_module_state(obj):
            out = memo[key] = _recover_module(obj)
            return out
        rec = numpy_record(obj)
        if rec is not None:   # a numpy array of numbers: data, listed like a tensor
            memo[key] = rec
            return rec
        st = obj.state_dict()
        if isinstance(st, dict):
            _normalize(st, depth + 1, memo)
            object.__setattr__(obj, "_state", st)
        return obj
    if isinstance(obj, dict):
        if not _any_container(_values(obj)):  # a flat state dict: nothing to replace (one pass in C)
            return obj
        for k, v in _items(obj):
            if isinstance(v, (dict, list, tuple, Inert)):
                new = _normalize(v, depth + 1, memo)
                if new is not v:
                    obj[k] = new  # replacing a value while iterating is fine: the key set does not change
        return obj
    if isinstance(obj, list):
        if not _any_container(obj):
            return obj
        for i, v in enumerate(obj):
            if isinstance(v, (dict, list, tuple, Inert)):
                obj[i] = _normalize(v, depth + 1, memo)
        return obj
    if isinstance(obj, tuple):
        if any(isinstance(v, (dict, list, tuple, Inert)) for v in obj):
            new = tuple(_normalize(v, depth + 1, memo) for v in obj)
            if any(a is not b for a, b in zip(new, obj)):
                memo[key] = new
                return new
        return obj
    return obj


def children(obj: Any) -> Iterator[tuple[str, Any]]:
    """The named children of a container in the loaded object (list indices as strings)."""
    if isinstance(obj, dict):
        for k, v in _items(obj):
            yield (k if type(k) is str else str(k)), v
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield str(i), v
    elif isinstance(obj, Inert):
        st = obj.state_dict()
        if isinstance(st, dict):
            yield from ((str(k), v) for k, v in st.items())
        elif obj._dict_items:
            yield from ((str(k), v) for k, v in obj._dict_items.items())
        elif obj._items:
            yield from ((str(i), v) for i, v in enumerate(obj._items))


def _child(obj: Any, part: str) -> Any:
    """``obj``'s child named ``part`` (as :func:`children` names it); raises ``LookupError`` when there is none."""
    if isinstance(obj, dict):
        if part in obj:
            return obj[part]
        for k, v in obj.items():
            if type(k) is not str and str(k) == part:
                return v
        raise LookupError(part)
    if isinstance(obj, (list, tuple)):
        if part.isdigit() and str(int(part)) == part and int(part) < len(obj):
            return obj[int(part)]
        raise LookupError(part)
    for key, value in children(obj):
        if key == part:
            return value
    raise LookupError(part)


_GOOD_NAMES = {"state_dict": 3.0, "model_state_dict": 3.0, "model_state": 2.5, "model": 2.5, "module": 2.0,
               "net": 2.0, "network": 2.0, "weights": 2.0, "params": 1.5, "ema": 1.2, "model_ema": 1.2,
               "state_dict_ema": 1.2, "generator": 1.5, "student": 1.3, "teacher": 1.1}
_BAD_PARTS = re.compile(r"optim|optimizer|scheduler|scaler|lr_|loops|callbacks", re.I)
_OPTIMIZER_KEYS = {"exp_avg", "exp_avg_sq", "momentum_buffer", "step", "max_exp_avg_sq", "square_avg", "acc_delta",
                   "sum", "mu", "eta", "ax", "prev", "step_size"}


def _score(path: EntryPath, mapping, n_tensors: int, keys: list[str] | None = None) -> tuple[float, str]:
    """``keys``: the mapping's keys as strings, when the caller has them already."""
    score = float(n_tensors)
    reasons = []
    if keys is None:
        keys = [k if type(k) is str else str(k) for k in _keys(mapping)]
    # the tests below run over every key (10**6 for a large file): each is one pass in C
    if "." in "\n".join(keys):
        score *= 2.0
        reasons.append("dotted module keys")
    if path:
        name = path[-1].lower()
        if name in _GOOD_NAMES:
            score *= _GOOD_NAMES[name]
            reasons.append(f"named {path[-1]!r}")
    else:
        score *= 1.5
        reasons.append("the file's top-level object")
    if any(_BAD_PARTS.search(p) for p in path):
        score *= 0.01
        reasons.append("inside optimizer/scheduler state")
    if keys and sum(map(_OPTIMIZER_KEYS.__contains__, keys)) >= len(keys) / 2:
        score *= 0.01
        reasons.append("optimizer slots")
    if keys and all(map(str.isdigit, keys)):
        score *= 0.1
    if isinstance(mapping, RecoveredModule):
        score *= 2.0
        reasons.append(f"recovered from a pickled {mapping.class_name.rsplit('.', 1)[-1]}")
    return score, ", ".join(reasons)


class FlatTable:
    """A flat state dict described by a table instead of records (safetensors): the reader has parsed and checked
    every key, shape, dtype and byte range; records are made on demand by ``make_record(i)``."""

    __slots__ = ("keys", "make_record", "records", "make_info", "columns", "make_infos")

    def __init__(self, keys: list[str], make_record: Callable[[int], TensorRecord],
                 make_info: Callable[[int, EntryPath], TensorInfo] | None = None,
                 columns: Callable[[int, int], tuple[list, list, list, list, list]] | None = None,
                 make_infos: Callable[[list], list[TensorInfo]] | None = None):
        """``make_info(i, path)``: the :class:`TensorInfo` that ``make_record(i)`` would give, made without the
        record; ``make_infos(paths)``: ``make_info(i, paths[i])`` of every entry, in bulk; ``columns(start, stop)``:
        those entries' ``(shapes, dtypes, nbytes, kinds, devices)`` as lists."""
        self.keys = keys
        self.make_record = make_record
        self.records: list[TensorRecord | None] = [None] * len(keys)
        self.make_info = make_info
        self.columns = columns
        self.make_infos = make_infos

    def record(self, i: int) -> TensorRecord:
        rec = self.records[i]
        if rec is None:
            rec = self.records[i] = self.make_record(i)
        return rec


class EntryList(Sequence):
    """Every tensor of a checkpoint in file order, as :class:`TensorInfo`; each made the first time it is looked at
    (all at once, in one tight loop, when the list is iterated)."""

    __slots__ = ("_ck", "_infos", "_complete")

    def __init__(self, ck: "Checkpoint"):
        self._ck = ck
        self._infos: list[TensorInfo | None] = [None] * len(ck._paths)
        self._complete = not self._infos

    def __len__(self) -> int:
        return len(self._infos)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self._infos)))]
        info = self._infos[i]
        if info is None:
            if i < 0:
                i += len(self._infos)
            info = self._infos[i] = self._ck._make_info(i)
        return info

    def _fill(self) -> list[TensorInfo]:
        """Every entry made; the list of them (not a copy)."""
        if not self._complete:
            with gc_paused():
                self._ck._fill_infos(self._infos)
            self._complete = True
        return self._infos  # type: ignore[return-value]

    def __iter__(self):
        return iter(self._fill())

    def __eq__(self, other):
        if isinstance(other, (EntryList, list, tuple)):
            return list(self) == list(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self):
        return f"<{len(self)} entries of {self._ck.path}>"


def _location(ref: StorageRef, rec: TensorRecord, fallback_file: str) -> Location:
    source = ref.source
    describe = getattr(source, "describe", None)
    if describe is not None:
        file, record, offset = describe(ref)
    else:
        file, record, offset = fallback_file, f"data/{ref.key}", None
    return Location(file, record, offset, ref.nbytes, rec.storage_offset, rec.stride, ref.key)


_NO_KEYS: dict = {}


def _where(path: EntryPath, key=None) -> str:
    return "/".join(path if key is None else path + (str(key),)) or "/"


_LAST = itemgetter(-1)
_PATH_OF = attrgetter("path")
_SHAPE_OF = attrgetter("shape")
_DTYPE_OF = attrgetter("dtype")
_STRIDE_OF = attrgetter("stride")
_NBYTES_OF = attrgetter("nbytes")
_IS_PARAMETER_OF = attrgetter("is_parameter")
_REQUIRES_GRAD_OF = attrgetter("requires_grad")
_NUMEL_OF = attrgetter("numel")
_RECORD_NBYTES = TensorRecord.nbytes
_RAW_STORAGE_OF = attrgetter("_storage")
_DEVICE_OF = attrgetter("device")


class Checkpoint:
    """What a reader found in a file or folder. Build with a reader (``explorer.core.loaders.open_checkpoint``).

    ``root`` is the loaded object; readers of flat formats may pass ``table`` (a :class:`FlatTable`) instead, and
    the root is then made the first time it is asked for.
    """

    kind = "checkpoint"

    def __init__(self, path: str, fmt: str, root: Any = None, references: list[str] | None = None,
                 metadata: dict | None = None, *, table: FlatTable | None = None):
        self.path = str(path)
        self.format = fmt
        self.references = list(references or [])
        self.metadata = dict(metadata or {})   # format-level metadata (safetensors __metadata__, ...)
        self._table = table
        self._kinds: dict[int, str] = {}
        self._index: dict | None = None
        self._unshared: bool | None = None
        with gc_paused():
            if table is not None:
                self._root = None
                self._paths = _SegmentPaths.flat(table.keys)
                self._recs: list[TensorRecord] | None = None
                self._by_parent: dict[EntryPath, range | list[int]] = {(): range(len(table.keys))}
                self.state_dicts = self._rank([((), _KeysOnly(table.keys), len(table.keys), table.keys)]) if table.keys else []
            else:
                try:
                    self._root = _normalize(root)
                except CorruptFileError as e:
                    raise CorruptFileError(f"{self.path}: {e}; the file is not a checkpoint (or is hostile) — "
                                           "nothing was loaded") from None
                self._walk()
        self.entries: EntryList = EntryList(self)

    # ---- structure ---------------------------------------------------------------------------------------------
    @property
    def root(self) -> Any:
        """The loaded object: tensors as records, foreign objects as inert placeholders."""
        if self._root is None and self._table is not None:
            table = self._table
            with gc_paused():
                # a dict, as safetensors.torch.load_file gives (an OrderedDict of 10**6 items costs twice as much)
                self._root = dict(zip(table.keys, map(table.record, range(len(table.keys)))))
        return self._root

    @property
    def _records(self) -> dict[EntryPath, TensorRecord]:  # kept for callers of the first version
        return {p: self._record_at(i) for i, p in enumerate(self._paths)}

    def _walk(self) -> None:
        paths = _SegmentPaths()
        recs: list[TensorRecord] = []
        kinds = self._kinds
        by_parent: dict[EntryPath, range | list[int]] = {}
        candidates: list[tuple] = []  # (path, mapping) of every dict, in the order they are first seen
        root = self._root
        if isinstance(root, TensorRecord):  # torch.save(tensor): the file is one tensor, at the empty path
            if type(root) is NumpyRecord:
                kinds[0] = NUMPY_ARRAY
            self._paths, self._recs, self._by_parent, self.state_dicts = [()], [root], {}, []
            return
        seen = {id(root)}
        # a frame: path, iterator over (key, value), kinds of a recovered module, indices of its tensors
        stack: list[tuple] = []
        frame = self._frame((), root, candidates, by_parent, paths, recs, kinds)
        if frame is not None:
            stack.append(frame)
        while stack:
            path, it, mod_kinds, idx = stack[-1]
            for key, value in it:
                if isinstance(value, TensorRecord):
                    i = len(recs)
                    paths.add(path, key)
                    recs.append(value)
                    idx.append(i)
                    if mod_kinds is not None:
                        kind = mod_kinds.get(key)
                        if kind is not None:
                            kinds[i] = kind
                    continue
                if isinstance(value, (dict, list, tuple, Inert)):
                    if id(value) in seen:  # shared or cyclic container: listed once, where first seen
                        continue
                    seen.add(id(value))
                    if len(stack) >= MAX_DEPTH:
                        raise CorruptFileError(f"{self.path}: nesting deeper than {MAX_DEPTH} levels; the file is "
                                               "not a checkpoint (or is hostile) — nothing was loaded")
                    frame = self._frame(path + (key,), value, candidates, by_parent, paths, recs, kinds)
                    if frame is not None:
                        stack.append(frame)
                        break
            else:
                stack.pop()
        self._paths, self._recs, self._by_parent = paths, recs, by_parent
        if NumpyRecord in set(map(type, recs)):
            for i in compress(range(len(recs)), map(NumpyRecord.__instancecheck__, recs)):
                kinds[i] = NUMPY_ARRAY
        self.state_dicts = self._rank([(p, m, len(by_parent[p]), *keys) for p, m, *keys in candidates
                                       if by_parent[p]])

    @staticmethod
    def _frame(path, obj, candidates, by_parent, paths, recs, kinds):
        """A frame to walk ``obj``'s children; ``None`` when a mapping of tensors only (a state dict, the common case
        with 10**6 entries) was listed in bulk right away: the same paths, records, kinds and order, no per-entry
        Python loop."""
        if isinstance(obj, dict):
            str_keys = all(t is str for t in set(map(type, _keys(obj))))
            if _all_records(_values(obj)):
                keys = list(_keys(obj)) if str_keys else [k if type(k) is str else str(k) for k in _keys(obj)]
                candidates.append((path, obj, keys))
                start = len(recs)
                recs.extend(_values(obj))
                paths.extend(path, keys)
                by_parent[path] = range(start, len(recs))
                if isinstance(obj, RecoveredModule):
                    mod_kinds = obj.kinds
                    for i, key in enumerate(keys, start):
                        kind = mod_kinds.get(key)
                        if kind is not None:
                            kinds[i] = kind
                return None
            candidates.append((path, obj))
            idx: list[int] = []
            by_parent[path] = idx
            items = iter(_items(obj)) if str_keys else \
                ((k if type(k) is str else str(k), v) for k, v in _items(obj))
            return path, items, obj.kinds if isinstance(obj, RecoveredModule) else None, idx
        idx = []
        by_parent[path] = idx
        return path, children(obj), None, idx

    def _rank(self, candidates) -> list[StateDictRef]:
        """``candidates``: (path, mapping, tensors in it[, its keys as strings])."""
        ranked = []
        for path, mapping, n, *keys in candidates:
            score, reason = _score(path, mapping, n, *keys)
            ranked.append(StateDictRef(path, n, score, reason))
        ranked.sort(key=lambda r: -r.score)  # stable: file order breaks ties
        return ranked

    def _record_at(self, i: int) -> TensorRecord:
        if self._recs is not None:
            return self._recs[i]
        return self._table.record(i)  # type: ignore[union-attr]

    def _make_info(self, i: int) -> TensorInfo:
        rec = self._record_at(i)
        path = self._paths[i]
        kind = self._kinds.get(i) or ("parameter" if rec.is_parameter else "tensor")
        ref = rec.storage
        if isinstance(ref, StorageRef):
            loc, device = _location(ref, rec, self.path), ref.device
        else:
            loc, device = None, "meta"
        return TensorInfo(path, rec.shape, rec.dtype or "unknown", rec.nbytes, loc, device, kind, rec.requires_grad)

    def _fill_infos(self, infos: list) -> None:
        """Make every missing :class:`TensorInfo` in ``infos`` (indexed like the entries): what :meth:`_make_info`
        does, in one loop (10**6 entries: no per-entry method calls, one location lookup per storage)."""
        table = self._table
        if table is not None and table.make_infos is not None and infos and infos.count(None) == len(infos):
            infos[:] = table.make_infos(list(zip(table.keys)))   # a flat table's paths are (key,)
            return
        if table is not None and table.make_info is not None:
            make = table.make_info
            for i, (path, info) in enumerate(zip(self._paths, infos)):
                if info is None:
                    infos[i] = make(i, path)
            return
        recs = self._recs
        record = self._record_at
        kinds = self._kinds
        fallback = self.path
        # id(the record's storage or persistent id) -> (file, record, offset, storage bytes, key, device, the object
        # itself: kept so that its id stays its own), or None for a tensor without storage
        where: dict[int, tuple | None] = {}
        for i, (path, info) in enumerate(zip(self._paths, infos)):
            if info is not None:
                continue
            rec = recs[i] if recs is not None else record(i)
            raw = rec._storage
            w = where.get(id(raw), False)
            if w is False:
                ref = rec.storage  # a persistent id is resolved the first time (see TensorRecord.storage)
                if isinstance(ref, StorageRef):
                    describe = getattr(ref.source, "describe", None)
                    file, name, offset = describe(ref) if describe is not None else (fallback, f"data/{ref.key}", None)
                    w = (file, name, offset, ref.nbytes, ref.key, ref.device, raw)
                else:
                    w = None
                where[id(raw)] = w
            if w is not None:
                loc = Location(w[0], w[1], w[2], w[3], rec.storage_offset, rec.stride, w[4])
                device = w[5]
            else:
                loc, device = None, "meta"
            kind = kinds.get(i) or ("parameter" if rec.is_parameter else "tensor")
            nbytes = rec.numel * ITEMSIZE.get(rec.dtype, 1) if type(rec).nbytes is _RECORD_NBYTES else rec.nbytes
            infos[i] = TensorInfo(path, rec.shape, rec.dtype or "unknown", nbytes, loc, device, kind,
                                  rec.requires_grad)

    def entry_columns(self, chunk: int = 65536) -> Iterator[tuple]:
        """What a listing shows of every entry, in file order, column-wise and without :class:`TensorInfo` objects:
        chunks ``(prefix, keys, shapes, dtypes, nbytes, kinds, devices)`` of lists. An entry's path is
        ``prefix + (key,)``; with ``prefix`` None, ``keys`` holds whole paths. The values are those of ``entries``
        (a storage that cannot be resolved raises as there)."""
        paths = self._paths
        if not isinstance(paths, _SegmentPaths):  # the file is one tensor
            for start in range(0, len(paths), chunk):
                infos = self.entries[start:start + chunk]
                yield (None, [i.path for i in infos], [i.shape for i in infos], [i.dtype for i in infos],
                       [i.nbytes for i in infos], [i.kind for i in infos], [i.device for i in infos])
            return
        table = self._table
        table_columns = table.columns if table is not None else None
        kinds = self._kinds
        start = 0
        for prefix, seg_keys in paths.segments():
            for at in range(0, len(seg_keys), chunk):
                keys = seg_keys[at:at + chunk] if len(seg_keys) > chunk else seg_keys
                n = len(keys)
                if table_columns is not None:
                    yield (prefix, keys, *table_columns(start, start + n))
                    start += n
                    continue
                recs = self._recs[start:start + n] if self._recs is not None else \
                    [self._record_at(i) for i in range(start, start + n)]
                shapes = list(map(_SHAPE_OF, recs))
                raw_dtypes = list(map(_DTYPE_OF, recs))
                dtypes = [d or "unknown" for d in raw_dtypes]
                if all(t.nbytes is _RECORD_NBYTES for t in set(map(type, recs))):  # rec.nbytes, without the calls
                    nbytes = list(map(mul, map(_NUMEL_OF, recs), map(ITEMSIZE.get, raw_dtypes, repeat(1))))
                else:
                    nbytes = list(map(_NBYTES_OF, recs))
                params = list(map(_IS_PARAMETER_OF, recs))
                if kinds or any(params):
                    kind_col = [kinds.get(i) or ("parameter" if p else "tensor")
                                for i, p in zip(range(start, start + n), params)]
                else:
                    kind_col = ["tensor"] * n
                # each distinct storage (or persistent id not yet resolved) once, through one of its records
                storages = list(map(_RAW_STORAGE_OF, recs))
                ids = list(map(id, storages))
                resolved = dict(zip(ids, recs))
                for key, rec in resolved.items():
                    resolved[key] = rec.storage
                storages = list(map(resolved.__getitem__, ids))
                if all(t is StorageRef for t in set(map(type, storages))):
                    devices = list(map(_DEVICE_OF, storages))
                else:
                    devices = [st.device if isinstance(st, StorageRef) else "meta" for st in storages]
                yield prefix, keys, shapes, dtypes, nbytes, kind_col, devices
                start += n

    @property
    def default_state_dict(self) -> EntryPath | None:
        return self.state_dicts[0].path if self.state_dicts else None

    @property
    def label(self) -> str:
        return self.path

    def get(self, path: EntryPath) -> Any:
        """The object at ``path`` in the loaded object (tensors as records, foreign objects inert)."""
        path = tuple(path)
        if self._table is not None and self._root is None and len(path) == 1:
            i = self._index_of(path)
            if i is not None:
                return self._record_at(i)
        obj = self.root
        for part in path:
            try:
                obj = _child(obj, part)
            except LookupError:
                raise KeyNotFoundError(f"{self.path}: no entry {'/'.join(path)!r}") from None
        return obj

    def _index_of(self, path: EntryPath) -> int | None:
        if self._table is not None:  # indexed by key: a flat table's paths are (key,)
            if self._index is None:
                self._index = dict(zip(self._table.keys, range(len(self._table.keys))))
            return self._index.get(path[0]) if len(path) == 1 else None
        paths = self._paths
        if not isinstance(paths, _SegmentPaths):
            if self._index is None:
                self._index = {p: i for i, p in enumerate(paths)}
            return self._index.get(path)
        if self._index is None:  # prefix -> {key: index}: no path tuple per entry; a later duplicate wins, as before
            index: dict = {}
            for start, prefix, keys in zip(paths.starts, paths.prefixes, paths.keys):
                index.setdefault(prefix, {}).update(zip(keys, range(start, start + len(keys))))
            self._index = index
        if not path:
            return None
        return self._index.get(path[:-1], _NO_KEYS).get(path[-1])

    def resolve_entry(self, entry: str | EntryPath | None) -> EntryPath:
        """``None`` -> the best state dict; ``"/"`` -> the root; ``"a/b"`` -> ``("a", "b")``."""
        if entry is None:
            if self.default_state_dict is None:
                if isinstance(self.root, dict):  # an empty state dict (or one of non-tensors) is still one
                    return ()
                raise KeyNotFoundError(f"{self.path}: holds no mapping of tensors to use as a state dict")
            return self.default_state_dict
        if isinstance(entry, (tuple, list)):
            return tuple(entry)
        path = tuple(p for p in entry.strip("/").split("/") if p) if entry.strip("/") else ()
        if path not in self._by_parent:
            self.get(path)
        return path

    def state_dict_infos(self, entry: str | EntryPath | None = None) -> dict[str, TensorInfo]:
        """key -> TensorInfo for the tensors of one state dict (default: the best one), in file order (a dict: an
        OrderedDict of 10**6 items costs twice as much to make)."""
        path = self.resolve_entry(entry)
        entries = self.entries
        idx = self._by_parent.get(path, ())
        with gc_paused():
            if type(idx) is range and idx.step == 1:  # a state dict listed in bulk: its entries are contiguous
                if len(idx) * 4 >= len(entries):
                    infos = entries._fill()[idx.start:idx.stop]
                else:
                    infos = [entries[i] for i in idx]
            else:
                infos = [entries[i] for i in idx]
            # key -> info, in file order (a later entry with the same key replaces the earlier one, in its place)
            return dict(zip(map(_LAST, map(_PATH_OF, infos)), infos))

    def state_dict_columns(self, entry: str | EntryPath | None = None) -> tuple[list, list, list, list, list, list]:
        """``(keys, shapes, dtypes, nbytes, kinds, devices)`` of one state dict's tensors, as
        :meth:`state_dict_infos` gives them, column-wise: a state dict listed in bulk (10**6 tiny tensors) costs no
        :class:`TensorInfo` per tensor."""
        path = self.resolve_entry(entry)
        idx = self._by_parent.get(path, ())
        if type(idx) is range and idx.step == 1 and len(idx) and isinstance(self._paths, _SegmentPaths) \
                and not self.entries._complete:
            cols: tuple[list, ...] = ([], [], [], [], [], [])
            at = 0
            for prefix, *chunk in self.entry_columns():
                n = len(chunk[0])
                lo, hi = max(idx.start - at, 0), min(idx.stop - at, n)
                if lo < hi:
                    if prefix != path:   # not the layout this fast path assumes: the careful way below
                        break
                    for col, part in zip(cols, chunk):
                        col += part[lo:hi]
                at += n
                if at >= idx.stop:
                    break
            keys = cols[0]
            if len(keys) == len(idx) and len(set(keys)) == len(keys):   # a repeated key: state_dict_infos decides
                return cols
        infos = list(self.state_dict_infos(path).items())
        return ([k for k, _ in infos], [i.shape for _, i in infos], [i.dtype for _, i in infos],
                [i.nbytes for _, i in infos], [i.kind for _, i in infos], [i.device for _, i in infos])

    def module_classes(self, entry: str | EntryPath | None = None) -> dict[str, ModuleInfo]:
        """Module classes recovered from a pickled module, when the state dict came from one."""
        if self._table is not None and self._root is None:   # a flat table (safetensors...) pickles no module
            return {}
        try:
            obj = self.get(self.resolve_entry(entry))
        except KeyNotFoundError:
            return {}
        return dict(obj.modules) if isinstance(obj, RecoveredModule) else {}

    # ---- values ------------------------------------------------------------------------------------------------
    def record(self, path: EntryPath) -> TensorRecord:
        i = self._index_of(tuple(path))
        if i is None:
            raise KeyNotFoundError(f"{self.path}: no tensor at {'/'.join(path)!r}")
        return self._record_at(i)

    def read(self, path: EntryPath) -> torch.Tensor:
        """One tensor's values, read on demand (memory-mapped where the format allows).

        Tensors read from one checkpoint share one private map per file (see ``bytesource.FileMaps``): clone a
        value before changing it in place if later reads must see the file's bytes."""
        rec = self.record(path)
        if not has_data(rec):
            raise NoDataError(f"{self.path}: '{'/'.join(path)}' holds no data (meta): it was saved from the meta "
                              "device, so the file has its shape and dtype but no values — save the state dict "
                              "after the model's weights are materialized (e.g. after load_state_dict(..., "
                              "assign=True) or to_empty() and initialisation)")
        return read_record(rec, file_label=self.path)

    def read_key(self, key: str, entry: str | EntryPath | None = None) -> torch.Tensor:
        return self.read(self.resolve_entry(entry) + (key,))

    def load_object(self, entry: str | EntryPath | None = None, *, device: str = "meta") -> Any:
        """What ``torch.load`` would return at ``entry``, with tensors as ``device`` tensors.

        ``device="meta"`` gives data-less stand-ins of the right shape and dtype (for key matching); ``"cpu"`` reads
        values. A state dict keeps its ``_metadata`` (BatchNorm versions etc.), as torch relies on it.
        """
        path = self.resolve_entry(entry)
        if device == "meta" and not path and self._table is not None and self._root is None:
            out = self._meta_table()   # no record per tensor
            if out is not None:
                return out
        obj = self.get(path)
        with gc_paused():   # 10**6 tensors (and a memo entry each): a full collection would walk them all, often
            return self._materialize(obj, path, device, 0, {})

    def meta_state_dict(self, entry: str | EntryPath | None, read_keys: set, read_prefixes: tuple = ()) -> Any:
        """The state dict at ``entry`` on the meta device for code that reads the values of only some keys: those in
        ``read_keys`` or starting with one of ``read_prefixes`` get what :meth:`load_object` gives them; each other
        key gets one tensor shared by every such key of its layout (shape, stride, dtype, parameter-ness): 10**6
        unexpected keys cost a dict entry each, not a tensor. The keys, their order, layouts and ``_metadata`` are
        those of ``load_object(entry, device="meta")``, in a :class:`PlainStateDict` (whatever mapping type the file
        had), and a layout ``load_object`` refuses is refused here too. ``out._stand_ins``: the ids of the shared
        tensors (a remap that makes such a key readable must give it a tensor of its own). None when that would not
        be a flat mapping of distinct tensors, or when anything is refused (``load_object`` then says why)."""
        path = self.resolve_entry(entry)
        table = self._table
        with gc_paused():
            if table is not None and self._root is None and not path and table.columns is not None:
                keys = table.keys
                shapes, dtypes, _nbytes, kinds, _devices = table.columns(0, len(keys))
                if any(k != "tensor" for k in set(kinds)):
                    return None
                strides = None   # contiguous
                params, grads = [False] * len(keys), repeat(False, len(keys))
                obj = None
            else:
                obj = self.get(path)
                if not isinstance(obj, dict) or not _all_tensor_records(_values(obj)) or not self._records_unshared():
                    return None
                keys = list(_keys(obj))
                vals = list(_values(obj))
                shapes, strides = list(map(_SHAPE_OF, vals)), list(map(_STRIDE_OF, vals))
                dtypes, params = list(map(_DTYPE_OF, vals)), list(map(_IS_PARAMETER_OF, vals))
                grads = map(_REQUIRES_GRAD_OF, vals)
            if not keys or not all(t is str for t in set(map(type, keys))):
                return None
            read = read_mask(keys, read_keys, read_prefixes)
            # one stand-in per layout of the keys not read; the layout is the shape alone (no tuple per key) when every
            # key has the same dtype, none is a parameter and each shape comes with one stride
            stride_of = dict(zip(shapes, strides)) if strides is not None else None
            by_shape = len(set(dtypes)) == 1 and not any(params) and (
                stride_of is None or len(stride_of) == len(set(zip(shapes, strides))))  # type: ignore[arg-type]
            if by_shape:
                layouts = shapes
                unique = [(shape, stride_of[shape] if stride_of is not None else None, dtypes[0], False, False)
                          for shape in dict.fromkeys(compress(shapes, map(not_, read)))]
            else:
                layouts = list(zip(shapes, strides if strides is not None else repeat(None), dtypes, params, grads))
                unique = list(dict.fromkeys(compress(layouts, map(not_, read))))
            made = meta_bulk([u[0] for u in unique], [u[1] for u in unique] if strides is not None else None,
                              [u[2] for u in unique])
            if made is None:
                return None
            for i, (_shape, _stride, _dtype, is_param, grad) in enumerate(unique):
                if is_param:
                    made[i] = torch.nn.Parameter(made[i], requires_grad=grad)
            stand_in = dict(zip([u[0] for u in unique] if by_shape else unique, made))
            out = PlainStateDict(zip(keys, map(stand_in.get, layouts)))
            out._stand_ins = frozenset(map(id, made))  # type: ignore[attr-defined]  # for code that renames keys
            if any(read):   # the keys read: as load_object makes them
                if obj is None:
                    sub = OrderedDict((k, table.record(i)) for i, k in enumerate(keys) if read[i])  # type: ignore
                else:
                    sub = OrderedDict(compress(_items(obj), read))
                out.update(self._materialize(sub, path, "meta", 0, {}))
            meta = getattr(obj, "_metadata", None) if obj is not None else None
            if meta is not None:
                out._metadata = copy_metadata(meta)  # type: ignore[attr-defined]
            return out

    def _meta_table(self) -> "dict[str, torch.Tensor] | None":
        """A flat table's root on the meta device, from its columns; None: something unusual (the careful way)."""
        table = self._table
        if table is None or table.columns is None:
            return None
        shapes, dtypes, _nbytes, kinds, _devices = table.columns(0, len(table.keys))
        if any(k != "tensor" for k in set(kinds)):
            return None
        tensors = meta_bulk(shapes, None, dtypes)
        if tensors is None:
            return None
        with gc_paused():
            return dict(zip(table.keys, tensors))

    def _records_unshared(self) -> bool:
        """Is every record of the file at one place only (then a meta tensor made for it needs no memo entry to be
        shared with another place)? The walk lists a record once per place it is found."""
        if self._unshared is None:
            recs = self._recs
            # records hash by identity (and were they equal by value, "shared" is the careful answer)
            self._unshared = recs is None or len(set(recs)) == len(recs)
        return self._unshared

    def _meta_records(self, obj: dict, memo: dict):
        """``(key, meta tensor)`` of a mapping of records, in bulk; None when a record is shared (with this mapping
        or with one made before: ``memo`` keeps the sharing) or anything is unusual (the careful way)."""
        vals = list(_values(obj))
        ids = None
        if not self._records_unshared():
            ids = list(map(id, vals))
            if len(set(ids)) != len(ids) or any(map(memo.__contains__, ids)):
                return None
        tensors = meta_bulk(list(map(_SHAPE_OF, vals)), list(map(_STRIDE_OF, vals)), list(map(_DTYPE_OF, vals)))
        if tensors is None:
            return None
        params = list(map(_IS_PARAMETER_OF, vals))
        if any(params):
            parameter = torch.nn.Parameter
            for i in compress(range(len(vals)), params):
                tensors[i] = parameter(tensors[i], requires_grad=vals[i].requires_grad)
        if ids is not None:
            memo.update(zip(ids, zip(vals, tensors)))
        return zip(_keys(obj), tensors)

    def _materialize(self, obj, path, device, depth, memo):
        """``memo``: an object shared in the file is made once and shared in the result, as torch.load does."""
        if depth > MAX_DEPTH:
            raise CorruptFileError(f"{self.path}: nesting deeper than {MAX_DEPTH} levels")
        if type(obj) is TorchDtype or type(obj) is QScheme:   # torch.load gives torch's own objects
            return getattr(torch, str(obj), obj) if str(obj) in _TORCH_DTYPES or type(obj) is QScheme else obj
        if isinstance(obj, Uninitialized):   # a lazy module's parameter: torch.load gives an uninitialized one
            done = memo.get(id(obj))
            if done is None:
                done = memo[id(obj)] = (obj, uninitialized_tensor(obj))
            return done[1]
        if not isinstance(obj, (TensorRecord, dict, list, tuple)):
            return obj
        done = memo.get(id(obj))
        if done is not None:
            return done[1]
        if type(obj) is NumpyRecord:   # torch.load gives the array itself
            out = numpy_array(obj)
        elif type(obj) is QuantizedRecord:   # data: its values are read (quantized modules pack them at load)
            out = self._quantized(obj, path)
        elif isinstance(obj, TensorRecord):
            if device == "meta" or not has_data(obj):
                t = self._meta_tensor(obj, path)   # saved from the meta device: torch.load gives a meta tensor too
            else:
                t = read_record(obj, file_label=self.path)
            out = torch.nn.Parameter(t, requires_grad=obj.requires_grad) if obj.is_parameter else t
        elif isinstance(obj, dict):
            out = OrderedDict() if isinstance(obj, OrderedDict) else {}
            memo[id(obj)] = (obj, out)
            bulk = self._meta_records(obj, memo) if device == "meta" and _all_tensor_records(_values(obj)) else None
            if bulk is not None:   # a state dict: no Python code per tensor
                out.update(bulk)
            elif device == "meta" and _all_tensor_records(_values(obj)):  # shared records: one call per entry
                meta_tensor, parameter, empty_strided = self._meta_tensor, torch.nn.Parameter, torch.empty_strided
                plain: dict[tuple, Any] = {}  # (shape, stride, dtype) -> torch dtype when _meta_tensor would
                for k, v in _items(obj):     # call empty_strided with them, else None
                    done = memo.get(id(v))
                    if done is None:
                        key = (v.shape, v.stride, v.dtype)
                        dt = plain.get(key, False)
                        if dt is False:
                            dt = plain[key] = _TORCH_DTYPES.get(v.dtype or "") if (
                                len(v.stride) == len(v.shape)
                                and all(type(s) is int and s >= 0 for s in v.stride)) else None
                        t = None
                        if dt is not None:
                            try:
                                t = empty_strided(v.shape, v.stride, dtype=dt, device="meta")
                            except (RuntimeError, TypeError, ValueError, OverflowError):
                                pass
                        if t is None:  # anything unusual: the careful path (and its error)
                            t = meta_tensor(v, path, k)
                        if v.is_parameter:
                            t = parameter(t, requires_grad=v.requires_grad)
                        memo[id(v)] = (v, t)
                    else:
                        t = done[1]
                    out[k] = t
            else:
                for k, v in obj.items():
                    out[k] = self._materialize(v, path + (str(k),), device, depth + 1, memo)
            meta = getattr(obj, "_metadata", None)
            if meta is not None:
                if not isinstance(out, OrderedDict):
                    out = OrderedDict(out)
                # each caller gets its own copy: load_state_dict(assign=True) writes into the per-module entries
                out._metadata = copy_metadata(meta)  # type: ignore[attr-defined]
        elif isinstance(obj, list):
            out = []
            memo[id(obj)] = (obj, out)
            out.extend(self._materialize(v, path + (str(i),), device, depth + 1, memo) for i, v in enumerate(obj))
        else:
            out = tuple(self._materialize(v, path + (str(i),), device, depth + 1, memo) for i, v in enumerate(obj))
        memo[id(obj)] = (obj, out)  # keeps ``obj`` alive so its id stays its own
        return out

    def _quantized(self, rec: "QuantizedRecord", path) -> torch.Tensor:
        """The quantized tensor torch.load would rebuild, made from the record's integer values and its
        quantization parameters (numbers, or small tensors read the same way)."""
        int_dtype = _QUANTIZED_INT.get(rec.dtype or "")
        qp = rec.qparams
        where = _where(path)
        if int_dtype is None or not qp or type(qp[0]) is not QScheme:
            raise CorruptFileError(f"{self.path}: cannot rebuild the quantized tensor at {where} "
                                   f"(dtype {rec.dtype!r}, quantization {str(qp)[:60]!r})")
        ints = TensorRecord(rec.storage, rec.storage_offset, rec.shape, rec.stride, int_dtype)
        values = read_record(ints, file_label=self.path).contiguous().clone()
        try:
            if qp[0] in ("per_tensor_affine", "per_tensor_symmetric") and len(qp) == 3:
                return torch._make_per_tensor_quantized_tensor(values, float(qp[1]), int(qp[2]))
            if qp[0] in ("per_channel_affine", "per_channel_affine_float_qparams", "per_channel_symmetric") \
                    and len(qp) == 4 and type(qp[3]) is int:
                float_zp = qp[0] == "per_channel_affine_float_qparams"

                def column(v, dtype):
                    if isinstance(v, TensorRecord):
                        return read_record(v, file_label=self.path).to(dtype)
                    return torch.tensor(list(v), dtype=dtype)
                scales = column(qp[1], torch.float if float_zp else torch.double)
                zero_points = column(qp[2], torch.float if float_zp else torch.long)
                return torch._make_per_channel_quantized_tensor(values, scales, zero_points, qp[3])
        except (RuntimeError, TypeError, ValueError, IndexError) as e:
            raise CorruptFileError(f"{self.path}: the quantized tensor at {where} cannot be rebuilt "
                                   f"({type(e).__name__}: {str(e)[:120]}); the file is corrupt") from None
        raise CorruptFileError(f"{self.path}: the quantized tensor at {where} has a quantization torch does not "
                               f"rebuild ({str(qp[0])!r})")

    def _meta_tensor(self, rec: TensorRecord, path, key=None) -> torch.Tensor:
        """``key``: the record's key in the mapping at ``path`` (else ``path`` is the record's own)."""
        dt = _TORCH_DTYPES.get(rec.dtype or "")
        if dt is None:
            raise CorruptFileError(f"{self.path}: cannot represent dtype {rec.dtype!r} at {_where(path, key)}")
        try:
            stride = rec.stride
            if len(stride) == len(rec.shape) and all(type(s) is int and s >= 0 for s in stride):
                return torch.empty_strided(rec.shape, stride, dtype=dt, device="meta")
            return torch.empty(rec.shape, dtype=dt, device="meta")
        except (RuntimeError, TypeError, ValueError, OverflowError) as e:
            raise CorruptFileError(f"{self.path}: the tensor at {_where(path, key)} has an impossible shape "
                                   f"{list(rec.shape)[:8]} ({type(e).__name__}); the file is corrupt") from None

    def close(self) -> None:
        """Nothing stays open between reads; kept for symmetry with other sides."""

    def __repr__(self):
        return f"Checkpoint({self.path!r}, {self.format}, {len(self.entries)} tensors)"


class _SegmentPaths(Sequence):
    """Entry paths in file order, kept as segments ``(prefix, [key, ...])``: a path ``prefix + (key,)`` is made when
    asked for (no 10**6 tuples up front); the tensors of one mapping are one segment."""

    __slots__ = ("starts", "prefixes", "keys", "_n")

    def __init__(self):
        self.starts: list[int] = []
        self.prefixes: list[EntryPath] = []
        self.keys: list[list[str]] = []
        self._n = 0

    @classmethod
    def flat(cls, keys: list[str]) -> "_SegmentPaths":
        out = cls()
        out.extend((), keys)
        return out

    def add(self, prefix: EntryPath, key: str) -> None:
        """One more path, ``prefix + (key,)``; ``prefix`` is the same object for the keys of one container."""
        if self.prefixes and self.prefixes[-1] is prefix:
            self.keys[-1].append(key)
        else:
            self.starts.append(self._n)
            self.prefixes.append(prefix)
            self.keys.append([key])
        self._n += 1

    def extend(self, prefix: EntryPath, keys: list[str]) -> None:
        """A segment of its own (``keys`` is kept, not copied)."""
        if keys:
            self.starts.append(self._n)
            self.prefixes.append(prefix)
            self.keys.append(keys)
            self._n += len(keys)

    def segments(self) -> Iterator[tuple[EntryPath, list[str]]]:
        return zip(self.prefixes, self.keys)

    def __len__(self):
        return self._n

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(self._n))]
        if i < 0:
            i += self._n
        if not 0 <= i < self._n:
            raise IndexError("path index out of range")
        j = bisect_right(self.starts, i) - 1
        return self.prefixes[j] + (self.keys[j][i - self.starts[j]],)

    def __iter__(self):  # C iterators, one per segment: no Python frame per path
        return chain.from_iterable(map(prefix.__add__, zip(keys)) if prefix else zip(keys)
                                   for prefix, keys in zip(self.prefixes, self.keys))


class _KeysOnly:
    """Enough of a mapping for :func:`_score`: its keys."""

    __slots__ = ("_keys",)

    def __init__(self, keys):
        self._keys = keys

    def keys(self):
        return self._keys
