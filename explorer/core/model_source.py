"""A model as a side: resolve a ``MODULE:CALLABLE`` / ``file.py:CALLABLE`` / ``demo:NAME`` spec into an ``nn.Module``
and describe its state: parameters, buffers (persistent or not), extra state, module classes and tied tensors."""
from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from collections import OrderedDict
from typing import Any

import torch
import torch.nn as nn

from ..errors import KeyNotFoundError, ModelSpecError
from .records import (BUFFER, EXTRA_STATE, NON_PERSISTENT, PARAMETER, EntryPath, ModuleInfo, TensorInfo,
                      dtype_name)

_EXTRA_STATE_SUFFIX = "_extra_state"  # torch.nn.modules.module._EXTRA_STATE_KEY_SUFFIX


def looks_like_model_spec(text: str) -> bool:
    """``pkg.mod:make`` / ``file.py:make`` / ``demo:Name`` — not a path that exists."""
    if os.path.exists(text) or ":" not in text:
        return False
    left, _, right = text.rpartition(":")
    return bool(left) and right.isidentifier() and not (len(left) == 1 and left.isalpha())


def resolve_spec(spec: str) -> nn.Module:
    """Build the model a spec names. ``demo:NAME`` is one of the built-in article models."""
    left, sep, name = spec.rpartition(":")
    if not sep or not left or not name:
        raise ModelSpecError(f"{spec!r}: a model spec is MODULE:CALLABLE, path/to/file.py:CALLABLE or demo:NAME")
    if left == "demo":
        from .demo_models import DEMO_MODELS
        factory = DEMO_MODELS.get(name)
        if factory is None:
            raise ModelSpecError(f"{spec!r}: no demo model {name!r}; demo models: {', '.join(DEMO_MODELS)}")
    else:
        module = _import(left, spec)
        factory = getattr(module, name, None)
        if factory is None:
            raise ModelSpecError(f"{spec!r}: {left} has no attribute {name!r}")
    try:
        model = factory() if callable(factory) and not isinstance(factory, nn.Module) else factory
    except Exception as e:  # the user's own code failed: say so, with its message
        raise ModelSpecError(f"{spec!r}: calling {name}() raised {type(e).__name__}: {e}") from e
    if not isinstance(model, nn.Module):
        raise ModelSpecError(f"{spec!r}: {name} returned {type(model).__name__}, not a torch.nn.Module")
    return model


def _import(left: str, spec: str):
    if left.endswith(".py") or os.sep in left or "/" in left:
        path = os.path.abspath(left)
        if not os.path.isfile(path):
            raise ModelSpecError(f"{spec!r}: no such file {left!r}")
        mod_name = "_explorer_user_" + os.path.splitext(os.path.basename(path))[0]
        loader_spec = importlib.util.spec_from_file_location(mod_name, path)
        if loader_spec is None or loader_spec.loader is None:
            raise ModelSpecError(f"{spec!r}: cannot import {left!r}")
        module = importlib.util.module_from_spec(loader_spec)
        sys.modules[mod_name] = module
        try:
            loader_spec.loader.exec_module(module)
        except Exception as e:
            raise ModelSpecError(f"{spec!r}: importing {left} raised {type(e).__name__}: {e}") from e
        return module
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        return importlib.import_module(left)
    except Exception as e:
        raise ModelSpecError(f"{spec!r}: cannot import module {left!r} ({type(e).__name__}: {e}); it must be "
                             "importable from the current directory or PYTHONPATH") from e


