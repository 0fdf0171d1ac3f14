"""Predict what ``model.load_state_dict(checkpoint)`` would do, without doing it to the model.

How it stays exact: torch itself does the key matching. The model is deep-copied into a *stand-in* whose parameters and
buffers are data-less meta tensors of the same shape and dtype (tensors of at most ``_SMALL`` elements, such as
BatchNorm's ``num_batches_tracked``, are real clones, because torch's own code looks at their device). Every hook,
``_load_from_state_dict`` override (BatchNorm versions, InstanceNorm, weight-norm renames), the checkpoint's
``_metadata``, ``strict`` and ``assign`` then run for real on the stand-in. The stand-in tensors are instances of
small ``Parameter``/``Tensor`` subclasses whose ``copy_`` records (destination, source) into the running pass instead of
copying, and whose common in-place methods record that a hook changed them.

Two passes:

* the structural pass gives torch a meta-tensor checkpoint: raise or not, exception type and text, missing and
  unexpected keys in torch's order, which tensor receives which checkpoint tensor -- no tensor bytes are read;
* the value pass (``compare_values=True``) gives torch the checkpoint's tensors as read-only memory maps; each
  recorded ``copy_`` is performed into a temporary tensor of the model's dtype (so torch's own casting rules and
  copy errors apply) and compared bit for bit with the model's current value, then dropped. One tensor at a time: the
  model's data and the checkpoint's data are never copied as a whole.

The user's model is never written: the stand-in shares no tensor with it, and afterwards every parameter and buffer
slot of the model is checked (object identity and version counter) to prove it.

Known limits (each reported, never silently wrong where it can be detected):

* a hook's closure (and default arguments) see the stand-in's modules and tensors (``module is model.layer`` holds),
  and ``param.data`` of a stand-in records like the stand-in; a hook that reaches the *real* model another way (a
  global, a container) runs against it: the snapshot check reports it in ``notes``;
* a hook that edits a checkpoint tensor in place is seen through version counters (not through ``.data``): the
  values compared are the edited ones;
* tensor subclasses the file names are simulated as plain tensors (their code never runs): the notes say the
  prediction cannot be exact;
* a hook that changes a model tensor in place (``zero_``, ``mul_`` ...) other than by ``copy_``: the key is reported
  changed with ``certain=False``;
* hooks that read the *model's* values see data-less stand-ins (the checkpoint's values are real in the values pass);
* copy errors that depend on the destination's memory layout (overlapping, expanded parameters) are not reproduced;
* torch's own matching is quadratic in the number of children of one module (a flat ``Sequential`` of 1,000 layers):
  the simulation pays it as the real load does.
"""
from __future__ import annotations

import copy
import gc
import json
import os
import re
import threading
import types
import warnings
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from itertools import chain, compress, repeat
from operator import attrgetter, itemgetter, ne
from typing import Any, Callable

import numpy as np
import torch
import torch.nn as nn

from ..errors import Cancelled, KeyNotFoundError, SimulationError
from .records import (DTYPE_CAST, MATCHED, MISSING, NOT_LOADED, PlainStateDict, RUNNING_STAT, RUNNING_STAT_NAMES,
                      SHAPE_MISMATCH, UNEXPECTED, CHANGED)
from .meta import meta_like
from .records import copy_metadata
from .records import dtype_name as _dtype_name
from .remap import within_one_edit
from .safe_pickle.records import StorageRef

_DTYPE_NAMES: dict = {}


def _all_str(keys) -> bool:
    """Every item is exactly a ``str`` (one C pass)."""
    return set(map(type, keys)) <= {str}


def dtype_name(dtype) -> str:
    """``torch.float32`` -> ``"float32"`` (cached: ``str(dtype)`` is slow enough to show on 2,000 tensors)."""
    name = _DTYPE_NAMES.get(dtype)
    if name is None:
        name = _DTYPE_NAMES[dtype] = _dtype_name(dtype)
    return name

_EXTRA_STATE_SUFFIX = "_extra_state"
_ABSENT = object()
_SHAPE_OF = attrgetter("shape")
_VERSION_OF = attrgetter("_version")
_is_lazy = torch.nn.parameter.is_lazy
_LAZY = torch.nn.parameter.UninitializedTensorMixin
_SMALL = 1  # stand-in tensors with at most this many elements are real clones (torch inspects their device)
_FINAL_PREFIX = "Error(s) in loading state_dict for "
_NOT_A_MAPPING = "Expected state_dict to be dict-like, got "
_SCRATCH_MAX = 1 << 31  # tensors larger than this get their own temporary


# ---- the report -------------------------------------------------------------------------------------------------

@dataclass
class KeyReport:
    key: str
    kind: str                                   # "parameter" | "buffer" | "extra_state"
    status: str                                 # one of the status constants of records.py
    changed: bool = False                       # value, dtype or shape after the load differs from before
    dtype_cast: list[str] | None = None         # [from, to] when copy_ converts
    running_stat: bool = False                  # a norm running statistic the checkpoint overwrites
    shape_model: tuple[int, ...] | None = None
    shape_checkpoint: tuple[int, ...] | None = None
    dtype_model: str | None = None
    dtype_checkpoint: str | None = None
    source_key: str | None = None               # the checkpoint key the value comes from (after hooks' renames)
    explanation: str = ""
    certain: bool = True                        # False when ``changed`` could not be computed (assumed True)
    before: dict | None = None                  # running statistics: summary before and after
    after: dict | None = None
    no_data: bool = False                       # the checkpoint's tensor has no data (saved from the meta device)

    def to_json(self) -> dict:
        return {"key": self.key, "kind": self.kind, "status": self.status, "changed": bool(self.changed),
                "dtype_cast": list(self.dtype_cast) if self.dtype_cast else None,
                "running_stat": bool(self.running_stat)}


class KeyTable(Mapping):
    """``LoadReport.keys``: key -> :class:`KeyReport`, in report order. The reports of unexpected checkpoint keys are
    made the first time they are asked for (10**6 unexpected keys would otherwise cost seconds and a gigabyte for
    objects that a text or JSON answer writes in bulk); they are the same objects either way.

    Kept as three parts in order: ``_head`` (reports made at once), ``_block`` (the unexpected keys, reports made
    when asked for, in ``_made``) and ``_tail`` (reports added afterwards)."""

    def __init__(self, items=()):
        self._head: dict = dict(items)
        self._block: list = []
        self._index: dict | None = None   # key -> None, for the block (built when first needed)
        self._made: dict = {}
        self._tail: dict = {}
        self._ctx: "_UnexpectedContext | None" = None

    def _in_block(self, key) -> bool:
        if not self._block:
            return False
        if self._index is None:
            self._index = dict.fromkeys(self._block)
        return key in self._index

    def __getitem__(self, key) -> KeyReport:
        r = self._head.get(key)
        if r is not None or key in self._head:
            return r
        r = self._made.get(key)
        if r is not None:
            return r
        if self._in_block(key):
            r = self._made[key] = self._ctx.report(key)
            return r
        return self._tail[key]

    def __setitem__(self, key, value: KeyReport) -> None:
        if key in self._head:
            self._head[key] = value
        elif self._in_block(key):
            self._made[key] = value
        elif self._block or self._tail:
            self._tail[key] = value
        else:
            self._head[key] = value

    def __delitem__(self, key) -> None:
        if key in self._head:
            del self._head[key]
        elif self._in_block(key):
            self._block.remove(key)
            del self._index[key]   # type: ignore[index]
            self._made.pop(key, None)
        else:
            del self._tail[key]

    def __contains__(self, key) -> bool:
        try:
            return key in self._head or key in self._tail or self._in_block(key)
        except TypeError:
            return False

    def __iter__(self):
        return chain(self._head, self._block, self._tail)

    def __len__(self) -> int:
        return len(self._head) + len(self._block) + len(self._tail)

    def __repr__(self) -> str:
        return f"<KeyTable of {len(self)} keys>"

    def _add_unexpected(self, keys: list, ctx: "_UnexpectedContext") -> None:
        """``keys``: unique, none of them in the table yet."""
        self._ctx = ctx
        self._block = keys
        self._index = None

    def made_items(self):
        """(key, report) of every report made so far: all but unexpected keys not asked for yet (whose report would
        be ``status=UNEXPECTED``, ``changed=False``, no source, no dtype cast)."""
        return chain(self._head.items(), self._made.items(), self._tail.items())

    def runs(self):
        """The table in order as runs: ``(True, [key, ...])`` for unexpected keys whose report is not made,
        ``(False, [(key, report), ...])`` for the others."""
        if self._head:
            yield False, list(self._head.items())
        if self._block:
            made = self._made
            if not made:
                yield True, self._block
            else:
                run: list = []
                lazy = True
                for k in self._block:
                    r = made.get(k)
                    if run and (r is None) != lazy:
                        yield lazy, run
                        run = []
                    lazy = r is None
                    run.append(k if lazy else (k, r))
                if run:
                    yield lazy, run
        if self._tail:
            yield False, list(self._tail.items())


def _made_items(keys):
    return keys.made_items() if isinstance(keys, KeyTable) else keys.items()


@dataclass
class LoadReport:
    model: str = ""
    checkpoint: str = ""
    entry: list[str] = field(default_factory=list)
    strict: bool = True
    assign: bool = False
    raises: bool = False
    error_type: str | None = None
    error_message: str | None = None
    missing_keys: list[str] = field(default_factory=list)
    unexpected_keys: list[str] = field(default_factory=list)
    keys: "KeyTable" = field(default_factory=KeyTable)                # key -> KeyReport, in order
    changed_keys: list[str] = field(default_factory=list)
    changed_buffers: list[str] = field(default_factory=list)
    running_stats: dict[str, dict] = field(default_factory=dict)   # key -> {"before": {...}, "after": {...}}
    suggestions: list = field(default_factory=list)                # remap.Suggestion
    explanation: str = ""                                          # the whole load, in a few sentences
    notes: list[str] = field(default_factory=list)                 # other things worth knowing
    aborted: bool = False              # an exception stopped the load part way (hook, set_extra_state, ...)
    values_compared: bool = False
    ignored_keys: list[str] = field(default_factory=list)          # checkpoint keys torch drops without a word
    mismatched_keys: list[str] = field(default_factory=list)       # size mismatches (torch raises on them)

    @property
    def loaded_keys(self) -> list[str]:
        return [k for k, r in _made_items(self.keys) if r.source_key is not None
                and r.status not in (MISSING, UNEXPECTED)]

    def _keys_json(self) -> list[dict]:
        keys = self.keys
        if not isinstance(keys, KeyTable):
            return [r.to_json() for r in keys.values()]
        out: list[dict] = []
        for lazy, run in keys.runs():
            if lazy:
                out += map(_unexpected_dict, run, keys._ctx.kinds(run))
            else:
                out += [r.to_json() for _, r in run]
        return out

    def to_json(self) -> dict:
        return {
            "model": self.model,
            "checkpoint": self.checkpoint,
            "entry": list(self.entry),
            "strict": bool(self.strict),
            "assign": bool(self.assign),
            "raises": bool(self.raises),
            "error_type": self.error_type,
            "error_message": self.error_message,
            "missing_keys": list(self.missing_keys),
            "unexpected_keys": list(self.unexpected_keys),
            "keys": self._keys_json(),
            "changed_keys": list(self.changed_keys),
            "changed_buffers": list(self.changed_buffers),
            "suggestions": [s.to_json() if hasattr(s, "to_json") else s for s in self.suggestions],
            "warnings": list(self.notes),   # what the text prints as "note: ..."
        }

    def dumps(self) -> str:
        """``json.dumps(self.to_json())``, byte for byte, with the per-key part written in bulk."""
        keys = self.keys
        if not isinstance(keys, KeyTable) or keys._ctx is None:
            return json.dumps(self.to_json())
        was_enabled = gc.isenabled()
        gc.disable()  # see _write_unexpected
        try:
            return self._dumps_bulk(keys)
        finally:
            if was_enabled:
                gc.enable()

    def _dumps_bulk(self, keys: "KeyTable") -> str:
        d = self.to_json_without_keys()
        names = list(d)
        at = names.index("keys")
        head = json.dumps({k: d[k] for k in names[:at]})
        tail = json.dumps({k: d[k] for k in names[at + 1:]})
        parts = []
        for lazy, run in keys.runs():
            if lazy:
                parts.append(_unexpected_json(run, keys._ctx.kinds))
            else:
                parts.append(json.dumps([r.to_json() for _, r in run])[1:-1])
        body = ", ".join(p for p in parts if p)
        return head[:-1] + (", " if at else "") + '"keys": [' + body + "]" + (", " + tail[1:] if at + 1 < len(names)
                                                                           else "}")

    def to_json_without_keys(self) -> dict:
        keys = self.keys
        try:
            self.keys = KeyTable()
            d = self.to_json()
        finally:
            self.keys = keys
        return d


_JSON_STR = json.encoder.encode_basestring_ascii  # what json.dumps uses for str with its defaults (C when available)
# the JSON of an unexpected key's report not made yet: KeyReport.to_json itself, with the key and kind put in
_UNEXPECTED_JSON = KeyReport(key="", kind="", status=UNEXPECTED).to_json()


