"""C-level passes over 10**6 items are cut into slices with the interpreter lock offered between two (a window's GUI
thread runs there): the sliced helpers give what the one-call pass gives, yield between slices, and the safetensors
reader built on them answers (and refuses) exactly as before, whatever falls at a cut."""
from __future__ import annotations

import json
import struct
from operator import mul

import pytest

from explorer.core import gc_pause as G
from explorer.core.loaders import safetensors_reader as S
from explorer.errors import CorruptFileError


@pytest.fixture
def yields(monkeypatch):
    """Counts the times the helpers let other threads run."""
    count = [0]
    monkeypatch.setattr(G, "let_others_run", lambda: count.__setitem__(0, count[0] + 1))
    return count


@pytest.mark.parametrize("n, step", [(0, 3), (1, 3), (3, 3), (10, 3), (10, 1), (10, 100)])
def test_sliced_passes_equal_the_one_call_pass_and_yield_between_slices(n, step, yields):
    texts = [str(i % 4) for i in range(n)]
    ints = list(range(n))
    assert list(G.slices(n, step)) == [(a, min(a + step, n)) for a in range(0, n, step)]
    assert yields[0] == max(0, -(-n // step) - 1)       # between two slices: never before the first
    yields[0] = 0
    assert G.mapped(int, texts, step=step) == list(map(int, texts))
    assert G.mapped(mul, ints, ints, step=step) == list(map(mul, ints, ints))
    assert G.distinct(texts, step=step) == set(texts)
    assert [x for part in G.each_slice(texts, step) for x in part] == texts
    assert all(len(part) <= step for part in G.each_slice(texts, step))
    if n > step:
        assert yields[0] > 0


def test_the_default_slice_is_read_when_called(monkeypatch, yields):
    monkeypatch.setattr(G, "SLICE", 2)
    assert G.mapped(str, [1, 2, 3, 4, 5]) == ["1", "2", "3", "4", "5"]
    assert yields[0] == 2


def _header(entries: list[tuple[str, str, list, int, int]]) -> bytes:
    """A compact header as the safetensors library writes it (serde_json: no whitespace, members in this order)."""
    parts = [json.dumps(k) + ':{"dtype":"%s","shape":[%s],"data_offsets":[%d,%d]}' % (code, ",".join(map(str, shape)),
                                                                                     b, e)
             for k, code, shape, b, e in entries]
    return ("{" + ",".join(parts) + "}").encode()


def _write(path, entries, data_len=None) -> str:
    raw = _header(entries)
    raw += b" " * (-len(raw) % 8)
    data_len = max((e for *_, e in entries), default=0) if data_len is None else data_len
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw + b"\0" * data_len)
    return str(path)


def _entries(n: int) -> list:
    out, at = [], 0
    for i in range(n):
        shape = [i % 3 + 1, 2]
        nbytes = shape[0] * 2 * 4
        out.append((f"blocks.{i // 5}.p{i % 5}", "F32", shape, at, at + nbytes))
        at += nbytes
    return out


def _listing(path: str) -> list:
    from explorer.core.side import open_side
    side = open_side(path)
    infos = side.state_dict_infos(side.default_state_dict)
    return [(k, tuple(i.shape), i.dtype, i.nbytes, i.location.offset) for k, i in infos.items()]


@pytest.mark.parametrize("step", [1, 7, 50])
def test_a_sliced_header_parse_lists_what_the_whole_one_lists(tmp_path, monkeypatch, step, yields):
    path = _write(tmp_path / "ok.safetensors", _entries(40))
    whole = _listing(path)
    assert len(whole) == 40
    monkeypatch.setattr(G, "SLICE", step)
    assert _listing(path) == whole
    if step < 40:
        assert yields[0] > 0


@pytest.mark.parametrize("at", [6, 7, 13, 39])
@pytest.mark.parametrize("fault", ["overlap", "size", "past_end", "duplicate"])
def test_a_fault_at_or_next_to_a_cut_is_refused_as_before(tmp_path, monkeypatch, at, fault):
    entries = _entries(40)
    k, code, shape, b, e = entries[at]
    if fault == "overlap":      # begins 4 bytes inside the previous tensor (at 7 and 14: the first of a slice)
        entries[at] = (k, code, shape, b - 4, e - 4)
        data_len = None
    elif fault == "size":
        entries[at] = (k, code, [shape[0] + 1, 2], b, e)
        data_len = None
    elif fault == "past_end":
        data_len = entries[at][3]  # the data section stops where tensor ``at`` begins: it and the rest lie past it
    else:
        entries[at] = (entries[at - 5][0], code, shape, b, e)
        data_len = None
    path = _write(tmp_path / "bad.safetensors", entries, data_len)
    monkeypatch.setattr(G, "SLICE", 1 << 20)
    with pytest.raises(CorruptFileError) as whole:
        _listing(path)
    monkeypatch.setattr(G, "SLICE", 7)
    with pytest.raises(CorruptFileError) as sliced:
        _listing(path)
    assert str(sliced.value) == str(whole.value)


def test_tensors_out_of_file_order_are_checked_over_every_slice(tmp_path, monkeypatch):
    entries = _entries(30)
    entries[10], entries[20] = entries[20], entries[10]      # in the header out of order, not overlapping
    path = _write(tmp_path / "order.safetensors", entries)
    whole = _listing(path)
    monkeypatch.setattr(G, "SLICE", 4)
    assert _listing(path) == whole
    assert [k for k, *_ in whole][10] == entries[10][0]


@pytest.mark.parametrize("raw", [b"", b"   ", b"{}", b"  {} ", b"\t\n{x}\r\n" + b" " * 70000, b" " * 140000 + b"{",
                                 b"{" + b" " * 200000 + b"}"])
def test_the_header_bounds_are_those_of_a_strip(raw):
    lo, hi = S._stripped_bounds(raw)
    assert raw[lo:hi] == raw.strip(b" \t\n\r")


@pytest.mark.parametrize("split", [3, 40, 1 << 19])
def test_a_header_that_is_not_utf8_is_refused_by_the_sliced_split_too(tmp_path, monkeypatch, split):
    entries = _entries(12)
    entries[9] = ("bad\udcff", *entries[9][1:])
    raw = _header(entries[:9]).replace(b"}}", b"},") + _header(entries[9:])[1:]
    raw = raw.replace(b"bad\\udcff", b"bad\xff")     # a lone continuation byte: not UTF-8
    raw += b" " * (-len(raw) % 8)
    path = tmp_path / "latin.safetensors"
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + b"\0" * entries[-1][4])
    monkeypatch.setattr(S, "SPLIT_SLICE", split)
    with pytest.raises(UnicodeDecodeError):
        S._split_entries(raw)
    with pytest.raises(CorruptFileError, match="not valid JSON"):
        _listing(str(path))


