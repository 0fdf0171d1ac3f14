"""``.safetensors``: an 8-byte little-endian header length, a JSON header, then the bytes. We validate the header the way
the safetensors library does (length within the file, offsets in order and in range, known dtypes).

The header is read here, not by the ``safetensors`` package: errors must name the bad entry in one line, a header
built to exhaust memory is refused before it is parsed, and 10**6 tensors are listed as columns without a Python
object per tensor. A header written the usual way is cut by one regex (:func:`_parse_compact`), anything else by the
JSON parser (:func:`_validate_fast`); both end in the same span check (:func:`_spans_fit`), and when a check fails
:func:`_validate_slowly` names the first bad entry."""
from __future__ import annotations

import json
import math
import re
import struct
from array import array
from collections import OrderedDict
from itertools import accumulate, chain, islice
from operator import ge, gt, itemgetter, mul, sub

from ...errors import CorruptFileError, shorten
from ..bytesource import ByteSource
from ..checkpoint import Checkpoint
from ..entries import FlatTable
from ..records import TENSOR, Computed, Locations, Numbered, Same, contiguous_strides
from ..gc_pause import distinct, drop, each_slice, gc_paused, let_others_run, mapped, slices
from ..safe_pickle.printable import printable_key, unprintable
from ..safe_pickle.records import ITEMSIZE, StorageRef, TensorRecord
from . import Reader, getsize, isfile, open_regular, read_head, register

DTYPES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16", "I64": "int64", "I32": "int32",
          "I16": "int16", "I8": "int8", "U8": "uint8", "U16": "uint16", "U32": "uint32", "U64": "uint64",
          "BOOL": "bool", "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2", "C64": "complex64",
          "C128": "complex128", "F8_E8M0": "float8_e8m0fnu"}
ITEMSIZES = {code: ITEMSIZE[name] for code, name in DTYPES.items()}
DTYPE_SET = set(DTYPES)
_CODE = {code: code for code in DTYPES}
_ITEMSIZE_OF = {name: ITEMSIZE[name] for name in DTYPES.values()}
MAX_HEADER = 100 * 1024 * 1024  # the safetensors library's own limit


def identify(path: str) -> bool:
    """By content (a torch.save zip named ``.safetensors`` is still a zip); a too-short ``.safetensors`` file is
    claimed so that the error says what is wrong with it."""
    if not isfile(path):
        return False
    head = read_head(path, 9)
    if len(head) < 9:
        return path.endswith(".safetensors")
    (n,) = struct.unpack("<Q", head[:8])
    # a .safetensors file whose header length is wrong is claimed too: its error then says so
    return head[8:9] == b"{" and (2 <= n <= MAX_HEADER or path.endswith(".safetensors"))


def _read_raw(path: str) -> tuple[bytes, int]:
    """The header's bytes and where the data begins (the length field checked against the file)."""
    size = getsize(path)
    with open_regular(path) as f:
        head = f.read(8)
        if len(head) < 8:
            raise CorruptFileError(f"{path}: {size} bytes is too short for a safetensors file (it needs an 8-byte "
                                   "header length); the file is empty or truncated — re-download it")
        (n,) = struct.unpack("<Q", head)
        if n > MAX_HEADER or n > size - 8:
            raise CorruptFileError(f"{path}: the safetensors header claims {n} bytes but the file has {size - 8} "
                                   "after the length field; the file is truncated or not safetensors — "
                                   "re-download it")
        raw = f.read(n)
    return raw, 8 + n


def _check_containers(path: str, raw: bytes) -> None:
    """A header holds three JSON containers per tensor (its entry, shape and offsets) and one for the metadata;
    json.loads makes a Python object of ~100 bytes for each (a 95 MB header of ``[]`` would take 3 GB). Refuse
    many more brackets than that before parsing (counted in C; a bracket inside a key counts too, hence the room)."""
    tensors = raw.count(b'"data_offsets"')
    found = raw.count(b"[") + raw.count(b"{")
    if found > 5 * tensors + 64:
        raise CorruptFileError(f"{path}: the safetensors header holds {found:,} JSON lists and objects for "
                               f"{tensors:,} tensors (a header has three per tensor); the file is corrupt or built "
                               "to exhaust memory — re-download it")