def _unexpected_dict(key, kind: str) -> dict:
    return dict(_UNEXPECTED_JSON, key=key, kind=kind)


def _unexpected_json(keys: list, kind_of) -> str:
    """The JSON of the reports of these unexpected keys, joined by ", " (as ``json.dumps`` writes a list's items)."""
    kinds = kind_of(keys)
    if keys and _all_str(keys) and set(kinds) == {"parameter"}:   # one text around each key
        marker = "\x00key\x00"
        pre, post = json.dumps(_unexpected_dict(marker, "parameter")).split(_JSON_STR(marker))
        return pre + (post + ", " + pre).join(map(_JSON_STR, keys)) + post
    return ", ".join(map(json.dumps, map(_unexpected_dict, keys, kinds)))


# ---- inputs -----------------------------------------------------------------------------------------------------

def _model_of(model_side) -> tuple[nn.Module, str]:
    if isinstance(model_side, nn.Module):
        return model_side, type(model_side).__name__
    model = getattr(model_side, "model", None)
    if isinstance(model, nn.Module):
        return model, str(getattr(model_side, "label", "") or type(model).__name__)
    raise SimulationError(f"expected a model (nn.Module or ModelSide), got {type(model_side).__name__}")


def _map_tensors(sd: Mapping, fn) -> Any:
    """A copy of a state dict with ``fn`` applied to every tensor (Parameters stay Parameters) and its own
    ``_metadata``."""
    out = OrderedDict()
    for k, v in sd.items():
        if isinstance(v, torch.Tensor):
            t = fn(v)
            out[k] = nn.Parameter(t, requires_grad=v.requires_grad) if isinstance(v, nn.Parameter) else t
        else:
            out[k] = v
    meta = getattr(sd, "_metadata", None)
    if meta is not None:
        out._metadata = copy_metadata(meta)  # type: ignore[attr-defined]
    return out


def _as_meta_dict(sd: Mapping) -> Any:
    """A copy of a state dict with every tensor replaced by a meta tensor."""
    return _map_tensors(sd, meta_like)


def _own_metadata(obj):
    """torch writes into the ``_metadata`` it is given (``assign=True`` adds ``assign_to_params_buffers`` to every
    module's entry): hand it a private copy, so one simulation never changes the next one, nor the checkpoint."""
    meta = getattr(obj, "_metadata", None)
    if meta is not None and isinstance(obj, Mapping):
        try:
            obj._metadata = copy_metadata(meta)
        except Exception:
            pass
    return obj


def _view_dict(sd: Mapping) -> Any:
    """The same tensors as detached views (no bytes copied), so nothing torch does can touch the caller's objects."""
    return _map_tensors(sd, lambda v: v.detach())


def _whole_module_at(side, path) -> str | None:
    """The class of the pickled ``nn.Module`` (``torch.save(model)``) at ``path`` of a checkpoint, if it is one."""
    from .checkpoint import RecoveredModule
    try:
        obj = side.get(path)
    except Exception:
        return None
    return (obj.class_name or "?") if isinstance(obj, RecoveredModule) else None


def _object_of_class(qualname: str):
    """An object whose ``type()`` prints as the class ``qualname`` names (what torch puts in its messages); it is
    nothing else: no state, no methods of that class."""
    module, _, name = qualname.rpartition(".")
    cls = type(name or "object", (), {"__module__": module or "builtins", "__qualname__": name or "object"})
    return cls()


class _CheckpointInput:
    """The checkpoint side, able to hand torch the object at ``entry`` with meta tensors or with real values."""

    def __init__(self, side, entry):
        self.side = side
        self.entry_path: tuple[str, ...] = ()
        self.record_of: Callable[[str], Any] | None = None
        self._plain: Mapping | None = None
        self.whole_module: str | None = None   # the entry is a pickled nn.Module of this class
        self.opaque = False                    # torch is handed that module itself (an explicit entry)
        if isinstance(side, Mapping):
            self.label = "<dict>"
            self._meta = lambda: _as_meta_dict(side)
            self._real = lambda: _view_dict(side)
        elif isinstance(side, nn.Module) or isinstance(getattr(side, "model", None), nn.Module):
            model, self.label = _model_of(side)
            self._meta = lambda: _as_meta_dict(model.state_dict())
            self._real = lambda: _view_dict(model.state_dict())
        elif hasattr(side, "load_object") and hasattr(side, "resolve_entry"):
            self.label = str(getattr(side, "path", ""))
            try:
                self.entry_path = tuple(side.resolve_entry(entry))
            except KeyNotFoundError:
                # no mapping holds a tensor: an empty (or tensor-less) dict at the root is still a state dict
                if entry is not None or not isinstance(getattr(side, "root", None), Mapping):
                    raise
                self.entry_path = ()
            # load_object hands out a private _metadata each time
            self._meta = lambda: side.load_object(self.entry_path, device="meta")
            self._real = lambda: side.load_object(self.entry_path, device="cpu")
            self.whole_module = _whole_module_at(side, self.entry_path)
            if self.whole_module is not None and entry is not None:
                # the entry names a whole pickled model: torch would be handed that object, not its state dict
                opaque = _object_of_class(self.whole_module)
                self._meta = self._real = lambda: opaque
                self.opaque = True
            if hasattr(side, "record") and hasattr(side, "read"):
                self.record_of = lambda key: side.record(self.entry_path + (key,))
                self.read_key = lambda key: side.read(self.entry_path + (key,))
        else:
            raise SimulationError(f"expected a checkpoint, a model or a dict, got {type(side).__name__}")

    def no_data(self, key) -> bool:
        """Does the checkpoint hold no values for ``key`` (a tensor saved from the meta device)?"""
        try:
            if self.record_of is not None:
                return not isinstance(self.record_of(key).storage, StorageRef)
            if self._plain is None:
                side = self.side
                self._plain = side if isinstance(side, Mapping) else _model_of(side)[0].state_dict()
            v = self._plain.get(key)
            return isinstance(v, torch.Tensor) and v.is_meta
        except Exception:
            return False

    def meta(self, read: tuple[set, tuple] | None = None):
        """The object handed to torch, on the meta device. ``read``: the keys (and key prefixes) whose values the
        model's code can read (see :meth:`_ModelIndex.read_keys`); the others may share one tensor per layout."""
        shared = getattr(self.side, "meta_state_dict", None) if read is not None and not self.opaque else None
        if shared is not None:
            out = shared(self.entry_path, *read)
            if out is not None:
                return out
        return self._meta()

    def real(self):
        return self._real()


# ---- the stand-in -----------------------------------------------------------------------------------------------

_TENSOR_DATA = torch._C.TensorBase.data   # the descriptor of ``Tensor.data``
_LOCAL = threading.local()   # the recorder of the pass running on this thread
_INPLACE_NAMES = ("__setitem__", "add_", "sub_", "mul_", "div_", "fill_", "zero_", "clamp_", "normal_", "uniform_",
                  "copysign_", "abs_", "neg_", "t_", "transpose_", "resize_", "set_", "requires_grad_", "lerp_",
                  "addcmul_", "addcdiv_", "exp_", "log_", "sqrt_", "pow_", "masked_fill_", "index_copy_",
                  "index_fill_", "scatter_", "bernoulli_", "kaiming_uniform_", "trunc_normal_", "fill_diagonal_")


class _StandInMixin:
    """Stand-in tensors record ``copy_`` (and in-place changes) into the running pass's recorder instead of
    performing them. A method override costs nothing on other tensors (a ``TorchFunctionMode`` would see every
    torch call of the load and doubles its time)."""

    __slots__ = ()

    def copy_(self, src, non_blocking=False):
        rec = getattr(_LOCAL, "recorder", None)
        if rec is not None and id(self) in rec.standin.tracked:
            return rec._on_copy(self, src)
        return torch.Tensor.copy_(self, src, non_blocking)

    @property
    def data(self):
        rec = getattr(_LOCAL, "recorder", None)
        if rec is not None and id(self) in rec.standin.tracked and id(self) not in rec.standin.alias_of:
            return rec.standin.alias(self)
        return _TENSOR_DATA.__get__(self)

    @data.setter
    def data(self, value):
        _TENSOR_DATA.__set__(self, value)


def _inplace(name):
    base = getattr(torch.Tensor, name, None)
    if base is None:
        return None

    def method(self, *args, **kwargs):
        rec = getattr(_LOCAL, "recorder", None)
        if rec is not None and id(self) in rec.standin.tracked and name != "requires_grad_":
            target = rec.standin.alias_of.get(id(self), self)
            rec.inplace.setdefault(id(target), []).append(name)
        return base(self, *args, **kwargs)
    method.__name__ = name
    return method


for _name in _INPLACE_NAMES:
    _m = _inplace(_name)
    if _m is not None:
        setattr(_StandInMixin, _name, _m)


class _StandInParameter(_StandInMixin, nn.Parameter):
    pass


class _StandInBuffer(_StandInMixin, torch.Tensor):
    __torch_function__ = torch._C._disabled_torch_function_impl


class _LazyStandInParameter(nn.UninitializedParameter):
    cls_to_become = _StandInParameter


class _LazyStandInBuffer(nn.UninitializedBuffer):
    cls_to_become = _StandInBuffer


def _standin_tensor(t: torch.Tensor, templates: dict | None = None) -> torch.Tensor | None:
    if torch.nn.parameter.is_lazy(t):
        # uninitialized: torch's lazy hook materializes it in place with the checkpoint's shape; on the meta device
        # (no memory), into a stand-in class like every other one
        try:
            if isinstance(t, nn.Parameter):
                return _LazyStandInParameter(requires_grad=t.requires_grad, device="meta", dtype=t.dtype)
            return _LazyStandInBuffer(requires_grad=t.requires_grad, device="meta", dtype=t.dtype)
        except Exception:
            return None
    if t.numel() <= _SMALL or t.is_meta or t.layout != torch.strided or t.is_quantized:
        data = t.detach().clone()  # tiny, or a layout meta tensors cannot stand for (a copy of that one tensor)
    elif templates is not None and t.layout == torch.strided:
        # one meta tensor per (shape, stride, dtype): _make_subclass gives every stand-in its own tensor object
        sig = (t.shape, t.stride(), t.dtype)
        data = templates.get(sig)
        if data is None:
            data = templates[sig] = meta_like(t)
    else:
        data = meta_like(t)
    if isinstance(t, nn.Parameter):  # what Parameter.__new__ does, without its Python frame
        return torch.Tensor._make_subclass(_StandInParameter, data, t.requires_grad)
    return torch.Tensor._make_subclass(_StandInBuffer, data, False)


class _ModelIndex:
    """The model's module tree, walked once per simulation (models with thousands of modules make every walk count)."""

    def __init__(self, model: nn.Module):
        self.model = model
        self.named = list(model.named_modules(remove_duplicate=False))
        seen: set[int] = set()
        self.unique = [m for _, m in self.named if not (id(m) in seen or seen.add(id(m)))]
        base = nn.Module.set_extra_state
        self.extra_state_names = [n for n, m in self.named if getattr(type(m), "set_extra_state", base) is not base]
        self._slots = None

    def read_keys(self) -> tuple[set, tuple] | None:
        """The checkpoint keys whose values ``load_state_dict`` can read with this model: ``(keys, prefixes)``.

        torch hands each submodule only the keys under its prefix, so code of a submodule (its own
        ``_load_from_state_dict`` -- BatchNorm's reads ``num_batches_tracked`` -- from its class or set on the
        instance, or a load hook) can read those and no others: its prefix is listed. A module with neither reads
        its own parameter, buffer and extra-state keys. None: any key may be read -- the root's own
        ``load_state_dict`` or ``_load_from_state_dict`` (class or instance), a load hook on the root, or torch's
        own methods replaced by someone."""
        base = nn.Module._load_from_state_dict
        if not (_torch_code(base) and _torch_code(nn.Module.load_state_dict)):
            return None
        root = self.model
        if not _torch_code(type(root).load_state_dict) or "load_state_dict" in vars(root) or \
                _own_load_code(root, base) or root._load_state_dict_pre_hooks or root._load_state_dict_post_hooks:
            return None
        keys: set[str] = set()
        prefixes: list[str] = []
        for name, m in self.named:
            prefix = name + "." if name else ""
            if prefix and (_own_load_code(m, base) or m._load_state_dict_pre_hooks or m._load_state_dict_post_hooks):
                prefixes.append(prefix)
            keys.update(prefix + k for k in chain(m._parameters, m._buffers, (_EXTRA_STATE_SUFFIX,)))
        return keys, tuple(prefixes)

    @property
    def slots(self) -> "OrderedDict[str, _Slot]":
        if self._slots is None:
            self._slots = _model_slots(self.model, self)
        return self._slots


def _torch_code(fn) -> bool:
    """Is ``fn`` torch's own code (not a model's)?"""
    return (getattr(fn, "__module__", None) or "").startswith("torch.")


