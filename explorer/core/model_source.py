"""A model as a side: resolve a ``MODULE:CALLABLE`` / ``file.py:CALLABLE`` / ``demo:NAME`` / ``hf:DIR[:CLASS]`` spec
into an ``nn.Module`` (on the meta device when it is over the memory budget, see :mod:`.model_build`) and describe its
state: parameters, buffers (persistent or not), extra state, module classes and tied tensors."""
from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any, Callable

import torch
import torch.nn as nn

from ..errors import KeyNotFoundError, ModelSpecError, NoDataError
from .meta import meta_like
from .model_build import BuiltModel, build_hf, build_model
from .model_spec import is_model_hf_spec, parse_spec, quoted
from .records import (BUFFER, EXTRA_STATE, NON_PERSISTENT, PARAMETER, TENSOR, EntryPath, ModuleInfo, TensorInfo,
                      copy_metadata, dtype_name)
from .records import MODEL

_EXTRA_STATE_SUFFIX = "_extra_state"  # torch.nn.modules.module._EXTRA_STATE_KEY_SUFFIX


def _factory(spec: str) -> tuple[Callable[[], Any], str]:
    """(a callable that calls the factory a spec names with the spec's arguments, the call as text for messages)."""
    left, name, args, kwargs, called = parse_spec(spec)
    if left == "demo":
        from .demo_models import DEMO_MODELS
        factory = DEMO_MODELS.get(name)
        if factory is None:
            raise ModelSpecError(f"{quoted(spec)}: no demo model {name!r}; demo models: {', '.join(DEMO_MODELS)}")
    else:
        module = _import(left, spec)
        factory = getattr(module, name, None)
        if factory is None:
            raise ModelSpecError(f"{quoted(spec)}: {left} has no attribute {name!r}")
    if called and (isinstance(factory, nn.Module) or not callable(factory)):
        raise ModelSpecError(f"{quoted(spec)}: {name} is a {type(factory).__name__}, not something to call; "
                             f"write {left}:{name} without arguments")
    call_text = name + "(" + ", ".join([*map(repr, args), *(f"{k}={v!r}" for k, v in kwargs.items())])[:200] + ")"
    if callable(factory) and not isinstance(factory, nn.Module):
        return (lambda: factory(*args, **kwargs)), call_text
    return (lambda: factory), call_text


def resolve_spec(spec: str) -> nn.Module:
    """Build the model a spec names, for real (no budget). ``demo:NAME`` is one of the built-in article models;
    ``hf:DIR_OR_CONFIG_JSON[:CLASS]`` the model a transformers config.json describes."""
    if is_model_hf_spec(spec):
        return build_hf(spec, budget_bytes=1 << 62).module
    make, call_text = _factory(spec)
    try:
        model = make()
    except Exception as e:  # the user's own code failed: say so, with its message
        raise ModelSpecError(f"{quoted(spec)}: calling {call_text} raised {type(e).__name__}: {e}") from e
    return _checked(spec, call_text, model)


def build_spec(spec: str, *, budget_bytes: int | None = None) -> BuiltModel:
    """The model a spec names, built on the meta device first and for real only when its parameters and buffers fit
    ``budget_bytes`` (default: :func:`~explorer.core.model_build.default_budget`); see
    :func:`~explorer.core.model_build.build_model`."""
    if is_model_hf_spec(spec):
        return build_hf(spec, budget_bytes=budget_bytes)
    make, call_text = _factory(spec)
    try:
        built = build_model(make, budget_bytes=budget_bytes)
    except Exception as e:  # the user's own code failed: say so, with its message
        raise ModelSpecError(f"{quoted(spec)}: calling {call_text} raised {type(e).__name__}: {e}") from e
    _checked(spec, call_text, built.module)
    return built


