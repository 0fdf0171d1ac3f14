"""torch.save's legacy format (before 1.6, or ``_use_new_zipfile_serialization=False``): a run of pickles followed by
raw storages, each an 8-byte element count and its bytes."""
from __future__ import annotations

import pickle
import struct

from ...errors import CorruptFileError, ExplorerError, shorten
from ..bytesource import ByteSource
from ..checkpoint import Checkpoint
from ..gc_pause import gc_paused
from ..safe_pickle.limits import BoundedReader
from ..safe_pickle.records import ITEMSIZE, storage_from_pid
from ..safe_pickle.unpickler import SafeUnpickler
from . import Reader, getsize, isfile, open_regular, read_head, register

MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
PROTOCOL_VERSION = 1001
# protocol 2 pickle of a 10-byte LONG1: how every legacy file starts
LEGACY_HEAD = b"\x80\x02\x8a\x0a"


def identify(path: str) -> bool:
    return isfile(path) and read_head(path, 4) == LEGACY_HEAD


_PARSE_ERRORS = (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError,
                 RecursionError, MemoryError, UnicodeDecodeError, OverflowError, struct.error)


def open_legacy(path: str) -> Checkpoint:
    storages: dict = {}
    regions: dict[str, tuple[int, int]] = {}

    def resolve(ref):
        key = ref.key
        if key not in regions:
            raise CorruptFileError(f"{path}: storage {shorten(key)} is not in the file's storage list; the file is "
                                   "corrupt")
        offset, length = regions[key]
        return path, offset, length

    source = ByteSource(resolve, lambda ref: (path, None, regions.get(ref.key, (None, 0))[0]))

    def persistent_load(pid):
        if type(pid) is tuple and len(pid) == 4 and pid[0] == "module":
            # ('module', class, source file, source code): torch kept the class's source; the class is a placeholder
            return pid[1]
        ref = storage_from_pid(pid)
        ref.source = source
        if ref.view is not None:  # (view_key, offset, size) of a view into root storage ``ref.key``
            root = storages.setdefault(ref.key, ref)
            ref.nbytes = root.nbytes
            return ref
        return storages.setdefault(ref.key, ref)

    size = getsize(path)
    try:
        with open_regular(path) as f, gc_paused():
            bf = BoundedReader(f, size)
            if SafeUnpickler(bf).load() != MAGIC_NUMBER:
                raise CorruptFileError(f"{path}: not a torch.save legacy file (wrong magic number) — it may be a "
                                       "plain pickle; open it only if you trust it, with pickle")
            if SafeUnpickler(bf).load() != PROTOCOL_VERSION:
                raise CorruptFileError(f"{path}: unsupported legacy torch.save protocol version; re-save it with a "
                                       "current torch")
            SafeUnpickler(bf).load()  # sys_info: byte order and type sizes
            up = SafeUnpickler(bf, persistent_load)
            root = up.load()
            keys = SafeUnpickler(bf).load()
            if not isinstance(keys, list):
                raise CorruptFileError(f"{path}: the storage list is not a list; the file is corrupt")
            pos = f.tell()
            for key in keys:
                if type(key) is not str:  # never str() what the file nests: a shared tuple prints 2**64 items
                    if type(key) is not int:
                        raise CorruptFileError(f"{path}: the storage list holds {shorten(key)}, not a storage "
                                               "name; the file is corrupt")
                    key = str(key)
                ref = storages.get(key)
                if ref is None:
                    raise CorruptFileError(f"{path}: lists storage {shorten(key)} that no tensor uses; the file is "
                                           "corrupt")
                f.seek(pos)
                head = f.read(8)
                if len(head) < 8:
                    raise CorruptFileError(f"{path}: truncated inside the storage data — re-download or re-save it")
                (numel,) = struct.unpack("<q", head)
                nbytes = numel * ITEMSIZE.get(ref.dtype or "uint8", 1)
                if numel < 0 or nbytes < ref.nbytes or pos + 8 + nbytes > size:
                    raise CorruptFileError(f"{path}: storage {shorten(key)} claims {nbytes} bytes past the end of the "
                                           "file; the file is truncated — re-download or re-save it")
                regions[key] = (pos + 8, nbytes)
                pos += 8 + nbytes
    except ExplorerError:
        raise
    except _PARSE_ERRORS as e:
        raise CorruptFileError(f"{path}: legacy torch.save file could not be parsed ({type(e).__name__}: "
                               f"{str(e)[:200]}); the file is corrupt or truncated") from e
    try:
        return Checkpoint(path, "torch-legacy", root, up.references)
    except CorruptFileError:
        raise
    except (RecursionError, TypeError, ValueError, AttributeError) as e:
        raise CorruptFileError(f"{path}: the pickled object has an unexpected structure ({type(e).__name__}); "
                               "the file is corrupt or not a checkpoint") from e


register(Reader("torch.save (legacy)", identify, open_legacy, priority=40))
