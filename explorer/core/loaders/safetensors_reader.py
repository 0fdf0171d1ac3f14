"""``.safetensors``: an 8-byte little-endian header length, a JSON header, then the bytes. We validate the header the way
the safetensors library does (length within the file, offsets in order and in range, known dtypes)."""
from __future__ import annotations

import json
import os
import struct
from collections import OrderedDict

from ...errors import CorruptFileError
from ..bytesource import ByteSource
from ..checkpoint import Checkpoint
from ..safe_pickle import StorageRef, TensorRecord
from . import Reader, read_head, register

DTYPES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16", "I64": "int64", "I32": "int32",
          "I16": "int16", "I8": "int8", "U8": "uint8", "U16": "uint16", "U32": "uint32", "U64": "uint64",
          "BOOL": "bool", "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2", "C64": "complex64",
          "C128": "complex128", "F8_E8M0": "float8_e8m0fnu"}
ITEMSIZES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "U16": 2,
             "U32": 4, "U64": 8, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1, "C64": 8, "C128": 16, "F8_E8M0": 1}
MAX_HEADER = 100 * 1024 * 1024  # the safetensors library's own limit


def identify(path: str) -> bool:
    if not os.path.isfile(path):
        return False
    if path.endswith(".safetensors"):
        return True
    head = read_head(path, 9)
    if len(head) < 9:
        return False
    (n,) = struct.unpack("<Q", head[:8])
    return head[8:9] == b"{" and 2 <= n <= MAX_HEADER


def read_header(path: str) -> tuple[dict, int]:
    """The parsed JSON header and where the data begins."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise CorruptFileError(f"{path}: {size} bytes is too short for a safetensors file (it needs an 8-byte "
                                   "header length); the file is truncated or not safetensors")
        (n,) = struct.unpack("<Q", head)
        if n > MAX_HEADER or n > size - 8:
            raise CorruptFileError(f"{path}: the safetensors header claims {n} bytes but the file has {size - 8} "
                                   "after the length field; the file is truncated or corrupt")
        raw = f.read(n)
    try:
        header = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicates)
    except (UnicodeDecodeError, json.JSONDecodeError, ValueError) as e:
        raise CorruptFileError(f"{path}: the safetensors header is not valid JSON ({e}); the file is corrupt") from e
    if not isinstance(header, dict):
        raise CorruptFileError(f"{path}: the safetensors header is not a JSON object; the file is corrupt")
    return header, 8 + n


def _no_duplicates(pairs):
    out = OrderedDict()
    for k, v in pairs:
        if k in out:
            raise ValueError(f"duplicate key {k!r}")
        out[k] = v
    return out


def open_safetensors(path: str) -> Checkpoint:
    header, data_start = read_header(path)
    size = os.path.getsize(path)
    data_len = size - data_start
    meta = header.pop("__metadata__", None)
    regions: dict[str, tuple[int, int]] = {}
    source = ByteSource(lambda ref: (path, *regions[ref.key]))
    root: OrderedDict = OrderedDict()
    spans = []
    for key, spec in header.items():
        if not isinstance(spec, dict):
            raise CorruptFileError(f"{path}: header entry {key!r} is not an object; the file is corrupt")
        code, shape, offsets = spec.get("dtype"), spec.get("shape"), spec.get("data_offsets")
        if code not in DTYPES:
            raise CorruptFileError(f"{path}: tensor {key!r} has unknown dtype {code!r}; this safetensors version "
                                   "may be newer than the tool — known: " + ", ".join(DTYPES))
        if (not isinstance(shape, list) or not all(isinstance(s, int) and s >= 0 for s in shape)
                or not isinstance(offsets, list) or len(offsets) != 2
                or not all(isinstance(o, int) and o >= 0 for o in offsets) or offsets[0] > offsets[1]):
            raise CorruptFileError(f"{path}: tensor {key!r} has an invalid shape or data_offsets; the file is corrupt")
        numel = 1
        for s in shape:
            numel *= s
        begin, end = offsets
        if end - begin != numel * ITEMSIZES[code]:
            raise CorruptFileError(f"{path}: tensor {key!r} of shape {shape} and dtype {code} needs "
                                   f"{numel * ITEMSIZES[code]} bytes but its offsets span {end - begin}; "
                                   "the file is corrupt")
        if end > data_len:
            raise CorruptFileError(f"{path}: tensor {key!r} ends at byte {end} of a {data_len}-byte data section; "
                                   "the file is truncated — re-download it")
        spans.append((begin, end, key))
        regions[key] = (data_start + begin, end - begin)
        ref = StorageRef(key, DTYPES[code], "cpu", numel, source=source)
        stride, acc = [], 1
        for s in reversed(shape):
            stride.append(acc)
            acc *= max(s, 1)
        root[key] = TensorRecord(ref, 0, shape, tuple(reversed(stride)), DTYPES[code])
    spans.sort()
    for (b0, e0, k0), (b1, e1, k1) in zip(spans, spans[1:]):
        if b1 < e0:
            raise CorruptFileError(f"{path}: tensors {k0!r} and {k1!r} overlap in the data section; the file is corrupt")
    metadata = meta if isinstance(meta, dict) else {}
    return Checkpoint(path, "safetensors", root, [], metadata)


register(Reader("safetensors", identify, open_safetensors, priority=60))
