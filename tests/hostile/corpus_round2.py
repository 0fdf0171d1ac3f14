"""Hostile input, round two (issue 13): small files that hang or balloon, terminal escapes in names, a Hugging Face
cache snapshot (symlinked shards), and inputs whose error message must be one clear line.

``build(c, b)`` adds them to a :class:`~tests.hostile.corpus.Corpus` (``b``: the valid bases). Categories:

- ``hang``: a 64-level tuple DAG (hashing it is 2**64 steps) as a dict key, in a frozenset, in a persistent id, in a
  DCP ``.metadata``; as a value that something might print; a safetensors key of 150,000 escaped quotes (a
  backtracking regex is quadratic on it); an index naming 10**5 shards; FIFOs named like a checkpoint or an index;
- ``balloon``: a DCP bytes item whose ``data.pkl`` inflates far beyond its size; a tiny DCP checkpoint declaring a
  tensor of gigabytes in chunks that are not there; a safetensors header of millions of empty lists;
- ``terminal``: keys, global names and a file name holding ESC / CSI / OSC sequences, CR, BS, BEL and C1 controls;
- ``hf-cache``: ``models--org--m/snapshots/REV/`` whose files are symlinks into ``../../blobs/``;
- ``messages``: lone surrogates in keys and global names, a shape ``[0, 2**64]``, sizes of 2**62 elements, a DCP
  offset ``'twelve'``, ``_metadata`` that is a placeholder or nested 10**5 deep, an 8 KB key in an error, a device.
"""
from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
import struct
import warnings
import zlib

from tests.hostile.corpus import (BASE_ENTRIES, OD, PID, Build, Call, G, Raw, dcp_save, encode,
                                  st_entries, dumps, legacy_bytes, read_bytes, safetensors_bytes, tensor,
                                  write_torch_zip)

DAG_LEVELS = 64


def dag(levels: int = DAG_LEVELS, base: int = 40000) -> bytes:
    """Opcodes that leave one tuple on the stack: t0 = (), t(i+1) = (ti, ti) through the memo (indices from
    ``base``). A few hundred bytes; hashing, comparing or printing the result walks 2**levels paths."""
    out = [b")r" + struct.pack("<I", base) + b"0"]
    for i in range(levels):
        get = b"j" + struct.pack("<I", base + i)
        out.append(get + get + b"\x86r" + struct.pack("<I", base + i + 1) + b"0")
    out.append(b"j" + struct.pack("<I", base + levels))
    return b"".join(out)


def _valid_items():
    return [("linear.weight", tensor("0", (5, 10))), ("linear.bias", tensor("1", (5,)))]


def _storages():
    return {"0": bytes(200), "1": bytes(20)}


def build(c, b: dict) -> None:
    _hang(c, b)
    _balloon(c, b)
    _terminal(c, b)
    _hf_cache(c, b)
    _messages(c, b)
    # a symlinked shard is judged by its name in the index, not by where the link points (a Hugging Face cache
    # snapshot is nothing but such links): the round-one input that refused one is a valid checkpoint now
    for inp in c.inputs:
        if inp.name == "sharded:symlink-outside":
            inp.expect = "ok"
            inp.note = "a shard named inside the folder, linked elsewhere: opens (issue 13, class 6)"


# ---- class 3: small files that hang ----------------------------------------------------------------------------------

def _zip_and_legacy(c, cat, name, pkl, storages=None, **kw):
    path = c.p(cat, f"{name}.pt")
    write_torch_zip(path, pkl, storages)
    c.add(f"{cat}:{name}-zip", cat, path, **kw)
    path = c.write(c.p(cat, f"{name}.legacy.pt"), legacy_bytes(pkl, {k: v for k, v in (storages or {}).items()}))
    c.add(f"{cat}:{name}-legacy", cat, path, **kw)