def _own_load_code(m: nn.Module, base) -> bool:
    """Does ``m`` load with code other than ``nn.Module``'s: its class's ``_load_from_state_dict``, or one set on
    the instance (which torch calls first)?"""
    return "_load_from_state_dict" in vars(m) or type(m)._load_from_state_dict is not base


class _StandIn:
    """A data-less copy of the model; ``orig_of`` maps each stand-in tensor (by id) back to the model's tensor."""

    def __init__(self, model: nn.Module, index: "_ModelIndex | None" = None):
        index = index or _ModelIndex(model)
        memo: dict[int, Any] = {}
        self.orig_of: dict[int, torch.Tensor] = {}
        self.standin_of: dict[int, torch.Tensor] = {}
        is_lazy = torch.nn.parameter.is_lazy
        Tensor = torch.Tensor
        templates: dict = {}
        for mod in index.unique:
            candidates = [*mod._parameters.values(), *mod._buffers.values()]
            # plain tensor attributes (not registered) are copied as stand-ins too: never a second copy of data
            for v in mod.__dict__.values():
                if isinstance(v, Tensor):
                    candidates.append(v)
                elif type(v) in (list, tuple) and v:   # e.g. a cache list: one level deep
                    candidates += [x for x in v if isinstance(x, Tensor)]
            for t in candidates:
                if t is None or id(t) in memo or not isinstance(t, Tensor):
                    continue
                s = _standin_tensor(t, templates)
                if s is None:
                    continue
                memo[id(t)] = s
                self.standin_of[id(t)] = s
                if not is_lazy(t):
                    self.orig_of[id(s)] = t
        try:
            tree_memo = dict(memo)
            self.module = _fast_tree(model, tree_memo, index.unique)
            self.by_name = {name: tree_memo[id(m)] for name, m in index.named}
        except Exception:  # an unusual module: let deepcopy do it, with its own rules
            try:
                tree_memo = dict(memo)
                self.module = copy.deepcopy(model, tree_memo)
            except Exception as e:
                raise SimulationError(f"cannot make a data-less copy of {type(model).__name__} to simulate on "
                                      f"({type(e).__name__}: {e})") from e
            self.by_name = dict(self.module.named_modules(remove_duplicate=False))
        _rebind_hooks(index.unique, tree_memo)
        self.tracked = set(self.orig_of)
        self.alias_of: dict[int, torch.Tensor] = {}   # id(``stand_in.data``) -> the stand-in
        self._aliases: list = []                       # kept alive, so their ids stay theirs

    def alias(self, standin: torch.Tensor) -> torch.Tensor:
        """What ``standin.data`` gives during a load: a tensor whose ``copy_`` and in-place methods are those of
        ``standin`` itself (torch's own ``.data`` shares the memory: a copy through it loads the parameter)."""
        data = _TENSOR_DATA.__get__(standin)
        out = torch.Tensor._make_subclass(_StandInBuffer, data, False)
        self.alias_of[id(out)] = standin
        self.tracked.add(id(out))
        self._aliases.append(out)
        return out


_HOOK_DICTS = ("_load_state_dict_pre_hooks", "_load_state_dict_post_hooks", "_state_dict_hooks",
               "_state_dict_pre_hooks")


def _rebind_hooks(mods: list, memo: dict) -> None:
    """In the copy's load and state-dict hooks, a function whose closure (or default arguments) holds a module or a
    tensor of the model gets the copy's one instead: a hook that checks ``module is model.layer`` or edits
    ``model.layer.weight`` through a closure then sees the copy, as the real load would see the model itself. Globals
    cannot be redirected (the snapshot check reports a hook that writes the real model through one)."""
    cells: dict = {}
    for mod in mods:
        new = memo.get(id(mod))
        if new is None or new is mod:
            continue
        for attr in _HOOK_DICTS:
            d = new.__dict__.get(attr)
            if not d or d is mod.__dict__.get(attr):   # shared with the model (not copied): never written
                continue
            for k, h in list(d.items()):
                inner = getattr(h, "hook", None) if type(h).__name__ == "_WrappedHook" else None
                if inner is not None:
                    fn = _rebind(inner, memo, cells)
                    if fn is not inner:
                        h.hook = fn
                else:
                    d[k] = _rebind(h, memo, cells)


def _rebind(fn, memo: dict, cells: dict):
    if not isinstance(fn, types.FunctionType):
        return fn

    def sub(v):
        return memo.get(id(v), v) if isinstance(v, (nn.Module, torch.Tensor)) else v

    changed = False
    closure = []
    for c in fn.__closure__ or ():
        try:
            v = c.cell_contents
        except ValueError:   # an empty cell
            closure.append(c)
            continue
        nv = sub(v)
        if nv is v:
            closure.append(c)
            continue
        nc = cells.get(id(c))
        if nc is None:   # cells shared by two hooks stay shared
            nc = cells[id(c)] = (types.CellType(nv), c)
        closure.append(nc[0])
        changed = True
    defaults = fn.__defaults__
    if defaults:
        new_defaults = tuple(map(sub, defaults))
        changed = changed or any(a is not b for a, b in zip(new_defaults, defaults))
        defaults = new_defaults
    if not changed:
        return fn
    out = types.FunctionType(fn.__code__, fn.__globals__, fn.__name__, defaults, tuple(closure) or None)
    out.__kwdefaults__ = fn.__kwdefaults__
    out.__qualname__ = fn.__qualname__
    out.__dict__.update(fn.__dict__)
    return out


_ATOMIC = (type(None), bool, int, float, complex, str, bytes, type, torch.dtype, torch.device, types.FunctionType,
           types.BuiltinFunctionType)


_ATOMIC_SET = frozenset(_ATOMIC)
_REGISTRIES = frozenset(("_parameters", "_buffers", "_modules"))
_EMPTYABLE = frozenset((dict, OrderedDict, set))


def _fast_tree(model: nn.Module, memo: dict, mods: list) -> nn.Module:
    """``copy.deepcopy(model, memo)`` without its per-object overhead for what every module holds: the registries
    are rebuilt around the stand-in tensors, empty hook dicts are made new, atomic values are shared, and everything
    else (user attributes, hooks, bound methods) goes through ``copy.deepcopy`` with the same memo, so it sees the
    copies of modules and tensors."""
    for mod in mods:
        cls = type(mod)
        if getattr(cls, "__deepcopy__", None) is not None or hasattr(cls, "__slots__") and cls.__slots__:
            raise TypeError(f"{cls.__name__} customises copying")
        memo[id(mod)] = cls.__new__(cls)
    memo.setdefault(id(memo), []).extend(mods)  # deepcopy's keep-alive convention
    for mod in mods:
        new = memo[id(mod)]
        d = mod.__dict__.copy()
        for k, v in d.items():
            t = type(v)
            if t in _ATOMIC_SET:
                continue
            if k in _REGISTRIES:
                d[k] = t((n, memo.get(id(x), x) if x is not None else None) for n, x in v.items())
            elif t in _EMPTYABLE and not v:
                d[k] = t()
            elif isinstance(v, torch.Tensor) and id(v) in memo:
                d[k] = memo[id(v)]
            else:
                try:
                    d[k] = copy.deepcopy(v, memo)
                except Exception:  # a lock, a generator, an open file: shared, as nothing here should write it
                    pass
        new.__dict__.update(d)
    return memo[id(model)]


# ---- the recorder -----------------------------------------------------------------------------------------------

@dataclass
class _Copy:
    src_key: str | None
    src_dtype: torch.dtype
    src_shape: tuple[int, ...]
    changed: bool | None = None       # value pass only
    error: str | None = None
    after: dict | None = None         # running-stat summary of the value copied in
    is_self: bool = False             # the source is the destination itself (BatchNorm filling num_batches_tracked)
    exact: bool = False               # the source is the checkpoint's tensor itself (not a view, not computed)
    src_ref: Any = None               # a real tensor a hook (or torch) made during the structural pass


class _Recorder:
    """Records copies into stand-in tensors instead of performing them; in the value pass compares them."""

    def __init__(self, standin: _StandIn, src_keys: dict[int, str], *, compare: bool,
                 progress: Callable[[int, int], Any] | None = None, total: int = 0,
                 should_stop: Callable[[], bool] | None = None, want_summary: set[int] | None = None):
        self.standin = standin
        self.src_keys = src_keys
        self.compare = compare
        self.copies: dict[int, list[_Copy]] = {}
        self.inplace: dict[int, list[str]] = {}
        self.progress = progress
        self.total = total
        self.done = 0
        self.should_stop = should_stop
        self.cancelled = False
        self.internal_errors: list[str] = []
        self.want_summary = want_summary or set()
        self._buf: torch.Tensor | None = None
        self.record_of: Callable[[str], Any] | None = None   # checkpoint key -> TensorRecord (values pass)
        self.no_data: Callable[[str], bool] | None = None    # checkpoint key -> it has no values (meta)
        self._fds: dict[str, int] = {}

    def source_key(self, src) -> str | None:
        seen = 0
        while isinstance(src, torch.Tensor) and seen < 8:
            key = self.src_keys.get(id(src))
            if key is not None:
                return key
            src = src._base
            seen += 1
        return None

    def _scratch(self, dest: torch.Tensor) -> torch.Tensor:
        """A tensor of ``dest``'s shape and dtype on the CPU, in one reused buffer: the values pass holds one tensor's
        worth of bytes at a time, and does not pay fresh pages for every tensor."""
        shape = tuple(dest.shape)
        n = 1
        for d in shape:
            n *= d
        nbytes = n * dest.element_size()
        if n == 0 or nbytes > _SCRATCH_MAX:
            return torch.empty(shape, dtype=dest.dtype)
        buf = self._buf
        if buf is None or buf.numel() < nbytes:
            buf = self._buf = torch.empty(max(nbytes, 1 << 16), dtype=torch.uint8)
        try:
            return buf[:nbytes].view(dest.dtype).view(shape)
        except (RuntimeError, TypeError):
            return torch.empty(shape, dtype=dest.dtype)

    def _read_into(self, src: torch.Tensor, tmp: torch.Tensor) -> bool:
        """Fill ``tmp`` with ``src``'s values read from the file with ``pread`` when ``src`` is exactly a checkpoint
        tensor stored contiguously (the same bytes its memory map would give, without a page fault per 4 KiB, which
        costs more than the read itself on some machines). False: let ``copy_`` read the memory map."""
        if self.record_of is None or src.dtype != tmp.dtype or src.is_meta or src.device.type != "cpu":
            return False
        key = self.src_keys.get(id(src))
        if key is None:
            return False
        if isinstance(self.src_keys, _IdIndex) and self.src_keys.is_edited(src):
            return False   # code of the load changed it in place: the file's bytes are not what torch copies
        return self._read_key_into(key, tmp, tuple(src.shape))

    def _read_key_into(self, key: str, tmp: torch.Tensor, shape: tuple | None = None) -> bool:
        """Read checkpoint tensor ``key`` into ``tmp`` (same dtype and shape, stored contiguously) with ``pread``."""
        try:
            rec = self.record_of(key)
            ref = rec.storage
            source = getattr(ref, "source", None)
            if source is None or getattr(ref, "view", None) is not None or rec.dtype != dtype_name(tmp.dtype):
                return False
            rshape = tuple(rec.shape)
            if rshape != tuple(tmp.shape) or (shape is not None and rshape != shape) or not tmp.is_contiguous():
                return False
            expect, acc = [], 1
            for d in reversed(rshape):
                expect.append(acc)
                acc *= max(d, 1)
            if any(d > 1 and st != e for d, st, e in zip(rshape, rec.stride, reversed(expect))):
                return False
            file, offset, length = source.region(ref)
            itemsize = tmp.element_size()
            start = rec.storage_offset * itemsize
            nbytes = tmp.numel() * itemsize
            if nbytes == 0 or start + nbytes > length:
                return False
            fd = self._fds.get(file)
            if fd is None:
                fd = self._fds[file] = os.open(file, os.O_RDONLY)
            view = memoryview(tmp.view(-1).view(torch.uint8).numpy())
            got = 0
            while got < nbytes:  # preadv may return less than asked (signals, huge reads)
                n = os.preadv(fd, [view[got:]], offset + start + got)
                if n <= 0:
                    return False
                got += n
            return True
        except Exception:  # anything unusual: the memory map is always right
            return False

    def close(self) -> None:
        for fd in self._fds.values():
            try:
                os.close(fd)
            except OSError:
                pass
        self._fds.clear()

    def _on_copy(self, dest: torch.Tensor, src: Any):
        canon = self.standin.alias_of.get(id(dest))
        if canon is None:
            return self._record_copy(dest, src)
        self._record_copy(canon, src)   # ``param.data.copy_(x)``: a copy into the parameter itself
        return dest

    def _record_copy(self, dest: torch.Tensor, src: Any):
        if not isinstance(src, torch.Tensor):
            return torch.Tensor.copy_(dest, src)  # let torch raise its own TypeError
        is_self = src is dest  # a stand-in: never a checkpoint tensor (nor a view of one)
        ev = _Copy(None if is_self else self.source_key(src), src.dtype, src.shape, is_self=is_self,
                   exact=not is_self and id(src) in self.src_keys)
        self.copies.setdefault(id(dest), []).append(ev)
        if src.is_meta and not is_self and ev.src_key is not None and not self.standin.orig_of[id(dest)].is_meta \
                and (self.compare or (self.no_data is not None and self.no_data(ev.src_key))):
            # the checkpoint's tensor has no data (saved from the meta device): torch's own copy raises, and the
            # error it raises is the one torch puts in its message
            try:
                torch.empty(1, dtype=dest.dtype).copy_(torch.empty(1, dtype=src.dtype, device="meta"))
            except Exception:
                self.copies[id(dest)].pop()
                raise
        if not self.compare and not ev.exact and not ev.is_self and not src.is_meta:
            ev.src_ref = src  # made during the load (e.g. torch.tensor(0)): its values are known without the file
        if not self.compare or self.cancelled:
            return dest
        if self.should_stop is not None and self.should_stop():
            self.cancelled = True
            return dest
        orig = self.standin.orig_of[id(dest)]
        if src.is_meta or orig.is_meta:
            ev.changed = None if not orig.is_meta else False
        else:
            tmp = self._scratch(dest)
            if ev.is_self:
                src = orig.detach()
            try:
                if not self._read_into(src, tmp):
                    tmp.copy_(src.detach())
            except Exception as ex:  # the same error torch would meet copying into the model: let torch record it
                ev.error = f"{type(ex).__name__}: {ex}"
                self.copies[id(dest)].pop()
                raise
            try:
                ev.changed = not _same_bits(orig.detach(), tmp)
                if id(dest) in self.want_summary:
                    ev.after = summarize(tmp)
            except Exception as e:  # a bug of ours must not become part of torch's error text
                self.internal_errors.append(f"comparing {ev.src_key}: {type(e).__name__}: {e}")
                ev.changed = None
            del tmp
        self.done += 1
        if self.progress is not None:
            try:
                self.progress(self.done, max(self.total, self.done))
            except Exception as e:
                self.internal_errors.append(f"progress callback: {type(e).__name__}: {e}")
        return dest


