"""Reading a storage's bytes on demand, memory-mapped, one storage at a time."""
from __future__ import annotations

import os
from typing import Callable

import numpy as np
import torch

from ..errors import CorruptFileError
from .safe_pickle import ITEMSIZE, StorageRef, TensorRecord

# dtypes numpy cannot hold are viewed through torch
TORCH_DTYPES = {name: getattr(torch, name) for name in ITEMSIZE if hasattr(torch, name)}


class ByteSource:
    """Maps a storage key to ``(file, byte offset, byte length)`` and reads it as a copy-on-write memory map.

    The file is never written: numpy's mode ``"c"`` keeps any write in private memory.
    """

    def __init__(self, resolve: Callable[[StorageRef], tuple[str, int, int]]):
        self._resolve = resolve

    def region(self, ref: StorageRef) -> tuple[str, int, int]:
        return self._resolve(ref)

    def storage_bytes(self, ref: StorageRef) -> torch.Tensor:
        file, offset, length = self._resolve(ref)
        need = ref.nbytes
        if length < need:
            raise CorruptFileError(
                f"{file}: storage {ref.key!r} holds {length} bytes but its tensors need {need}; "
                "the file is truncated or corrupt — re-download or re-save it")
        if need == 0:
            return torch.empty(0, dtype=torch.uint8)
        size = os.path.getsize(file)
        if offset < 0 or offset + need > size:
            raise CorruptFileError(
                f"{file}: storage {ref.key!r} lies at bytes {offset}..{offset + need} but the file has {size} bytes; "
                "the file is truncated — re-download or re-save it")
        arr = np.memmap(file, dtype=np.uint8, mode="c", offset=offset, shape=(need,))
        return torch.from_numpy(arr)


def read_record(record: TensorRecord, *, file_label: str = "") -> torch.Tensor:
    """The values of one tensor, read on demand (a view on a private memory map, no bytes copied up front)."""
    ref = record.storage
    if not isinstance(ref, StorageRef) or ref.source is None:
        raise CorruptFileError(f"{file_label}: tensor has no readable storage")
    dtype = TORCH_DTYPES.get(record.dtype or "")
    if dtype is None:
        raise CorruptFileError(f"{file_label}: cannot read tensors of dtype {record.dtype!r}")
    raw = ref.source.storage_bytes(ref)
    itemsize = ITEMSIZE[record.dtype]
    base_offset = 0
    if ref.view is not None:  # legacy format view into a root storage
        base_offset = int(ref.view[1])
    usable = raw.numel() - raw.numel() % itemsize
    flat = raw[:usable].view(dtype) if usable else torch.empty(0, dtype=dtype)
    numel = record.numel
    if numel == 0:
        return torch.empty(record.shape, dtype=dtype)
    last = base_offset + record.storage_offset + sum((s - 1) * st for s, st in zip(record.shape, record.stride))
    if any(st < 0 for st in record.stride) or last >= flat.numel() or record.storage_offset < 0:
        raise CorruptFileError(
            f"{file_label}: a tensor of shape {list(record.shape)} needs element {last} of a storage holding "
            f"{flat.numel()}; the file is corrupt — re-save it")
    return torch.as_strided(flat, record.shape, record.stride, base_offset + record.storage_offset)