class ModelSide:
    """A live ``nn.Module`` as one side of the explorer. Nothing here modifies the model."""

    kind = "model"
    format = "model"

    def __init__(self, model: nn.Module, label: str = ""):
        self.model = model
        self.path = label or type(model).__name__
        self.references: list[str] = []
        self._infos = self._describe()
        self.entries = list(self._infos.values())
        self._tensors = None

    @classmethod
    def from_spec(cls, spec: str) -> "ModelSide":
        return cls(resolve_spec(spec), spec)

    @property
    def label(self) -> str:
        return self.path

    def _describe(self) -> "OrderedDict[str, TensorInfo]":
        model = self.model
        out: OrderedDict[str, TensorInfo] = OrderedDict()
        sd = model.state_dict(keep_vars=True)
        param_ids = {id(p) for p in model.parameters()}
        for key, value in sd.items():
            if key.endswith(_EXTRA_STATE_SUFFIX) and not isinstance(value, torch.Tensor):
                out[key] = TensorInfo((key,), (), type(value).__name__, 0, None, "cpu", EXTRA_STATE)
                continue
            if not isinstance(value, torch.Tensor):
                continue
            kind = PARAMETER if id(value) in param_ids else BUFFER
            if key.endswith(_EXTRA_STATE_SUFFIX):
                kind = EXTRA_STATE
            out[key] = _info(key, value, kind)
        # non-persistent buffers: part of the model, not of its state dict
        for mod_name, mod in model.named_modules(remove_duplicate=False):
            for bname in getattr(mod, "_non_persistent_buffers_set", ()):
                buf = mod._buffers.get(bname)
                key = f"{mod_name}.{bname}" if mod_name else bname
                if buf is not None and key not in out:
                    out[key] = _info(key, buf, NON_PERSISTENT)
        return out

    @property
    def state_dicts(self):
        from .records import StateDictRef
        return [StateDictRef((), sum(1 for i in self.entries if i.kind != NON_PERSISTENT), 1.0, "the model")]

    @property
    def default_state_dict(self) -> EntryPath:
        return ()

    def resolve_entry(self, entry=None) -> EntryPath:
        return ()

    def state_dict_infos(self, entry=None, *, include_non_persistent: bool = False) -> "OrderedDict[str, TensorInfo]":
        if include_non_persistent:
            return OrderedDict(self._infos)
        return OrderedDict((k, v) for k, v in self._infos.items() if v.kind != NON_PERSISTENT)

    def all_infos(self) -> "OrderedDict[str, TensorInfo]":
        return OrderedDict(self._infos)

    def module_classes(self, entry=None) -> dict[str, ModuleInfo]:
        out = {}
        for name, mod in self.model.named_modules(remove_duplicate=False):
            cls = type(mod)
            out[name] = ModuleInfo(name, cls.__name__, f"{cls.__module__}.{cls.__qualname__}")
        return out

    def tied_groups(self) -> list[list[str]]:
        """Keys whose tensors share storage (tied weights), each group in state-dict order."""
        groups: dict[tuple, list[str]] = OrderedDict()
        for key, value in self.model.state_dict(keep_vars=True).items():
            if isinstance(value, torch.Tensor) and value.numel() and value.device.type != "meta":
                sid = (value.untyped_storage().data_ptr(), value.storage_offset(), tuple(value.shape),
                       tuple(value.stride()), value.dtype)
                groups.setdefault(sid, []).append(key)
        return [g for g in groups.values() if len(g) > 1]

    def read_key(self, key: str, entry=None) -> torch.Tensor:
        value = self._lookup(key)
        if not isinstance(value, torch.Tensor):
            raise KeyNotFoundError(f"{self.path}: {key!r} is extra state, not a tensor")
        if torch.nn.parameter.is_lazy(value):
            raise KeyNotFoundError(f"{self.path}: {key!r} is an uninitialized parameter of a lazy module (no shape "
                                   "or values until the first forward pass or a load)")
        return value.detach()

    def read(self, path: EntryPath) -> torch.Tensor:
        return self.read_key(path[-1])

    def _lookup(self, key: str) -> Any:
        sd = self.model.state_dict(keep_vars=True)
        if key in sd:
            return sd[key]
        mod_name, _, leaf = key.rpartition(".")
        try:
            mod = self.model.get_submodule(mod_name) if mod_name else self.model
        except AttributeError:
            mod = None
        if mod is not None and leaf in getattr(mod, "_buffers", {}):
            return mod._buffers[leaf]
        raise KeyNotFoundError(f"{self.path}: no tensor {key!r}")

    def close(self) -> None:
        pass

    def __repr__(self):
        return f"ModelSide({self.path!r}, {len(self.entries)} tensors)"


def _info(key: str, t: torch.Tensor, kind: str) -> TensorInfo:
    if torch.nn.parameter.is_lazy(t):   # a lazy module's parameter before its first forward: no shape yet
        return TensorInfo((key,), (), dtype_name(t.dtype), 0, None, "uninitialized", kind, bool(t.requires_grad))
    return TensorInfo((key,), tuple(t.shape), dtype_name(t.dtype), t.numel() * t.element_size(), None,
                      str(t.device), kind, bool(t.requires_grad))
