"""The two sides of a simulated load as torch is handed them.

:func:`as_side` turns what ``simulate_load`` accepts as the checkpoint (a :class:`~explorer.core.side.Side`, a plain
mapping, an ``nn.Module``) into a side; :class:`CheckpointInput` then asks that side alone for the object at the entry,
with meta tensors (the structural pass) or real values (the value pass). :func:`model_of` does the same for the model.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Callable, Protocol

import torch.nn as nn

from ...errors import KeyNotFoundError, SimulationError
from ..checkpoint import RecoveredModule, has_data
from ..model_source import ModelSide, StateDictSide
from ..records import PlainStateDict, copy_metadata
from ..side import CHECKPOINT, Side


class HoldsModel(Protocol):
    """A model side: a live model and how it is named (``ModelSide``, a checkpoint standing in for a model)."""

    model: nn.Module
    label: str


def model_of(model_side: "nn.Module | HoldsModel") -> tuple[nn.Module, str]:
    """The model to simulate on, and its label."""
    if isinstance(model_side, nn.Module):
        return model_side, type(model_side).__name__
    model = getattr(model_side, "model", None)
    if isinstance(model, nn.Module):
        return model, str(model_side.label or type(model).__name__)
    raise SimulationError(f"expected a model (nn.Module or ModelSide), got {type(model_side).__name__}")


def as_side(obj: Any) -> Any:
    """The checkpoint side of a load as a side: a mapping or a module is wrapped, a side is itself."""
    if isinstance(obj, Mapping):
        return StateDictSide(obj)
    if isinstance(obj, nn.Module):
        return ModelSide(obj)
    if isinstance(obj, Side):
        return obj
    raise SimulationError(f"expected a checkpoint, a model or a dict, got {type(obj).__name__}")


def own_metadata(obj):
    """torch writes into the ``_metadata`` it is given (``assign=True`` adds ``assign_to_params_buffers`` to every
    module's entry): hand it a private copy, so one simulation never changes the next one, nor the checkpoint."""
    meta = getattr(obj, "_metadata", None)
    if meta is not None and isinstance(obj, Mapping):
        try:
            obj._metadata = copy_metadata(meta)
        except Exception:
            pass
    return obj


def with_copies(sd: Mapping, keys) -> Mapping:
    """``sd`` with the tensors at ``keys`` replaced by private copies (Parameters stay Parameters), keeping its
    ``_metadata``."""
    import torch
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


def object_of_class(qualname: str):
    """An object whose ``type()`` prints as the class ``qualname`` names (what torch puts in its messages); it is
    nothing else: no state, no methods of that class."""
    module, _, name = qualname.rpartition(".")
    cls = type(name or "object", (), {"__module__": module or "builtins", "__qualname__": name or "object"})
    return cls()


class CheckpointInput:
    """The checkpoint side, able to hand torch the object at ``entry`` with meta tensors or with real values.

    ``side``: what :func:`as_side` gives. A checkpoint side (``kind == CHECKPOINT``) is read from its file: entries,
    tensor records (for ``pread``), a whole pickled model; a model or an in-memory state dict has one state dict."""

    def __init__(self, side, entry):
        self.side = side
        self.label = side.label
        self.entry_path: tuple[str, ...] = ()
        self.record_of: Callable[[str], Any] | None = None   # key -> its tensor record (checkpoint files)
        self.whole_module: str | None = None   # the entry is a pickled nn.Module of this class
        self.opaque = False                    # torch is handed that module itself (an explicit entry)
        self._opaque_object: Any = None
        self._real_cache: Mapping | None = None
        if side.kind == CHECKPOINT:
            self._open_checkpoint(side, entry)

    def _open_checkpoint(self, side, entry) -> None:
        try:
            self.entry_path = tuple(side.resolve_entry(entry))
        except KeyNotFoundError:
            # no mapping holds a tensor: an empty (or tensor-less) dict at the root is still a state dict
            if entry is not None or not isinstance(side.root, Mapping):
                raise
            self.entry_path = ()
        self.record_of = lambda key: side.record(self.entry_path + (key,))
        if getattr(side, "is_flat", False):   # holds no pickled module (and 10**6 records are not made to see so)
            return
        try:
            obj = side.get(self.entry_path)
        except Exception:
            obj = None
        if isinstance(obj, RecoveredModule):
            self.whole_module = obj.class_name or "?"
            if entry is not None:
                # the entry names a whole pickled model: torch would be handed that object, not its state dict
                self._opaque_object = object_of_class(self.whole_module)
                self.opaque = True

    def _load(self, device: str):
        if self.opaque:
            return self._opaque_object
        # load_object hands out a private _metadata each time
        return self.side.load_object(self.entry_path, device=device)

    def read_key(self, key: str):
        """One tensor of the state dict (a checkpoint's read on demand, memory-mapped where the format allows)."""
        if self.record_of is not None:
            return self.side.read(self.entry_path + (key,))
        if self._real_cache is None:
            self._real_cache = self._load("cpu")
        return self._real_cache[key]

    def no_data(self, key) -> bool:
        """Does the checkpoint hold no values for ``key`` (a tensor saved from the meta device)?"""
        try:
            if self.record_of is not None:
                return not has_data(self.record_of(key))
            v = self.read_key(key)
            return v.is_meta
        except Exception:
            return False

    def meta(self, read: tuple[set, tuple] | None = None):
        """The object handed to torch, on the meta device. ``read``: the keys (and key prefixes) whose values the
        model's code can read (see :meth:`ModelIndex.read_keys`); the others may share one tensor per layout."""
        if read is not None and not self.opaque and self.side.kind == CHECKPOINT:
            out = self.side.meta_state_dict(self.entry_path, *read)
            if out is not None:
                return out
        return self._load("meta")

    def real(self):
        return self._load("cpu")
