"""torch.distributed.checkpoint folders: a ``.metadata`` pickle plus ``*.distcp`` data files.

``.metadata`` is read with the safe unpickler: its classes (``Metadata``, ``TensorStorageMetadata``, ``MetadataIndex``,
``_StorageInfo``...) become inert placeholders whose recorded state we interpret. It lists every tensor's global
shape, dtype and chunks, and where each chunk lies (file, byte offset, length), so the folder lists without opening a
data file.

How torch 2.x's ``FileSystemWriter`` lays bytes out (torch/distributed/checkpoint/filesystem.py, ``_write_item``):
with the default ``SerializationFormat.TORCH_SAVE`` each chunk is a complete ``torch.save(tensor)`` zip archive at
``[offset, offset + length)`` of its ``.distcp`` file, and each non-tensor value ("bytes" item) is ``torch.save(obj)``
the same way. With ``SerializationFormat.SAFETENSORS`` a ``.distcp`` file is a safetensors file keyed by the tensor's
fully qualified name. An embedded archive is read as a whole torch.save file is (the records torch's reader would
read, anything deflated inflated within bounds); a tensor's storage is then memory-mapped, and a tensor split into
several chunks is assembled from them.
"""
from __future__ import annotations

import io
import json
import os
import stat
import struct
import pickle
import threading
from collections import OrderedDict
from typing import TYPE_CHECKING, Any

from ...errors import CorruptFileError, ExplorerError, UnsafePathError, shorten
from ..bytesource import ByteSource, read_record, torch_dtypes
from ..checkpoint import Checkpoint
from ..gc_pause import gc_paused
from ..safe_pickle.inert import Inert
from ..safe_pickle.printable import printable_key
from ..safe_pickle.records import ITEMSIZE, StorageRef, TensorRecord, TorchDtype
from ..safe_pickle.unpickler import SafeUnpickler
from ..remote.files import basename, files_in, getsize, is_remote, isdir
from . import Reader, open_regular, register

if TYPE_CHECKING:   # listing needs no torch; a value's chunks are assembled into a tensor in storage_bytes
    import torch

METADATA = ".metadata"
DATA_SUFFIX = ".distcp"
MAX_BYTES_ITEM = 1 << 20  # non-tensor values larger than this are listed, not read, when the folder opens

# classes torch's own .metadata names: expected, so not listed among the file's references
_DCP_MACHINERY = (
    "torch.distributed.checkpoint.metadata.", "torch.distributed.checkpoint.filesystem._StorageInfo",
    "torch.distributed.checkpoint.filesystem._StoragePrefix", "torch._utils._get_layout", "pathlib.PosixPath",
    "torch.serialization._get_layout", "pathlib.WindowsPath", "pathlib.Path", "pathlib._local.PosixPath", "pathlib._local.WindowsPath",
)


def identify(path: str) -> bool:
    if is_remote(path):     # the URL of its .metadata, or a folder URL that can be listed (hf://, s3://, gs://)
        if not isdir(path):
            return basename(path) == METADATA
        try:
            return bool(files_in(path, METADATA))
        except ExplorerError:       # plain HTTP cannot list a folder: name the .metadata instead
            return False
    if os.path.isdir(path):  # a .metadata that is a FIFO or a folder is this reader's to refuse, clearly
        return os.path.exists(os.path.join(path, METADATA))
    return os.path.basename(path) == METADATA and os.path.isfile(path)


def _beside(path: str, name: str) -> str:
    """``name`` in the folder ``path`` is (a folder) or lies in (a file); for a URL, in the URL's folder."""
    if is_remote(path):
        from ..remote.urls import join
        return join(path, name)
    folder = path if os.path.isdir(path) else os.path.dirname(os.path.abspath(path))
    return os.path.join(folder, name)


def _state(obj) -> dict:
    st = obj.state_dict() if isinstance(obj, Inert) else None
    return st if isinstance(st, dict) else {}


def _name(obj) -> str:
    return obj.global_name.rsplit(".", 1)[-1] if isinstance(obj, Inert) else type(obj).__name__


