"""A zip's records, resolved exactly as torch's reader resolves them.

``torch.load`` reads a torch.save archive with caffe2's ``PyTorchStreamReader`` over miniz: it goes by the *central
directory* (found from the last end record in the file's last 64 KiB), takes the archive's folder from the
directory's *first* entry (up to its first ``/``), and looks a record ``<folder>/<name>`` up with miniz's binary
search over the directory sorted by ASCII-lowercased name (miniz's own heap sort: among entries with the same name,
which one is found depends on that sort, not on file order). A record's bytes begin after the local header the
directory entry points at (that header's own name and extra lengths); its sizes and method come from the directory.

:class:`ZipDirectory` does the same in Python, without inflating anything, so the explorer reads the very
``data.pkl`` and storage records torch would, and says where a naive reader (the first local header, the first of
two same-named entries) would read something else.
"""
from __future__ import annotations

import struct
import zlib
from itertools import repeat
from operator import itemgetter

from ...errors import CorruptFileError, UnsupportedFormatError

CDH = struct.Struct("<IHHHHHHIIIHHHHHII")   # central directory header, 46 bytes
# its fields the reader uses: signature, flags, method, sizes, name/extra/comment lengths, disk, attributes, offset
CDH_FIELDS = struct.Struct("<I4xHH8xIIHHHH2xII")
LFH = struct.Struct("<IHHHHHIIIHH")         # local file header, 30 bytes
EOCD = struct.Struct("<IHHHHIIH")           # end of central directory, 22 bytes
CDH_SIG, LFH_SIG, EOCD_SIG = 0x02014B50, 0x04034B50, 0x06054B50
Z64_LOCATOR_SIG, Z64_EOCD_SIG = 0x07064B50, 0x06064B50
U32 = 0xFFFFFFFF
STORED, DEFLATED = 0, 8

# a data.pkl is inflated whole; a pickle of a real checkpoint compresses a few times, never near deflate's limit
DATA_PKL_LIMIT = 512 << 20        # bytes a deflated data.pkl may inflate to
DATA_PKL_MAX_RATIO = 64           # ... and at most this many times its compressed size (plus 1 MiB): pickles of
                                  # real checkpoints deflate 4-6x, zeros up to 1,030x
STORAGE_LIMIT = 1 << 30           # bytes a deflated storage record may inflate to (it is inflated whole)
CHUNK = 1 << 20
_NAME, _LOCAL = itemgetter(0), itemgetter(5)   # of a directory row


class Entry:
    """One central-directory entry (sizes and offset after zip64 extra fields)."""

    __slots__ = ("index", "name", "method", "flags", "csize", "usize", "local", "external")

    def __init__(self, index, name, method, flags, csize, usize, local, external):
        self.index, self.name, self.method, self.flags = index, name, method, flags
        self.csize, self.usize, self.local, self.external = csize, usize, local, external

    @property
    def text(self) -> str:
        return self.name.decode("utf-8", "backslashreplace")

    def __repr__(self):
        return f"Entry({self.name!r}, method={self.method}, {self.csize}->{self.usize}, at {self.local})"


def _fail(label: str, what: str) -> CorruptFileError:
    return CorruptFileError(f"{label}: not a readable torch.save archive ({what}); torch's reader refuses it too — "
                            "the file is truncated or damaged: re-download or re-save it")


def _find_eocd(f, size: int, label: str) -> int:
    """miniz's ``mz_zip_reader_locate_header_sig``: the last end record with 22 bytes after it, searched back in
    4,096-byte blocks until 64 KiB + 22 bytes from the end."""
    if size < EOCD.size:
        raise _fail(label, f"{size} bytes, too short for a zip")
    cur = max(size - 4096, 0)
    while cur and size - cur < 0xFFFF + EOCD.size:
        cur = max(cur - 4093, 0)
    f.seek(cur)
    tail = f.read(size - cur)
    at = tail.rfind(b"PK\x05\x06", 0, len(tail) - EOCD.size + 4)
    if at < 0:
        raise CorruptFileError(f"{label}: the zip archive has no end record ({size} bytes): the file is truncated or "
                               "still being written — re-download or re-save it")
    return cur + at


