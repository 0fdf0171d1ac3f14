"""Finding the checkpoints of one run and putting them in the order of the step each holds.

A series is given as one folder of checkpoints, or as several paths (files or folders). A member is a checkpoint
file (``.pt``, ``.pth``, ``.ckpt``, ``.safetensors``, ``.bin``) or a folder that holds one checkpoint (a Hugging Face
Trainer ``checkpoint-500/`` with ``model.safetensors`` or an index, a sharded or DCP folder). Nothing is executed:
the step comes from values the safe reader already found (``global_step``, ``step``... at the top of the file),
from safetensors ``__metadata__``, from a Trainer's ``trainer_state.json``, else from the number in the name.
"""
from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass

from ...errors import ExplorerError, InputNotFoundError, UnsupportedFormatError

EXTENSIONS = (".pt", ".pth", ".ckpt", ".safetensors", ".bin")
# files a Trainer keeps beside the model that are not the model
AUX_FILES = re.compile(r"(optimizer|scheduler|scaler|rng_state.*|training_args|trainer_state)\.(pt|pth|bin|json)\Z")
# a folder that is one checkpoint: its model file, best first
MODEL_FILES = ("model.safetensors.index.json", "pytorch_model.bin.index.json", "model.safetensors",
               "pytorch_model.bin", ".metadata")
STEP_NAMES = ("global_step", "step", "iteration", "iter", "epoch")   # values that say where a checkpoint is, best first
_NAMED_STEP = re.compile(r"(?:global_step|step|iteration|iter|checkpoint)[=_-]?(\d+)", re.IGNORECASE)
_NUMBER = re.compile(r"\d+")


@dataclass
class Member:
    """One checkpoint of the series: ``path`` is what opens it; ``step`` where it is in the run (None: unknown);
    ``step_source`` says where the step was read ("global_step in the file", "the name", ...)."""

    path: str
    step: int | float | None = None
    step_source: str = ""
    name_step: int | None = None


def natural_key(name: str) -> tuple:
    """``step_200`` before ``step_1000``: digits compare as numbers, the rest as text."""
    return tuple((1, int(part), "") if part.isdigit() else (0, 0, part)
                 for part in re.split(r"(\d+)", name) if part)


def name_step(name: str) -> int | None:
    """The step a name says: ``step=1200`` in ``epoch=3-step=1200.ckpt``, ``checkpoint-500``, else its last number."""
    stem = name
    for ext in EXTENSIONS:
        if stem.endswith(ext):
            stem = stem[:-len(ext)]
            break
    named = _NAMED_STEP.findall(stem)
    if named:
        return int(named[-1])
    numbers = _NUMBER.findall(stem)
    return int(numbers[-1]) if numbers else None


def _model_file(folder: str) -> str | None:
    for name in MODEL_FILES:
        if os.path.exists(os.path.join(folder, name)):
            return name
    return None


def _is_member_file(path: str) -> bool:
    name = os.path.basename(path)
    return name.endswith(EXTENSIONS) and not AUX_FILES.match(name) and os.path.isfile(path)


def _member_path(folder: str) -> str:
    """What opens a one-checkpoint folder: its index or model file (a Trainer folder also holds optimizer.pt...)."""
    name = _model_file(folder)
    if name is None or name == ".metadata":
        return folder
    return os.path.join(folder, name)


def _expand(folder: str) -> list[str]:
    """The members of a folder of checkpoints: its checkpoint files and its one-checkpoint sub-folders."""
    try:
        names = os.listdir(folder)
    except OSError as e:
        raise UnsupportedFormatError(f"{folder}: the folder cannot be listed ({e.strerror or e})") from None
    found = []
    for name in sorted(names, key=natural_key):
        path = os.path.join(folder, name)
        if os.path.isdir(path):
            if _model_file(path) is not None:
                found.append(_member_path(path))
        elif _is_member_file(path):
            found.append(path)
    return found


def discover(paths: list[str]) -> list[Member]:
    """The members named by ``paths`` (a folder of checkpoints expands to its members; a folder that is one checkpoint
    is one member), in the given order; raises InputNotFoundError / UnsupportedFormatError naming the path."""
    found: list[str] = []
    for p in map(os.fspath, paths):
        if not os.path.exists(p):
            raise InputNotFoundError(f"{p}: no such file or folder — check the path")
        if os.path.isdir(p) and _model_file(p) is None:
            members = _expand(p)
            if not members:
                raise UnsupportedFormatError(f"{p}: the folder holds no checkpoint ({', '.join(EXTENSIONS)} files or "
                                             "checkpoint folders such as checkpoint-500/ with model.safetensors)")
            found.extend(members)
        else:
            found.append(_member_path(p) if os.path.isdir(p) else p)
    unique = list(dict.fromkeys(os.path.abspath(f) for f in found))
    return [Member(path=f, name_step=name_step(_display_name(f))) for f in unique]


def _display_name(path: str) -> str:
    """The name that carries the step: a Trainer folder's name, not its ``model.safetensors``."""
    base = os.path.basename(path)
    if base in MODEL_FILES:
        return os.path.basename(os.path.dirname(path))
    return base


def _as_step(value) -> int | float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            return None
    if isinstance(value, (int, float)) and math.isfinite(value):
        return int(value) if float(value).is_integer() else float(value)
    return None


def _trainer_state_step(path: str) -> int | float | None:
    """``global_step`` of the ``trainer_state.json`` beside the model file of a one-checkpoint folder (never of a
    folder of several checkpoint files: the state there would name one of them, not each)."""
    if os.path.isdir(path):
        folder = path
    elif os.path.basename(path) in MODEL_FILES:
        folder = os.path.dirname(path)
    else:
        return None
    state = os.path.join(folder, "trainer_state.json")
    if not os.path.isfile(state):
        return None
    try:
        with open(state, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError, RecursionError):
        return None
    return _as_step(data.get("global_step")) if isinstance(data, dict) else None


def file_step(side, path: str) -> tuple[int | float | None, str]:
    """(step, where it was read) from what the checkpoint holds, without running it; (None, "") when it says none."""
    meta = side.metadata
    for name in STEP_NAMES:
        step = _as_step(meta.get(name)) if isinstance(meta, dict) else None
        if step is not None:
            return step, f"{name} in the metadata"
    step = _trainer_state_step(path)
    if step is not None:
        return step, "global_step in trainer_state.json"
    for name in STEP_NAMES:
        try:
            value = side.get((name,))
        except (ExplorerError, LookupError, TypeError):
            continue
        step = _as_step(value)
        if step is not None:
            return step, f"{name} in the file"
    return None, ""


def order(members: list[Member]) -> list[Member]:
    """By the step the files hold when every member holds one, else by the number in the name when every name has
    one, else by name (numbers compared as numbers). A member's ``step`` is then the one used."""
    if members and all(m.step is not None for m in members):
        return sorted(members, key=lambda m: (m.step, m.name_step if m.name_step is not None else -1,
                                              natural_key(_display_name(m.path))))
    if all(m.name_step is not None for m in members):
        for m in members:
            m.step, m.step_source = m.name_step, "the name"
        return sorted(members, key=lambda m: (m.step, natural_key(_display_name(m.path))))
    for m in members:
        m.step, m.step_source = None, ""
    return sorted(members, key=lambda m: natural_key(_display_name(m.path)))