def _same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bit-for-bit equality (NaNs and -0.0 count as they are stored). Compared as bytes with numpy: single-threaded
    and vectorised, it is many times faster than ``torch.equal`` on a busy machine."""
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    a = a.detach().to("cpu")
    b = b.detach().to("cpu")
    if a.numel() == 0:
        return True
    try:
        ab = a.contiguous().reshape(-1).view(torch.uint8).numpy()
        bb = b.contiguous().reshape(-1).view(torch.uint8).numpy()
        return bool(np.array_equal(ab, bb))
    except (RuntimeError, TypeError):  # layouts numpy cannot see (quantized, ...)
        return bool(torch.equal(a, b))


def summarize(t: torch.Tensor) -> dict:
    """A short summary of a running statistic (or any tensor)."""
    t = t.detach()
    if t.is_meta:
        return {"shape": list(t.shape), "dtype": dtype_name(t.dtype)}
    out: dict[str, Any] = {"shape": list(t.shape), "dtype": dtype_name(t.dtype)}
    if t.numel() == 0:
        return out
    if t.numel() == 1 and not t.is_floating_point():
        out["value"] = int(t.reshape(-1)[0].item()) if t.dtype != torch.bool else bool(t.reshape(-1)[0].item())
        return out
    f = t.to(torch.float64)
    out.update(mean=float(f.mean()), min=float(f.min()), max=float(f.max()))
    if f.numel() > 1:
        out["std"] = float(f.std())
    return out


# ---- one run of torch's load_state_dict on a stand-in --------------------------------------------------------------

@dataclass
class _PassResult:
    standin: _StandIn
    recorder: _Recorder
    exc: BaseException | None
    returned: Any
    missing: list[str]
    unexpected: list[str]
    finished: bool                 # torch walked every module and ran the root's post hooks
    extra_state_set: dict[str, Any]
    sd_keys: list[str]             # keys of the object handed to torch, in order
    sd_infos: dict[str, tuple]     # key -> (shape, dtype) of the object handed to torch
    edited: list = field(default_factory=list)   # checkpoint keys whose tensor code changed in place during the load


def _run_pass(model: nn.Module, sd_obj: Any, *, strict: bool, assign: bool, compare: bool,
              progress=None, total: int = 0, should_stop=None, want_summary_keys=(),
              index: "_ModelIndex | None" = None, record_of=None, no_data=None) -> _PassResult:
    index = index or _ModelIndex(model)
    if isinstance(sd_obj, Mapping) and getattr(sd_obj, "_metadata", None) is not None:
        meta = sd_obj._metadata
        # the same items with a private _metadata: torch copies the mapping into its own OrderedDict first, so the
        # type of this copy is not seen (a dict copies 10**6 items many times faster than an OrderedDict)
        sd_obj = PlainStateDict(sd_obj)
        sd_obj._metadata = meta  # type: ignore[attr-defined]
        _own_metadata(sd_obj)
    standin = _StandIn(model, index)
    root = standin.module
    src_keys: dict[int, str] = {}
    sd_infos: Mapping = {}
    sd_keys: list[str] = []
    if isinstance(sd_obj, Mapping):
        # in bulk (C iterators, no Python frame per key): 10**6 keys cost a fraction of a second
        sd_keys = list(sd_obj.keys())
        vals = list(sd_obj.values())
        mask = list(map(isinstance, vals, repeat(torch.Tensor)))
        if all(mask):
            t_keys, t_vals = sd_keys, vals
        else:
            t_keys, t_vals = list(compress(sd_keys, mask)), list(compress(vals, mask))
        src_keys = _IdIndex(t_keys, t_vals)  # type: ignore[assignment]
        sd_infos = _Infos(sd_obj, t_keys, t_vals)
        del vals, mask
    state: dict[str, Any] = {"missing": None, "unexpected": None, "finished": False}
    extra_state_set: dict[str, Any] = {}
    handles = []

    def make_pre(prefix):
        def pre(module, state_dict, pfx, local_metadata, strict_, missing_keys, unexpected_keys, error_msgs):
            if state["missing"] is None:
                state["missing"], state["unexpected"] = missing_keys, unexpected_keys
        return pre

    want_summary: set[int] = set()
    # the root's pre-hook runs first of all: it hands over torch's missing/unexpected lists (kept even if the load
    # stops part way); registered last, it runs after the root's own pre-hooks
    handles.append(root.register_load_state_dict_pre_hook(make_pre("")))
    for name in index.extra_state_names:
        mod = standin.by_name[name]
        bound = getattr(mod, "set_extra_state")

        def wrapper(value, _bound=bound, _name=name):
            extra_state_set[_name] = value
            return _bound(value)
        object.__setattr__(mod, "set_extra_state", wrapper)

    def post(module, incompatible):
        state["finished"] = True
        state["missing"], state["unexpected"] = incompatible.missing_keys, incompatible.unexpected_keys
    handles.append(root.register_load_state_dict_post_hook(post))

    keys_by_standin = {}
    for key, value in root.state_dict(keep_vars=True).items() if want_summary_keys else ():
        keys_by_standin[key] = value
    for key in want_summary_keys:
        v = keys_by_standin.get(key)
        if isinstance(v, torch.Tensor):
            want_summary.add(id(v))

    recorder = _Recorder(standin, src_keys, compare=compare, progress=progress, total=total,
                         should_stop=should_stop, want_summary=want_summary)
    recorder.record_of = record_of
    recorder.no_data = no_data
    exc = None
    returned = None
    with warnings.catch_warnings():
        # the value pass copies real checkpoint tensors into meta stand-ins; torch warns that this is a no-op
        warnings.filterwarnings("ignore", message=r"for .*: copying from a non-meta parameter in the checkpoint")
        previous = getattr(_LOCAL, "recorder", None)
        _LOCAL.recorder = recorder
        try:
            returned = root.load_state_dict(sd_obj, strict=strict, assign=assign)
        except Exception as e:  # what torch (or a hook) raises: part of the answer
            exc = e
        finally:
            _LOCAL.recorder = previous
            recorder.close()
    if recorder.cancelled:
        raise Cancelled("simulation cancelled")
    edited = src_keys.edited() if isinstance(src_keys, _IdIndex) else []
    missing = list(state["missing"] or [])
    unexpected = list(state["unexpected"] or [])
    if returned is not None:
        missing, unexpected = list(returned.missing_keys), list(returned.unexpected_keys)
    return _PassResult(standin, recorder, exc, returned, missing, unexpected, bool(state["finished"]),
                       extra_state_set, sd_keys, sd_infos, edited)


class _Infos(Mapping):
    """key -> (shape, dtype name) of the tensors handed to torch, in order, each made when first asked for (a report
    over 10**6 unexpected keys asks for a handful). ``sd``: the mapping handed to torch (torch works on its own copy
    of it); ``keys`` / ``vals``: its tensor entries."""

    __slots__ = ("_sd", "_keys", "_vals", "_made")

    def __init__(self, sd: Mapping, keys: list, vals: list):
        self._sd, self._keys, self._vals = sd, keys, vals
        self._made: dict = {}

    def __getitem__(self, key):
        info = self._made.get(key)
        if info is None:
            v = self._sd[key]
            if not isinstance(v, torch.Tensor):
                raise KeyError(key)
            # an uninitialized (lazy) parameter has no shape
            info = self._made[key] = (None if _is_lazy(v) else tuple(v.shape), dtype_name(v.dtype))
        return info

    def __contains__(self, key) -> bool:
        try:
            return isinstance(self._sd.get(key), torch.Tensor)
        except TypeError:
            return False

    def __iter__(self):
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)

    def shapes(self) -> dict[str, tuple]:
        """str key -> shape, in order (what ``remap._tensor_shapes`` gives for the same mapping). A tensor under
        many keys (the meta stand-in of 10**6 keys no module reads) is asked for its shape once."""
        keys, vals = self._keys, self._vals
        if any(issubclass(t, _LAZY) for t in set(map(type, vals))):   # no shape to match on (C-speed test)
            mask = [not _is_lazy(v) for v in vals]
            keys, vals = list(compress(keys, mask)), list(compress(vals, mask))
        if not _all_str(keys):
            mask = [isinstance(k, str) for k in keys]
            keys, vals = list(compress(keys, mask)), list(compress(vals, mask))
        ids = list(map(id, vals))
        distinct = dict(zip(ids, vals))
        if len(distinct) * 2 > len(ids):
            return dict(zip(keys, map(tuple, map(_SHAPE_OF, vals))))
        shape_of = {i: tuple(v.shape) for i, v in distinct.items()}
        return dict(zip(keys, map(shape_of.__getitem__, ids)))


class _IdIndex:
    """id(checkpoint tensor) -> its key, built the first time it is looked in (a load that copies nothing -- every
    key unexpected -- never builds it)."""

    __slots__ = ("_keys", "_vals", "_d", "_versions", "_v0")

    def __init__(self, keys: list, vals: list):
        self._keys, self._vals = keys, vals
        self._d: dict | None = None
        self._v0: dict | None = None
        try:   # each tensor's version counter before the load: code that edits one in place bumps it
            self._versions = list(map(_VERSION_OF, vals))
        except Exception:   # inference tensors have none
            self._versions = None

    def edited(self) -> list:
        """Keys whose tensor was changed in place (``state_dict[k].mul_(0.5)`` in a hook) since the index was made,
        as far as version counters tell (a write through ``.data`` is not counted)."""
        if self._versions is None:
            return []
        try:
            now = list(map(_VERSION_OF, self._vals))
        except Exception:
            return []
        return list(compress(self._keys, map(ne, now, self._versions)))

    def is_edited(self, t) -> bool:
        """Has checkpoint tensor ``t`` been changed in place since the load began? (True when it cannot be told.)"""
        if self._versions is None:
            return True
        if self._v0 is None:
            self._v0 = dict(zip(map(id, self._vals), self._versions))
        v0 = self._v0.get(id(t))
        try:
            return v0 is None or t._version != v0
        except Exception:
            return True

    def _index(self) -> dict:
        if self._d is None:
            self._d = dict(zip(map(id, self._vals), self._keys))  # a tensor under two keys: the last one, as before
        return self._d

    def get(self, i, default=None):
        return self._index().get(i, default)

    def __contains__(self, i) -> bool:
        return i in self._index()


# ---- the model's keys -------------------------------------------------------------------------------------------

@dataclass
class _Slot:
    key: str
    kind: str
    module: str | None       # module path holding the tensor (None for extra state / unknown)
    name: str | None
    orig: Any                # the model's tensor (or extra state value)


def _model_slots(model: nn.Module, index: "_ModelIndex | None" = None) -> "OrderedDict[str, _Slot]":
    index = index or _ModelIndex(model)
    sd = model.state_dict(keep_vars=True)
    param_ids = {id(p) for m in index.unique for p in m._parameters.values() if p is not None}
    where: dict[str, tuple[str, str]] = {}
    for mname, mod in index.named:
        for n in list(mod._parameters) + list(mod._buffers):
            where[f"{mname}.{n}" if mname else n] = (mname, n)
    out: OrderedDict[str, _Slot] = OrderedDict()
    for key, value in sd.items():
        if key.endswith(_EXTRA_STATE_SUFFIX) and (not isinstance(value, torch.Tensor) or key not in where):
            mname = key[: -len(_EXTRA_STATE_SUFFIX)].rstrip(".")
            out[key] = _Slot(key, "extra_state", mname, None, value)
            continue
        mname, n = where.get(key, (None, None))
        kind = "parameter" if isinstance(value, torch.Tensor) and id(value) in param_ids else "buffer"
        out[key] = _Slot(key, kind, mname, n, value)
    return out


def _new_keys(root: nn.Module, slots) -> list[tuple[str, str]]:
    """(key, kind) of the parameters and buffers the copy has after the load that the model's state dict did not."""
    out = []
    try:
        for name, mod in root.named_modules(remove_duplicate=False):
            prefix = name + "." if name else ""
            for reg, kind in ((mod._parameters, "parameter"), (mod._buffers, "buffer")):
                for n, t in reg.items():
                    key = prefix + n
                    if t is not None and key not in slots and n not in getattr(mod, "_non_persistent_buffers_set", ()):
                        out.append((key, kind))
    except Exception:
        return []
    return out