def _hang(c, b: dict) -> None:
    cat = "hang"
    # the DAG as a dict key (SETITEMS into the state dict), alone in a plain dict, in a frozenset, in a pid
    _zip_and_legacy(c, cat, "dag-key", dumps(OD(_valid_items() + [(Raw(dag()), 1)])), _storages(),
                    expect="error", quick=True)
    _zip_and_legacy(c, cat, "dag-key-plain-dict", dumps({Raw(dag()): 1}), expect="error")
    _zip_and_legacy(c, cat, "dag-frozenset", dumps(OD(_valid_items() + [("extra", Raw(b"(" + dag() + b"\x91"))])),
                    _storages(), expect="error", quick=True)
    _zip_and_legacy(c, cat, "dag-set-builtin",
                    dumps(OD(_valid_items() + [("extra", Call(G("builtins", "set"), Raw(b"]" + b"(" + dag() + b"e")))])),
                    _storages(), expect="error")
    pid = ("storage", G("torch", "FloatStorage"), Raw(dag()), "cpu", 50)
    bad = Call(G("torch._utils", "_rebuild_tensor_v2"), PID(pid), 0, (5, 10), (10, 1), False, OD([]))
    _zip_and_legacy(c, cat, "dag-persistent-id", dumps(OD([("linear.weight", bad)])), _storages(), expect="error",
                    quick=True)
    # the DAG where a tensor's shape belongs (its error message quotes it), and as a plain value (never hashed,
    # but anything that renders it must stop)
    bad = Call(G("torch._utils", "_rebuild_tensor_v2"), PID(("storage", G("torch", "FloatStorage"), "0", "cpu", 50)),
               0, Raw(dag()), (10, 1), False, OD([]))
    _zip_and_legacy(c, cat, "dag-shape", dumps(OD([("linear.weight", bad)])), _storages(), expect="error",
                    quick=True)
    _zip_and_legacy(c, cat, "dag-value", dumps(OD(_valid_items() + [("extra", Raw(dag()))])), _storages(),
                    expect="either", quick=True)
    _zip_and_legacy(c, cat, "dag-inert-arg", dumps(OD(_valid_items() + [("extra", Call(G("evil", "Thing"),
                                                                                       Raw(dag())))])),
                    _storages(), expect="either", quick=True)
    # a DCP .metadata whose state holds a dict keyed by the DAG
    folder = c.p(cat, "dcp-dag-metadata")
    shutil.copytree(b["dcp"], folder)
    meta = read_bytes(os.path.join(folder, ".metadata"))
    out: list = []
    encode({"planner_data": {Raw(dag()): 1}}, out)
    c.write(os.path.join(folder, ".metadata"), meta[:-1] + b"".join(out) + b"b.")
    c.add("hang:dcp-dag-metadata", cat, folder, expect="error", quick=True)
    # a safetensors key of 150,000 escaped quotes: valid JSON, and a trap for a backtracking regex
    key = '"' * 150_000
    header = {key: {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}
    path = c.write(c.p(cat, "escaped-quotes.safetensors"), safetensors_bytes(header, bytes(8)))
    c.add("hang:safetensors-escaped-quotes", cat, path, expect="ok", key=key, entries=[[[key], [2], "float32"]],
          quick=True)
    # an index naming 10**5 shards (a list membership test per entry is 10**10 steps)
    folder = c.p(cat, "index-1e5-shards")
    os.makedirs(folder)
    wm = {f"k{i}": f"model-{i:06d}-of-100000.safetensors" for i in range(100_000)}
    c.write(os.path.join(folder, "model.safetensors.index.json"), json.dumps({"weight_map": wm}).encode())
    c.add("hang:index-1e5-shards", cat, folder, expect="error", quick=True)
    # FIFOs: opening one for reading blocks until a writer comes, which never happens
    try:
        folder = c.p(cat, "fifo-index")
        shutil.copytree(b["sharded"], folder)
        os.remove(os.path.join(folder, "model.safetensors.index.json"))
        os.mkfifo(os.path.join(folder, "model.safetensors.index.json"))
        c.add("hang:fifo-index-in-folder", cat, folder, expect="either", quick=True)
        c.add("hang:fifo-index", cat, os.path.join(folder, "model.safetensors.index.json"), expect="error",
              quick=True, bad_error="file is empty")
        folder = c.p(cat, "fifo-shard")
        shutil.copytree(b["sharded"], folder)
        shard = os.path.join(folder, "model-00002-of-00002.safetensors")
        os.remove(shard)
        os.mkfifo(shard)
        c.add("hang:fifo-shard", cat, folder, expect="error", quick=True)
        folder = c.p(cat, "fifo-dcp-metadata")
        shutil.copytree(b["dcp"], folder)
        os.remove(os.path.join(folder, ".metadata"))
        os.mkfifo(os.path.join(folder, ".metadata"))
        c.add("hang:fifo-dcp-metadata", cat, folder, expect="error", quick=True)
        os.mkfifo(c.p(cat, "fifo.safetensors"))
        c.add("hang:fifo-safetensors", cat, c.p(cat, "fifo.safetensors"), expect="error", quick=True,
              bad_error="file is empty")
        os.symlink(c.p(cat, "fifo.safetensors"), c.p(cat, "link-to-fifo.pt"))
        c.add("hang:symlink-to-fifo", cat, c.p(cat, "link-to-fifo.pt"), expect="error", quick=True,
              bad_error="file is empty")
    except (AttributeError, OSError):  # pragma: no cover - no FIFOs here
        pass
    if os.path.exists("/dev/urandom"):
        c.add("hang:dev-urandom", cat, "/dev/urandom", expect="error", quick=True, bad_error="file is empty")


# ---- class 4: small files that take gigabytes ------------------------------------------------------------------------

def _deflated_torch_zip(inflated: int, declared: int | None = None) -> bytes:
    """A torch.save-like zip whose ``archive/data.pkl`` (deflated) inflates to ``inflated`` bytes: BINBYTES8 of
    zeros, then STOP; plus a stored ``archive/version``. About 1 KB per MB inflated. Its zip entries declare
    ``declared`` bytes uncompressed (default: the truth)."""
    pkl_head = b"\x80\x04\x8e" + struct.pack("<Q", inflated - 12)
    comp = zlib.compressobj(9, zlib.DEFLATED, -15)
    parts = [comp.compress(pkl_head)]
    crc = zlib.crc32(pkl_head)
    chunk = bytes(1 << 20)
    left = inflated - 12
    while left > 0:
        n = min(left, len(chunk))
        parts.append(comp.compress(chunk[:n]))
        crc = zlib.crc32(chunk[:n], crc)
        left -= n
    parts.append(comp.compress(b"."))
    crc = zlib.crc32(b".", crc)
    parts.append(comp.flush())
    records = [(b"archive/version", 0, b"3\n", zlib.crc32(b"3\n"), 2),
               (b"archive/data.pkl", 8, b"".join(parts), crc,
                declared if declared is not None else len(pkl_head) + (inflated - 12) + 1)]
    body, cd = b"", b""
    for name, method, data, crc, size in records:
        local = struct.pack("<4sHHHHHIIIHH", b"PK\x03\x04", 20, 0, method, 0, 0, crc, len(data), size, len(name), 0)
        cd += struct.pack("<4sHHHHHHIIIHHHHHII", b"PK\x01\x02", 20, 20, 0, method, 0, 0, crc, len(data), size,
                          len(name), 0, 0, 0, 0, 0, len(body)) + name
        body += local + name + data
    end = struct.pack("<4sHHHHIIH", b"PK\x05\x06", 0, 0, len(records), len(records), len(cd), len(body), 0)
    return body + cd + end


def _dcp_with(c, b, folder, edit) -> None:
    """A copy of the DCP base whose .metadata is rewritten by ``edit(metadata)`` (torch's own objects, pickled)."""
    shutil.copytree(b["dcp"], folder)
    path = os.path.join(folder, ".metadata")
    with open(path, "rb") as f:
        md = pickle.load(f)  # our own file, written by torch a moment ago
    edit(md, folder)
    with open(path, "wb") as f:
        pickle.dump(md, f)


def dcp_bytes_item(folder: str, inflated: int, declared: int | None = None) -> None:
    """A DCP folder (written by torch) whose one non-tensor value is a torch.save zip that inflates to ``inflated``
    bytes (its zip entry declaring ``declared``): the .distcp bytes are replaced, the metadata's offset and length
    are set to the new item."""
    import torch
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dcp_save({"w": torch.zeros(3), "extra": {"a": 1}}, folder)
    path = os.path.join(folder, ".metadata")
    with open(path, "rb") as f:
        md = pickle.load(f)
    item = _deflated_torch_zip(inflated, declared)
    for index, info in list(md.storage_data.items()):
        if index.fqn.startswith("extra"):  # DCP flattens {"extra": {"a": 1}} into the bytes item "extra.a"
            data_file = os.path.join(folder, info.relative_path)
            with open(data_file, "ab") as f:
                offset = f.tell()
                f.write(item)
            md.storage_data[index] = type(info)(info.relative_path, offset, len(item), *(
                [info.transform_descriptors] if hasattr(info, "transform_descriptors") else []))
    with open(path, "wb") as f:
        pickle.dump(md, f)


def dcp_whole_tensor(folder: str, numel: int) -> None:
    """A DCP folder whose tensor ``w`` claims ``numel`` float32 elements in two chunks that name the few bytes the
    file really holds."""
    import torch
    from torch.distributed.checkpoint.metadata import ChunkStorageMetadata, MetadataIndex
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dcp_save({"w": torch.zeros(4)}, folder)
    path = os.path.join(folder, ".metadata")
    with open(path, "rb") as f:
        md = pickle.load(f)
    tmd = md.state_dict_metadata["w"]
    half = numel // 2
    tmd.size = torch.Size([numel])
    tmd.chunks = [ChunkStorageMetadata(torch.Size([0]), torch.Size([half])),
                  ChunkStorageMetadata(torch.Size([half]), torch.Size([numel - half]))]
    (index, info), = [(i, v) for i, v in md.storage_data.items() if i.fqn == "w"]
    del md.storage_data[index]
    md.storage_data[MetadataIndex("w", torch.Size([0]))] = info
    md.storage_data[MetadataIndex("w", torch.Size([half]))] = info
    with open(path, "wb") as f:
        pickle.dump(md, f)


def empty_lists_header(n_bytes: int) -> bytes:
    """A safetensors file whose JSON header is ``{"w": [[], [], ...]}`` of about ``n_bytes``: json.loads makes a list
    object per 3 bytes (~30 bytes of memory per byte of header)."""
    n = max(1, (n_bytes - 10) // 3)
    text = b'{"w":[' + b"[]," * (n - 1) + b"[]]}"
    return struct.pack("<Q", len(text)) + text


def _balloon(c, b: dict) -> None:
    cat = "balloon"
    quick = c.quick
    folder = c.p(cat, "dcp-bytes-item-inflates")
    dcp_bytes_item(folder, (192 if quick else 900) << 20)
    c.add("balloon:dcp-bytes-item-inflates", cat, folder, expect="either", quick=True, key="w")
    folder = c.p(cat, "dcp-tensor-whole")
    dcp_whole_tensor(folder, 600_000_000)  # 2.4 GB of float32 in a 16 KB checkpoint
    c.add("balloon:dcp-tensor-whole", cat, folder, expect="either", quick=True, key="w")
    path = c.write(c.p(cat, "empty-lists.safetensors"), empty_lists_header((12 if quick else 60) << 20))
    c.add("balloon:safetensors-empty-lists", cat, path, expect="error", quick=True, key="w")


# ---- class 5 inputs (the output layer's): terminal control sequences -------------------------------------------------

CONTROL_KEYS = ["clear\x1b[2J\x1b[Hscreen", "up\x1b[1A\x1b[2Kerase", "osc52\x1b]52;c;cm0gLXJmIH4=\x07copy",
                "cr\roverwrite", "bs\x08\x08\x08hidden", "bell\x07", "c1\x9b31mcsi", "del\x7fkey"]


def _terminal(c, b: dict) -> None:
    cat = "terminal"
    import torch
    from safetensors.torch import save_file
    keys = CONTROL_KEYS
    sd = {k: torch.full((2,), float(i)) for i, k in enumerate(keys)}
    path = c.p(cat, "control-keys.safetensors")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    save_file(sd, path)
    c.add("terminal:keys-safetensors", cat, path, expect="ok", key=keys[0], entries=st_entries(path), quick=True)
    path = c.p(cat, "control-keys.pt")
    torch.save(sd, path)
    c.add("terminal:keys-zip", cat, path, expect="ok", key=keys[0], entries=[[[k], [2], "float32"] for k in keys],
          quick=True)
    # a global whose name hides the line above it, next to a real payload's name
    pkl = dumps(OD(_valid_items() + [("evil", Call(G("os", "system"), "true")),
                                     ("hide", Call(G("x\x1b[1A\x1b[2K", "y\x1b]52;c;cm0=\x07\rz"), 1))]))
    path = c.p(cat, "control-global.pt")
    write_torch_zip(path, pkl, _storages())
    c.add("terminal:global-name", cat, path, expect="ok", refs=["os.system"], quick=True)
    # a file name that clears the screen
    path = c.write(c.p(cat, "clear\x1b[2J\x1b[H\rname\x07.pt"), read_bytes(b["zip"]))
    c.add("terminal:file-name", cat, path, expect="ok", entries=BASE_ENTRIES, quick=True)
    # an error message quoting a key with controls (an unknown dtype in safetensors)
    header = {"bad\x1b[2J\rkey": {"dtype": "Q9", "shape": [1], "data_offsets": [0, 4]}}
    path = c.write(c.p(cat, "control-key-error.safetensors"), safetensors_bytes(header, bytes(4)))
    c.add("terminal:key-in-error", cat, path, expect="error", quick=True)


# ---- class 6: a Hugging Face cache snapshot ----------------------------------------------------------------------

def _blob(blobs: str, data: bytes) -> str:
    name = hashlib.sha256(data).hexdigest()
    path = os.path.join(blobs, name)
    if not os.path.exists(path):
        with open(path, "wb") as f:
            f.write(data)
    return name


def hf_snapshot(root: str, src_folder: str, rev: str = "0123456789abcdef0123456789abcdef01234567") -> str:
    """``root/models--org--m/{blobs,snapshots/REV,refs}`` as huggingface_hub lays it out: every file of the snapshot
    a relative symlink into ``../../blobs/<sha256>``. Returns the snapshot folder."""
    repo = os.path.join(root, "models--org--m")
    blobs = os.path.join(repo, "blobs")
    snap = os.path.join(repo, "snapshots", rev)
    os.makedirs(blobs, exist_ok=True)
    os.makedirs(snap, exist_ok=True)
    os.makedirs(os.path.join(repo, "refs"), exist_ok=True)
    with open(os.path.join(repo, "refs", "main"), "w") as f:
        f.write(rev)
    for name in sorted(os.listdir(src_folder)):
        blob = _blob(blobs, read_bytes(os.path.join(src_folder, name)))
        os.symlink(os.path.join("..", "..", "blobs", blob), os.path.join(snap, name))
    return snap


def _hf_cache(c, b: dict) -> None:
    cat = "hf-cache"
    snap = hf_snapshot(c.p(cat, "safetensors"), b["sharded"])
    c.add("hf-cache:snapshot-folder", cat, snap, expect="ok", quick=True)
    c.add("hf-cache:snapshot-index", cat, os.path.join(snap, "model.safetensors.index.json"), expect="ok",
          quick=True)
    snap = hf_snapshot(c.p(cat, "bin"), b["sharded_bin"])
    c.add("hf-cache:snapshot-bin-folder", cat, snap, expect="ok", quick=True)
    # the index itself may not name a path outside its folder, whatever the links are
    snap = hf_snapshot(c.p(cat, "outside"), b["sharded"])
    index = os.path.join(snap, "model.safetensors.index.json")
    data = json.loads(read_bytes(index))
    first = next(iter(data["weight_map"]))
    blob = os.readlink(os.path.join(snap, data["weight_map"][first]))
    data["weight_map"][first] = blob  # "../../blobs/<sha>"
    os.remove(index)
    c.write(index, json.dumps(data).encode())
    c.add("hf-cache:index-names-blob-path", cat, snap, expect="error", quick=True)


# ---- classes 7 and 8: one clear line --------------------------------------------------------------------------------

def _messages(c, b: dict) -> None:
    cat = "messages"
    import torch
    # lone surrogates in keys and in a global's name (the unpickler and JSON both accept them)
    items = [("linear.weight", tensor("0", (5, 10))), ("lone\ud800surrogate", tensor("1", (5,)))]
    path = c.p(cat, "surrogate-key.pt")
    write_torch_zip(path, dumps(OD(items)), _storages())
    c.add("messages:surrogate-key-zip", cat, path, expect="ok", quick=True)
    header = {"lone\ud800surrogate": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}
    path = c.write(c.p(cat, "surrogate-key.safetensors"),
                   safetensors_bytes(None, bytes(8), raw_header=json.dumps(header).encode()))
    # the key as every output spells it (its lone surrogate escaped): stats finds it by that name
    c.add("messages:surrogate-key-safetensors", cat, path, expect="ok", quick=True, key="lone\\ud800surrogate",
          entries=[[["lone\\ud800surrogate"], [2], "float32"]])
    path = c.p(cat, "surrogate-global.pt")
    write_torch_zip(path, dumps(OD(_valid_items() + [("x", Call(G("evil\ud800", "run\udfff"), 1))])), _storages())
    c.add("messages:surrogate-global", cat, path, expect="ok", quick=True)
    # sizes: a shape [0, 2**64] (zero elements, one dimension no tensor can have), 2**62 elements
    bad = Call(G("torch._utils", "_rebuild_tensor_v2"), PID(("storage", G("torch", "FloatStorage"), "0", "cpu", 50)),
               0, (0, 2 ** 64), (1, 1), False, OD([]))
    path = c.p(cat, "shape-0-2^64.pt")
    write_torch_zip(path, dumps(OD([("linear.weight", bad)])), _storages())
    c.add("messages:shape-0-2^64-zip", cat, path, expect="error", quick=True)
    header = {"linear.weight": {"dtype": "F32", "shape": [0, 2 ** 64], "data_offsets": [0, 0]}}
    path = c.write(c.p(cat, "shape-0-2^64.safetensors"), safetensors_bytes(header))
    c.add("messages:shape-0-2^64-safetensors", cat, path, expect="error", quick=True)
    bad = Call(G("torch._utils", "_rebuild_tensor_v2"), PID(("storage", G("torch", "FloatStorage"), "0", "cpu", 50)),
               0, (2 ** 31, 2 ** 31), (2 ** 31, 1), False, OD([]))
    path = c.p(cat, "size-2^62.pt")
    write_torch_zip(path, dumps(OD([("linear.weight", bad)])), _storages())
    c.add("messages:size-2^62-zip", cat, path, expect="error", quick=True)
    header = {"linear.weight": {"dtype": "F32", "shape": [2 ** 31, 2 ** 31], "data_offsets": [0, 2 ** 64]}}
    path = c.write(c.p(cat, "size-2^62.safetensors"), safetensors_bytes(header))
    c.add("messages:size-2^62-safetensors", cat, path, expect="error", quick=True)

    def size_2_62(md, folder):
        md.state_dict_metadata["linear.weight"].size = torch.Size([2 ** 31, 2 ** 31])
    _dcp_with(c, b, c.p(cat, "dcp-size-2^62"), size_2_62)
    c.add("messages:dcp-size-2^62", cat, c.p(cat, "dcp-size-2^62"), expect="error", quick=True)

    def offset_twelve(md, folder):
        for index, info in list(md.storage_data.items()):
            info.offset = "twelve"
    _dcp_with(c, b, c.p(cat, "dcp-offset-twelve"), offset_twelve)
    c.add("messages:dcp-offset-twelve", cat, c.p(cat, "dcp-offset-twelve"), expect="error", quick=True)

    def shape_huge(md, folder):
        md.state_dict_metadata["linear.weight"].size = torch.Size([0, 2 ** 64 - 1])
    _dcp_with(c, b, c.p(cat, "dcp-shape-0-2^64"), shape_huge)
    c.add("messages:dcp-shape-0-2^64", cat, c.p(cat, "dcp-shape-0-2^64"), expect="error", quick=True)
    # _metadata: a placeholder, and nested 10**5 deep
    state = {"_metadata": Call(G("evil", "Meta"), 1)}
    path = c.p(cat, "metadata-inert.pt")
    write_torch_zip(path, dumps(Build(OD(list(zip([k for k, _, _ in _base()], _base_tensors_pickled()))), state)),
                    _base_storages())
    c.add("messages:metadata-inert", cat, path, expect="either", quick=True)
    deep = Raw(b"}" + b"(X\x01\x00\x00\x00a}" * 100_000 + b"u" * 100_000)
    path = c.p(cat, "metadata-deep.pt")
    write_torch_zip(path, dumps(Build(OD(list(zip([k for k, _, _ in _base()], _base_tensors_pickled()))),
                                      {"_metadata": deep})), _base_storages())
    c.add("messages:metadata-deep", cat, path, expect="either", quick=True)
    # an error that quotes an 8 KB key
    header = {"k" * 8192: {"dtype": "Q9", "shape": [1], "data_offsets": [0, 4]}}
    path = c.write(c.p(cat, "long-key-error.safetensors"), safetensors_bytes(header, bytes(4)))
    c.add("messages:long-key-in-error", cat, path, expect="error", quick=True)
    header = {"k" * 8192: {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}
    path = c.write(c.p(cat, "long-key-missing.safetensors"), safetensors_bytes(header, bytes(8)))
    c.add("messages:long-key-stats-missing", cat, path, expect="either", quick=True, key="k" * 8192 + "x")


def _base():
    from tests.hostile.corpus import BASE_SD
    return BASE_SD


def _base_tensors_pickled():
    out = []
    for i, (k, shape, dtype) in enumerate(_base()):
        out.append(tensor(str(i), shape, dtype))
    return out


def _base_storages():
    out = {}
    for i, (k, shape, dtype) in enumerate(_base()):
        n = 1
        for s in shape:
            n *= s
        out[str(i)] = bytes(n * (8 if dtype == "int64" else 4))
    return out
