"""Open anything the user names -- a checkpoint file or folder, or a model spec -- as a side."""
from __future__ import annotations

import os
from typing import Union

from .checkpoint import Checkpoint
from .model_source import ModelSide, looks_like_model_spec

Side = Union[Checkpoint, ModelSide]


def open_side(text: str | os.PathLike) -> Side:
    """A path opens as a checkpoint; ``MODULE:CALLABLE``, ``file.py:CALLABLE`` or ``demo:NAME`` builds a model."""
    text = os.fspath(text)
    if looks_like_model_spec(text):
        return ModelSide.from_spec(text)
    from .loaders import open_checkpoint
    return open_checkpoint(text)