def _computed_slot(model: nn.Module, standin: "_StandIn", rec: "_Recorder", key: str, compared: bool):
    """For a state-dict entry computed by a module's ``_save_to_state_dict`` (``key`` names no parameter or buffer):
    ``(written, changed)``: did the load write into that module's own tensors, and with new values (True), the same
    values (False) or unknown ones (None)?"""
    mname = key.rpartition(".")[0]
    try:
        mod = model.get_submodule(mname) if mname else model
    except AttributeError:
        return False, False
    evs = []
    for t in chain(mod._parameters.values(), mod._buffers.values()):
        s = standin.standin_of.get(id(t)) if t is not None else None
        if s is not None:
            evs += rec.copies.get(id(s), [])
    if not evs:
        return False, False
    if all(e.is_self for e in evs):
        return True, False
    if not compared or any(e.changed is None for e in evs if not e.is_self):
        return True, (True if any(e.changed for e in evs) else None)
    return True, any(e.changed for e in evs)


def _standin_slot_value(modules: dict, slot: _Slot):
    if slot.module is None or slot.name is None:
        return None
    mod = modules.get(slot.module)
    if mod is None:
        return None
    if slot.name in mod._parameters:
        return mod._parameters[slot.name]
    return mod._buffers.get(slot.name)


def _snapshot(index: _ModelIndex) -> list:
    """Which tensor object sits in every parameter/buffer slot of the model, and its version counter."""
    try:
        return [(tuple(reg), [(id(t), t._version) if t is not None else None for t in reg.values()])
                for mod in index.unique for reg in (mod._parameters, mod._buffers)]
    except Exception:  # inference tensors have no version counter
        return _snapshot_slow(index)


def _snapshot_slow(index: _ModelIndex) -> list:
    snap = []
    for mname, mod in index.named:
        for reg in (mod._parameters, mod._buffers):
            for n, t in reg.items():
                ver = None
                if isinstance(t, torch.Tensor):
                    try:
                        ver = t._version
                    except Exception:
                        ver = None
                snap.append((mname, n, id(t), ver, tuple(t.shape) if isinstance(t, torch.Tensor) else None))
    return snap


# ---- the simulation ---------------------------------------------------------------------------------------------

def simulate_load(model_side, checkpoint_side, *, entry=None, strict: bool = True, assign: bool = False,
                  compare_values: bool = True, progress: Callable[[int, int], Any] | None = None,
                  should_stop: Callable[[], bool] | None = None, suggest: bool = True) -> LoadReport:
    """What ``model.load_state_dict(<checkpoint at entry>, strict=strict, assign=assign)`` would do.

    ``progress(done, total)`` is called during the value comparison; ``should_stop()`` returning True cancels
    (raises :class:`explorer.errors.Cancelled`). The model and the checkpoint are never modified.
    """
    was_enabled = gc.isenabled()
    gc.disable()  # thousands of small objects (deepcopy, meta tensors): with torch imported, GC passes dominate
    try:
        return _simulate(model_side, checkpoint_side, entry=entry, strict=strict, assign=assign,
                         compare_values=compare_values, progress=progress, should_stop=should_stop, suggest=suggest)
    finally:
        if was_enabled:
            gc.enable()


def _simulate(model_side, checkpoint_side, *, entry, strict, assign, compare_values, progress, should_stop,
              suggest) -> LoadReport:
    model, model_label = _model_of(model_side)
    ckpt = _CheckpointInput(checkpoint_side, entry)
    index = _ModelIndex(model)
    before = _snapshot(index)
    if should_stop is not None and should_stop():
        raise Cancelled("simulation cancelled")

    # keys no code of the model can read (10**6 unexpected ones) share their meta tensors: torch only matches them
    meta_sd = ckpt.meta(index.read_keys())
    structural = _run_pass(model, meta_sd, strict=strict, assign=assign, compare=False, index=index,
                           no_data=ckpt.no_data)
    final = structural
    values = None
    slots = index.slots
    if compare_values and _compare_from_structural(structural, ckpt, index, assign=assign, progress=progress,
                                                   should_stop=should_stop):
        final = structural
        values = structural
    elif compare_values:
        total = sum(len(v) for v in structural.recorder.copies.values())
        stat_keys = [k for k in slots if _is_running_stat(k)]
        real_sd = ckpt.real()
        if structural.edited and isinstance(real_sd, Mapping):
            # code of the load changes these checkpoint tensors in place: it gets copies, so the edit reaches what is
            # compared and never the memory map later reads of the file share
            real_sd = _with_copies(real_sd, structural.edited)
        values = _run_pass(model, real_sd, strict=strict, assign=assign, compare=True, progress=progress,
                           total=total, should_stop=should_stop, want_summary_keys=stat_keys, index=index,
                           record_of=ckpt.record_of)
        final = values
        if progress is not None and values.recorder.done < total:
            progress(total, total)
    elif _meta_trouble(structural.exc) or _meta_copy_trouble(structural.exc, ckpt):
        # a hook needed the checkpoint's values (meta tensors have none): ask torch again with the real ones
        values = _run_pass(model, ckpt.real(), strict=strict, assign=assign, compare=False, index=index,
                           no_data=ckpt.no_data)
        final = values

    after = _snapshot(index)
    report = _build_report(model, model_label, ckpt, slots, final, meta_sd, strict=strict, assign=assign,
                           compared=values is not None and compare_values)
    if final.edited:
        report.notes.append(
            f"code that runs during the load (a hook) changes {len(final.edited)} checkpoint tensor(s) in place before "
            "they are copied: " + ", ".join(map(str, final.edited[:8])) + (" ..." if len(final.edited) > 8 else "")
            + "; the values compared are the edited ones, as torch would copy them")
    if before != after:
        report.notes.append("WARNING: code of the model (a hook holding a reference to the model itself) modified "
                            "the real model during the simulation; its tensors may have changed")
    for err in final.recorder.internal_errors:
        report.notes.append(f"internal: {err}")
    if ckpt.whole_module is not None and not ckpt.opaque:
        where = "torch.load(path)" + "".join(f"[{p!r}]" for p in ckpt.entry_path)
        report.notes.append(
            f"{where} is a whole pickled model ({ckpt.whole_module}), not a state dict: this report simulates "
            f"load_state_dict({where}.state_dict()), the state dict recovered from the file. Passing the object "
            f"itself, load_state_dict({where}), raises TypeError: Expected state_dict to be dict-like, got "
            f"{type(_object_of_class(ckpt.whole_module))}. (--entry {'/'.join(ckpt.entry_path) or '/'} simulates "
            "that.)")
    subclassed = _subclass_keys(checkpoint_side, ckpt.entry_path)
    if subclassed:
        keys = ", ".join(f"{k} ({c})" for k, c in subclassed[:4]) + (" ..." if len(subclassed) > 4 else "")
        report.notes.append(
            f"WARNING: this prediction cannot be exact: {len(subclassed)} checkpoint tensor(s) are instances of a "
            f"tensor subclass the file names: {keys}. torch.load would rebuild them with that class, whose own code "
            "(__torch_function__, module_load) then runs during load_state_dict; the explorer never runs a file's "
            "code, so it simulated them as plain tensors.")
    refused = _weights_only_refuses(checkpoint_side)
    if refused:
        report.notes.append(
            "torch.load(path) with its default weights_only=True refuses this file before load_state_dict runs: it "
            f"names {', '.join(refused[:4])}{' ...' if len(refused) > 4 else ''}, which the weights-only unpickler "
            "does not allow. This report assumes the file is loaded with torch.load(path, weights_only=False) (only "
            "for a file you trust) or with those globals allowed through torch.serialization.add_safe_globals.")
    if suggest and (report.missing_keys or report.unexpected_keys or report.mismatched_keys):
        try:
            from .remap import suggest_remaps
            # the meta checkpoint of the structural pass (torch copies it; built once: 10**6 tensors take seconds)
            shapes = structural.sd_infos.shapes() if isinstance(structural.sd_infos, _Infos) else None
            report.suggestions = suggest_remaps(model, checkpoint_side, entry=entry, report=report,
                                                strict=strict, assign=assign, index=index, meta_sd=meta_sd,
                                                ck_shapes=shapes)
        except Cancelled:
            raise
        except Exception as e:  # suggestions are a help, never a reason to lose the report
            report.notes.append(f"remap suggestions failed: {type(e).__name__}: {e}")
    return report


def _with_copies(sd: Mapping, keys) -> Mapping:
    """``sd`` with the tensors at ``keys`` replaced by private copies (Parameters stay Parameters), keeping its
    ``_metadata``."""
    out = PlainStateDict(sd)
    meta = getattr(sd, "_metadata", None)
    if meta is not None:
        out._metadata = meta  # type: ignore[attr-defined]
    for k in keys:
        v = out.get(k)
        if isinstance(v, torch.Tensor):
            t = v.detach().clone()
            out[k] = nn.Parameter(t, requires_grad=v.requires_grad) if isinstance(v, nn.Parameter) else t
    return out


def _subclass_keys(side, path) -> list[tuple[str, str]]:
    """(key, class) of the tensors at ``path`` of a checkpoint that the file pickled as a tensor subclass."""
    refs = getattr(side, "references", None)
    if not refs or not hasattr(side, "get") or all(r.startswith(("torch.", "numpy.", "collections.")) for r in refs):
        return []
    try:
        obj = side.get(path)
    except Exception:
        return []
    if not isinstance(obj, Mapping):
        return []
    return [(k, v.subclass) for k, v in obj.items() if isinstance(getattr(v, "subclass", None), str)]


def _weights_only_refuses(side) -> list[str]:
    """The globals a checkpoint file names that ``torch.load(weights_only=True)`` does not allow (its own list and
    the ones added with ``torch.serialization.add_safe_globals``); empty when unknown."""
    refs = getattr(side, "references", None)
    if not refs or not hasattr(side, "load_object"):
        return []
    try:
        from torch import _weights_only_unpickler as wo
        allowed = set(wo._get_allowed_globals()) | set(wo._get_user_allowed_globals())
    except Exception:  # a torch without that table: say nothing rather than guess
        return []
    return [r for r in refs if r not in allowed]


def _compare_from_structural(res: _PassResult, ckpt: _CheckpointInput, index: _ModelIndex, *, assign: bool,
                            progress, should_stop) -> bool:
    """The values pass without running torch again: when every copy the structural pass recorded came straight from
    a checkpoint tensor (or from a tensor made during the load), read each of those tensors by key, one at a time,
    with ``pread``, and compare. No memory map, no file descriptor per tensor (a 50,000-tensor file would exhaust
    them). False when the answer needs torch to see real values (hooks that compute from them, views such as the 0.3
    scalar upgrade, assign=True, extra state, copy errors): the caller then runs the full values pass."""
    if ckpt.record_of is None or assign or res.extra_state_set or _meta_trouble(res.exc) or res.edited:
        return False
    if torch.__future__.get_swap_module_params_on_conversion():
        return False
    rec = res.recorder
    todo = []
    for dest_id, evs in rec.copies.items():
        if not evs:   # its only copy raised (recorded by torch in its message)
            continue
        ev = evs[-1]
        if ev.is_self:
            continue
        if not (ev.exact or ev.src_ref is not None) or any(not (e.exact or e.src_ref is not None or e.is_self)
                                                          for e in evs):
            return False
        todo.append((dest_id, ev))
    stat_ids = set()
    for key, slot in index.slots.items():
        if _is_running_stat(key) and isinstance(slot.orig, torch.Tensor):
            s = res.standin.standin_of.get(id(slot.orig))
            if s is not None:
                stat_ids.add(id(s))
    helper = _Recorder(res.standin, {}, compare=True)
    helper.record_of = ckpt.record_of
    results = []
    try:
        for i, (dest_id, ev) in enumerate(todo):
            if should_stop is not None and should_stop():
                raise Cancelled("simulation cancelled")
            orig = res.standin.orig_of[dest_id]
            if orig.is_meta:
                results.append((ev, False, None))
                continue
            tmp = helper._scratch(orig)
            if ev.src_ref is not None:
                tmp.copy_(ev.src_ref.detach())
            elif not (ev.src_dtype == orig.dtype and helper._read_key_into(ev.src_key, tmp)):
                src = ckpt.read_key(ev.src_key)  # one tensor, memory-mapped, dropped at once (casts, odd layouts)
                tmp.copy_(src)
                del src
            results.append((ev, not _same_bits(orig.detach(), tmp), summarize(tmp) if dest_id in stat_ids else None))
            if progress is not None:
                progress(i + 1, len(todo))
    except Cancelled:
        raise
    except Exception:  # a copy error torch would put in its message, or an unreadable tensor: ask torch itself
        return False
    finally:
        helper.close()
    for ev, changed, after in results:
        ev.changed, ev.after = changed, after
    if progress is not None and not todo:
        progress(0, 0)
    return True


