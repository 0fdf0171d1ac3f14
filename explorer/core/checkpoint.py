"""A checkpoint as the explorer sees it: the loaded object (tensors as records, foreign objects inert), every tensor's
path, the candidate state dicts ranked best first, and on-demand access to values."""
from __future__ import annotations

import re
from collections import OrderedDict
from typing import Any, Iterator

import torch

from ..errors import CorruptFileError, KeyNotFoundError
from .bytesource import read_record
from .records import EntryPath, Location, ModuleInfo, StateDictRef, TensorInfo
from .safe_pickle import Inert, StorageRef, TensorRecord, is_module_state

MAX_DEPTH = 400  # deeper nesting than this is not a checkpoint but a recursion bomb


class RecoveredModule(OrderedDict):
    """The state dict of a pickled ``nn.Module`` (``torch.save(model)``), rebuilt from the pickle's structure alone.

    Keys are state-dict keys (``"0.weight"``), values tensor records; ``modules`` lists every submodule's class.
    Non-persistent buffers are left out, as ``state_dict()`` would.
    """

    def __init__(self, class_name: str = ""):
        super().__init__()
        self.class_name = class_name
        self.modules: dict[str, ModuleInfo] = {}
        self.kinds: dict[str, str] = {}
        self.non_persistent: dict[str, TensorRecord] = {}


def _recover_module(obj: Inert) -> RecoveredModule:
    out = RecoveredModule(obj.global_name)
    stack: list[tuple[str, Any]] = [("", obj)]
    while stack:
        prefix, mod = stack.pop()
        state = mod.state_dict() if isinstance(mod, Inert) else None
        name = prefix[:-1]
        qual = mod.global_name if isinstance(mod, Inert) else type(mod).__name__
        out.modules[name] = ModuleInfo(name, qual.rsplit(".", 1)[-1], qual)
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


def _normalize(obj: Any, depth: int = 0) -> Any:
    """Replace pickled modules by their recovered state dicts, everywhere in the object."""
    if depth > MAX_DEPTH:
        raise CorruptFileError("nesting deeper than %d levels" % MAX_DEPTH)
    if is_module_state(obj):
        return _recover_module(obj)
    if isinstance(obj, dict):
        for k, v in list(obj.items()):
            if isinstance(v, (dict, list, Inert)):
                obj[k] = _normalize(v, depth + 1)
        return obj
    if isinstance(obj, list):
        for i, v in enumerate(obj):
            if isinstance(v, (dict, list, tuple, Inert)):
                obj[i] = _normalize(v, depth + 1)
        return obj
    if isinstance(obj, tuple):
        if any(isinstance(v, (dict, list, tuple, Inert)) for v in obj):
            return tuple(_normalize(v, depth + 1) for v in obj)
        return obj
    if isinstance(obj, Inert):
        st = obj.state_dict()
        if isinstance(st, dict):
            _normalize(st, depth + 1)
            object.__setattr__(obj, "_state", st)
    return obj


