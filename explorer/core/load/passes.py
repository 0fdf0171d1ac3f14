"""One run of torch's own ``load_state_dict`` on a stand-in of the model (:func:`run_pass`), the value comparison
without running torch again (:func:`compare_from_structural`), and the counts of one structural run that remap
previews use (:func:`structural_counts`)."""
from __future__ import annotations

import re
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from itertools import compress, repeat
from operator import attrgetter
from typing import Any

import torch
import torch.nn as nn

from ...errors import Cancelled
from ..records import PlainStateDict, dtype_name
from .index import ModelIndex, is_running_stat
from .inputs import CheckpointInput, own_metadata
from .recorder import IdIndex, Recorder, same_bits, summarize
from .standins import CURRENT, StandIn

FINAL_PREFIX = "Error(s) in loading state_dict for "   # how torch's message of a finished load that raises begins
_SHAPE_OF = attrgetter("shape")
_is_lazy = torch.nn.parameter.is_lazy
_LAZY = torch.nn.parameter.UninitializedTensorMixin


def all_str(keys) -> bool:
    """Every item is exactly a ``str`` (one C pass)."""
    return set(map(type, keys)) <= {str}


# ---- one run of torch's load_state_dict on a stand-in --------------------------------------------------------------

@dataclass
class PassResult:
    standin: StandIn
    recorder: Recorder
    exc: BaseException | None
    returned: Any
    missing: list[str]
    unexpected: list[str]
    finished: bool                 # torch walked every module and ran the root's post hooks
    extra_state_set: dict[str, Any]
    sd_keys: list[str]             # keys of the object handed to torch, in order
    sd_infos: dict[str, tuple]     # key -> (shape, dtype) of the object handed to torch
    edited: list = field(default_factory=list)   # checkpoint keys whose tensor code changed in place during the load


def run_pass(model: nn.Module, sd_obj: Any, *, strict: bool, assign: bool, compare: bool,
             progress=None, total: int = 0, should_stop=None, want_summary_keys=(),
             index: "ModelIndex | None" = None, record_of=None, no_data=None) -> PassResult:
    """Run torch's ``load_state_dict(sd_obj)`` on a fresh stand-in of ``model`` and record what it does."""
    index = index or ModelIndex(model)
    sd_obj, sd_keys, src_keys, sd_infos = _handed(sd_obj)
    standin = StandIn(model, index)
    root = standin.module
    state: dict[str, Any] = {"missing": None, "unexpected": None, "finished": False}
    extra_state_set = _watch(root, standin, index, state)
    recorder = Recorder(standin, src_keys, compare=compare, progress=progress, total=total,
                        should_stop=should_stop, want_summary=_summary_ids(root, want_summary_keys))
    recorder.record_of = record_of
    recorder.no_data = no_data
    exc = None
    returned = None
    with warnings.catch_warnings():
        # the value pass copies real checkpoint tensors into meta stand-ins; torch warns that this is a no-op
        warnings.filterwarnings("ignore", message=r"for .*: copying from a non-meta parameter in the checkpoint")
        previous = getattr(CURRENT, "recorder", None)
        CURRENT.recorder = recorder
        try:
            returned = root.load_state_dict(sd_obj, strict=strict, assign=assign)
        except Exception as e:  # what torch (or a hook) raises: part of the answer
            exc = e
        finally:
            CURRENT.recorder = previous
            recorder.close()
    if recorder.cancelled:
        raise Cancelled("simulation cancelled")
    edited = src_keys.edited() if isinstance(src_keys, IdIndex) else []
    missing = list(state["missing"] or [])
    unexpected = list(state["unexpected"] or [])
    if returned is not None:
        missing, unexpected = list(returned.missing_keys), list(returned.unexpected_keys)
    return PassResult(standin, recorder, exc, returned, missing, unexpected, bool(state["finished"]),
                      extra_state_set, sd_keys, sd_infos, edited)


def _handed(sd_obj: Any) -> tuple[Any, list, Any, Mapping]:
    """``(object handed to torch, its keys, id(tensor) -> key, key -> (shape, dtype))``. A mapping with
    ``_metadata`` is handed as a copy with a private ``_metadata``: torch copies the mapping into its own OrderedDict
    first, so the type of this copy is not seen (a dict copies 10**6 items many times faster than an OrderedDict)."""
    if isinstance(sd_obj, Mapping) and getattr(sd_obj, "_metadata", None) is not None:
        meta = sd_obj._metadata
        sd_obj = PlainStateDict(sd_obj)
        sd_obj._metadata = meta  # type: ignore[attr-defined]
        own_metadata(sd_obj)
    if not isinstance(sd_obj, Mapping):
        return sd_obj, [], {}, {}
    # in bulk (C iterators, no Python frame per key): 10**6 keys cost a fraction of a second
    sd_keys = list(sd_obj.keys())
    vals = list(sd_obj.values())
    mask = list(map(isinstance, vals, repeat(torch.Tensor)))
    if all(mask):
        t_keys, t_vals = sd_keys, vals
    else:
        t_keys, t_vals = list(compress(sd_keys, mask)), list(compress(vals, mask))
    return sd_obj, sd_keys, IdIndex(t_keys, t_vals), Infos(sd_obj, t_keys, t_vals)