_META_COPY = re.compile(r'While copying the parameter named "(.*?)", whose dimensions in the model are .*?an exception '
                        r"occurred : \('Cannot copy out of meta tensor; no data!',\)")


def _meta_copy_trouble(exc, ckpt: "_CheckpointInput") -> bool:
    """Did torch fail to copy a meta tensor of the structural pass that has data in the checkpoint (into a tensor
    code of the load created for real, e.g. a module set_extra_state registers)? Then torch must see the values."""
    if exc is None or "Cannot copy out of meta tensor" not in str(exc):
        return False
    return any(not ckpt.no_data(k) for k in _META_COPY.findall(str(exc)))


def _meta_trouble(exc) -> bool:
    if exc is None:
        return False
    text = str(exc)
    return isinstance(exc, (NotImplementedError,)) or "meta" in text and not text.startswith(_FINAL_PREFIX)


def structural_counts(model: nn.Module, sd_obj: Any, *, strict: bool = True, assign: bool = False,
                      index: "_ModelIndex | None" = None) -> dict:
    """Missing / unexpected / mismatched counts and the raise of one structural run (used by remap previews)."""
    index = index or _ModelIndex(model)
    res = _run_pass(model, sd_obj, strict=strict, assign=assign, compare=False, index=index)
    msg = str(res.exc) if res.exc is not None else ""
    mismatched = _mismatched_keys(msg, list(res.sd_infos) + list(index.slots))
    return {"missing": len(res.missing), "unexpected": len(res.unexpected), "mismatched": len(mismatched),
            "raises": res.exc is not None, "missing_keys": res.missing, "unexpected_keys": res.unexpected,
            "mismatched_keys": mismatched}


_MISMATCH = re.compile(r"(?:^|\n\t)size mismatch for (.*?): copying a param with shape torch\.Size")


def _mismatched_keys(message: str, candidates) -> list[str]:
    """Keys torch reported as size mismatches, in the candidates' order (one scan of the message)."""
    if "size mismatch for " not in message:
        return []
    found = set(_MISMATCH.findall(message))
    return [k for k in dict.fromkeys(candidates) if k in found]


def _is_running_stat(key: str) -> bool:
    return key.rsplit(".", 1)[-1] in RUNNING_STAT_NAMES


def _shape(v) -> tuple[int, ...] | None:
    return tuple(v.shape) if isinstance(v, torch.Tensor) else None


def _fmt_shape(s) -> str:
    return "[" + ", ".join(str(x) for x in s) + "]" if s is not None else "?"


def _module_desc(model: nn.Module, path: str) -> str:
    try:
        mod = model.get_submodule(path) if path else model
    except AttributeError:
        return f"module {path!r}"
    cls = type(mod).__name__
    return f"the model itself ({cls})" if not path else f"module '{path}' ({cls})"


def _deep_equal(a, b) -> bool | None:
    """Equality of extra-state values; None when it cannot be decided."""
    try:
        if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
            if not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)):
                return False
            if a.is_meta or b.is_meta:
                return None
            return _same_bits(a, b)
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            if list(a.keys()) != list(b.keys()):
                return False
            res = [_deep_equal(a[k], b[k]) for k in a]
            return None if None in res and False not in res else all(r is True for r in res)
        if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
            if type(a) is not type(b) or len(a) != len(b):
                return False
            res = [_deep_equal(x, y) for x, y in zip(a, b)]
            return None if None in res and False not in res else all(r is True for r in res)
        return bool(a == b) and type(a) is type(b)
    except Exception:
        return None


def _build_report(model, model_label, ckpt: _CheckpointInput, slots, res: _PassResult, meta_sd, *, strict, assign,
                  compared: bool) -> LoadReport:
    rep = LoadReport(model=model_label, checkpoint=ckpt.label, entry=list(ckpt.entry_path), strict=strict,
                     assign=assign, values_compared=compared)
    exc = res.exc
    message = str(exc) if exc is not None else ""
    if exc is not None:
        rep.raises = True
        rep.error_type = type(exc).__name__
        rep.error_message = message
        rep.aborted = not (res.finished and isinstance(exc, RuntimeError) and message.startswith(_FINAL_PREFIX))
    rep.missing_keys = list(res.missing)
    rep.unexpected_keys = list(res.unexpected)
    missing = set(rep.missing_keys)
    ck_infos = res.sd_infos
    if "size mismatch for " in message:
        mismatched = set(_mismatched_keys(message, list(slots) + list(ck_infos)))
        rep.mismatched_keys = [k for k in list(slots) + list(ck_infos) if k in mismatched]
        rep.mismatched_keys = list(dict.fromkeys(rep.mismatched_keys))
    else:
        mismatched = set()
    standin = res.standin
    rec = res.recorder
    standin_modules = standin.by_name
    used_sources: set[str] = set()
    loaded = 0

    after_cache: dict = {}

    def after_state() -> dict:
        """The copy's state dict after the load (only asked for entries computed by a module's own code)."""
        if "sd" not in after_cache:
            try:
                after_cache["sd"] = standin.module.state_dict()
            except Exception:
                after_cache["sd"] = {}
        return after_cache["sd"]

    def sd_key_set() -> set:
        if "keys" not in after_cache:
            after_cache["keys"] = set(res.sd_keys)
        return after_cache["keys"]

    tied: dict[int, list[str]] = {}
    for key, slot in slots.items():
        if isinstance(slot.orig, torch.Tensor):
            tied.setdefault(id(slot.orig), []).append(key)

    for key, slot in slots.items():
        kr = KeyReport(key=key, kind=slot.kind, status=MATCHED)
        orig = slot.orig
        if isinstance(orig, torch.Tensor) and torch.nn.parameter.is_lazy(orig):
            # a lazy module's uninitialized parameter: torch's lazy hook materializes it from the checkpoint
            s_now = _standin_slot_value(standin_modules, slot)
            done = isinstance(s_now, torch.Tensor) and not torch.nn.parameter.is_lazy(s_now)
            kr.changed = done
            if key in ck_infos:
                kr.shape_checkpoint, kr.dtype_checkpoint = ck_infos[key]
            kr.status = MISSING if key in missing else (CHANGED if done else NOT_LOADED)
            kr.source_key = key if done else None
            if done:
                loaded += 1
                used_sources.add(key)
            kr.explanation = ("Uninitialized parameter of a lazy module: "
                              + ("the load materializes it with the checkpoint's shape and values." if done else
                                 "it stays uninitialized."))
            rep.keys[key] = kr
            continue
        if isinstance(orig, torch.Tensor):
            kr.shape_model = tuple(orig.shape)
            kr.dtype_model = dtype_name(orig.dtype)
        if key in ck_infos:
            kr.shape_checkpoint, kr.dtype_checkpoint = ck_infos[key]
        loaded_here = False
        self_filled = False
        computed_slot = False
        changed: bool | None = False
        if slot.kind == "extra_state":
            mod_path = slot.module or ""
            if mod_path in res.extra_state_set:
                loaded_here = True
                kr.source_key = key
                used_sources.add(key)
                try:
                    mod = standin.module.get_submodule(mod_path) if mod_path else standin.module
                    now = mod.get_extra_state()
                    eq = _deep_equal(orig, now) if compared else None
                except Exception:
                    eq = None
                changed = (not eq) if eq is not None else None
        else:
            s_orig = standin.standin_of.get(id(orig)) if isinstance(orig, torch.Tensor) else None
            s_now = _standin_slot_value(standin_modules, slot)
            evs = rec.copies.get(id(s_orig), []) if s_orig is not None else []
            # torch.__future__ swap_module_params_on_conversion + assign: the slot keeps its object, whose contents
            # (and class) torch.utils.swap_tensors replaced by the checkpoint's tensor
            swapped_in = s_now is s_orig and not evs and s_orig is not None and \
                not isinstance(s_now, _StandInMixin) and not torch.nn.parameter.is_lazy(orig)
            if s_orig is not None and s_now is not None and (s_now is not s_orig or swapped_in):
                # assign=True (or a hook) put a new tensor in the slot
                loaded_here = True
                kr.source_key = rec.source_key(s_now) or key
                used_sources.add(kr.source_key)
                kr.dtype_checkpoint = dtype_name(s_now.dtype)
                kr.shape_checkpoint = tuple(s_now.shape)
                if tuple(s_now.shape) != tuple(orig.shape) or s_now.dtype != orig.dtype:
                    changed = True
                elif s_now.is_meta and not orig.is_meta and (compared or ckpt.no_data(kr.source_key)):
                    changed = True   # the checkpoint's meta tensor is installed: the model's values are gone
                    kr.no_data = True
                elif compared and not s_now.is_meta and not orig.is_meta:
                    changed = not _same_bits(orig.detach(), s_now.detach())
                    if _is_running_stat(key):
                        kr.before, kr.after = summarize(orig), summarize(s_now)
                else:
                    changed = None
            elif s_orig is not None:
                if evs:
                    ev = evs[-1]
                    loaded_here = True
                    kr.source_key = ev.src_key
                    for e in evs:
                        if e.src_key:
                            used_sources.add(e.src_key)
                    if ev.src_dtype != orig.dtype:
                        kr.dtype_cast = [dtype_name(ev.src_dtype), dtype_name(orig.dtype)]
                    if ev.src_key is not None and ev.src_key in ck_infos:
                        kr.shape_checkpoint, kr.dtype_checkpoint = ck_infos[ev.src_key]
                    else:
                        kr.shape_checkpoint, kr.dtype_checkpoint = tuple(ev.src_shape), dtype_name(ev.src_dtype)
                    if ev.is_self:
                        changed = False
                    elif compared:
                        changed = ev.changed
                    elif orig.is_meta:
                        changed = False
                    else:
                        changed = None
                    if _is_running_stat(key) and ev.after is not None:
                        kr.before, kr.after = summarize(orig), ev.after
                    if ev.is_self:  # BatchNorm without a version filled the key in with the model's own tensor
                        kr.source_key = None
                        self_filled = True
                if rec.inplace.get(id(s_orig)):
                    changed = None if changed is not True else True
                    rep.notes.append(f"{key}: modified in place ({', '.join(rec.inplace[id(s_orig)])}) by code that "
                                     "runs during the load (a hook); its value after the load cannot be predicted")
            elif slot.module is None:
                # an entry the module's own _save_to_state_dict computes (not a parameter or buffer): it changes when
                # the load writes into the module's own tensors, or when its own _load_from_state_dict sets what it
                # is computed from (quantized modules pack their weights)
                written, got = _computed_slot(model, standin, rec, key, compared)
                if not written and key not in missing and key in sd_key_set():
                    eq = _deep_equal(orig, after_state().get(key, _ABSENT))
                    written, got = True, (not eq if eq is not None else None)
                if written:
                    loaded_here = True
                    kr.source_key = key if key in ck_infos else None
                    if kr.source_key:
                        used_sources.add(key)
                    changed = got
                    computed_slot = True
        if changed is None:
            kr.certain = False
            changed = True
        kr.changed = bool(changed)
        # status
        if key in mismatched:
            kr.status = SHAPE_MISMATCH
        elif key in missing:
            kr.status = MISSING
        elif self_filled:
            kr.status = MATCHED
        elif loaded_here:
            loaded += 1
            # a running statistic is overwritten only when its value changes (0 -> 0 is no news)
            if _is_running_stat(key) and kr.kind == "buffer" and kr.changed:
                kr.running_stat = True
            if kr.running_stat:
                kr.status = RUNNING_STAT
            elif kr.dtype_cast:
                kr.status = DTYPE_CAST
            elif kr.changed:
                kr.status = CHANGED
            else:
                kr.status = MATCHED
        else:
            kr.status = NOT_LOADED
            kr.no_data = f'While copying the parameter named "{key}"' in message and ckpt.no_data(key)
        if self_filled and kr.status == MATCHED:
            kr.explanation = ("Not in the checkpoint, and the checkpoint's _metadata gives this BatchNorm no version "
                              "(or version 1): BatchNorm fills the key in with the model's own value, so torch does "
                              "not report it missing; the value does not change.")
        else:
            kr.explanation = _explain_key(kr, slot, rep, res, model, slots, tied, message)
        if computed_slot:
            kr.explanation = ("Not a parameter or buffer: the module's own _save_to_state_dict computes this entry "
                              "from its tensors, and its own _load_from_state_dict wrote into them"
                              + (" (their values change, so this entry does too)." if kr.changed else
                                 " (with identical values).") + ("" if kr.certain else
                                                                 " Whether the values differ could not be computed."))
        rep.keys[key] = kr

    # parameters and buffers of modules that code of the load registered (set_extra_state adding a child module):
    # torch walks into them in the same load
    if res.extra_state_set:
        for key, kind in _new_keys(standin.module, slots):
            if key in rep.keys:
                continue
            info = ck_infos.get(key) if key in ck_infos else None
            kr = KeyReport(key=key, kind=kind, status=MISSING if key in missing else
                           SHAPE_MISMATCH if key in mismatched else CHANGED if info is not None else NOT_LOADED,
                           changed=True, shape_checkpoint=info[0] if info else None,
                           dtype_checkpoint=info[1] if info else None)
            if kr.status == CHANGED:
                kr.source_key = key
                used_sources.add(key)
                loaded += 1
            kr.explanation = ("Not in the model before the load: code that runs during the load (set_extra_state) "
                              "registers the module that holds it, and torch then "
                              + ("loads it from the checkpoint." if kr.status == CHANGED else
                                 "reports it missing." if kr.status == MISSING else "does not load it."))
            rep.keys[key] = kr
    # unexpected keys: their reports are made when asked for (see KeyTable); text and JSON write them in bulk
    unex = list(rep.unexpected_keys)
    if not _all_str(unex):
        unex = [k for k in unex if isinstance(k, str)]
    table = rep.keys
    if len(table) and not set(table).isdisjoint(unex):
        unex = [k for k in unex if k not in table]
    if len(set(unex)) != len(unex):
        unex = list(dict.fromkeys(unex))
    # kinds: "parameter" but for running-statistic and extra-state names (unless the checkpoint holds a Parameter)
    special = {}
    for key in list(compress(unex, map(str.endswith, unex, repeat(_SPECIAL_ENDINGS)))):
        kind = "extra_state" if key.endswith(_EXTRA_STATE_SUFFIX) else \
            "buffer" if _is_running_stat(key) else "parameter"
        v = meta_sd.get(key) if isinstance(meta_sd, Mapping) else None
        if isinstance(v, nn.Parameter):
            kind = "parameter"
        if kind != "parameter":
            special[key] = kind
    table._add_unexpected(unex, _UnexpectedContext(model, message, ck_infos, special))
    for key in rep.mismatched_keys:
        if key not in rep.keys:  # a key a hook renamed onto a model tensor, or a checkpoint-only name
            info = ck_infos.get(key)
            rep.keys[key] = KeyReport(key=key, kind="parameter", status=SHAPE_MISMATCH,
                                      shape_checkpoint=info[0] if info else None,
                                      explanation=f"size mismatch for {key} (see the error message)")

    # checkpoint keys neither used, nor reported, nor a model key (set operations: 10**6 keys in a blink)
    rest = set(res.sd_keys)
    rest.difference_update(rep.unexpected_keys)
    rest -= used_sources
    rest -= mismatched
    rest.difference_update(slots)
    if rest:
        rep.ignored_keys = [k for k in res.sd_keys if k in rest]
    made = list(_made_items(rep.keys))
    rep.changed_keys = [k for k, r in made if r.changed and r.status != UNEXPECTED]
    rep.changed_buffers = [k for k in rep.changed_keys if rep.keys[k].kind == "buffer"]
    rep.running_stats = {k: {"before": r.before, "after": r.after} for k, r in made
                         if r.running_stat and r.before is not None}
    rep.explanation = _explain_load(rep, loaded)
    if rep.ignored_keys:
        rep.notes.append(f"{len(rep.ignored_keys)} checkpoint key(s) are dropped without being reported by torch "
                         f"(e.g. under a submodule set to None, or consumed by a hook): "
                         + ", ".join(map(str, rep.ignored_keys[:8])) + (" ..." if len(rep.ignored_keys) > 8 else ""))
    return rep


