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
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any, Callable, Iterator

import torch

from ..errors import CorruptFileError, KeyNotFoundError
from .bytesource import read_record
from .records import EntryPath, Location, ModuleInfo, StateDictRef, TensorInfo, copy_metadata
from .safe_pickle import Inert, StorageRef, TensorRecord, gc_paused, is_module_state

MAX_DEPTH = 400  # deeper nesting than this is not a checkpoint but a recursion bomb


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
        st = obj.state_dict()
        if isinstance(st, dict):
            _normalize(st, depth + 1, memo)
            object.__setattr__(obj, "_state", st)
        return obj
    if isinstance(obj, dict):
        for k, v in obj.items():
            if isinstance(v, (dict, list, tuple, Inert)):
                new = _normalize(v, depth + 1, memo)
                if new is not v:
                    obj[k] = new  # replacing a value while iterating is fine: the key set does not change
        return obj
    if isinstance(obj, list):
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
        for k, v in obj.items():
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


def _score(path: EntryPath, mapping, n_tensors: int) -> tuple[float, str]:
    score = float(n_tensors)
    reasons = []
    keys = [k if type(k) is str else str(k) for k in mapping.keys()]
    if any("." in k for k in keys):
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
    if keys and sum(k in _OPTIMIZER_KEYS for k in keys) >= len(keys) / 2:
        score *= 0.01
        reasons.append("optimizer slots")
    if keys and all(k.isdigit() for k in keys):
        score *= 0.1
    if isinstance(mapping, RecoveredModule):
        score *= 2.0
        reasons.append(f"recovered from a pickled {mapping.class_name.rsplit('.', 1)[-1]}")
    return score, ", ".join(reasons)


class FlatTable:
    """A flat state dict described by a table instead of records (safetensors): the reader has parsed and checked
    every key, shape, dtype and byte range; records are made on demand by ``make_record(i)``."""

    __slots__ = ("keys", "make_record", "records")

    def __init__(self, keys: list[str], make_record: Callable[[int], TensorRecord]):
        self.keys = keys
        self.make_record = make_record
        self.records: list[TensorRecord | None] = [None] * len(keys)

    def record(self, i: int) -> TensorRecord:
        rec = self.records[i]
        if rec is None:
            rec = self.records[i] = self.make_record(i)
        return rec


