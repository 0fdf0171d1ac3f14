"""Reading a storage's bytes on demand, memory-mapped, one storage at a time.

Listing a checkpoint makes sources but reads nothing through them: numpy and torch are imported only where bytes
are mapped and become a tensor (``bytes_of``, ``storage_bytes``, :func:`read_record`), so ``inspect`` of a file runs
without them. :func:`read_array` gives the same values as numpy (``np_values.Values``) without importing torch
wherever the format maps its bytes in place (safetensors, a torch zip's stored records, plain regions)."""
from __future__ import annotations

import threading
from functools import cache
from typing import TYPE_CHECKING, Callable

from ..errors import CorruptFileError, RemoteError, shorten
from .remote.files import getsize, mapped
from .safe_pickle.limits import address_space_lock
from .safe_pickle.records import ITEMSIZE, StorageRef, TensorRecord

if TYPE_CHECKING:
    import numpy as np
    import torch

    from .np_values import Values


@cache
def torch_dtypes() -> "dict[str, torch.dtype]":
    """dtype name -> torch's dtype, for every dtype a record may name that this torch has (imports torch)."""
    import torch
    return {name: getattr(torch, name) for name in ITEMSIZE if hasattr(torch, name)}


class FileMaps:
    """One private (copy-on-write) memory map per file, shared by every read from it.

    A map per tensor would hold one file descriptor and one kernel mapping per live tensor: reading 50,000 tensors
    runs out of both (EMFILE, ``vm.max_map_count``). Mapping costs no reads; pages are read when touched. Like
    ``torch.load(mmap=True)``, values read through one map share its private pages: changing a read tensor in place
    changes what a later read of the same storage returns (never the file) — clone before modifying.
    """

    def __init__(self):
        self._maps: dict[str, "np.ndarray"] = {}
        self._lock = threading.Lock()

    def bytes_of(self, file: str, offset: int, length: int, size: int) -> "np.ndarray":
        """Bytes ``[offset, offset + length)`` of ``file`` (a URL: of its sparse mirror, once they are in it)."""
        import numpy as np
        local = mapped(file, offset, length)
        with self._lock:
            m = self._maps.get(local)
            if m is None or len(m) != size:  # first use, or the file changed: map it again (old views keep theirs)
                with address_space_lock:   # never while a pickle loads under an address-space cap
                    m = self._maps[local] = np.memmap(local, dtype=np.uint8, mode="c", shape=(size,))
        return m[offset:offset + length]


class ByteSource:
    """Maps a storage key to ``(file, byte offset, byte length)`` and reads it through a copy-on-write memory map.

    The file is never written: numpy's mode ``"c"`` keeps any write in private memory. Sources of one checkpoint
    may share ``maps`` (see :class:`FileMaps`).
    """

    def __init__(self, resolve: Callable[[StorageRef], tuple[str, int, int]] | None = None,
                 describe: Callable[[StorageRef], tuple[str, str | None, int | None]] | None = None,
                 maps: FileMaps | None = None):
        self._resolve = resolve
        self._describe = describe
        self.maps = maps if maps is not None else FileMaps()

    def region(self, ref: StorageRef) -> tuple[str, int, int]:
        """``(file, byte offset, byte length)`` of a storage: may open the file (zip directory lookup). Subclasses
        override this rather than pass a bound method of their own as ``resolve`` (that would be a reference cycle,
        keeping the source and its file maps alive until a full collection)."""
        return self._resolve(ref)

    def describe(self, ref: StorageRef) -> tuple[str, str | None, int | None]:
        """``(file, record inside it or None, byte offset or None when not known without a lookup)``, cheaply."""
        if self._describe is not None:
            return self._describe(ref)
        return "", None, None

    def storage_bytes(self, ref: StorageRef) -> "torch.Tensor":
        import torch
        raw = self.mapped_bytes(ref)
        return torch.from_numpy(raw) if raw.size else torch.empty(0, dtype=torch.uint8)

    def array_bytes(self, ref: StorageRef) -> "np.ndarray":
        """The storage's bytes as numpy ``uint8``: mapped in place here (a plain region: no torch). A source whose
        bytes are not one region of a file (compressed, assembled from chunks) overrides this."""
        return self.mapped_bytes(ref)

    def mapped_bytes(self, ref: StorageRef) -> "np.ndarray":
        """The storage's bytes as a numpy ``uint8`` view on the file's private map (no torch)."""
        import numpy as np
        file, offset, length = self.region(ref)
        need = ref.nbytes
        if length < need:
            raise CorruptFileError(
                f"{file}: storage {shorten(ref.key)} holds {length} bytes but its tensors need {need}; "
                "the file is truncated or corrupt — re-download or re-save it")
        if need == 0:
            return np.empty(0, dtype=np.uint8)
        size = getsize(file)
        if offset < 0 or offset + need > size:
            raise CorruptFileError(
                f"{file}: storage {shorten(ref.key)} lies at bytes {offset}..{offset + need} but the file has {size} "
                "bytes; "
                "the file is truncated — re-download or re-save it")
        return self.maps.bytes_of(file, offset, need, size)