class _FileView(io.RawIOBase):
    """Bytes ``[start, start + length)`` of a file, as a seekable file of their own (for torch's zip reader)."""

    def __init__(self, path: str, start: int, length: int):
        super().__init__()
        self._f = open_regular(path)
        self._start, self._length, self._pos = start, length, 0

    def readable(self):
        return True

    def seekable(self):
        return True

    def tell(self):
        return self._pos

    def seek(self, pos, whence=0):
        base = {0: 0, 1: self._pos, 2: self._length}[whence]
        self._pos = max(0, min(self._length, base + pos))
        return self._pos

    def readinto(self, buf):
        n = min(len(buf), self._length - self._pos)
        if n <= 0:
            return 0
        self._f.seek(self._start + self._pos)
        data = self._f.read(n)
        buf[:len(data)] = data
        self._pos += len(data)
        return len(data)

    def close(self):
        self._f.close()
        super().close()


class _Chunk:
    __slots__ = ("offsets", "sizes", "file", "offset", "length", "transforms")

    def __init__(self, offsets, sizes, file, offset, length, transforms):
        self.offsets, self.sizes, self.file = offsets, sizes, file
        self.offset, self.length, self.transforms = offset, length, transforms


class DcpSource(ByteSource):
    """Reads a tensor of a DCP folder: each chunk from its ``.distcp`` file, assembled into the whole tensor."""

    def __init__(self, folder: str):
        super().__init__(None)
        self.folder = folder
        self.chunks: dict[str, list[_Chunk]] = {}
        self.shapes: dict[str, tuple] = {}
        self._lock = threading.Lock()
        self._records: dict[tuple, TensorRecord] = {}

    def region(self, ref):
        chunks = self.chunks.get(ref.key) or []
        if len(chunks) == 1:
            c = chunks[0]
            return c.file, c.offset, c.length
        raise CorruptFileError(f"{self.folder}: tensor {shorten(ref.key)} is stored in {len(chunks)} chunks, not one "
                               "region")

    def describe(self, ref):
        chunks = self.chunks.get(ref.key) or []
        if not chunks:
            return self.folder, None, None
        c = chunks[0]
        return c.file, None, c.offset

    def array_bytes(self, ref: StorageRef):
        """The tensor's bytes, assembled from its chunks (through torch)."""
        return self.storage_bytes(ref).numpy()

    def storage_bytes(self, ref: StorageRef) -> "torch.Tensor":
        import torch
        key = ref.key
        chunks = self.chunks.get(key)
        shape = self.shapes[key]
        dtype = torch_dtypes().get(ref.dtype or "")
        if not chunks or dtype is None:
            raise CorruptFileError(f"{self.folder}: tensor {shorten(key)} has no readable chunks (dtype {ref.dtype})")
        if len(chunks) == 1 and all(o == 0 for o in chunks[0].offsets) and tuple(chunks[0].sizes) == shape:
            t = self._read_chunk(key, chunks[0], dtype)
            if not t.is_contiguous():
                t = t.contiguous()
        else:
            self._check_chunks(key, chunks, shape, ITEMSIZE.get(ref.dtype or "", 1))  # before allocating the whole
            t = torch.zeros(shape, dtype=dtype)
            covered = 0
            for c in chunks:
                part = self._read_chunk(key, c, dtype)
                view = t
                for dim, (o, s) in enumerate(zip(c.offsets, c.sizes)):
                    if o < 0 or o + s > shape[dim]:
                        raise CorruptFileError(f"{self.folder}: a chunk of {shorten(key)} lies outside its shape "
                                               f"{list(shape)}; the metadata is corrupt")
                    view = view.narrow(dim, o, s)
                view.copy_(part)
                covered += part.numel()
            if covered < t.numel():
                raise CorruptFileError(f"{self.folder}: the chunks of {shorten(key)} cover {covered} of {t.numel()} "
                                       "elements; a rank's data is missing — copy every .distcp file")
        return t.reshape(-1).view(torch.uint8) if t.numel() else torch.empty(0, dtype=torch.uint8)

    def _check_chunks(self, key: str, chunks: list, shape: tuple, itemsize: int) -> None:
        """What the metadata declares must add up before the whole tensor is allocated: every chunk inside the
        shape, the chunks' elements the tensor's, and the bytes their files really hold at least what that needs
        (a 16 KB checkpoint may declare a tensor of gigabytes)."""
        numel = 1
        for s in shape:
            numel *= s
        total = 0
        present = 0
        for c in chunks:
            n = 1
            for dim, (o, s) in enumerate(zip(c.offsets, c.sizes)):
                if type(o) is not int or type(s) is not int or o < 0 or s < 0 or o + s > shape[dim]:
                    raise CorruptFileError(f"{self.folder}: a chunk of {shorten(key)} lies outside its shape "
                                           f"{list(shape)}; the metadata is corrupt — copy the checkpoint again")
                n *= s
            total += n
            if not c.transforms:
                present += max(0, min(c.length, _file_size(c.file) - c.offset))
        if total != numel:
            raise CorruptFileError(f"{self.folder}: the chunks of {shorten(key)} hold {total:,} elements, its shape "
                                   f"{list(shape)} {numel:,}; a rank's data is missing or the metadata is corrupt — "
                                   "copy every .distcp file with the .metadata")
        if all(not c.transforms for c in chunks) and present < numel * itemsize:
            raise CorruptFileError(f"{self.folder}: tensor {shorten(key)} of shape {list(shape)} needs "
                                   f"{numel * itemsize:,} bytes but its chunks' files hold {present:,}; the "
                                   "checkpoint is truncated or its metadata is corrupt — copy it again")

    def _read_chunk(self, key: str, c: _Chunk, dtype) -> "torch.Tensor":
        label = f"{c.file} (chunk of {shorten(key)} at byte {c.offset})"
        if c.transforms:
            raise CorruptFileError(f"{label}: stored through DCP storage extensions {list(c.transforms)} (e.g. "
                                   "compression), which this tool does not read yet — load it with torch")
        size = _file_size(c.file, missing=-1)
        if size < 0:
            raise CorruptFileError(f"{c.file}: a data file of the DCP checkpoint is missing — copy every .distcp "
                                   "file with the .metadata")
        if c.offset < 0 or c.offset + c.length > size:
            raise CorruptFileError(f"{label}: the chunk ends past the end of the file ({size} bytes); the file is "
                                   "truncated — copy it again")
        with open_regular(c.file) as f:
            f.seek(c.offset)
            head = f.read(4)
        if head == b"PK\x03\x04":
            rec = self._chunk_record(c, label)
        else:
            rec = self._safetensors_record(key, c, label)
        if tuple(rec.shape) != tuple(c.sizes):
            raise CorruptFileError(f"{label}: the chunk holds shape {list(rec.shape)}, the metadata says "
                                   f"{list(c.sizes)}; the checkpoint is inconsistent")
        t = read_record(rec, file_label=label)
        return t if t.dtype == dtype else t.to(dtype)

    def _chunk_record(self, c: _Chunk, label: str) -> TensorRecord:
        """The tensor record inside a chunk's embedded archive, parsed once; its bytes go through the folder's maps."""
        key = (c.file, c.offset)
        with self._lock:
            rec = self._records.get(key)
        if rec is not None:
            return rec
        rec, _ = _read_archive(c.file, c.offset, c.length, label, self.maps)
        if not isinstance(rec, TensorRecord):
            raise CorruptFileError(f"{label}: the chunk does not hold a tensor; the checkpoint is inconsistent")
        with self._lock:
            self._records[key] = rec
        return rec

    def _safetensors_record(self, key: str, c: _Chunk, label: str) -> TensorRecord:
        """``SerializationFormat.SAFETENSORS``: a safetensors blob, keyed by fqn, begins at the chunk's offset."""
        from .safetensors_reader import DTYPES, ITEMSIZES
        try:
            with open_regular(c.file) as f:
                f.seek(c.offset)
                (n,) = struct.unpack("<Q", f.read(8))
                if n > 100 * 1024 * 1024 or c.offset + 8 + n > getsize(c.file):
                    raise ValueError("header length out of range")
                header = json.loads(f.read(n).decode("utf-8"))
            spec = header[key]
            code, shape, (begin, end) = spec["dtype"], tuple(spec["shape"]), spec["data_offsets"]
            dtype = DTYPES[code]
            numel = 1
            for d in shape:
                numel *= int(d)
            if end - begin != numel * ITEMSIZES[code]:
                raise ValueError("data_offsets do not match the shape")
        except (OSError, ValueError, KeyError, TypeError, struct.error, UnicodeDecodeError) as e:
            raise CorruptFileError(f"{label}: neither a torch.save archive nor a safetensors entry for {shorten(key)} "
                                   f"({type(e).__name__}: {shorten(str(e))}); the file is corrupt") from e
        start = c.offset + 8 + n + begin
        src = ByteSource(lambda ref: (c.file, start, end - begin))
        ref = StorageRef(key, dtype, "cpu", numel, source=src)
        return TensorRecord(ref, 0, shape, _contiguous(shape), dtype)


