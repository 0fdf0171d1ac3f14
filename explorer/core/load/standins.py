"""The stand-in: a data-less copy of the model on which torch's own ``load_state_dict`` runs.

Its parameters and buffers are meta tensors of the same shape and dtype (tensors of at most ``SMALL`` elements, such
as BatchNorm's ``num_batches_tracked``, are real clones, because torch's own code looks at their device), instances
of small ``Parameter``/``Tensor`` subclasses whose ``copy_`` records (destination, source) into the running pass's
recorder (``CURRENT.recorder``) instead of copying, and whose common in-place methods record that a hook changed
them. Hooks whose closures hold the model's modules or tensors are rebound to the copy's.
"""
from __future__ import annotations

import copy
import threading
import types
from collections import OrderedDict
from typing import Any

import torch
import torch.nn as nn

from ...errors import SimulationError
from ..meta import meta_like
from .index import ModelIndex

SMALL = 1  # stand-in tensors with at most this many elements are real clones (torch inspects their device)
TENSOR_DATA = torch._C.TensorBase.data   # the descriptor of ``Tensor.data``
CURRENT = threading.local()   # the recorder of the pass running on this thread
_INPLACE_NAMES = ("__setitem__", "add_", "sub_", "mul_", "div_", "fill_", "zero_", "clamp_", "normal_", "uniform_",
                  "copysign_", "abs_", "neg_", "t_", "transpose_", "resize_", "set_", "requires_grad_", "lerp_",
                  "addcmul_", "addcdiv_", "exp_", "log_", "sqrt_", "pow_", "masked_fill_", "index_copy_",
                  "index_fill_", "scatter_", "bernoulli_", "kaiming_uniform_", "trunc_normal_", "fill_diagonal_")


class StandInMixin:
    """Stand-in tensors record ``copy_`` (and in-place changes) into the running pass's recorder instead of
    performing them. A method override costs nothing on other tensors (a ``TorchFunctionMode`` would see every
    torch call of the load and doubles its time)."""

    __slots__ = ()

    def copy_(self, src, non_blocking=False):
        rec = getattr(CURRENT, "recorder", None)
        if rec is not None and id(self) in rec.standin.tracked:
            return rec.on_copy(self, src)
        return torch.Tensor.copy_(self, src, non_blocking)

    @property
    def data(self):
        rec = getattr(CURRENT, "recorder", None)
        if rec is not None and id(self) in rec.standin.tracked and id(self) not in rec.standin.alias_of:
            return rec.standin.alias(self)
        return TENSOR_DATA.__get__(self)

    @data.setter
    def data(self, value):
        TENSOR_DATA.__set__(self, value)


def _inplace(name):
    base = getattr(torch.Tensor, name, None)
    if base is None:
        return None

    def method(self, *args, **kwargs):
        rec = getattr(CURRENT, "recorder", None)
        if rec is not None and id(self) in rec.standin.tracked and name != "requires_grad_":
            target = rec.standin.alias_of.get(id(self), self)
            rec.inplace.setdefault(id(target), []).append(name)
        return base(self, *args, **kwargs)
    method.__name__ = name
    return method


for _name in _INPLACE_NAMES:
    _m = _inplace(_name)
    if _m is not None:
        setattr(StandInMixin, _name, _m)


class _StandInParameter(StandInMixin, nn.Parameter):
    pass


class StandInBuffer(StandInMixin, torch.Tensor):
    __torch_function__ = torch._C._disabled_torch_function_impl


class _LazyStandInParameter(nn.UninitializedParameter):
    cls_to_become = _StandInParameter


class _LazyStandInBuffer(nn.UninitializedBuffer):
    cls_to_become = StandInBuffer


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
    if t.numel() <= SMALL or t.is_meta or t.layout != torch.strided or t.is_quantized:
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
    return torch.Tensor._make_subclass(StandInBuffer, data, False)


class StandIn:
    """A data-less copy of the model; ``orig_of`` maps each stand-in tensor (by id) back to the model's tensor."""

    def __init__(self, model: nn.Module, index: "ModelIndex | None" = None):
        index = index or ModelIndex(model)
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
        data = TENSOR_DATA.__get__(standin)
        out = torch.Tensor._make_subclass(StandInBuffer, data, False)
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
