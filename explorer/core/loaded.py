"""The loaded object as the safe unpickler gives it, made ready to list: pickled modules replaced by their recovered
state dicts, children named as paths name them, and fast views of the mappings a checkpoint holds."""
from __future__ import annotations

import sys
from collections import OrderedDict
from typing import Any, Iterator

from ..errors import CorruptFileError
from .records import ModuleInfo
from .safe_pickle.inert import Inert, is_module_state
from .safe_pickle.numpy_values import NumpyRecord, numpy_record
from .safe_pickle.records import QuantizedRecord, StorageRef, TensorRecord

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
        self._versions: OrderedDict[str, dict] | None = None

    @property
    def _metadata(self) -> OrderedDict[str, dict]:
        """What ``module.state_dict()`` would attach: per module, ``{"version": cls._version}``. Asked for only where
        the state dict is handed to torch; torch's classes give their versions, so torch is imported here (listing
        the file does not need it)."""
        if self._versions is None:
            import torch  # noqa: F401  (torch.nn's classes are in sys.modules from here on)
            self._versions = OrderedDict((name, {"version": _module_version(info.qualname)})
                                         for name, info in self.modules.items())
        return self._versions

    @_metadata.setter
    def _metadata(self, value) -> None:   # as the plain attribute it stands for
        self._versions = value


# mappings iterated through dict's own iterator (see keys_of)
_PLAIN_DICTS = (dict, OrderedDict, RecoveredModule)


def _module_version(qualname: str) -> int:
    """``_version`` of a module class, known without importing anything more: torch's own classes are already imported
    (torch is, see ``RecoveredModule._metadata``); any other class is looked up only if it is already in
    ``sys.modules``, else ``nn.Module``'s 1."""
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


def keys_of(obj: dict):
    """``obj.keys()``, fast. An ``OrderedDict`` iterates ~10x slower than a dict (a hash lookup per item: 0.4 s for
    10**6 keys); the mappings a checkpoint holds are built by item assignment only (the safe unpickler and our
    readers; nothing calls ``move_to_end``), so the dict's own order is theirs and the dict's iterator is used."""
    return dict.keys(obj) if type(obj) in _PLAIN_DICTS else obj.keys()


def values_of(obj: dict):
    """``obj.values()``, fast (see :func:`keys_of`)."""
    return dict.values(obj) if type(obj) in _PLAIN_DICTS else obj.values()


def items_of(obj: dict):
    """``obj.items()``, fast (see :func:`keys_of`)."""
    return dict.items(obj) if type(obj) in _PLAIN_DICTS else obj.items()


def all_records(values) -> bool:
    """Are all ``values`` tensor records (and is there at least one)? By their distinct types, at C speed."""
    types = set(map(type, values))
    return bool(types) and all(issubclass(t, TensorRecord) for t in types)


def all_tensor_records(values) -> bool:
    """Are all ``values`` records of plain tensors (not numpy arrays, which torch.load gives as arrays, nor quantized
    tensors, which are rebuilt with their values)?"""
    types = set(map(type, values))
    return bool(types) and NumpyRecord not in types and QuantizedRecord not in types and \
        all(issubclass(t, TensorRecord) for t in types)


def normalize(obj: Any, depth: int = 0, memo: dict | None = None) -> Any:
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
            normalize(st, depth + 1, memo)
            object.__setattr__(obj, "_state", st)
        return obj
    if isinstance(obj, dict):
        if not _any_container(values_of(obj)):  # a flat state dict: nothing to replace (one pass in C)
            return obj
        for k, v in items_of(obj):
            if isinstance(v, (dict, list, tuple, Inert)):
                new = normalize(v, depth + 1, memo)
                if new is not v:
                    obj[k] = new  # replacing a value while iterating is fine: the key set does not change
        return obj
    if isinstance(obj, list):
        if not _any_container(obj):
            return obj
        for i, v in enumerate(obj):
            if isinstance(v, (dict, list, tuple, Inert)):
                obj[i] = normalize(v, depth + 1, memo)
        return obj
    if isinstance(obj, tuple):
        if any(isinstance(v, (dict, list, tuple, Inert)) for v in obj):
            new = tuple(normalize(v, depth + 1, memo) for v in obj)
            if any(a is not b for a, b in zip(new, obj)):
                memo[key] = new
                return new
        return obj
    return obj


def children(obj: Any) -> Iterator[tuple[str, Any]]:
    """The named children of a container in the loaded object (list indices as strings)."""
    if isinstance(obj, dict):
        for k, v in items_of(obj):
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


def child(obj: Any, part: str) -> Any:
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