def _safe_file(folder: str, name: object, meta_path: str) -> str:
    """A data file the metadata names, judged by the *name* (a relative path inside the folder: no ``..``, not
    absolute, no drive): where a symlink of that name points is the user's business (a cache of links)."""
    if not isinstance(name, str) or not name or "\0" in name:
        raise UnsafePathError(f"{meta_path}: a chunk names data file {shorten(name)}, which is not a file name inside "
                              "the checkpoint folder — refusing to read it")
    parts = name.replace("\\", "/").split("/")
    if os.path.isabs(name) or name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":") or ".." in parts:
        raise UnsafePathError(f"{meta_path}: data file {shorten(name)} lies outside the checkpoint folder — refusing "
                              "to read it")
    return _beside(folder + "/", name) if is_remote(folder) else os.path.join(folder, name)


def _file_size(path: str, missing: int = 0) -> int:
    """The size of a data file; ``missing`` when there is none (or it is not a regular file)."""
    if is_remote(path):
        try:
            return getsize(path)
        except ExplorerError:
            return missing
    try:
        st = os.stat(path)
    except OSError:
        return missing
    return st.st_size if stat.S_ISREG(st.st_mode) else missing


def _int(value, what: str, fqn: str, meta_path: str) -> int:
    """An offset or length from the metadata: a non-negative int below 2**62, else one clear error."""
    if type(value) is not int or not 0 <= value < 1 << 62:
        raise CorruptFileError(f"{meta_path}: the {what} of a chunk of {shorten(fqn)} is {shorten(value)}, not a "
                               "byte count; the metadata is corrupt — copy the checkpoint folder again")
    return value