_SPECIAL_ENDINGS = (_EXTRA_STATE_SUFFIX,) + tuple(RUNNING_STAT_NAMES)


class _UnexpectedContext:
    """What the report of an unexpected key is made from (see :class:`KeyTable`)."""

    def __init__(self, model, message: str, ck_infos: Mapping, special: dict):
        self.model = model
        self.message = message
        self.ck_infos = ck_infos
        self.special = special     # key -> kind, where not "parameter"
        self._explainers: dict = {}

    def kinds(self, keys: list) -> list:
        return list(map(self.special.get, keys, repeat("parameter")))

    def report(self, key) -> KeyReport:
        info = self.ck_infos.get(key)
        return KeyReport(key=key, kind=self.special.get(key, "parameter"), status=UNEXPECTED,
                         shape_checkpoint=info[0] if info else None, dtype_checkpoint=info[1] if info else None,
                         explanation=self.explain([key])[0])

    def explain(self, keys: list) -> list[str]:
        """``_explain_unexpected(key, model, message)`` of each key, worked out once per module path."""
        cache = self._explainers
        if len(keys) > 1:  # keys all under one module path (a flat checkpoint): in bulk
            parts = list(map(str.rpartition, keys, repeat(".")))
            heads = set(map(itemgetter(0, 1), parts))
            if len(heads) == 1:
                path, dot = next(iter(heads))
                ex = cache.get(path + dot)
                if ex is None:
                    ex = cache[path + dot] = _unexpected_explainer(self.model, path.split(".") if dot else [])
                if type(ex) is str:
                    return [ex] * len(keys)
                leaves = list(map(itemgetter(2), parts))
                if ex[1].isdisjoint(leaves):
                    return list(map(str.__add__, map(ex[0].__add__, leaves), repeat("'.")))
        out = []
        append = out.append
        for key in keys:
            path, dot, leaf = key.rpartition(".")
            head = path + dot
            ex = cache.get(head)
            if ex is None:
                ex = cache[head] = _unexpected_explainer(self.model, path.split(".") if dot else [])
            if type(ex) is str:
                append(ex)
            elif leaf in ex[1]:
                append(_explain_unexpected(key, self.model, self.message))
            else:
                append(ex[0] + leaf + "'.")
        return out


def _module_at(model: nn.Module, parts: list[str]) -> tuple[nn.Module, list[str], str | None]:
    """The submodule at the module path ``parts`` and that path; or, where the walk stops (a submodule set to None,
    or missing), the explanation of why torch rejects the keys under it."""
    mod = model
    path: list[str] = []
    for p in parts:
        child = mod._modules.get(p) if p in mod._modules else None
        if p in mod._modules and child is None:
            return mod, path, f"'{'.'.join(path + [p])}' is None in the model; torch ignores keys under it."
        if child is None:
            where = _module_desc(model, ".".join(path))
            return mod, path, (f"Rejected by {where}: it has no submodule '{p}'. The model keeps its own value for "
                               "whatever this was meant to fill; check for a prefix or a renamed layer (see the "
                               "remap suggestions).")
        mod = child
        path.append(p)
    return mod, path, None


def _unexpected_explainer(model: nn.Module, parts: list[str]):
    """For keys under the module path ``parts``: the explanation itself when it does not depend on the key's last
    part, else ``(text before the leaf name, leaf names that need _explain_unexpected itself)``."""
    mod, path, stop = _module_at(model, parts)
    if stop is not None:
        return stop
    where = _module_desc(model, ".".join(path))
    special = set(RUNNING_STAT_NAMES) | {_EXTRA_STATE_SUFFIX} | set(mod._parameters) | set(mod._buffers) | \
        set(getattr(mod, "_non_persistent_buffers_set", ()))
    return (f"Rejected by {where}: it has no parameter or buffer '", special)


# ---- explanations -----------------------------------------------------------------------------------------------

class _Near:
    """Finds, for a missing key, the unexpected checkpoint key that most likely meant it (indexed once per report:
    a naive scan is quadratic and takes seconds on 2,000 prefixed keys)."""

    def __init__(self, candidates, leaves: set | None = None):
        """``leaves``: the last parts of the keys that will be asked about. Every rule pairs keys with the same last
        part, so the other candidates are left out of the index (10**6 unexpected keys, a few missing ones)."""
        self.all_candidates = candidates
        self.leaves = leaves
        if leaves is not None:
            if not _all_str(candidates):
                candidates = [c for c in candidates if isinstance(c, str)]
            candidates = compress(candidates, map(leaves.__contains__, map(itemgetter(2), map(
                str.rpartition, candidates, repeat(".")))))
        self.candidates = list(candidates)
        self.exact = set(self.candidates)
        self.by_suffix: dict[str, str] = {}
        self.by_leaf: dict[str, list[str]] = {}
        for c in self.candidates:
            if not isinstance(c, str):
                continue
            i = c.find(".")
            while i != -1:
                self.by_suffix.setdefault(c[i + 1:], c)
                i = c.find(".", i + 1)
            self.by_leaf.setdefault(c.rsplit(".", 1)[-1], []).append(c)

    def __call__(self, key: str) -> str | None:
        if self.leaves is not None and key.rsplit(".", 1)[-1] not in self.leaves:
            self.__init__(self.all_candidates)   # a key nobody announced: index everything
        hit = self.by_suffix.get(key)            # the checkpoint's key carries an extra prefix
        if hit is not None:
            return hit
        i = key.find(".")
        while i != -1:                           # the model's key carries an extra prefix
            if key[i + 1:] in self.exact:
                return key[i + 1:]
            i = key.find(".", i + 1)
        for c in self.by_leaf.get(key.rsplit(".", 1)[-1], ())[:200]:
            if c != key and within_one_edit(c, key):
                return c
        return None


def _near(key: str, candidates) -> str | None:
    return _Near(candidates)(key)


def _explain_key(kr: KeyReport, slot: _Slot, rep: LoadReport, res: _PassResult, model, slots, tied, message) -> str:
    key = kr.key
    st = kr.status
    src = f"the checkpoint's '{kr.source_key}'" if kr.source_key and kr.source_key != key else "the checkpoint"
    renamed = f" (a load hook renamed it from '{kr.source_key}')" if kr.source_key and kr.source_key != key else ""
    aliases = [k for k in tied.get(id(slot.orig), []) if k != key] if isinstance(slot.orig, torch.Tensor) else []
    if st == SHAPE_MISMATCH:
        ck = kr.shape_checkpoint
        m = kr.shape_model
        hint = ""
        if ck is not None and m is not None and len(ck) == len(m) == 2 and tuple(reversed(ck)) == tuple(m):
            hint = " The shapes are transposed: the checkpoint may come from a layer that stores the weight the " \
                   "other way round (e.g. Conv1D vs Linear); transpose it before loading."
        elif ck is not None and m is not None and len(ck) == len(m) and ck[1:] == m[1:]:
            hint = (f" Only the first dimension differs ({ck[0]} vs {m[0]}): a different number of outputs (classes, "
                    "vocabulary, channels). Build the model with the checkpoint's size, or drop this key from the "
                    "checkpoint and retrain that layer.")
        return (f"The checkpoint has shape {_fmt_shape(ck)}, the model {_fmt_shape(m)}: torch refuses to copy it and "
                f"raises, even with strict=False; the model keeps its current value.{hint}")
    if st == MISSING:
        near_index = getattr(rep, "_near_index", None)
        if near_index is None:
            near_index = _Near(rep.unexpected_keys, leaves={k.rsplit(".", 1)[-1] for k in rep.missing_keys
                                                            if isinstance(k, str)})
            object.__setattr__(rep, "_near_index", near_index)
        near = near_index(key)
        text = "Not in the checkpoint: the model keeps its current (initial) value."
        if kr.changed and aliases:
            text = (f"Not in the checkpoint, but this tensor is shared (tied) with '{', '.join(aliases)}', which is "
                    f"loaded, so its value changes anyway; torch still lists it as missing.")
        if key.endswith("num_batches_tracked"):
            text += (" The checkpoint's _metadata gives this BatchNorm version 2 or later, so torch requires "
                     "num_batches_tracked; a checkpoint without _metadata (e.g. .safetensors) or of version 1 would "
                     "have it filled in silently.")
        if near:
            text += f" The checkpoint has '{near}' instead: see the remap suggestions."
        if rep.strict:
            text += " With strict=True this alone makes load_state_dict raise."
        return text
    if st == NOT_LOADED:
        if kr.no_data:
            return ("The checkpoint holds no data for this key: it was saved from the meta device (a shape and a "
                    "dtype, no values). torch cannot copy out of a meta tensor, so the model keeps its current value "
                    "and the load raises. assign=True would put the meta tensor itself into the model (no values "
                    "either): re-save the checkpoint from a model whose weights are materialized.")
        if f'While copying the parameter named "{key}"' in message or f'While swapping the parameter named "{key}"' \
                in message:
            return ("The checkpoint's value for this key cannot be copied (see the error message: not a tensor, or a "
                    "copy error); the model keeps its current value and the load raises.")
        if message.startswith(_NOT_A_MAPPING):
            return "Not loaded: load_state_dict raises before loading anything (it was not given a mapping)."
        if rep.aborted:
            return ("Would load, but the load stopped part way with an exception before reaching this module; the "
                    "model keeps its current value.")
        return ("Not loaded and not reported missing by torch (a hook or a custom _load_from_state_dict skipped it); "
                "the model keeps its current value.")
    parts = []
    if st == DTYPE_CAST:
        f, t = kr.dtype_cast
        parts.append(f"Loads from {src}{renamed}, stored as {f}; copy_ converts it to the model's {t} (the model's "
                     f"dtype does not change; the values carry only {f} precision). Pass assign=True to keep {f}.")
    elif kr.running_stat:
        b, a = kr.before, kr.after
        what = "replaced by the checkpoint's" + (" meta tensor, which holds no data (saved from the meta device)"
                                                 if kr.no_data else "")
        if b and a and "mean" in b and "mean" in a:
            what += f" (mean {b['mean']:.4g} -> {a['mean']:.4g})"
        elif b and a and "value" in b and "value" in a:
            what += f" ({b['value']} -> {a['value']})"
        if kr.changed and key.endswith("num_batches_tracked"):
            parts.append(f"BatchNorm's count of training batches {what}{renamed}; it sets the averaging factor "
                         "when momentum=None and does not affect eval() outputs.")
        elif kr.changed:
            parts.append(f"Normalisation running statistic {what}{renamed}; in eval() mode the layer normalises "
                         "with these values, so outputs change.")
        else:
            parts.append(f"Normalisation running statistic loaded from {src}{renamed}; identical to the model's.")
    elif st == CHANGED:
        if rep.assign and kr.dtype_checkpoint and kr.dtype_checkpoint != kr.dtype_model:
            parts.append(f"assign=True replaces the model's {kr.dtype_model} tensor by the checkpoint's "
                         f"{kr.dtype_checkpoint} tensor: the model's dtype becomes {kr.dtype_checkpoint}.")
        elif rep.assign and kr.no_data:
            parts.append(f"assign=True puts {src}'s tensor itself into the model{renamed}: it holds no data (it was "
                         "saved from the meta device), so after the load this is a meta tensor with no values — any "
                         "forward pass fails until it is materialized.")
        elif rep.assign:
            parts.append(f"assign=True puts {src}'s tensor itself into the model{renamed}.")
        else:
            parts.append(f"Loads from {src}{renamed}; the model's current value is replaced.")
    else:
        parts.append(f"Loads from {src}{renamed}; identical to the model's current value.")
    if not kr.certain:
        parts.append("(Whether the value differs could not be computed; assumed changed.)")
    if aliases:
        parts.append(f"Shared (tied) with '{', '.join(aliases)}': whichever key torch loads last sets both.")
    return " ".join(parts)


