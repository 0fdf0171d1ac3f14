"""torch.save's zip format (torch >= 1.6): ``<archive>/data.pkl`` plus one record per storage."""
from __future__ import annotations

import os
import pickle

import torch

from ...errors import CorruptFileError
from ..bytesource import ByteSource
from ..checkpoint import Checkpoint
from ..safe_pickle import safe_loads, storage_from_pid
from . import Reader, read_head, register

ZIP_MAGIC = b"PK\x03\x04"


def identify(path: str) -> bool:
    return os.path.isfile(path) and read_head(path, 4) == ZIP_MAGIC


def open_zip(path: str) -> Checkpoint:
    try:
        archive = torch._C.PyTorchFileReader(path)
    except RuntimeError as e:
        raise CorruptFileError(f"{path}: not a readable torch.save archive ({_first_line(e)}); "
                               "the file may be truncated — re-download or re-save it") from e
    try:
        data = archive.get_record("data.pkl")
    except RuntimeError as e:
        raise CorruptFileError(f"{path}: the zip archive has no data.pkl, so it is not a torch.save file "
                               f"({_first_line(e)})") from e

    def resolve(ref):
        name = f"data/{ref.key}"
        try:
            return path, int(archive.get_record_offset(name)), int(archive.get_record_size(name))
        except RuntimeError as e:
            raise CorruptFileError(f"{path}: storage record {name!r} is missing or unreadable "
                                   f"({_first_line(e)}); the archive is incomplete") from e

    source = ByteSource(resolve)

    def persistent_load(pid):
        ref = storage_from_pid(pid)
        ref.source = source
        return ref

    try:
        root, refs = safe_loads(data, persistent_load)
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError,
            RecursionError, MemoryError, UnicodeDecodeError, OverflowError) as e:
        raise CorruptFileError(f"{path}: data.pkl could not be parsed ({type(e).__name__}: {_first_line(e)}); "
                               "the file is corrupt — re-save it") from e
    return Checkpoint(path, "torch-zip", root, refs)


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0][:200] if text else type(e).__name__


register(Reader("torch.save (zip)", identify, open_zip, priority=50))