def _contiguous(shape) -> tuple:
    stride, acc = [], 1
    for s in reversed(shape):
        stride.append(acc)
        acc *= max(s, 1)
    return tuple(reversed(stride))


def _read_archive(file: str, offset: int, length: int, label: str, maps=None):
    """(root, references) of the torch.save archive at ``[offset, offset + length)`` of ``file``, read as a whole
    file is (:func:`.torch_zip.read_archive`: the records torch's reader would read, inflated within bounds)."""
    from .torch_zip import read_archive
    with _FileView(file, offset, length) as view:
        return read_archive(view, length, label, file=file, base_offset=offset, maps=maps)


def _read_bytes_item(folder: str, info: dict, meta_path: str):
    """A non-tensor value (``torch.save(obj)`` bytes), read with the safe unpickler. Returns (value, references)."""
    from .zip_directory import ZipDirectory
    rel, offset, length = info.get("relative_path"), info.get("offset"), info.get("length")
    if not isinstance(offset, int) or not isinstance(length, int):
        return "<unreadable: no location>", []
    if info.get("transform_descriptors"):
        return f"<stored through extensions {list(info['transform_descriptors'])}>", []
    if length > MAX_BYTES_ITEM:
        return f"<{length} bytes, not read>", []
    file = _safe_file(folder, rel, meta_path)
    if offset < 0 or length < 0 or offset + length > _file_size(file):
        raise CorruptFileError(f"{file}: a data file of the DCP checkpoint is missing or truncated — copy every "
                               ".distcp file with the .metadata")
    label = f"{file}@{offset}"
    with _FileView(file, offset, length) as view:
        entry = ZipDirectory(view, length, label).find("data.pkl")
    inflated = entry.usize if entry is not None else 0
    if inflated > MAX_BYTES_ITEM:  # a deflated data.pkl may inflate a thousand times: listed, not read
        return f"<{length} bytes holding {inflated} once inflated, not read>", []
    return _read_archive(file, offset, length, label)