@pytest.mark.parametrize("n, step", [(0, 3), (2, 3), (3, 3), (10, 3)])
def test_batches_of_any_iterable_yield_between_batches(n, step, yields):
    parts = list(G.batches((i for i in range(n)), step))
    assert [x for p in parts for x in p] == list(range(n)) and all(0 < len(p) <= step for p in parts)
    assert yields[0] == max(0, len(parts) - 1)


@pytest.mark.parametrize("n, step", [(0, 3), (3, 3), (10, 3)])
def test_drop_empties_a_list_a_slice_at_a_time(n, step, yields):
    items = [str(i) for i in range(n)]
    G.drop(items, step)
    assert items == [] and yields[0] == max(0, -(-n // step) - 1)


def test_dtype_codes_are_the_readers_own_strings(tmp_path):
    path = _write(tmp_path / "codes.safetensors", _entries(20))
    with open(path, "rb") as f:
        raw = f.read(int.from_bytes(f.read(8), "little"))
    meta, keys, codes, shapes, begins = S._parse_compact(raw, 10**6)
    assert codes == ["F32"] * 20 and all(c is S._CODE["F32"] for c in codes)   # not 10**6 copies to free one by one
    bad = raw.replace(b'"dtype":"F32"', b'"dtype":"F33"', 1)
    assert S._parse_compact(bad, 10**6) is None