def _decode(path: str, raw: bytes, fast: bool) -> dict:
    _check_containers(path, raw)
    try:
        text = raw.decode("utf-8")
        header = json.loads(text) if fast else json.loads(text, object_pairs_hook=_no_duplicates)
    except (UnicodeDecodeError, json.JSONDecodeError, ValueError, RecursionError) as e:
        raise CorruptFileError(f"{path}: the safetensors header is not valid JSON ({str(e)[:120]}); the file is "
                               "corrupt — re-download it") from e
    if not isinstance(header, dict):
        raise CorruptFileError(f"{path}: the safetensors header is not a JSON object; the file is corrupt")
    if fast and raw.count(b'"data_offsets"') != len(header) - ("__metadata__" in header):
        # a key given twice (json keeps the last) or a malformed entry: the careful parse names it
        return _decode(path, raw, False)
    return header


_NUM = r"(?:0|[1-9][0-9]*)"  # a JSON integer that is not negative
# one tensor's member as serde_json (the safetensors library) writes it: no whitespace, dtype / shape / data_offsets
_ENTRY = re.compile(r'"([^"\\\x00-\x1f]*(?:\\.[^"\\\x00-\x1f]*)*)":\{"dtype":"([A-Z0-9_]+)","shape":\[((?:' + _NUM
                    + "(?:," + _NUM + r')*)?)\],"data_offsets":\[(' + _NUM + "),(" + _NUM + r")\]\}")


SPLIT_SLICE = 1 << 19     # bytes of header split (and decoded) per regex call: a few milliseconds each
_BLANK = b" \t\n\r"


def _stripped_bounds(raw: bytes) -> tuple[int, int]:
    """Where ``raw.strip(b" \\t\\n\\r")`` begins and ends, without copying the 78 MB between (the library pads the
    header with a few spaces; a header of nothing but blanks is looked at 64 kB per step)."""
    lo, hi = 0, len(raw)
    while lo < hi:
        head = raw[lo:lo + 65536]
        skip = len(head) - len(head.lstrip(_BLANK))
        lo += skip
        if skip < len(head):
            break
    while hi > lo:
        tail = raw[max(lo, hi - 65536):hi]
        skip = len(tail) - len(tail.rstrip(_BLANK))
        hi -= skip
        if skip < len(tail):
            break
    return lo, hi


def _split_entries(raw: bytes) -> list[str]:
    """``_ENTRY.split(raw.strip(b" \\t\\n\\r").decode())``, ~0.5 MB of header per call. One regex call (or one
    decode) holds the interpreter lock for its whole run: over the 78 MB header of 10**6 tensors the split was 0.6 s,
    the decode and the strip 50 ms each, in which a window's GUI thread could not run. Slices are cut after a ``]}``
    followed by ``,"`` -- where one member ends and the next begins -- so no member spans a cut, and the pieces
    joined give exactly the whole text's split; these four bytes never occur inside a UTF-8 sequence, so each piece
    decodes as it would inside the whole (invalid UTF-8 raises ``UnicodeDecodeError`` all the same). A cut that falls
    inside a key (a key may hold ``]},``) leaves a gap that is not ``,``: :func:`_parse_compact` then returns None and
    the JSON parser decides."""
    start, stop = _stripped_bounds(raw)
    out: list[str] = []
    while True:
        cut = raw.find(b']},"', start + SPLIT_SLICE, stop) if stop - start > SPLIT_SLICE else -1
        end = stop if cut < 0 else cut + 2
        parts = _ENTRY.split(raw[start:end].decode("utf-8"))
        if out:
            out[-1] += parts[0]        # the gap across the cut: "" + ","
            out.extend(parts[1:])
            let_others_run()
        else:
            out = parts
        start = end
        if start >= stop:
            return out


