"""Zip inputs of issue 13 (classes 1, 2 and the zip part of 4): archives whose records torch's reader resolves
differently from a naive reader, deflated storages, and deflate bombs.

:func:`zip_bytes` writes a zip record by record: local headers in one order, a central directory that may name
other offsets, other names, duplicates, other methods or sizes. ``build(c, b)`` adds the hostile inputs to the
corpus (category ``zip-fidelity``).
"""
from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

from .corpus import OD, Call, G, dumps, tensor

CAT = "zip-fidelity"


@dataclass
class Rec:
    """One local record: ``name`` and its bytes; ``method`` 8 deflates them."""

    name: str
    data: bytes
    method: int = 0
    level: int = 6

    def payload(self) -> bytes:
        if self.method == 8:
            c = zlib.compressobj(self.level, zlib.DEFLATED, -15)
            return c.compress(self.data) + c.flush()
        return self.data


@dataclass
class Dir:
    """One central-directory entry: the record it points at (index into the records) and what it claims about it;
    ``None`` fields are taken from the record."""

    rec: int
    name: str | None = None
    method: int | None = None
    csize: int | None = None
    usize: int | None = None
    offset: int | None = None     # an absolute local-header offset instead of the record's
    crc: int | None = None
    external: int = 0


def zip_bytes(records: list[Rec], directory: list[Dir] | None = None, *, local_names: dict[int, str] | None = None,
              more: list[list[Dir]] = (), comment: bytes = b"") -> bytes:
    """The archive: ``records`` as local headers, in order, then ``directory`` (default: one entry per record, in
    order) and its end record; each of ``more`` adds one more directory and end record after it (readers take the
    last). ``local_names`` overrides the name a local header carries (the central directory keeps its own)."""
    out = bytearray()
    where: list[tuple[int, bytes, int]] = []   # (offset, payload, crc)
    for i, r in enumerate(records):
        body = r.payload()
        crc = zlib.crc32(r.data)
        name = (local_names or {}).get(i, r.name).encode("utf-8", "surrogatepass")
        where.append((len(out), body, crc))
        out += struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, 0, r.method, 0, 0, crc, len(body), _usize(r),
                           len(name), 0) + name + body
    if directory is None:
        directory = [Dir(i) for i in range(len(records))]
    for k, dirs in enumerate([directory, *more]):
        cd = bytearray()
        for d in dirs:
            r = records[d.rec]
            offset, body, crc = where[d.rec]
            name = (d.name if d.name is not None else r.name).encode("utf-8", "surrogatepass")
            method = r.method if d.method is None else d.method
            csize = len(body) if d.csize is None else d.csize
            usize = _usize(r) if d.usize is None else d.usize
            cd += struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 20, 20, 0, method, 0, 0,
                              crc if d.crc is None else d.crc, csize, usize, len(name), 0, 0, 0, 0, d.external,
                              offset if d.offset is None else d.offset) + name
        at = len(out)
        tail = comment if k == len(more) else b""
        out += cd + struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, len(dirs), len(dirs), len(cd), at, len(tail)) + tail
    return bytes(out)


def _usize(r: Rec) -> int:
    return getattr(r, "usize", len(r.data))


def deflate_bomb(prefix: bytes, zeros: int, suffix: bytes) -> bytes:
    """A raw deflate stream of ``prefix``, ``zeros`` zero bytes and ``suffix``, made without holding the zeros."""
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = bytes(1 << 20)
    parts = [c.compress(prefix)]
    left = zeros
    while left:
        n = min(left, len(block))
        parts.append(c.compress(block[:n]))
        left -= n
    parts.append(c.compress(suffix))
    parts.append(c.flush())
    return b"".join(parts)


class RawRec(Rec):
    """A record whose payload is given already deflated (``data`` is then what it claims to inflate to: only its
    length and crc are used)."""

    def __init__(self, name: str, deflated: bytes, usize: int):
        super().__init__(name, b"", 8)
        self.deflated, self.usize = deflated, usize

    def payload(self) -> bytes:
        return self.deflated


def one_tensor_pkl(value_key: str = "w", storage: str = "0", n: int = 4) -> bytes:
    """A state dict ``{value_key: float32[n]}`` over storage ``storage``."""
    return dumps(OD([(value_key, tensor(storage, (n,)))]))


def evil_pkl(marker: str) -> bytes:
    """A data.pkl that would run ``posix.system`` (a marker file) under a plain unpickler."""
    return dumps(OD([("w", tensor("0", (4,))), ("x", Call(G("posix", "system"), f"touch {marker}"))]))


def floats(*values) -> bytes:
    return struct.pack(f"<{len(values)}f", *values)


VERSION = Rec("archive/version", b"3\n")