def _explain_unexpected(key: str, model: nn.Module, message: str) -> str:
    parts = key.split(".")
    mod, path, stop = _module_at(model, parts[:-1])
    if stop is not None:
        return stop
    leaf = parts[-1]
    where = _module_desc(model, ".".join(path))
    if leaf in RUNNING_STAT_NAMES and getattr(mod, "track_running_stats", True) is False:
        return (f"Rejected by {where}: it has track_running_stats=False, so it keeps no running statistics; the "
                "checkpoint's statistics are not used (the checkpoint's layer tracked them: the model normalises "
                "with batch statistics instead, also in eval()).")
    if leaf in mod._parameters and mod._parameters[leaf] is None:
        return f"Rejected by {where}: its parameter '{leaf}' is registered as None, so torch refuses any value for it."
    if leaf in mod._buffers and mod._buffers[leaf] is None:
        return f"Rejected by {where}: its buffer '{leaf}' is registered as None, so torch refuses any value for it."
    if leaf in getattr(mod, "_non_persistent_buffers_set", ()):
        return (f"Rejected by {where}: '{leaf}' is a non-persistent buffer (register_buffer(..., persistent=False)); "
                "it is never loaded from a state dict.")
    if leaf == _EXTRA_STATE_SUFFIX:
        return f"Rejected by {where}: it does not implement set_extra_state, so it takes no extra state."
    return f"Rejected by {where}: it has no parameter or buffer '{leaf}'."


def _explain_load(rep: LoadReport, loaded: int) -> str:
    n_changed = len([k for k in rep.changed_keys if rep.keys[k].status not in (MISSING, UNEXPECTED)])
    made = [r for _, r in _made_items(rep.keys)]   # the reports not made yet are all unexpected keys
    casts = sum(1 for r in made if r.status == DTYPE_CAST)
    stats = sum(1 for r in made if r.status == RUNNING_STAT)
    total = sum(1 for r in made if r.status != UNEXPECTED)
    pieces = []
    head = (f"{loaded} of {total} model keys load from the checkpoint ({n_changed} change value"
            + (f", {casts} with a dtype conversion" if casts else "")
            + (f", {stats} BatchNorm/norm running statistics replaced" if stats else "") + ").")
    if rep.raises and rep.error_type == "TypeError" and (rep.error_message or "").startswith(_NOT_A_MAPPING):
        pieces.append("load_state_dict raises TypeError before loading anything: the object passed is not a mapping "
                      "(a whole pickled model is not its state dict: pass model.state_dict(), which is what the "
                      "default entry of such a file simulates). The model is unchanged.")
    elif rep.raises and (rep.error_message or "").startswith("Can't access the shape of an uninitialized parameter"):
        pieces.append("load_state_dict raises RuntimeError: the checkpoint holds uninitialized parameters of a lazy "
                      "module (saved before its first forward pass: no shape, no values), and torch cannot load one "
                      "into an initialized parameter. " + head.replace("load from", "are already loaded from")
                      + " Re-save the checkpoint after a forward pass of the lazy model.")
    elif not rep.raises:
        pieces.append("The load succeeds. " + head)
        if rep.missing_keys:
            pieces.append(f"{len(rep.missing_keys)} missing key(s) keep their current (initial) values — the model is "
                          "only partly loaded, silently (strict=False).")
        if rep.unexpected_keys:
            pieces.append(f"{len(rep.unexpected_keys)} unexpected checkpoint key(s) are ignored.")
    elif rep.aborted:
        pieces.append(f"load_state_dict raises {rep.error_type} part way through (raised by code that runs during the "
                      f"load, e.g. a hook). " + head.replace("load from", "are already loaded from")
                      + " The model is left half-loaded: those copies are not undone.")
    else:
        reasons = []
        no_data = sum(1 for r in made if r.no_data)
        if no_data:
            reasons.append(f"{no_data} key(s) whose checkpoint tensor holds no data (saved from the meta device: "
                           "torch cannot copy out of a meta tensor)")
        if rep.mismatched_keys:
            reasons.append(f"{len(rep.mismatched_keys)} size mismatch(es) (these raise even with strict=False)")
        if rep.strict and rep.missing_keys:
            reasons.append(f"{len(rep.missing_keys)} missing key(s)")
        if rep.strict and rep.unexpected_keys:
            reasons.append(f"{len(rep.unexpected_keys)} unexpected key(s)")
        why = ", ".join(reasons) if reasons else "the errors in the message"
        pieces.append(f"load_state_dict raises {rep.error_type} because of {why}. It raises only after copying: "
                      + head.replace("load from", "are already loaded from")
                      + (" The model is left half-loaded, not unchanged." if n_changed else
                         " No value changes, so the model is effectively unchanged."))
        if rep.strict and not rep.mismatched_keys and not no_data:
            pieces.append("With strict=False the same call would return the missing and unexpected keys instead of "
                          "raising.")
    return " ".join(pieces)


LINE_CUT = 1000   # characters of one line of torch's error message shown when the listing is cut


def render_text(rep: LoadReport, out, *, verbose: bool = False, listed: int | None = None) -> None:
    """The human-readable report of the ``simulate`` command. ``listed``: keys listed per status (None: every one);
    the rest are counted in one line per status, and a line of torch's error message longer than ``LINE_CUT``
    characters is cut at a key (a load with 10**6 unexpected keys names every one of them in that message)."""
    w = out.write
    w(f"model:      {rep.model}\n")
    w(f"checkpoint: {rep.checkpoint}" + (f"  [entry {'/'.join(rep.entry)}]" if rep.entry else "") + "\n")
    w(f"call:       model.load_state_dict(sd, strict={rep.strict}, assign={rep.assign})\n\n")
    if rep.raises:
        w(f"WOULD RAISE {rep.error_type}:\n")
        for line in (rep.error_message or "").splitlines():
            w(f"    {line if listed is None else _cut_line(line)}\n")
    else:
        w(f"would succeed: missing_keys={len(rep.missing_keys)}, unexpected_keys={len(rep.unexpected_keys)}\n")
    w("\n" + rep.explanation + "\n\n")
    keys = rep.keys
    width = min(60, max(max(map(len, keys), default=0), 10))
    runs = keys.runs() if isinstance(keys, KeyTable) else [(False, list(keys.items()))]
    shown: dict[str, int] = {}   # status -> keys of that status met so far
    for lazy, run in runs:
        if lazy:  # unexpected keys without a report yet: the same lines, written in bulk
            before = shown.get(UNEXPECTED, 0)
            shown[UNEXPECTED] = before + len(run)
            if listed is not None:
                run = run[:max(listed - before, 0)]
            if run:
                _write_unexpected(w, run, keys._ctx, width)
            continue
        for key, r in run:
            n = shown[r.status] = shown.get(r.status, 0) + 1
            if listed is not None and n > listed:
                continue
            flag = "*" if r.changed and r.status != UNEXPECTED else " "
            cast = f" {r.dtype_cast[0]}->{r.dtype_cast[1]}" if r.dtype_cast else ""
            w(f" {flag} {key:<{width}} {r.status:<26}{cast}\n")
            if verbose or r.status not in (MATCHED, CHANGED):
                w(f"     {r.explanation}\n")
    for status, n in shown.items():
        if listed is not None and n > listed:
            w(f"   … and {n - listed:,} more {status} keys (--all lists them, --json gives every key)\n")
    w(f"\n(* = value, dtype or shape changes)  changed: {len(rep.changed_keys)}, "
      f"changed buffers: {len(rep.changed_buffers)}\n")
    if rep.running_stats:
        w("running statistics overwritten:\n")
        for k, v in rep.running_stats.items():
            w(f"  {k}: {_brief(v['before'])} -> {_brief(v['after'])}\n")
    for note in rep.notes:
        w(f"note: {note}\n")
    fixes = [s for s in rep.suggestions if not s.preview.get("raises")]
    partial = [s for s in rep.suggestions if s.preview.get("raises")]
    for title, group in (("suggested fixes (preview with the fix applied)", fixes),
                         ("partial fixes: the load would still raise with these applied", partial)):
        if not group:
            continue
        w(f"\n{title}:\n")
        for s in group:
            w(f"  - {s.title}: {s.preview_text()}\n")
            if verbose:
                for line in s.snippet.splitlines():
                    w(f"      {line}\n")


def _cut_line(line: str) -> str:
    """``line`` whole up to ``LINE_CUT`` characters, else cut after a quoted key (torch's lists read
    ``"a", "b", ...``) and the number of keys left out."""
    if len(line) <= LINE_CUT:
        return line
    at = line.rfind('", "', 0, LINE_CUT)
    if at < 0:
        return f"{line[:LINE_CUT]} … ({len(line) - LINE_CUT:,} more characters; --all prints the whole message)"
    more = line.count('", "', at)
    return f"{line[:at + 1]}, … and {more:,} more (--all prints the whole message)"


def _write_unexpected(w, keys: list, ctx: _UnexpectedContext, width: int, chunk: int = 65536) -> None:
    """What render_text writes for each of these keys' reports (status unexpected, unchanged, no cast)."""
    was_enabled = gc.isenabled()
    gc.disable()  # millions of short-lived strings: with 10**6 tensors alive, each full GC pass costs more than them
    try:
        _write_unexpected_chunks(w, keys, ctx, width, chunk)
    finally:
        if was_enabled:
            gc.enable()


def _write_unexpected_chunks(w, keys: list, ctx: _UnexpectedContext, width: int, chunk: int) -> None:
    mid = f" {UNEXPECTED:<26}\n     "
    for at in range(0, len(keys), chunk):
        part = keys[at:at + chunk]
        expl = ctx.explain(part)
        # "   {key:<width}{mid}{explanation}\n" for each key, without a Python frame per key
        padded = map(str.ljust, part, repeat(width)) if _all_str(part) else \
            [f"{k:<{width}}" for k in part]
        w("".join(chain.from_iterable(zip(repeat("   "), padded, repeat(mid), expl, repeat("\n")))))


def _brief(summary: dict | None) -> str:
    if not summary:
        return "?"
    if "value" in summary:
        return str(summary["value"])
    if "mean" in summary:
        return f"mean {summary['mean']:.4g} [{summary['min']:.4g}, {summary['max']:.4g}]"
    return _fmt_shape(summary.get("shape"))


__all__ = ["simulate_load", "LoadReport", "KeyReport", "structural_counts", "summarize", "render_text",
           "SimulationError"]
