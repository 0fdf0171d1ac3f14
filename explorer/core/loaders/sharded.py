"""Sharded checkpoints: ``*.safetensors.index.json`` / ``pytorch_model.bin.index.json`` (a ``weight_map`` of
key -> shard file), or a folder holding such an index or several shards. Every shard name must stay in the folder."""
from __future__ import annotations

import json
import os
import shlex
from collections import OrderedDict

from ...errors import CorruptFileError, ExplorerError, UnsafePathError, UnsupportedFormatError, shorten
from ..checkpoint import Checkpoint
from . import (Reader, basename, exists, files_in, is_remote, isdir, isfile, open_regular, prefetch_heads,
               register)

SHARD_PATTERNS = ("*.safetensors", "*.bin", "*.pt", "*.pth")


def _index_in(folder: str) -> str | None:
    found = sorted(files_in(folder, "*.index.json"))
    for preferred in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        for f in found:
            if basename(f) == preferred:
                return f
    return found[0] if found else None


def _shards_in(folder: str) -> list[str]:
    files: list[str] = []
    for pat in SHARD_PATTERNS:
        files.extend(files_in(folder, pat))
    return sorted(f for f in files if isfile(f))


def identify(path: str) -> bool:
    if isfile(path):
        return path.endswith(".index.json")
    if isdir(path) and (is_remote(path) or not exists(os.path.join(path, ".metadata"))):
        return _index_in(path) is not None or bool(_shards_in(path))
    return False


def _safe_shard(folder: str, name: object, index_path: str) -> str:
    """The path of a shard the index names, judged by the *name*: a plain relative path inside the index's folder
    (no ``..``, not absolute, no drive or UNC prefix, no NUL). Where a symlink of that name points is not judged: a
    Hugging Face cache snapshot is made of links into ``../../blobs/``."""
    if not isinstance(name, str) or not name:
        raise CorruptFileError(f"{index_path}: a weight_map entry names shard {shorten(name)}, which is not a file "
                               "name; the index is corrupt — re-download it")
    if "\0" in name:
        raise CorruptFileError(f"{index_path}: shard name {shorten(name)} holds a NUL byte, which no file name can; "
                               "the index is corrupt — re-download it")
    parts = name.replace("\\", "/").split("/")
    if (os.path.isabs(name) or name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":")
            or ".." in parts):
        raise UnsafePathError(f"{index_path}: shard {shorten(name)} is not a name inside the index's folder (an "
                              "absolute path, a drive, or '..'); shards must lie in the index's folder — refusing "
                              "to read it")
    if is_remote(index_path):
        from ..remote.urls import join
        return join(index_path, name)
    return os.path.join(folder, name)


def _open_shard(path: str, label: str) -> Checkpoint:
    """A shard is a checkpoint *file*: never an index or a folder (an index naming itself, or two naming each
    other, would otherwise recurse without end)."""
    from . import check_regular, readers
    check_regular(path)
    if not isfile(path) or path.endswith(".index.json"):
        raise CorruptFileError(f"{label}: shard {shorten(basename(path))} is not a checkpoint file (an index "
                               "or a folder cannot be a shard) — the index is corrupt")
    for reader in readers():
        if reader.open is not open_sharded and reader.identify(path):
            return reader.open(path)
    raise CorruptFileError(f"{label}: shard {shorten(basename(path))} is not a checkpoint file this tool "
                           "reads; re-download it")


def open_index(index_path: str) -> Checkpoint:
    folder = index_path.rpartition("/")[0] if is_remote(index_path) else os.path.dirname(os.path.abspath(index_path))
    try:
        with open_regular(index_path) as f:
            index = json.loads(f.read().decode("utf-8"))
    except ExplorerError:
        raise
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError, ValueError) as e:
        raise CorruptFileError(f"{index_path}: the shard index is not readable JSON ({str(e)[:120]}); re-download "
                               "the index, or open the shard files directly") from e
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise CorruptFileError(f"{index_path}: the shard index has no 'weight_map'; it is not a sharded-checkpoint "
                               "index — open the shard files or their folder instead")
    weight_map = _printable_keys(weight_map, index_path)
    shard_names = list(dict.fromkeys(v if isinstance(v, str) else _Unnamed(v) for v in weight_map.values()))
    paths = {name: _safe_shard(folder, name.value if isinstance(name, _Unnamed) else name, index_path)
             for name in shard_names}
    root: OrderedDict = OrderedDict()
    refs: list[str] = []
    from . import check_regular
    prefetch_heads([paths[name] for name in sorted(shard_names)])   # URLs: every shard's header at once
    for name in sorted(shard_names):
        check_regular(paths[name])
        if not isfile(paths[name]):
            raise CorruptFileError(f"{index_path}: shard {shorten(name)} is missing from {folder}; download every "
                                   f"shard the index names ({len(shard_names):,})")
        shard = _open_shard(paths[name], index_path)
        refs.extend(r for r in shard.references if r not in refs)
        if shard.default_state_dict is None:
            raise CorruptFileError(f"{index_path}: shard {shorten(name)} holds no tensors; re-download it")
        sd = shard.get(shard.resolve_entry(None))
        for key, rec in sd.items():
            owner = weight_map.get(key)
            if owner is None or owner == name:  # trust the index: a key lives where the weight map says
                if key in root and owner is None:
                    continue
                root[key] = rec
    missing = [k for k in weight_map if k not in root]
    if missing:
        raise CorruptFileError(f"{index_path}: {len(missing)} keys of the weight map are not in their shards "
                               f"(first: {shorten(missing[0])}); a shard is incomplete — re-download it")
    meta = index.get("metadata") if isinstance(index.get("metadata"), dict) else {}
    return Checkpoint(index_path, "sharded", root, refs, meta)


class _Unnamed:
    """A weight_map value that is not a string (refused by :func:`_safe_shard`, but first kept apart from names)."""

    __slots__ = ("value",)

    def __init__(self, value):
        self.value = value


def _printable_keys(weight_map: dict, index_path: str) -> dict:
    """The weight map with keys holding lone surrogates (JSON allows ``"\\ud800"``) spelled as their escapes, as
    every reader spells them (see :func:`explorer.core.safe_pickle.printable.printable_key`)."""
    from ..safe_pickle.printable import printable_keys
    return printable_keys(weight_map, index_path)


def open_folder(folder: str) -> Checkpoint:
    index = _index_in(folder)
    if index is not None:
        return open_index(index)
    shards = _shards_in(folder)
    if not shards:
        raise UnsupportedFormatError(f"{folder}: the folder holds no index (*.index.json) and no checkpoint files "
                                     f"({', '.join(SHARD_PATTERNS)}) — open a checkpoint file or its folder")
    if len(shards) == 1:
        return _open_shard(shards[0], folder)
    root: OrderedDict = OrderedDict()
    refs: list[str] = []
    for path in shards:
        shard = _open_shard(path, folder)
        refs.extend(r for r in shard.references if r not in refs)
        if shard.default_state_dict is None:
            continue
        sd = shard.get(shard.resolve_entry(None))
        for key, rec in sd.items():
            if key in root:
                raise CorruptFileError(f"{folder}: key {shorten(key)} is in more than one shard (again in "
                                       f"{shorten(basename(path))}); open one file, or add an index — or, for "
                                       f"the checkpoints of a training run: python main.py series {shlex.quote(folder)}")
            root[key] = rec
    return Checkpoint(folder, "sharded", root, refs)


def open_sharded(path: str) -> Checkpoint:
    return open_index(path) if isfile(path) else open_folder(path)


register(Reader("sharded (index or folder)", identify, open_sharded, priority=30))
