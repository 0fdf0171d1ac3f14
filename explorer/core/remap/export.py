"""Export a remapped state dict atomically (``.safetensors`` or ``.pt``), reading tensors one at a time."""
from __future__ import annotations

import json
import os
import struct
from collections import OrderedDict
from collections.abc import Mapping
from functools import partial
from typing import Any, Callable

import torch

from ...errors import Cancelled, RemapError
from ..atomic import atomic_output
from ..load.inputs import CheckpointInput, as_side
from ..records import dtype_name
from .rules import Remap


_ST_CODES = {"float64": "F64", "float32": "F32", "float16": "F16", "bfloat16": "BF16", "int64": "I64", "int32": "I32",
             "int16": "I16", "int8": "I8", "uint8": "U8", "uint16": "U16", "uint32": "U32", "uint64": "U64",
             "bool": "BOOL", "float8_e4m3fn": "F8_E4M3", "float8_e5m2": "F8_E5M2", "complex64": "C64",
             "complex128": "C128", "float8_e8m0fnu": "F8_E8M0"}


def _tensor_bytes(t: torch.Tensor) -> bytes:
    t = t.detach().to("cpu").contiguous().reshape(-1)
    if t.numel() == 0:
        return b""
    if t.is_complex():
        t = torch.view_as_real(t).reshape(-1)
    return t.view(torch.uint8).numpy().tobytes()


def _write_safetensors(f, items: list[tuple[str, Callable[[], torch.Tensor], tuple, str]], should_stop=None,
                       progress=None) -> None:
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for key, _read, shape, dt in items:
        code = _ST_CODES.get(dt)
        if code is None:
            raise RemapError(f"{key}: dtype {dt} cannot be stored in .safetensors; export to .pt instead")
        n = 1
        for s in shape:
            n *= s
        size = n * torch.empty((), dtype=getattr(torch, dt)).element_size()
        header[key] = {"dtype": code, "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % 8)
    f.write(struct.pack("<Q", len(raw)))
    f.write(raw)
    for i, (key, read, shape, dt) in enumerate(items):
        if should_stop is not None and should_stop():
            raise Cancelled("export cancelled")
        data = _tensor_bytes(read())
        expect = header[key]["data_offsets"][1] - header[key]["data_offsets"][0]
        if len(data) != expect:
            raise RemapError(f"{key}: read {len(data)} bytes, expected {expect}")
        f.write(data)
        if progress is not None:
            progress(i + 1, len(items))


def _replaces_a_file_read(side, out_path: str) -> bool:
    """Would writing ``out_path`` replace the checkpoint, or a file of the folder a sharded or DCP checkpoint
    reads (a shard, its index, a snapshot's link), or add a file to a folder the checkpoint is (its shards)?"""
    src = side.label
    if not src or not os.path.exists(src):
        return False
    if os.path.isdir(src):   # a folder of shards reads every checkpoint file in it: a new one would join it
        top = os.path.realpath(src)
        return os.path.commonpath([os.path.realpath(os.path.dirname(os.path.abspath(out_path))), top]) == top
    if not os.path.lexists(out_path):
        return False
    if os.path.exists(out_path) and os.path.samefile(src, out_path):
        return True
    root = src if os.path.isdir(src) else os.path.dirname(src) \
        if src.endswith(".index.json") or getattr(side, "format", "") in ("sharded", "dcp") else None
    if root is None:
        return False
    for norm in (os.path.abspath, os.path.realpath):   # the folder as named, and the files its links point to
        out, top = norm(out_path), norm(root)
        if os.path.commonpath([out, top]) == top:
            return True
    return False


def apply_remap(checkpoint_side, remap: Remap, out_path: str | os.PathLike, *, entry=None,
                progress: Callable[[int, int], Any] | None = None,
                should_stop: Callable[[], bool] | None = None) -> str:
    """Write the remapped state dict to ``out_path`` (``.safetensors`` or ``.pt``/``.pth``/``.bin``) atomically:
    a temporary file in the same folder, then ``os.replace``. Tensors are read one at a time. Returns the path."""
    side = as_side(checkpoint_side)
    out_path = os.fspath(out_path)
    if _replaces_a_file_read(side, out_path):
        raise RemapError(f"{out_path}: refusing to write into the checkpoint being read (its file, or a file of "
                         "its folder); choose a new file name outside it")
    if os.path.isdir(out_path):
        raise RemapError(f"{out_path}: is a folder; name the file to write (.safetensors or .pt)")
    if os.path.lexists(out_path):   # a model's source, another checkpoint, a file open in the window...
        raise RemapError(f"{out_path}: already exists; an export goes to a new file — choose a new name, or remove "
                         "the old file first")
    folder = os.path.dirname(os.path.abspath(out_path))
    if not os.path.isdir(folder):
        raise RemapError(f"{out_path}: folder {folder} does not exist")
    use_entry = remap.entry if remap.kind == "entry" else entry
    ck = CheckpointInput(side, use_entry)
    meta_sd = ck.meta()
    if not isinstance(meta_sd, Mapping):
        raise RemapError(f"{ck.label}: the object at this entry is not a state dict")
    is_st = out_path.endswith(".safetensors")
    with atomic_output(out_path) as f:
        if is_st:
            items = []
            new_keys = remap.apply(OrderedDict((k, None) for k in meta_sd)) if remap.kind != "entry" else \
                OrderedDict((k, None) for k in meta_sd)
            for (old, v), new in zip(meta_sd.items(), new_keys):
                if not isinstance(v, torch.Tensor):
                    continue
                items.append((new, partial(ck.read_key, old), tuple(v.shape), dtype_name(v.dtype)))
            _write_safetensors(f, items, should_stop, progress)
        else:
            real = ck.real()
            fixed = remap.apply(real) if remap.kind != "entry" else real
            if should_stop is not None and should_stop():
                raise Cancelled("export cancelled")
            torch.save(fixed, f)
            if progress is not None:
                progress(1, 1)
    return out_path