def _checked(spec: str, call_text: str, model: Any) -> nn.Module:
    if not isinstance(model, nn.Module):
        raise ModelSpecError(f"{quoted(spec)}: {call_text} returned {type(model).__name__}, not a torch.nn.Module")
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

    kind = MODEL
    format = "model"

    def __init__(self, model: nn.Module, label: str = "", *, not_materialized: str = ""):
        self.model = model
        self.path = label or type(model).__name__
        # "" when the model's values are real, else why they are not (its tensors are on the meta device)
        self.not_materialized = not_materialized
        self.references: list[str] = []
        self._infos = self._describe()
        self.entries = list(self._infos.values())
        self._tensors = None

    @classmethod
    def from_spec(cls, spec: str, *, budget_bytes: int | None = None) -> "ModelSide":
        """The model a spec names, built for real when it fits ``budget_bytes`` (default: a quarter of RAM or
        ``$STATE_DICT_EXPLORER_MODEL_BUDGET``), else kept on the meta device (``not_materialized`` says so)."""
        built = build_spec(spec, budget_bytes=budget_bytes)
        return cls(built.module, spec, not_materialized="" if built.materialized else built.note)

    @property
    def materialized(self) -> bool:
        return not self.not_materialized

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
        if value.is_meta and self.not_materialized:
            raise NoDataError(f"{self.path}: {key!r} has no values: {self.not_materialized}")
        return value.detach()

    def read(self, path: EntryPath) -> torch.Tensor:
        return self.read_key(path[-1])

    def load_object(self, entry=None, *, device: str = "meta") -> Any:
        """The model's state dict as ``Checkpoint.load_object`` gives a checkpoint's: ``device="meta"``, data-less
        tensors of the same layouts; ``"cpu"``, detached views of the model's own tensors (no bytes copied)."""
        return state_dict_copy(self.model.state_dict(), device)

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


class StateDictSide:
    """A state dict held in memory (a mapping handed to the simulation) as a side: like a model side, one state
    dict at ``()``, its tensors live; no modules. Nothing here modifies the mapping."""

    kind = MODEL
    label = "<dict>"
    references: list[str] = []
    default_state_dict: EntryPath = ()

    def __init__(self, sd: Mapping):
        self.sd = sd

    @property
    def state_dicts(self):
        from .records import StateDictRef
        return [StateDictRef((), sum(isinstance(v, torch.Tensor) for v in self.sd.values()), 1.0, "the mapping")]

    def resolve_entry(self, entry=None) -> EntryPath:
        return ()

    def state_dict_infos(self, entry=None) -> "OrderedDict[str, TensorInfo]":
        return OrderedDict((k, _info(k, v, TENSOR)) for k, v in self.sd.items() if isinstance(v, torch.Tensor))

    def module_classes(self, entry=None) -> dict[str, ModuleInfo]:
        return {}

    def read_key(self, key: str, entry=None) -> torch.Tensor:
        value = self.sd.get(key)
        if not isinstance(value, torch.Tensor):
            raise KeyNotFoundError(f"{self.label}: no tensor {key!r}")
        return value.detach()

    def load_object(self, entry=None, *, device: str = "meta") -> Any:
        """A copy of the mapping (its own ``_metadata``) with meta tensors, or with detached views."""
        return state_dict_copy(self.sd, device)

    def close(self) -> None:
        pass


def state_dict_copy(sd: Mapping, device: str) -> "OrderedDict":
    """A copy of a state dict with its own ``_metadata`` and every tensor a meta tensor of the same layout
    (``device="meta"``) or a detached view (``"cpu"``); Parameters stay Parameters."""
    fn = meta_like if device == "meta" else torch.Tensor.detach
    out: OrderedDict = OrderedDict()
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


def _info(key: str, t: torch.Tensor, kind: str) -> TensorInfo:
    if torch.nn.parameter.is_lazy(t):   # a lazy module's parameter before its first forward: no shape yet
        return TensorInfo((key,), (), dtype_name(t.dtype), 0, None, "uninitialized", kind, bool(t.requires_grad))
    return TensorInfo((key,), tuple(t.shape), dtype_name(t.dtype), t.numel() * t.element_size(), None,
                      str(t.device), kind, bool(t.requires_grad))