def _load_metadata(meta_path: str):
    """The ``.metadata`` pickle, parsed by the safe unpickler: (its object, the globals it names)."""
    try:
        with open_regular(meta_path) as f, gc_paused():
            up = SafeUnpickler(f)
            md = up.load()
    except OSError as e:
        raise CorruptFileError(f"{meta_path}: cannot read the DCP metadata ({e.strerror}) — check permissions") from e
    except ExplorerError:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError,
            RecursionError, MemoryError, UnicodeDecodeError, OverflowError) as e:
        raise CorruptFileError(f"{meta_path}: the DCP metadata could not be parsed ({type(e).__name__}: "
                               f"{str(e)[:200]}); the file is truncated or corrupt — copy the checkpoint folder "
                               "again") from e
    return md, up.references


def _locations(storage: dict) -> tuple[dict, dict]:
    """Where each chunk lies: ``(fqn, chunk offsets) -> storage info`` and ``fqn -> [storage info, ...]``."""
    where: dict[tuple, dict] = {}
    where_by_fqn: dict[str, list] = {}
    for index, info in storage.items():
        ist, sinfo = _state(index), _state(info)
        fqn = ist.get("fqn")
        if not isinstance(fqn, str):
            continue
        off = ist.get("offset")
        if isinstance(off, (tuple, list)) and not all(type(o) is int for o in off):
            continue  # never hash what the file nests (a shared tuple may be 2**64 items): not an offset anyway
        key = (fqn, tuple(off) if isinstance(off, (tuple, list)) else None)
        where[key] = sinfo
        where_by_fqn.setdefault(fqn, []).append(sinfo)
    return where, where_by_fqn


def _tensor_dtype(item) -> str | None:
    props = _state(item).get("properties")
    pstate = props._state if isinstance(props, Inert) else None
    if isinstance(pstate, tuple) and pstate and isinstance(pstate[0], TorchDtype):
        return str(pstate[0])
    if isinstance(pstate, dict) and isinstance(pstate.get("dtype"), TorchDtype):
        return str(pstate["dtype"])
    return None


def _tensor_value(fqn: str, item, where: dict, source: DcpSource, folder: str, meta_path: str) -> TensorRecord:
    """The record of a ``TensorStorageMetadata`` entry; its chunks are registered with ``source``."""
    st = _state(item)
    dtype = _tensor_dtype(item)
    size = st.get("size")
    if dtype is None or not isinstance(size, tuple) or not all(type(s) is int and 0 <= s < 1 << 62 for s in size):
        raise CorruptFileError(f"{meta_path}: tensor {shorten(fqn)} has no valid dtype or size in the metadata (size "
                               f"{shorten(size)}); the file is corrupt — copy the checkpoint folder again")
    chunks = []
    for ch in st.get("chunks") or []:
        cst = _state(ch)
        offsets, sizes = cst.get("offsets"), cst.get("sizes")
        if (not isinstance(offsets, tuple) or not isinstance(sizes, tuple) or len(offsets) != len(size)
                or len(sizes) != len(size) or not all(type(o) is int for o in offsets + sizes)):
            raise CorruptFileError(f"{meta_path}: a chunk of {shorten(fqn)} has no valid offsets/sizes; the "
                                   "metadata is corrupt")
        sinfo = where.get((fqn, offsets))
        if sinfo is None:
            raise CorruptFileError(f"{meta_path}: no data file holds the chunk of {shorten(fqn)} at "
                                   f"{shorten(offsets)}; the metadata is incomplete")
        file = _safe_file(folder, sinfo.get("relative_path"), meta_path)
        chunks.append(_Chunk(offsets, sizes, file, _int(sinfo.get("offset"), "offset", fqn, meta_path),
                             _int(sinfo.get("length"), "length", fqn, meta_path), sinfo.get("transform_descriptors")))
    numel = 1
    for s in size:
        numel *= s
    if numel >= 1 << 62:
        raise CorruptFileError(f"{meta_path}: tensor {shorten(fqn)} claims {numel:,} elements (size {list(size)}), "
                               "more than any machine holds; the metadata is corrupt")
    source.chunks[fqn] = chunks
    source.shapes[fqn] = size
    ref = StorageRef(fqn, dtype, "cpu", numel, source=source)
    return TensorRecord(ref, 0, size, _contiguous(size), dtype)