def _parse_compact(raw: bytes, data_len: int):
    """A header written the usual way, parsed and checked without a dict and two lists per tensor (10**6 tensors:
    one regex pass instead of the JSON parser, a third of the memory): ``(metadata, keys, codes, shapes, begins)``,
    or None when the header is anything else (whitespace, other member order, a bad value, a duplicate key...):
    the JSON parser and the careful checks then decide, as before.

    Exact: ``_ENTRY.split`` cuts the text into tensor members and what lies between them, which must be ``{``, then
    commas, then ``}`` (with ``"__metadata__"`` allowed first or last, parsed by json); escaped keys are decoded by
    json; every check of :func:`_validate_fast` is made on the same values."""
    parts = _split_entries(raw)  # the library pads the header with spaces: stripped there
    n = len(parts) // 6
    if not n:
        return None
    gaps = parts[0::6]
    first, last, meta = gaps[0], gaps[-1], None
    if n > 1 and distinct(gaps[1:-1]) != {","}:
        return None
    try:
        if first != "{":
            if not first.startswith('{"__metadata__":') or not first.endswith(","):
                return None
            head = json.loads(first[:-1] + "}")
            if not isinstance(head, dict) or list(head) != ["__metadata__"]:
                return None
            meta = head["__metadata__"]
        if last != "}":
            if first != "{" or not last.startswith(',"__metadata__":') or not last.endswith("}"):
                return None
            tail = json.loads("{" + last[1:])
            if not isinstance(tail, dict) or list(tail) != ["__metadata__"]:
                return None
            meta = tail["__metadata__"]
        keys = parts[1::6]
        if any("\\" in "".join(part) for part in each_slice(keys)):  # escapes: json decodes (and checks) them
            keys = [json.loads('"' + k + '"') if "\\" in k else k for k in keys]
    except (ValueError, RecursionError):
        return None
    codes = mapped(_CODE.get, parts[2::6])   # the 18 codes' own strings (None: unknown), not 10**6 copies
    seen = distinct(keys)
    if len(seen) != n or "__metadata__" in seen or not distinct(codes) <= DTYPE_SET:
        return None
    del seen
    shape_texts = parts[3::6]
    try:
        shape_of, numel_of = {}, {}
        for t in distinct(shape_texts):
            shape = shape_of[t] = tuple(map(int, t.split(","))) if t else ()
            if shape and max(shape) >= 1 << 62:  # a size no tensor can have: the careful check names it
                return None
            numel_of[t] = math.prod(shape)
        if max(numel_of.values()) >= 1 << 56:  # a size no tensor can have: the careful check names it
            return None
        begins = mapped(int, parts[4::6])
        ends = mapped(int, parts[5::6])
    except (ValueError, OverflowError):
        return None
    numels, shapes = mapped(numel_of.__getitem__, shape_texts), mapped(shape_of.__getitem__, shape_texts)
    for texts in (gaps, shape_texts, parts):   # 5 * 10**6 strings, freed a slice at a time, not in one cascade
        drop(texts)
    if not _spans_fit(begins, ends, numels, codes, data_len):
        return None
    return meta, keys, codes, shapes, array("q", begins)


def _spans_fit(begins: list, ends: list, numels: list, codes: list, data_len: int) -> bool:
    """Does every tensor's byte span (lists of ints) hold its elements exactly, end inside the data section, and
    overlap no other? (The check both parses make; the careful one names the first bad entry.) Each test is a pass
    in C (``map`` of an operator) on exact integers, as fast as numpy's once the texts are ints, and with no numpy:
    listing a file does not import it. ``SLICE`` tensors per pass (:mod:`explorer.core.gc_pause`): one pass over
    10**6 held the interpreter lock ~0.1 s."""
    in_order = True
    for a, b in slices(len(begins)):
        part = ends[a:b]
        if max(part) > data_len \
                or list(map(sub, part, begins[a:b])) != list(map(mul, numels[a:b], map(ITEMSIZES.__getitem__,
                                                                                         codes[a:b]))):
            return False
        in_order = in_order and all(map(ge, begins[a + 1:b + 1], part))
    if not in_order:  # not in file order: sort, then look for overlaps
        order = sorted(range(len(begins)), key=begins.__getitem__)   # stable
        if any(map(gt, map(ends.__getitem__, order), islice(map(begins.__getitem__, order), 1, None))):
            return False
    return True


