"""A *side*: one thing the user opened — a checkpoint (file, folder, shards) or a model built from a spec.

Everything above the readers (simulation, remap, diff, statistics, the commands, the window) works on the
:class:`Side` protocol and never asks which class it holds. What differs between the two kinds is said by
``kind`` and by the capability methods below, never guessed with ``isinstance``/``hasattr``.
"""
from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, Mapping, Protocol, runtime_checkable

from .records import CHECKPOINT, MODEL  # a side's two kinds (records is plain data, imports no torch)

__all__ = ["CHECKPOINT", "MODEL", "Side", "open_side"]

if TYPE_CHECKING:   # the records are plain data; torch only for annotations
    import torch

    from .records import EntryPath, ModuleInfo, TensorInfo



@runtime_checkable
class Side(Protocol):
    """What a checkpoint side and a model side both offer.

    ``entry`` arguments name the state dict inside the side (a path of keys, ``'state_dict'``, ``'model/ema'``;
    ``None`` for the best one). A model side has one state dict, at ``()``.
    """

    kind: str   # CHECKPOINT or MODEL

    @property
    def label(self) -> str:
        """How the side is named to the user (a path, a URL, a model spec)."""

    @property
    def default_state_dict(self) -> "EntryPath | None":
        """The state dict opened when the user names none (``None``: the side holds no tensor)."""

    def resolve_entry(self, entry: "str | EntryPath | None" = None) -> "EntryPath":
        """The path of the state dict ``entry`` names (raises KeyNotFoundError naming the nearest)."""

    def state_dict_infos(self, entry: "str | EntryPath | None" = None) -> "Mapping[str, TensorInfo]":
        """Key -> shape, dtype, kind, location of every tensor of the state dict, in its order."""

    def module_classes(self, entry: "str | EntryPath | None" = None) -> "dict[str, ModuleInfo]":
        """Module path -> class, where the side knows it (a model always, a pickled module sometimes)."""

    def read_key(self, key: str, entry: "str | EntryPath | None" = None) -> "torch.Tensor":
        """The values of one tensor (on the CPU; read on demand)."""

    def close(self) -> None:
        """Release files and maps; the side is not used afterwards."""


def open_side(text: str | os.PathLike) -> Any:
    """A path opens as a checkpoint; ``MODULE:CALLABLE``, ``file.py:CALLABLE`` or ``demo:NAME`` builds a model."""
    from .model_spec import looks_like_model_spec   # torch-free: a path never imports the model code
    text = os.fspath(text)
    if looks_like_model_spec(text):
        from .model_source import ModelSide
        return ModelSide.from_spec(text)
    from .loaders import open_checkpoint
    return open_checkpoint(text)