def candidates(p1: bytes, p2: bytes) -> dict[str, bytes]:
    """Archives holding two candidate ``data.pkl`` pickles: ``p1`` where a naive reader looks (the first local
    header), ``p2`` elsewhere; which one torch's reader takes depends on the construction (its central directory,
    its first directory entry's folder, miniz's sort of duplicate names). Both read storage ``0`` (4 floats)."""
    s0 = Rec("archive/data/0", floats(1, 2, 3, 4))
    a, b = Rec("archive/data.pkl", p1), Rec("archive/data.pkl", p2)
    extra = [Rec("archive/byteorder", b"little"), Rec("archive/.format_version", b"1")]
    return {
        # two directory entries named data.pkl: miniz's heap sort decides
        "dup-adjacent": zip_bytes([a, b, s0, VERSION]),
        "dup-apart": zip_bytes([a, s0, VERSION, b]),
        "dup-among-more": zip_bytes([a, s0, b, VERSION, *extra]),
        # the directory leaves the first local record out
        "cd-skips-first-record": zip_bytes([a, b, s0, VERSION], [Dir(1), Dir(2), Dir(3)]),
        # the directory's first entry sets the folder: another folder's data.pkl
        "cd-first-entry-other-folder": zip_bytes(
            [a, s0, VERSION, Rec("other/data.pkl", p2), Rec("other/data/0", floats(5, 6, 7, 8)),
             Rec("other/version", b"3\n")], [Dir(3), Dir(0), Dir(1), Dir(2), Dir(4), Dir(5)]),
        # the directory names data.pkl a record whose local header says something else
        "cd-name-differs-from-local": zip_bytes([a, Rec("archive/notes.txt", p2), s0, VERSION],
                                                [Dir(1, name="archive/data.pkl"), Dir(2), Dir(3)]),
        # names compare ASCII-case-insensitively
        "case-folded-name": zip_bytes([a, Rec("archive/DATA.PKL", p2), s0, VERSION], [Dir(1), Dir(2), Dir(3)]),
        # a second directory appended after the first: readers take the last end record
        "two-directories": zip_bytes([a, s0, VERSION, b], [Dir(0), Dir(1), Dir(2)], more=[[Dir(3), Dir(1), Dir(2)]]),
        # a deflated data.pkl behind a stored one
        "deflated-behind-stored": zip_bytes([a, Rec("archive/data.pkl", p2, method=8), s0, VERSION],
                                            [Dir(1), Dir(2), Dir(3)]),
    }


def torch_reads(path: str) -> bytes | None:
    """The data.pkl torch's own reader returns for ``path`` (read as bytes, never unpickled), or None."""
    import torch
    try:
        return torch._C.PyTorchFileReader(path).get_record("data.pkl")
    except RuntimeError:
        return None


def build(c, b) -> None:
    """Add the zip-fidelity inputs to corpus ``c`` (``b``: its valid bases)."""
    import zipfile
    harmless = one_tensor_pkl("a")
    evil = evil_pkl(c.marker("zip-fidelity-ran"))
    # class 1: which data.pkl -- the evil one where torch's reader looks, or where a naive reader looks
    for order, (p1, p2) in (("evil-behind", (harmless, evil)), ("evil-first", (evil, harmless))):
        for name, blob in candidates(p1, p2).items():
            path = c.write(c.p("zipfid", f"{name}.{order}.pt"), blob)
            read = torch_reads(path)
            chosen = evil if read == evil else harmless if read == harmless else None
            c.add(f"zipfid:{name}:{order}", CAT, path, expect="ok" if chosen else "either",
                  refs=["posix.system"] if chosen is evil else None,
                  entries=[[["w"], [4], "float32"]] if chosen is evil else
                  [[["a"], [4], "float32"]] if chosen is harmless else None,
                  key="w" if chosen is evil else "a", quick=name in ("dup-adjacent", "cd-skips-first-record",
                                                                   "cd-first-entry-other-folder"))
    # class 2: deflated storages -- the valid base archive rewritten with every record deflated
    deflated = c.p("zipfid", "deflated-storages.pt")
    with zipfile.ZipFile(b["zip"]) as zin, zipfile.ZipFile(deflated, "w", zipfile.ZIP_DEFLATED) as zout:
        for info in zin.infolist():
            zout.writestr(info.filename, zin.read(info.filename))
    from .corpus import BASE_ENTRIES
    c.add("zipfid:deflated-storages", CAT, deflated, expect="ok", entries=BASE_ENTRIES, quick=True)
    sd = dumps(OD([("w", tensor("0", (4,)))]))
    path = c.write(c.p("zipfid", "deflated-storage-size-disagrees.pt"),
                   zip_bytes([Rec("archive/data.pkl", sd), Rec("archive/data/0", floats(1, 2, 3, 4, 5), 8), VERSION]))
    c.add("zipfid:deflated-storage-size-disagrees", CAT, path, expect="either", key="w", quick=True)
    # a storage record whose stream inflates to 64 MB while its entry (and the pickle) say 16 bytes
    path = c.write(c.p("zipfid", "deflated-storage-understated.pt"),
                   zip_bytes([Rec("archive/data.pkl", sd), RawRec("archive/data/0", deflate_bomb(b"", 64 << 20, b""),
                                                                  16), VERSION]))
    c.add("zipfid:deflated-storage-understated", CAT, path, expect="either", key="w", quick=True)
    # a 100 MB tensor of zeros, deflated to ~100 KB, declared truthfully: reading it allocates what it holds
    n = 25 << 20
    big = dumps(OD([("w", tensor("0", (n,)))]))
    path = c.write(c.p("zipfid", "deflated-storage-100MB.pt"),
                   zip_bytes([Rec("archive/data.pkl", big), RawRec("archive/data/0", deflate_bomb(b"", 4 * n, b""),
                                                                   4 * n), VERSION]))
    c.add("zipfid:deflated-storage-100MB", CAT, path, expect="ok", entries=[[["w"], [n], "float32"]], key="w")
    # class 4: a data.pkl that inflates to 300 MB from ~300 KB, declared truthfully, and declared as 100 bytes
    pkl = dumps(OD([("w", tensor("0", (4,)))]))
    bomb = deflate_bomb(pkl[:-1], 300 << 20, b".")
    for tag, usize in (("declared", len(pkl) + (300 << 20)), ("understated", len(pkl))):
        path = c.write(c.p("zipfid", f"bomb-data-pkl-{tag}.pt"),
                       zip_bytes([RawRec("archive/data.pkl", bomb, usize), Rec("archive/data/0", floats(1, 2, 3, 4)),
                                  VERSION]))
        c.add(f"zipfid:bomb-data-pkl-300MB-{tag}", CAT, path, expect="error", key="w", quick=True)