def _storage_array(ref: StorageRef) -> "np.ndarray":
    """A storage's bytes as numpy, as its source gives them (:meth:`ByteSource.array_bytes`)."""
    return ref.source.array_bytes(ref)


def _checked_bytes(record: TensorRecord, file_label: str, read: Callable[[StorageRef], object]):
    """The storage bytes of ``record`` through ``read``, after checking its layout; errors said for the user."""
    ref = record.storage
    if not isinstance(ref, StorageRef) or ref.source is None:
        raise CorruptFileError(f"{file_label}: tensor has no readable storage")
    if (len(record.stride) != len(record.shape) or record.storage_offset < 0
            or not all(type(st) is int and st >= 0 for st in record.stride)):
        raise CorruptFileError(f"{file_label}: a tensor of shape {list(record.shape)} has an invalid stride "
                               f"{list(record.stride)} or storage offset {record.storage_offset}; the file is corrupt")
    try:
        return read(ref)
    except RemoteError:   # a remote read that failed names its URL and what to do
        raise
    except PermissionError as e:
        from ..errors import UnsupportedFormatError
        raise UnsupportedFormatError(f"{e.filename or file_label}: permission denied while reading a tensor of "
                                     f"{file_label} — check the permissions of the checkpoint's files") from e
    except OSError as e:
        raise CorruptFileError(f"{e.filename or file_label}: could not read a tensor of {file_label} "
                               f"({e.strerror or e}); check that every file of the checkpoint is present") from e


def _last_element(record: TensorRecord, base_offset: int, available: int, file_label: str) -> None:
    last = base_offset + record.storage_offset + sum((s - 1) * st for s, st in zip(record.shape, record.stride))
    if last >= available:
        raise CorruptFileError(
            f"{file_label}: a tensor of shape {list(record.shape)} needs element {last} of a storage holding "
            f"{available}; the file is corrupt — re-save it")


def read_array(record: TensorRecord, *, file_label: str = "") -> "Values":
    """The values of one tensor as numpy (:class:`~.np_values.Values`: raw bits for bfloat16/float8/complex32), a
    view on a private memory map like :func:`read_record`'s, without torch where the bytes are mapped in place."""
    import numpy as np
    from .np_values import Values, numpy_dtype, tensor_array
    np_dtype = numpy_dtype(record.dtype or "")
    if np_dtype is None:   # quantized, packed, sub-byte dtypes: as torch reads them
        return tensor_array(read_record(record, file_label=file_label))
    raw = _checked_bytes(record, file_label, _storage_array)
    itemsize = ITEMSIZE[record.dtype]
    ref = record.storage
    base_offset = int(ref.view[1]) if ref.view is not None else 0  # legacy format view into a root storage
    usable = raw.size - raw.size % itemsize
    flat = raw[:usable].view(np_dtype)
    if record.numel == 0:
        return Values(np.empty(record.shape, dtype=np_dtype), record.dtype)
    _last_element(record, base_offset, flat.size, file_label)
    start = base_offset + record.storage_offset
    return Values(np.lib.stride_tricks.as_strided(flat[start:], record.shape, [st * itemsize for st in record.stride]),
                  record.dtype)


def read_record(record: TensorRecord, *, file_label: str = "") -> "torch.Tensor":
    """The values of one tensor, read on demand (a view on a private memory map, no bytes copied up front)."""
    import torch
    dtype = torch_dtypes().get(record.dtype or "")
    if isinstance(record.storage, StorageRef) and record.storage.source is not None and dtype is None:
        raise CorruptFileError(f"{file_label}: cannot read tensors of dtype {record.dtype!r}")
    raw = _checked_bytes(record, file_label, lambda ref: ref.source.storage_bytes(ref))
    itemsize = ITEMSIZE[record.dtype]
    ref = record.storage
    base_offset = int(ref.view[1]) if ref.view is not None else 0  # legacy format view into a root storage
    usable = raw.numel() - raw.numel() % itemsize
    flat = raw[:usable].view(dtype) if usable else torch.empty(0, dtype=dtype)
    if record.numel == 0:
        return torch.empty(record.shape, dtype=dtype)
    _last_element(record, base_offset, flat.numel(), file_label)
    return torch.as_strided(flat, record.shape, record.stride, base_offset + record.storage_offset)