class ZipDirectory:
    """The central directory of the zip in ``f`` (``size`` bytes), checked as miniz checks it."""

    def __init__(self, f, size: int, label: str):
        self.label = label
        self.size = size
        this_disk, total, cd_size, cd_ofs = self._end_record(f, size, label)
        f.seek(cd_ofs)
        self.rows = rows = self._entries(f.read(cd_size), total, this_disk)
        if not rows:
            raise _fail(label, "the archive holds no records")
        first = rows[0][0].split(b"\0")[0]
        cut = first.find(b"/")
        if cut < 0:
            if not any(name.split(b"\0")[0].lower().endswith(b"data.pkl") for name in map(_NAME, rows)):
                raise UnsupportedFormatError(
                    f"{label}: a zip archive of {len(rows)} record(s) (the first {first[:80]!r}), none of them a "
                    "data.pkl: not a file torch.save wrote, and torch's reader refuses it too — check that it is "
                    "the right file")
            raise _fail(label, f"its first record {first[:80]!r} is not inside a folder")
        self.prefix = first[:cut + 1]
        # lowercased name -> entry index, or a list of them (miniz compares names ASCII-case-insensitively)
        lowered = list(map(bytes.lower, map(_NAME, rows)))
        keys = self._by_key = dict(zip(lowered, range(len(lowered))))
        self._repeats = len(keys) != len(lowered)
        if self._repeats:   # repeated names: keep every index, in directory order
            for k in keys:
                keys[k] = []
            for i, k in enumerate(lowered):
                keys[k].append(i)
            for k, v in keys.items():
                if len(v) == 1:
                    keys[k] = v[0]
        self._sorted: list[int] | None = None

    def _entries(self, cd: bytes, total: int, this_disk: int) -> list[tuple]:
        """One tuple (name, method, flags, csize, usize, local header offset, external attributes) per entry of the
        directory ``cd``, checked as miniz checks them."""
        label, size, cd_size = self.label, self.size, len(cd)
        rows = []
        add = rows.append
        pos = 0
        unpack = CDH_FIELDS.unpack_from
        end = cd_size - CDH.size
        for i in range(total):
            if pos > end:
                raise _fail(label, f"directory entry {i} is damaged")
            sig, flags, method, csize, usize, n_name, n_extra, n_comment, disk, external, local = unpack(cd, pos)
            if sig != CDH_SIG:
                raise _fail(label, f"directory entry {i} is damaged")
            at = pos + 46 + n_name
            name = cd[pos + 46:at]
            pos = at + n_extra + n_comment
            if csize == U32 or usize == U32 or local == U32:
                if n_extra:
                    usize, csize, local = self._zip64_extra(cd[at:at + n_extra], usize, csize, local, i)
            elif (usize != csize and method == STORED) or (usize and not csize) or local + 30 + csize > size:
                raise _fail(label, f"directory entry {name[:200]!r} has inconsistent sizes or lies past the end "
                                   "of the file")
            if (disk != this_disk and disk != 1) or disk == 0xFFFF or flags & 0x2000 or pos > cd_size:
                raise _fail(label, f"directory entry {name[:200]!r} is damaged (multi-part, masked or cut short)")
            add((name, method, flags, csize, usize, local, external))
        return rows

    def _end_record(self, f, size: int, label: str) -> tuple[int, int, int, int]:
        """(this disk, entries, directory size, directory offset) as miniz takes them from the end record (or its
        zip64 twin), checked as miniz checks them; sets ``zip64``."""
        eocd_at = _find_eocd(f, size, label)
        f.seek(eocd_at)
        (_, this_disk, cd_disk, on_disk, total, cd_size, cd_ofs, _) = EOCD.unpack(f.read(EOCD.size))
        if cd_ofs != U32 and cd_size != U32 and cd_ofs + cd_size > size:
            # a zip64 end record would let miniz (and torch) read on; the end record is damaged all the same
            raise CorruptFileError(f"{label}: the zip directory lies past the end of the file ({size} bytes): the "
                                   "file is truncated — re-download or re-save it")
        zip64 = False
        if eocd_at >= 20 + 56:
            f.seek(eocd_at - 20)
            loc = f.read(20)
            if len(loc) == 20 and struct.unpack_from("<I", loc)[0] == Z64_LOCATOR_SIG:
                z64_ofs = struct.unpack_from("<Q", loc, 8)[0]
                if z64_ofs > size - 56:
                    raise _fail(label, "its zip64 end record lies past the end of the file")
                f.seek(z64_ofs)
                rec = f.read(56)
                if len(rec) == 56 and struct.unpack_from("<I", rec)[0] == Z64_EOCD_SIG:
                    zip64 = True
                    (rec_size,) = struct.unpack_from("<Q", rec, 4)
                    this_disk, cd_disk, on_disk, total, cd_size, cd_ofs = struct.unpack_from("<IIQQQQ", rec, 16)
                    disks = struct.unpack_from("<I", loc, 16)[0]
                    if rec_size < 44 or disks != 1:
                        raise _fail(label, "its zip64 end record is invalid")
                    if total > U32 or on_disk > U32 or cd_size > U32:
                        raise _fail(label, "its zip64 directory is larger than torch's reader accepts")
        if total != on_disk or ((this_disk | cd_disk) and (this_disk != 1 or cd_disk != 1)):
            raise _fail(label, "a multi-part archive")
        if cd_size < total * CDH.size:
            raise _fail(label, f"its directory of {cd_size} bytes cannot hold {total} entries")
        if cd_ofs + cd_size > size:
            raise CorruptFileError(f"{label}: the zip directory lies past the end of the file ({size} bytes): the "
                                   "file is truncated — re-download or re-save it")
        self.zip64 = zip64
        return this_disk, total, cd_size, cd_ofs

    def _zip64_extra(self, extra: bytes, usize: int, csize: int, local: int, i: int):
        pos = 0
        while len(extra) - pos >= 4:
            field, n = struct.unpack_from("<HH", extra, pos)
            if n + 4 > len(extra) - pos:
                raise _fail(self.label, f"directory entry {i} has a damaged extra field")
            if field == 1:
                data, at = extra[pos + 4:pos + 4 + n], 0
                out = []
                for v in (usize, csize, local):
                    if v == U32:
                        if n - at < 8:
                            raise _fail(self.label, f"directory entry {i} has a damaged zip64 field")
                        v = struct.unpack_from("<Q", data, at)[0]
                        at += 8
                    out.append(v)
                return tuple(out)
            pos += 4 + n
        return usize, csize, local

    # ---- lookup -------------------------------------------------------------------------------------------------
    def key_of(self, record: str) -> bytes:
        """The name torch's reader looks up for ``record`` (a C string: cut at a NUL of the folder name)."""
        return (self.prefix + record.encode("utf-8")).split(b"\0")[0]

    def find(self, record: str) -> Entry | None:
        """The entry torch's reader finds for ``record`` (e.g. ``"data.pkl"``, ``"data/0"``), or None."""
        key = self.key_of(record).lower()
        hit = self._by_key.get(key)
        if hit is None:
            return None
        return self.entry(hit if type(hit) is int else self._binary_search(key))

    def entry(self, i: int) -> Entry:
        return Entry(i, *self.rows[i])

    def duplicates(self) -> list[list[Entry]]:
        """Entries sharing a name (as torch's reader compares names), in directory order."""
        if not self._repeats:
            return []
        return [[self.entry(i) for i in v] for v in self._by_key.values() if type(v) is list]

    def _binary_search(self, key: bytes) -> int:
        """miniz's ``mz_zip_locate_file_binary_search`` over its heap-sorted directory."""
        order = self._sorted_indices()
        rows = self.rows
        lo, hi = 0, len(order) - 1
        while lo <= hi:
            mid = lo + ((hi - lo) >> 1)
            k = rows[order[mid]][0].lower()
            if k == key:
                return order[mid]
            if k < key:
                lo = mid + 1
            else:
                hi = mid - 1
        raise KeyError(key)  # pragma: no cover - the key is known to be present

    def _sorted_indices(self) -> list[int]:
        """miniz's ``mz_zip_reader_sort_central_dir_offsets_by_filename``: a heap sort (not stable) of the entry
        indices by lowercased name; bytes compare as miniz's ``mz_zip_reader_filename_less``."""
        if self._sorted is not None:
            return self._sorted
        keys = [r[0].lower() for r in self.rows]
        a = list(range(len(keys)))
        size = len(a)

        def sift(root: int, end: int) -> None:
            while True:
                child = 2 * root + 1
                if child >= end:
                    return
                if child + 1 < end and keys[a[child]] < keys[a[child + 1]]:
                    child += 1
                if not keys[a[root]] < keys[a[child]]:
                    return
                a[root], a[child] = a[child], a[root]
                root = child

        if size > 1:
            for start in range((size - 2) >> 1, -1, -1):
                sift(start, size)
            for end in range(size - 1, 0, -1):
                a[end], a[0] = a[0], a[end]
                sift(0, end)
        self._sorted = a
        return a

    # ---- records ------------------------------------------------------------------------------------------------
    def local_header(self, f, e: Entry) -> tuple[int, bytes]:
        """(offset of the record's bytes, the name its local header carries), as miniz reads them."""
        f.seek(e.local)
        head = f.read(30)
        if len(head) < 30 or head[:4] != b"PK\x03\x04":
            raise CorruptFileError(f"{self.label}: record {e.text!r} has no local header where the zip directory "
                                   f"says (byte {e.local}); the archive is damaged — re-download or re-save it")
        _, _, _, _, _, _, _, _, _, n_name, n_extra = LFH.unpack(head)
        name = f.read(n_name)
        start = e.local + 30 + n_name + n_extra
        if e.csize != U32 and start + e.csize > self.size:
            raise CorruptFileError(f"{self.label}: record {e.text!r} runs past the end of the file ({self.size} "
                                   "bytes); the file is truncated — re-download or re-save it")
        return start, name

    def check_readable(self, e: Entry) -> None:
        """What miniz refuses to extract (torch's reader fails on it the same way)."""
        if e.method not in (STORED, DEFLATED):
            raise CorruptFileError(f"{self.label}: record {e.text!r} is compressed with zip method {e.method}, "
                                   "which torch cannot read either; re-save the checkpoint with torch.save")
        if e.flags & 0x61:
            raise CorruptFileError(f"{self.label}: record {e.text!r} is encrypted or patched; torch cannot read it "
                                   "either — re-save the checkpoint with torch.save")
        if e.name.endswith(b"/") or e.external & 0x10:
            raise CorruptFileError(f"{self.label}: record {e.text!r} is marked as a folder, not a file; the "
                                   "archive is damaged — re-save it")

    def inflate(self, f, e: Entry, start: int, limit: int, what: str) -> bytearray:
        """A deflated record's bytes: exactly its declared uncompressed size, never more than ``limit``; the stream
        is checked against the declared size while it inflates (a bomb stops one chunk past it)."""
        want = e.usize
        if want > limit:
            raise CorruptFileError(f"{self.label}: {what} {e.text!r} is compressed and claims {want:,} bytes "
                                   f"uncompressed from {e.csize:,}, more than the {limit:,} the explorer inflates; "
                                   "refusing to inflate it (a zip bomb?) — re-save the checkpoint with torch.save")
        if want == 0 and e.csize == 0:   # miniz extracts an empty stored-or-not record as nothing
            return bytearray()
        d = zlib.decompressobj(-15)
        out = bytearray(want)   # filled in place: memory is the declared size, plus one chunk
        view = memoryview(out)
        got = 0
        left = e.csize
        f.seek(start)
        try:
            while left > 0 and not d.eof:
                chunk = f.read(min(CHUNK, left))
                if not chunk:
                    break
                left -= len(chunk)
                while chunk and not d.eof:
                    part = d.decompress(chunk, want + 1 - got)
                    if got + len(part) > want:
                        raise CorruptFileError(
                            f"{self.label}: {what} {e.text!r} inflates to more than the {want:,} bytes its zip entry "
                            "declares; the archive is damaged or hostile (a zip bomb?) — refusing to read it")
                    view[got:got + len(part)] = part
                    got += len(part)
                    chunk = d.unconsumed_tail
        except zlib.error as ex:
            raise CorruptFileError(f"{self.label}: {what} {e.text!r} does not inflate ({ex}); the archive is damaged "
                                   "— re-download or re-save it") from ex
        finally:
            view.release()
        if got != want or not d.eof:
            raise CorruptFileError(f"{self.label}: {what} {e.text!r} inflates to {got:,} bytes but its zip "
                                   f"entry declares {want:,}; the archive is damaged — re-download or re-save it")
        return out

    # ---- what a naive reader would read instead -----------------------------------------------------------------
    def anomalies(self, f, chosen: Entry, chosen_local_name: bytes) -> list[str]:
        """Notes on a directory that does not say what the file's local headers say, or holds duplicate names."""
        notes = []
        where = f"the one at byte {chosen.local}"
        for group in self.duplicates():
            names = ", ".join(sorted({g.text for g in group}))
            if any(g.index == chosen.index for g in group):
                notes.append(f"(zip) {len(group)} records are named {names}: torch reads {where}, listed here")
            else:
                notes.append(f"(zip) {len(group)} records are named {names}")
        if chosen_local_name != chosen.name:
            notes.append(f"(zip) the directory's {chosen.text!r} points at a local header named "
                         f"{chosen_local_name.decode('utf-8', 'backslashreplace')!r}: torch reads it, listed here")
        prefix = self.prefix
        outside = len(self.rows) - sum(map(bytes.startswith, map(_NAME, self.rows), repeat(prefix)))
        if outside:
            notes.append(f"(zip) {outside} record(s) lie outside the archive folder "
                         f"{self.prefix.decode('utf-8', 'backslashreplace')!r} (torch.load refuses such a file)")
        f.seek(0)
        head = f.read(30)
        if len(head) == 30 and head[:4] == b"PK\x03\x04":
            first = f.read(LFH.unpack(head)[9])
            if chosen.local != 0 and first.lower().endswith(b"data.pkl"):
                notes.append(f"(zip) the file's first record is {first.decode('utf-8', 'backslashreplace')!r} but "
                             f"the zip directory sends torch to the data.pkl at byte {chosen.local}, listed here")
            elif 0 not in map(_LOCAL, self.rows):
                notes.append("(zip) the file's first record is not in the zip directory (torch never reads it)")
        return notes