def children(obj: Any) -> Iterator[tuple[str, Any]]:
    """The named children of a container in the loaded object (list indices as strings)."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield str(k), v
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


_GOOD_NAMES = {"state_dict": 3.0, "model_state_dict": 3.0, "model_state": 2.5, "model": 2.5, "module": 2.0,
               "net": 2.0, "network": 2.0, "weights": 2.0, "params": 1.5, "ema": 1.2, "model_ema": 1.2,
               "state_dict_ema": 1.2, "generator": 1.5, "student": 1.3, "teacher": 1.1}
_BAD_PARTS = re.compile(r"optim|optimizer|scheduler|scaler|lr_|loops|callbacks", re.I)
_OPTIMIZER_KEYS = {"exp_avg", "exp_avg_sq", "momentum_buffer", "step", "max_exp_avg_sq", "square_avg", "acc_delta",
                   "sum", "mu", "eta", "ax", "prev", "step_size"}


def _score(path: EntryPath, mapping: dict, n_tensors: int) -> tuple[float, str]:
    score = float(n_tensors)
    reasons = []
    keys = [str(k) for k in mapping.keys()]
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


class Checkpoint:
    """What a reader found in a file or folder. Build with a reader (``explorer.core.loaders.open_checkpoint``)."""

    kind = "checkpoint"

    def __init__(self, path: str, fmt: str, root: Any, references: list[str] | None = None,
                 metadata: dict | None = None):
        self.path = str(path)
        self.format = fmt
        self.root = _normalize(root)
        self.references = list(references or [])
        self.metadata = dict(metadata or {})   # format-level metadata (safetensors __metadata__, ...)
        self._records: dict[EntryPath, TensorRecord] = {}
        self.entries: list[TensorInfo] = []
        self.state_dicts: list[StateDictRef] = []
        self._walk()

    # ---- structure ---------------------------------------------------------------------------------------------
    def _walk(self) -> None:
        candidates: list[tuple[EntryPath, dict, int]] = []
        seen: set[int] = set()
        stack: list[tuple[EntryPath, Any]] = [((), self.root)]
        while stack:
            path, obj = stack.pop()
            if len(path) > MAX_DEPTH:
                raise CorruptFileError(f"{self.path}: nesting deeper than {MAX_DEPTH} levels")
            if isinstance(obj, TensorRecord):
                self._records[path] = obj
                self.entries.append(self._info(path, obj))
                continue
            if id(obj) in seen or not isinstance(obj, (dict, list, tuple, Inert)):
                continue
            seen.add(id(obj))
            kids = list(children(obj))
            if isinstance(obj, dict):
                n = sum(isinstance(v, TensorRecord) for _, v in kids)
                if n:
                    candidates.append((path, obj, n))
            for key, value in reversed(kids):
                stack.append((path + (key,), value))
        ranked = []
        for path, mapping, n in candidates:
            score, reason = _score(path, mapping, n)
            ranked.append(StateDictRef(path, n, score, reason))
        ranked.sort(key=lambda r: -r.score)  # stable: file order breaks ties
        self.state_dicts = ranked

    def _info(self, path: EntryPath, rec: TensorRecord) -> TensorInfo:
        ref = rec.storage
        kind = "parameter" if rec.is_parameter else "tensor"
        parent = self._parent_of(path)
        if isinstance(parent, RecoveredModule):
            kind = parent.kinds.get(path[-1], kind)
        if isinstance(ref, StorageRef):
            loc = Location(file=self.path, record=f"data/{ref.key}", storage_nbytes=ref.nbytes,
                           storage_offset=rec.storage_offset, stride=rec.stride, storage_key=ref.key)
            device = ref.device
        else:
            loc, device = None, "?"
        return TensorInfo(path, rec.shape, rec.dtype or "unknown", rec.nbytes, loc, device, kind, rec.requires_grad)

    def _parent_of(self, path: EntryPath):
        try:
            return self.get(path[:-1])
        except KeyNotFoundError:
            return None

    @property
    def default_state_dict(self) -> EntryPath | None:
        return self.state_dicts[0].path if self.state_dicts else None

    @property
    def label(self) -> str:
        return self.path

    def get(self, path: EntryPath) -> Any:
        """The object at ``path`` in the loaded object (tensors as records, foreign objects inert)."""
        obj = self.root
        for part in path:
            for key, value in children(obj):
                if key == part:
                    obj = value
                    break
            else:
                raise KeyNotFoundError(f"{self.path}: no entry {'/'.join(path)!r}")
        return obj

    def resolve_entry(self, entry: str | EntryPath | None) -> EntryPath:
        """``None`` -> the best state dict; ``"/"`` -> the root; ``"a/b"`` -> ``("a", "b")``."""
        if entry is None:
            if self.default_state_dict is None:
                raise KeyNotFoundError(f"{self.path}: holds no mapping of tensors to use as a state dict")
            return self.default_state_dict
        if isinstance(entry, tuple):
            return entry
        path = tuple(p for p in entry.strip("/").split("/") if p) if entry.strip("/") else ()
        self.get(path)
        return path

    def state_dict_infos(self, entry: str | EntryPath | None = None) -> "OrderedDict[str, TensorInfo]":
        """key -> TensorInfo for the tensors of one state dict (default: the best one), in file order."""
        path = self.resolve_entry(entry)
        n = len(path)
        out: OrderedDict[str, TensorInfo] = OrderedDict()
        for info in self.entries:
            if len(info.path) == n + 1 and info.path[:n] == path:
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
        rec = self._records.get(tuple(path))
        if rec is None:
            raise KeyNotFoundError(f"{self.path}: no tensor at {'/'.join(path)!r}")
        return rec

    def read(self, path: EntryPath) -> torch.Tensor:
        """One tensor's values, read on demand (memory-mapped where the format allows)."""
        return read_record(self.record(path), file_label=self.path)

    def read_key(self, key: str, entry: str | EntryPath | None = None) -> torch.Tensor:
        return self.read(self.resolve_entry(entry) + (key,))

    def load_object(self, entry: str | EntryPath | None = None, *, device: str = "meta") -> Any:
        """What ``torch.load`` would return at ``entry``, with tensors as ``device`` tensors.

        ``device="meta"`` gives data-less stand-ins of the right shape and dtype (for key matching); ``"cpu"`` reads
        values. A state dict keeps its ``_metadata`` (BatchNorm versions etc.), as torch relies on it.
        """
        path = self.resolve_entry(entry)
        return self._materialize(self.get(path), path, device, 0)

    def _materialize(self, obj, path, device, depth):
        if depth > MAX_DEPTH:
            raise CorruptFileError(f"{self.path}: nesting deeper than {MAX_DEPTH} levels")
        if isinstance(obj, TensorRecord):
            if device == "meta":
                from .bytesource import TORCH_DTYPES
                dt = TORCH_DTYPES.get(obj.dtype or "")
                if dt is None:
                    raise CorruptFileError(f"{self.path}: cannot represent dtype {obj.dtype!r} at {'/'.join(path)}")
                t = torch.empty_strided(obj.shape, obj.stride, dtype=dt, device="meta") \
                    if len(obj.stride) == len(obj.shape) else torch.empty(obj.shape, dtype=dt, device="meta")
            else:
                t = self.read(path)
            return torch.nn.Parameter(t, requires_grad=obj.requires_grad) if obj.is_parameter else t
        if isinstance(obj, dict):
            out = OrderedDict() if isinstance(obj, OrderedDict) else {}
            for k, v in obj.items():
                out[k] = self._materialize(v, path + (str(k),), device, depth + 1)
            meta = getattr(obj, "_metadata", None)
            if meta is not None:
                if not isinstance(out, OrderedDict):
                    out = OrderedDict(out)
                out._metadata = meta  # type: ignore[attr-defined]
            return out
        if isinstance(obj, list):
            return [self._materialize(v, path + (str(i),), device, depth + 1) for i, v in enumerate(obj)]
        if isinstance(obj, tuple):
            return tuple(self._materialize(v, path + (str(i),), device, depth + 1) for i, v in enumerate(obj))
        return obj

    def close(self) -> None:
        """Nothing stays open between reads; kept for symmetry with other sides."""

    def __repr__(self):
        return f"Checkpoint({self.path!r}, {self.format}, {len(self.entries)} tensors)"