def _no_duplicates(pairs):
    out = OrderedDict()
    for k, v in pairs:
        if k in out:
            raise ValueError(f"duplicate key {k!r}")
        out[k] = v
    return out


def _validate_slowly(path: str, header: dict, data_len: int) -> None:
    """Check every entry and name the first bad one (the fast check only says that something is wrong)."""
    spans = []
    for key, spec in header.items():
        if not isinstance(spec, dict):
            raise CorruptFileError(f"{path}: header entry {shorten(key)} is not an object; the file is corrupt")
        code, shape, offsets = spec.get("dtype"), spec.get("shape"), spec.get("data_offsets")
        if not isinstance(code, str) or code not in DTYPES:
            raise CorruptFileError(f"{path}: tensor {shorten(key)} has unknown dtype {shorten(code)}; this "
                                   "safetensors version "
                                   "may be newer than the tool — known: " + ", ".join(DTYPES))
        if (not isinstance(shape, list) or not all(type(s) is int and 0 <= s < 1 << 62 for s in shape)
                or not isinstance(offsets, list) or len(offsets) != 2
                or not all(type(o) is int and o >= 0 for o in offsets) or offsets[0] > offsets[1]):
            raise CorruptFileError(f"{path}: tensor {shorten(key)} has an invalid shape {shorten(shape)} or "
                                   f"data_offsets {shorten(offsets)}; the file is corrupt — re-download it")
        if math.prod(shape) >= 1 << 62:
            raise CorruptFileError(f"{path}: tensor {shorten(key)} of shape {shape} claims {math.prod(shape):,} "
                                   "elements, more than any machine holds; the file is corrupt — re-download it")
        numel = math.prod(shape)
        begin, end = offsets
        if end - begin != numel * ITEMSIZES[code]:
            raise CorruptFileError(f"{path}: tensor {shorten(key)} of shape {shape} and dtype {code} needs "
                                   f"{numel * ITEMSIZES[code]} bytes but its offsets span {end - begin}; "
                                   "the file is corrupt")
        if end > data_len:
            raise CorruptFileError(f"{path}: tensor {shorten(key)} ends at byte {end} of a {data_len}-byte data section; "
                                   "the file is truncated — re-download it")
        spans.append((begin, end, key))
    spans.sort()
    for (b0, e0, k0), (b1, e1, k1) in zip(spans, spans[1:]):
        if b1 < e0:
            raise CorruptFileError(f"{path}: tensors {shorten(k0)} and {shorten(k1)} overlap in the data section; the "
                                   "file is corrupt")


def _validate_fast(specs: list, data_len: int):
    """Vectorised checks of every entry; returns (codes, shapes, begins) or None when something is off."""
    try:
        codes = list(map(itemgetter("dtype"), specs))
        shapes = list(map(itemgetter("shape"), specs))
        offsets = list(map(itemgetter("data_offsets"), specs))
        if not set(codes) <= DTYPE_SET or not set(map(type, shapes)) <= {list} \
                or not set(map(type, offsets)) <= {list}:
            return None
        if not specs:
            return codes, ([], [0]), []
        dims = list(chain.from_iterable(shapes))
        if dims and (not set(map(type, dims)) <= {int} or min(dims) < 0 or max(dims) >= 1 << 62):
            return None
        flat = list(chain.from_iterable(offsets))
        if len(flat) != 2 * len(offsets) or set(map(len, offsets)) != {2} or not set(map(type, flat)) <= {int}:
            return None
        begins = flat[0::2]
        prods = list(map(math.prod, shapes))
        if prods and max(prods) >= 1 << 56:  # a size no tensor can have: the careful check names it
            return None
        if min(begins) < 0 or not _spans_fit(begins, flat[1::2], prods, codes, data_len):
            return None
        # shapes as one flat list of sizes plus where each starts: no per-tensor container outlives the parse
        # (the cyclic GC would otherwise walk 50,000 small lists as soon as it runs again)
        return codes, (dims, list(accumulate(map(len, shapes), initial=0))), array("q", begins)
    except (TypeError, ValueError, KeyError, OverflowError):
        return None