def _watch(root: nn.Module, standin: StandIn, index: ModelIndex, state: dict) -> dict[str, Any]:
    """Hooks on the stand-in that fill ``state`` (torch's missing/unexpected lists, whether the load finished); the
    returned dict gets module path -> value of every ``set_extra_state`` call."""
    extra_state_set: dict[str, Any] = {}

    def pre(module, state_dict, pfx, local_metadata, strict_, missing_keys, unexpected_keys, error_msgs):
        if state["missing"] is None:
            state["missing"], state["unexpected"] = missing_keys, unexpected_keys

    # the root's pre-hook runs first of all: it hands over torch's missing/unexpected lists (kept even if the load
    # stops part way); registered last, it runs after the root's own pre-hooks
    root.register_load_state_dict_pre_hook(pre)
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
    root.register_load_state_dict_post_hook(post)
    return extra_state_set


def _summary_ids(root: nn.Module, keys) -> set[int]:
    """ids of the stand-in tensors at ``keys`` (running statistics, whose values the report summarises)."""
    if not keys:
        return set()
    by_key = root.state_dict(keep_vars=True)
    return {id(v) for v in map(by_key.get, keys) if isinstance(v, torch.Tensor)}


class Infos(Mapping):
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
        if not all_str(keys):
            mask = [isinstance(k, str) for k in keys]
            keys, vals = list(compress(keys, mask)), list(compress(vals, mask))
        ids = list(map(id, vals))
        distinct = dict(zip(ids, vals))
        if len(distinct) * 2 > len(ids):
            return dict(zip(keys, map(tuple, map(_SHAPE_OF, vals))))
        shape_of = {i: tuple(v.shape) for i, v in distinct.items()}
        return dict(zip(keys, map(shape_of.__getitem__, ids)))


def compare_from_structural(res: PassResult, ckpt: CheckpointInput, index: ModelIndex, *, assign: bool,
                            progress, should_stop) -> bool:
    """The values pass without running torch again: when every copy the structural pass recorded came straight from
    a checkpoint tensor (or from a tensor made during the load), read each of those tensors by key, one at a time,
    with ``pread``, and compare. No memory map, no file descriptor per tensor (a 50,000-tensor file would exhaust
    them). False when the answer needs torch to see real values (hooks that compute from them, views such as the 0.3
    scalar upgrade, assign=True, extra state, copy errors): the caller then runs the full values pass."""
    if ckpt.record_of is None or assign or res.extra_state_set or meta_trouble(res.exc) or res.edited:
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
        if is_running_stat(key) and isinstance(slot.orig, torch.Tensor):
            s = res.standin.standin_of.get(id(slot.orig))
            if s is not None:
                stat_ids.add(id(s))
    helper = Recorder(res.standin, {}, compare=True)
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
            tmp = helper.scratch(orig)
            if ev.src_ref is not None:
                tmp.copy_(ev.src_ref.detach())
            elif not (ev.src_dtype == orig.dtype and helper.read_key_into(ev.src_key, tmp)):
                src = ckpt.read_key(ev.src_key)  # one tensor, memory-mapped, dropped at once (casts, odd layouts)
                tmp.copy_(src)
                del src
            results.append((ev, not same_bits(orig.detach(), tmp), summarize(tmp) if dest_id in stat_ids else None))
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


def meta_copy_trouble(exc, ckpt: "CheckpointInput") -> bool:
    """Did torch fail to copy a meta tensor of the structural pass that has data in the checkpoint (into a tensor
    code of the load created for real, e.g. a module set_extra_state registers)? Then torch must see the values."""
    if exc is None or "Cannot copy out of meta tensor" not in str(exc):
        return False
    return any(not ckpt.no_data(k) for k in _META_COPY.findall(str(exc)))


def meta_trouble(exc) -> bool:
    if exc is None:
        return False
    text = str(exc)
    return isinstance(exc, (NotImplementedError,)) or "meta" in text and not text.startswith(FINAL_PREFIX)


def structural_counts(model: nn.Module, sd_obj: Any, *, strict: bool = True, assign: bool = False,
                      index: "ModelIndex | None" = None) -> dict:
    """Missing / unexpected / mismatched counts and the raise of one structural run (used by remap previews)."""
    index = index or ModelIndex(model)
    res = run_pass(model, sd_obj, strict=strict, assign=assign, compare=False, index=index)
    msg = str(res.exc) if res.exc is not None else ""
    mismatched = mismatched_keys(msg, list(res.sd_infos) + list(index.slots))
    return {"missing": len(res.missing), "unexpected": len(res.unexpected), "mismatched": len(mismatched),
            "raises": res.exc is not None, "missing_keys": res.missing, "unexpected_keys": res.unexpected,
            "mismatched_keys": mismatched}


_MISMATCH = re.compile(r"(?:^|\n\t)size mismatch for (.*?): copying a param with shape torch\.Size")


def mismatched_keys(message: str, candidates) -> list[str]:
    """Keys torch reported as size mismatches, in the candidates' order (one scan of the message)."""
    if "size mismatch for " not in message:
        return []
    found = set(_MISMATCH.findall(message))
    return [k for k in dict.fromkeys(candidates) if k in found]
