"""The model's side of a simulated load: its module tree walked once (:class:`ModelIndex`), the slots of its state
dict (:class:`Slot`: which module and registry holds each key) and a snapshot that proves the model unchanged."""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from itertools import chain
from typing import Any

import torch
import torch.nn as nn

from ..records import RUNNING_STAT_NAMES

EXTRA_STATE_SUFFIX = "_extra_state"   # torch.nn.modules.module._EXTRA_STATE_KEY_SUFFIX


class ModelIndex:
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
            keys.update(prefix + k for k in chain(m._parameters, m._buffers, (EXTRA_STATE_SUFFIX,)))
        return keys, tuple(prefixes)

    @property
    def slots(self) -> "OrderedDict[str, Slot]":
        if self._slots is None:
            self._slots = model_slots(self.model, self)
        return self._slots


def _torch_code(fn) -> bool:
    """Is ``fn`` torch's own code (not a model's)?"""
    return (getattr(fn, "__module__", None) or "").startswith("torch.")


def _own_load_code(m: nn.Module, base) -> bool:
    """Does ``m`` load with code other than ``nn.Module``'s: its class's ``_load_from_state_dict``, or one set on
    the instance (which torch calls first)?"""
    return "_load_from_state_dict" in vars(m) or type(m)._load_from_state_dict is not base


# ---- the model's keys -------------------------------------------------------------------------------------------

@dataclass
class Slot:
    key: str
    kind: str
    module: str | None       # module path holding the tensor (None for extra state / unknown)
    name: str | None
    orig: Any                # the model's tensor (or extra state value)


def model_slots(model: nn.Module, index: "ModelIndex | None" = None) -> "OrderedDict[str, Slot]":
    index = index or ModelIndex(model)
    sd = model.state_dict(keep_vars=True)
    param_ids = {id(p) for m in index.unique for p in m._parameters.values() if p is not None}
    where: dict[str, tuple[str, str]] = {}
    for mname, mod in index.named:
        for n in list(mod._parameters) + list(mod._buffers):
            where[f"{mname}.{n}" if mname else n] = (mname, n)
    out: OrderedDict[str, Slot] = OrderedDict()
    for key, value in sd.items():
        if key.endswith(EXTRA_STATE_SUFFIX) and (not isinstance(value, torch.Tensor) or key not in where):
            mname = key[: -len(EXTRA_STATE_SUFFIX)].rstrip(".")
            out[key] = Slot(key, "extra_state", mname, None, value)
            continue
        mname, n = where.get(key, (None, None))
        kind = "parameter" if isinstance(value, torch.Tensor) and id(value) in param_ids else "buffer"
        out[key] = Slot(key, kind, mname, n, value)
    return out


def snapshot(index: ModelIndex) -> list:
    """Which tensor object sits in every parameter/buffer slot of the model, and its version counter."""
    try:
        return [(tuple(reg), [(id(t), t._version) if t is not None else None for t in reg.values()])
                for mod in index.unique for reg in (mod._parameters, mod._buffers)]
    except Exception:  # inference tensors have no version counter
        return _snapshot_slow(index)


def _snapshot_slow(index: ModelIndex) -> list:
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


def is_running_stat(key: str) -> bool:
    return key.rsplit(".", 1)[-1] in RUNNING_STAT_NAMES