def _printable(path: str, keys: list) -> list:
    """Keys with lone surrogates (JSON allows ``"\\ud800"``) spelled as their escapes, so that every output can print
    them (see :func:`explorer.core.safe_pickle.printable.printable_key`)."""
    out = [printable_key(k) for k in keys]
    if len(set(out)) != len(out):
        raise CorruptFileError(f"{path}: two tensor names are the same once lone surrogates are spelled out; the "
                               "file is corrupt — re-download it")
    return out


def open_safetensors(path: str) -> Checkpoint:
    with gc_paused():
        raw, data_start = _read_raw(path)
        size = getsize(path)
        data_len = size - data_start
        try:
            # escapes (\" \u...) go to the JSON parser: the member regex would backtrack over a key of 10**5 \"
            compact = _parse_compact(raw, data_len) if b"\\" not in raw else None
        except UnicodeDecodeError:
            compact = None
        if compact is not None:
            meta, keys, codes, shapes, begins = compact
            if unprintable(keys):
                keys = _printable(path, keys)
        else:
            header = _decode(path, raw, True)
            meta = header.pop("__metadata__", None)
            keys = list(header)
            if unprintable(keys):
                keys = _printable(path, keys)
            specs = list(header.values())
            checked = _validate_fast(specs, data_len) if all(type(s) is dict for s in specs) else None
            if checked is None:
                _validate_slowly(path, header, data_len)
                raise CorruptFileError(f"{path}: the safetensors header is inconsistent; the file is corrupt")
            codes, (dims, starts), begins = checked
            shapes = [tuple(dims[a:b]) for a, b in zip(starts, starts[1:])]
            del header, specs, checked, dims, starts
        del raw, compact
    source = ByteSource(lambda ref: (path, data_start + int(begins[int(ref.key[1:])]), ref.nbytes),
                        lambda ref: (path, None, data_start + int(begins[int(ref.key[1:])])))

    strides: dict[tuple, tuple] = {}

    def stride_of(i: int) -> tuple:
        shape = shapes[i]
        stride = strides.get(shape)
        if stride is None:
            stride = strides[shape] = contiguous_strides(shape)
        return stride

    def make_record(i: int) -> TensorRecord:
        shape, stride = shapes[i], stride_of(i)
        dtype = DTYPES[codes[i]]
        numel = math.prod(shape)
        # the header was validated as a whole (_validate_fast): no per-record checks
        return TensorRecord.validated(StorageRef(f"#{i}", dtype, "cpu", numel, source=source), shape, stride, dtype,
                                      numel)

    def strides_of(first: int, stop: int) -> list:
        part = shapes[first:stop]
        for shape in distinct(part).difference(strides):
            strides[shape] = contiguous_strides(shape)
        return list(map(strides.__getitem__, part))

    def locations(start: int, stop: int, nbytes: list) -> Locations:  # entries start..stop's, made when read
        return Locations(Same(path), Same(None),
                         Computed(lambda i: data_start + begins[i], start,
                                  lambda first, stop: list(map(data_start.__add__, begins[first:stop]))),
                         nbytes, Same(0), Computed(stride_of, start, strides_of), Numbered("#", start))

    def columns(start: int, stop: int):  # what a listing shows of entries start..stop, column-wise
        part = shapes[start:stop]
        dtypes = mapped(DTYPES.__getitem__, codes[start:stop])
        nbytes = mapped(mul, mapped(math.prod, part), mapped(_ITEMSIZE_OF.__getitem__, dtypes))
        return part, dtypes, nbytes, [TENSOR] * len(part), ["cpu"] * len(part)

    metadata = meta if isinstance(meta, dict) else {}
    return Checkpoint(path, "safetensors", None, [], metadata,
                      table=FlatTable(keys, make_record, columns, locations))


register(Reader("safetensors", identify, open_safetensors, priority=60))