def open_dcp(path: str) -> Checkpoint:
    meta_path = _beside(path, METADATA)
    folder = meta_path[:-len(METADATA)].rstrip("/") if is_remote(path) else os.path.dirname(meta_path)
    md, named = _load_metadata(meta_path)
    state = _state(md)
    sdm = state.get("state_dict_metadata")
    if _name(md) != "Metadata" or not isinstance(sdm, dict):
        raise CorruptFileError(f"{meta_path}: not torch.distributed.checkpoint metadata (it holds a {_name(md)}); "
                               "open the checkpoint folder that torch.distributed.checkpoint.save wrote")
    storage = state.get("storage_data") if isinstance(state.get("storage_data"), dict) else {}
    planner = state.get("planner_data") if isinstance(state.get("planner_data"), dict) else {}
    where, where_by_fqn = _locations(storage)
    source = DcpSource(folder)
    refs = [r for r in named if not r.startswith(_DCP_MACHINERY)]
    flat: list[tuple[tuple, Any]] = []
    for fqn, item in sdm.items():
        fqn = printable_key(fqn) if type(fqn) is str else shorten(fqn)
        if _name(item) == "TensorStorageMetadata":
            value = _tensor_value(fqn, item, where, source, folder, meta_path)
        else:  # BytesStorageMetadata: a pickled value
            infos = where_by_fqn.get(fqn) or []
            if infos:
                value, item_refs = _read_bytes_item(folder, infos[0], meta_path)
                refs.extend(r for r in item_refs if r not in refs)
            else:
                value = "<missing>"
        loc = planner.get(fqn)
        parts = (tuple(printable_key(p) if type(p) is str else shorten(p) for p in loc)
                 if isinstance(loc, (tuple, list)) and 0 < len(loc) <= 1000 else (fqn,))
        flat.append((parts, value))
    with gc_paused():
        root = _nest(flat)
    files = sorted({c.file for cs in source.chunks.values() for c in cs})
    metadata = {"dcp_version": state.get("version"),
                "data_files": [f[len(folder) + 1:] if is_remote(folder) else os.path.relpath(f, folder) for f in files]}
    return Checkpoint(folder, "torch-dcp", root, refs, metadata)


def _nest(flat: list[tuple[tuple, Any]]) -> OrderedDict:
    """Nested dicts from ``(path, value)`` pairs; a path that clashes with another stays whole at the top level."""
    root: OrderedDict = OrderedDict()
    for parts, value in flat:
        node = root
        ok = True
        for p in parts[:-1]:
            nxt = node.get(p)
            if nxt is None:
                nxt = node[p] = OrderedDict()
            elif not isinstance(nxt, OrderedDict):
                ok = False
                break
            node = nxt
        if ok and parts[-1] not in node:
            node[parts[-1]] = value
        else:
            root[".".join(parts)] = value
    return root


register(Reader("torch.distributed.checkpoint", identify, open_dcp, priority=70))