class EntryList(Sequence):
    """Every tensor of a checkpoint in file order, as :class:`TensorInfo`; each made the first time it is looked at."""

    __slots__ = ("_ck", "_infos")

    def __init__(self, ck: "Checkpoint"):
        self._ck = ck
        self._infos: list[TensorInfo | None] = [None] * len(ck._paths)

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

    def __iter__(self):
        infos = self._infos
        if None in infos:
            make = self._ck._make_info
            with gc_paused():
                for i, info in enumerate(infos):
                    if info is None:
                        infos[i] = make(i)
        return iter(infos)

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
        with gc_paused():
            if table is not None:
                self._root = None
                self._paths = _KeyPaths(table.keys)
                self._recs: list[TensorRecord] | None = None
                self._by_parent: dict[EntryPath, range | list[int]] = {(): range(len(table.keys))}
                self.state_dicts = self._rank([((), _KeysOnly(table.keys), len(table.keys))]) if table.keys else []
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
                self._root = OrderedDict((k, table.record(i)) for i, k in enumerate(table.keys))
        return self._root

    @property
    def _records(self) -> dict[EntryPath, TensorRecord]:  # kept for callers of the first version
        return {p: self._record_at(i) for i, p in enumerate(self._paths)}

    def _walk(self) -> None:
        paths: list[EntryPath] = []
        recs: list[TensorRecord] = []
        kinds = self._kinds
        by_parent: dict[EntryPath, list[int]] = {}
        candidates: list[tuple] = []  # (path, mapping) of every dict, in the order they are first seen
        root = self._root
        if isinstance(root, TensorRecord):  # torch.save(tensor): the file is one tensor, at the empty path
            self._paths, self._recs, self._by_parent, self.state_dicts = [()], [root], {}, []
            return
        seen = {id(root)}
        # a frame: path, iterator over (key, value), kinds of a recovered module, indices of its tensors
        stack: list[tuple] = [self._frame((), root, candidates, by_parent)]
        while stack:
            path, it, mod_kinds, idx = stack[-1]
            for key, value in it:
                if isinstance(value, TensorRecord):
                    i = len(paths)
                    paths.append(path + (key,))
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
                    stack.append(self._frame(path + (key,), value, candidates, by_parent))
                    break
            else:
                stack.pop()
        self._paths, self._recs, self._by_parent = paths, recs, by_parent
        self.state_dicts = self._rank([(p, m, len(by_parent[p])) for p, m in candidates if by_parent[p]])

    @staticmethod
    def _frame(path, obj, candidates, by_parent):
        idx: list[int] = []
        by_parent[path] = idx
        if isinstance(obj, dict):
            candidates.append((path, obj))
            items = ((k if type(k) is str else str(k), v) for k, v in obj.items()) \
                if not all(type(k) is str for k in obj) else iter(obj.items())
            return path, items, obj.kinds if isinstance(obj, RecoveredModule) else None, idx
        return path, children(obj), None, idx

    def _rank(self, candidates) -> list[StateDictRef]:
        ranked = []
        for path, mapping, n in candidates:
            score, reason = _score(path, mapping, n)
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
                self._index = {k: i for i, k in enumerate(self._table.keys)}
            return self._index.get(path[0]) if len(path) == 1 else None
        if self._index is None:
            self._index = {p: i for i, p in enumerate(self._paths)}
        return self._index.get(path)

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

    def state_dict_infos(self, entry: str | EntryPath | None = None) -> "OrderedDict[str, TensorInfo]":
        """key -> TensorInfo for the tensors of one state dict (default: the best one), in file order."""
        path = self.resolve_entry(entry)
        entries = self.entries
        out: OrderedDict[str, TensorInfo] = OrderedDict()
        with gc_paused():
            for i in self._by_parent.get(path, ()):
                info = entries[i]
                out[info.path[-1]] = info
        return out

    def module_classes(self, entry: str | EntryPath | None = None) -> dict[str, ModuleInfo]:
        """Module classes recovered from a pickled module, when the state dict came from one."""
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
        return read_record(self.record(path), file_label=self.path)

    def read_key(self, key: str, entry: str | EntryPath | None = None) -> torch.Tensor:
        return self.read(self.resolve_entry(entry) + (key,))

    def load_object(self, entry: str | EntryPath | None = None, *, device: str = "meta") -> Any:
        """What ``torch.load`` would return at ``entry``, with tensors as ``device`` tensors.

        ``device="meta"`` gives data-less stand-ins of the right shape and dtype (for key matching); ``"cpu"`` reads
        values. A state dict keeps its ``_metadata`` (BatchNorm versions etc.), as torch relies on it.
        """
        path = self.resolve_entry(entry)
        return self._materialize(self.get(path), path, device, 0, {})

    def _materialize(self, obj, path, device, depth, memo):
        """``memo``: an object shared in the file is made once and shared in the result, as torch.load does."""
        if depth > MAX_DEPTH:
            raise CorruptFileError(f"{self.path}: nesting deeper than {MAX_DEPTH} levels")
        if not isinstance(obj, (TensorRecord, dict, list, tuple)):
            return obj
        done = memo.get(id(obj))
        if done is not None:
            return done[1]
        if isinstance(obj, TensorRecord):
            if device == "meta":
                t = self._meta_tensor(obj, path)
            else:
                t = read_record(obj, file_label=self.path)
            out = torch.nn.Parameter(t, requires_grad=obj.requires_grad) if obj.is_parameter else t
        elif isinstance(obj, dict):
            out = OrderedDict() if isinstance(obj, OrderedDict) else {}
            memo[id(obj)] = (obj, out)
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

    def _meta_tensor(self, rec: TensorRecord, path) -> torch.Tensor:
        from .bytesource import TORCH_DTYPES
        where = "/".join(path) or "/"
        dt = TORCH_DTYPES.get(rec.dtype or "")
        if dt is None:
            raise CorruptFileError(f"{self.path}: cannot represent dtype {rec.dtype!r} at {where}")
        try:
            if len(rec.stride) == len(rec.shape) and all(type(s) is int and s >= 0 for s in rec.stride):
                return torch.empty_strided(rec.shape, rec.stride, dtype=dt, device="meta")
            return torch.empty(rec.shape, dtype=dt, device="meta")
        except (RuntimeError, TypeError, ValueError, OverflowError) as e:
            raise CorruptFileError(f"{self.path}: the tensor at {where} has an impossible shape {list(rec.shape)[:8]} "
                                   f"({type(e).__name__}); the file is corrupt") from None

    def close(self) -> None:
        """Nothing stays open between reads; kept for symmetry with other sides."""

    def __repr__(self):
        return f"Checkpoint({self.path!r}, {self.format}, {len(self.entries)} tensors)"


class _KeyPaths(Sequence):
    """The entry paths of a flat table, ``(key,)``, made when asked for (no 50,000 tuples up front)."""

    __slots__ = ("_keys",)

    def __init__(self, keys):
        self._keys = keys

    def __len__(self):
        return len(self._keys)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [(k,) for k in self._keys[i]]
        return (self._keys[i],)

    def __iter__(self):
        return ((k,) for k in self._keys)


class _KeysOnly:
    """Enough of a mapping for :func:`_score`: its keys."""

    __slots__ = ("_keys",)

    def __init__(self, keys):
        self._keys = keys

    def keys(self):
        return self._keys
