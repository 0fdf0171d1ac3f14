"""A first open walks ``data.pkl`` for hashing work in the window while the parse process unpickles it unchecked
(``parse_guard._parse_there``, ``torch_zip.precheck``): the answer is the one the usual parse gives -- for a benign
file, and for a hash bomb the C unpickler would finish, which the walk refuses -- and nothing the unchecked parse
built outlives a refusal."""
from __future__ import annotations

import os
import pickle
import time

import pytest
import torch

from explorer.core.loaders import torch_zip
from explorer.core.safe_pickle import hash_work
from explorer.errors import CorruptFileError, UnsupportedFormatError
from explorer.session import detail_compute, listing as L, parse_guard as G
from explorer.session.compare import load_side_data
from explorer.session.compute_process import CallAborted, ComputeProcess, parse_engine
from tests.hostile.corpus import write_torch_zip
from tests.hostile.corpus_round2 import dag
from tests.in_parse_process import listing_kept, parts_then_sleep, sleep, slow_probe

BIG = G.PRECHECK_MIN   # files of this size and more are walked in the window


def _benign(tmp_path) -> str:
    """A torch.save file over the size the window walks: many small tensors and one large one, views, a nested
    optimizer-like dict."""
    torch.manual_seed(0)
    sd = {f"blocks.{i // 4}.w{i % 4}": torch.randn(3, i % 5 + 1) for i in range(400)}
    base = torch.randn(BIG // 4)
    sd["big"], sd["view"] = base, base[10:20].view(2, 5)
    path = str(tmp_path / "benign.pt")
    torch.save({"model": sd, "step": 3}, path)
    assert os.path.getsize(path) >= BIG
    return path


def _bomb(tmp_path, levels: int = 23) -> str:
    """A torch.save-style file over the size the window walks whose dict key is a ``levels``-deep tuple DAG:
    ``2**levels`` hashing steps. Above the walk's budget (it refuses), yet the C unpickler gets through it in a
    fraction of a second -- so an unchecked parse succeeds, and must not be what the window shows."""
    pkl = b"\x80\x02}q\x00(" + dag(levels) + b"K\x01u."
    assert 2 ** levels > hash_work.HASH_BUDGET + hash_work.HASH_BUDGET_PER_BYTE * len(pkl)
    path = str(tmp_path / "bomb.pt")
    write_torch_zip(path, pkl, {"0": bytes(BIG)})
    return path


def _token(path: str) -> tuple:
    return torch_zip.token_of_stat(os.stat(path))


@pytest.fixture
def fresh_caches():
    """The parse process's caches, as this process holds them when probe runs here."""
    detail_compute._SIDES.clear()
    L._LISTINGS.clear()
    G._UNCHECKED.clear()
    yield
    detail_compute._SIDES.clear()
    L._LISTINGS.clear()
    G._UNCHECKED.clear()


def test_the_walk_is_the_one_the_reader_makes(tmp_path):
    """The window's walk passes a benign file and refuses the bomb with the reader's own words."""
    assert torch_zip.precheck(_benign(tmp_path), _token(_benign(tmp_path))) is True
    bomb = _bomb(tmp_path)
    with pytest.raises(CorruptFileError) as refused:
        torch_zip.precheck(bomb, _token(bomb))
    with pytest.raises(CorruptFileError) as read:
        torch_zip.open_zip(bomb)
    assert "hash" in str(refused.value) and str(refused.value) == str(read.value)


def test_a_parse_told_the_window_walks_skips_the_walk_and_only_for_that_file(tmp_path, monkeypatch, fresh_caches):
    path = _benign(tmp_path)
    walks = []
    real = hash_work.check_hash_work
    monkeypatch.setattr(hash_work, "check_hash_work", lambda *a: walks.append(1) or real(*a))
    listed = G.probe(path, checked_elsewhere=_token(path))
    assert walks == []     # skipped: the window walks it
    assert list(L.side_data_of(listed).infos.items()) == list(load_side_data(path).infos.items())
    walks.clear()
    L._LISTINGS.clear(), detail_compute._SIDES.clear(), G._UNCHECKED.clear()
    st = os.stat(path)
    G.probe(path, checked_elsewhere=(st.st_dev, st.st_ino, st.st_mtime_ns, st.st_ctime_ns + 1, st.st_size))  # not it
    assert walks == [1]


def test_a_parse_without_the_window_walking_never_serves_what_an_unchecked_parse_kept(tmp_path, fresh_caches):
    bomb = _bomb(tmp_path)
    assert isinstance(G.probe(bomb, checked_elsewhere=_token(bomb)), L.Listing)   # the C unpickler got through it
    with pytest.raises(CorruptFileError, match="hash"):
        G.probe(bomb)          # the usual parse: walked first, refused (not the listing kept above)


def test_the_window_shows_a_benign_file_as_the_usual_parse_does(tmp_path):
    path = _benign(tmp_path)
    data = G.open_guarded(path)
    assert type(data.side) is L.ListedSide
    assert list(data.infos.items()) == list(load_side_data(path).infos.items())
    assert data.side.references == load_side_data(path).side.references


def test_a_file_walked_once_is_walked_again_only_once_it_changed(tmp_path, monkeypatch):
    """A re-open of an unchanged file waits for no walk (the parse process answers from what it keeps)."""
    path = _benign(tmp_path)
    walks = []
    real = torch_zip.precheck
    monkeypatch.setattr(torch_zip, "precheck", lambda *a: walks.append(1) or real(*a))
    G.open_guarded(path)
    G.open_guarded(path)
    assert walks == [1]
    later = os.stat(path).st_mtime_ns + 10**9
    os.utime(path, ns=(later, later))
    assert list(G.open_guarded(path).infos.items()) == list(load_side_data(path).infos.items())
    assert walks == [1, 1]


def test_the_window_refuses_a_bomb_the_unchecked_parse_got_through(tmp_path):
    """The parse process, told the window walks, unpickles the bomb within a fraction of a second; the window's
    walk refuses it: the answer is the usual refusal, every time, and the parse process that held the bomb's
    parse is gone."""
    bomb = _bomb(tmp_path)
    eng = parse_engine()
    assert isinstance(eng.call(G.probe, bomb, checked_elsewhere=_token(bomb), timeout=60), L.Listing)
    before = eng._proc.pid
    with pytest.raises(CorruptFileError) as first:
        G.open_guarded(bomb)
    assert "hash" in str(first.value)
    assert eng._proc is None or eng._proc.pid != before     # restarted: nothing it built unchecked is kept
    with pytest.raises(CorruptFileError) as again:
        G.open_guarded(bomb)
    with pytest.raises(CorruptFileError) as usual:
        load_side_data(bomb)
    assert str(first.value) == str(again.value) == str(usual.value)


def test_a_bomb_the_unpickler_never_finishes_is_refused_long_before_the_time_limit(tmp_path):
    bomb = _bomb(tmp_path, levels=64)
    t = time.perf_counter()
    with pytest.raises(CorruptFileError, match="hash"):
        G.open_guarded(bomb, timeout_s=60)
    assert time.perf_counter() - t < 30


def test_an_aborted_call_kills_the_child_at_once():
    eng = ComputeProcess(nice=0, name="abort-test", tensors=False)
    try:
        assert eng.call(sleep, 0, timeout=60) == 0
        t, start = time.perf_counter(), time.perf_counter()
        with pytest.raises(CallAborted):
            eng.call(sleep, 30, timeout=60, abort=lambda: time.perf_counter() - start > 0.2)
        assert time.perf_counter() - t < 5
        assert eng.call(sleep, 0, timeout=60) == 0       # restarted on the next call
    finally:
        eng.shutdown()


def test_a_partial_answer_the_caller_cannot_take_stops_the_job():
    """The window's decode of a listing chunk sent ahead fails (out of memory, say): the job it came from is stopped
    with it, not left running into the next call's time."""
    eng = ComputeProcess(nice=0, name="partial-test", tensors=False)
    got = []

    def take(part):
        got.append(part)
        raise MemoryError("decoding the chunk")
    try:
        with pytest.raises(MemoryError):
            eng.call(parts_then_sleep, 3, 30, timeout=60, partial=take)
        assert got == [0]
        t = time.perf_counter()
        assert eng.call(sleep, 0, timeout=20) == 0       # not behind the 30 s the stopped job had left
        assert time.perf_counter() - t < 10
    finally:
        eng.shutdown()


def test_pauses_of_the_collector_in_two_threads_end_when_both_have():
    import gc

    from explorer.core.gc_pause import gc_paused
    assert gc.isenabled()
    first, second = gc_paused(), gc_paused()
    first.__enter__()
    second.__enter__()                  # (another worker's pause, begun before the first ends)
    first.__exit__(None, None, None)
    assert not gc.isenabled()           # the second worker's bulk work still runs without the collector
    second.__exit__(None, None, None)
    assert gc.isenabled()


def test_a_listing_pickles_the_same_whichever_parse_made_it(tmp_path, fresh_caches):
    path = _benign(tmp_path)
    checked = pickle.dumps(G.probe(path))
    L._LISTINGS.clear(), detail_compute._SIDES.clear()
    assert pickle.dumps(G.probe(path, checked_elsewhere=_token(path))) == checked


# ---- read ahead: files dragged over the window are parsed before they are dropped ----------------------------------
def _small(tmp_path, name: str) -> str:
    path = str(tmp_path / name)
    torch.save({"w": torch.ones(2, 3)}, path)
    return path


def _wait_reading(text: str) -> None:
    t_end = time.perf_counter() + 20
    while text not in G._ReadAhead.reading:
        assert time.perf_counter() < t_end, "the read-ahead never started"
        time.sleep(0.005)


def test_a_file_read_ahead_is_parsed_before_its_open_asks(tmp_path, monkeypatch):
    path = _benign(tmp_path)
    walks = []
    real = torch_zip.precheck
    monkeypatch.setattr(torch_zip, "precheck", lambda *a: walks.append(1) or real(*a))
    G.read_ahead([path])
    assert parse_engine().call(listing_kept, path, timeout=30)     # parsed and kept there, before any open
    data = G.open_guarded(path)
    assert walks == [1]                                     # the open walks nothing again
    assert list(data.infos.items()) == list(load_side_data(path).infos.items())


def _calls_to_the_parse_process(monkeypatch) -> list:
    eng, calls = parse_engine(), []
    real = eng.call
    monkeypatch.setattr(eng, "call", lambda fn, *a, **k: calls.append(fn.__name__) or real(fn, *a, **k))
    return calls


def test_the_open_of_a_file_read_ahead_takes_the_listing_decoded_then(tmp_path, monkeypatch):
    """Dropped after the read-ahead finished: the open asks the parse process nothing (the listing was decoded here
    as it came); a file changed since is parsed again, and shows what it holds now."""
    path = _benign(tmp_path)
    G.read_ahead([path])
    calls = _calls_to_the_parse_process(monkeypatch)
    data = G.open_guarded(path)
    assert calls == [] and type(data.side) is L.ListedSide
    assert list(data.infos.items()) == list(load_side_data(path).infos.items())
    G.read_ahead([path])
    calls.clear()
    torch.save({"w": torch.ones(5)}, path)                  # saved again between the drag and the drop
    data = G.open_guarded(path)
    assert calls == ["probe"] and list(data.infos) == ["w"] and data.infos["w"].shape == (5,)


def test_what_a_read_ahead_kept_is_taken_by_both_files_of_a_drop_and_dropped_by_another_open(tmp_path, monkeypatch):
    a, b, other = _small(tmp_path, "a.pt"), _small(tmp_path, "b.pt"), _small(tmp_path, "other.pt")
    G.read_ahead([a, b])
    calls = _calls_to_the_parse_process(monkeypatch)
    G.open_guarded(a)                                       # both dropped: one open each
    G.open_guarded(b)
    assert calls == []
    G.read_ahead([a, b])
    assert set(G._ReadAhead.kept) == {a, b}
    calls.clear()
    G.open_guarded(other)                                   # the drag went elsewhere
    assert G._ReadAhead.kept == {} and calls == ["probe"]


def test_a_file_swapped_in_after_its_read_ahead_is_not_shown_from_it(tmp_path, monkeypatch):
    """Same path, size and modification time, another file (saved elsewhere and moved over it, its time set back --
    the next checkpoint of a run, synced with its times): the open takes nothing the read-ahead, or the parse
    process, kept of the file that was there."""
    (tmp_path / "elsewhere").mkdir()
    path, other = str(tmp_path / "ck.pt"), str(tmp_path / "elsewhere" / "ck.pt")   # (the name is in the archive)
    torch.save({"w": torch.ones(2, 3)}, path)
    torch.save({"v": torch.ones(2, 3)}, other)
    assert os.path.getsize(path) == os.path.getsize(other)
    G.read_ahead([path])
    before = os.stat(path)
    os.replace(other, path)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert os.stat(path).st_mtime_ns == before.st_mtime_ns and os.path.getsize(path) == before.st_size
    calls = _calls_to_the_parse_process(monkeypatch)
    data = G.open_guarded(path)
    assert calls == ["probe"] and list(data.infos) == ["v"]    # (nor from what the parse process kept)


def test_a_read_ahead_freezes_nothing_and_decodes_no_more_than_it_may_keep(tmp_path, monkeypatch):
    """What the GUI thread drops while a read-ahead runs stays collectable (nothing is frozen: the open that takes
    the listing settles it); a listing too large to keep is not decoded past that size, nor kept."""
    import gc
    path = _small(tmp_path, "small.pt")
    freezes = []
    real_freeze = gc.freeze
    monkeypatch.setattr(gc, "freeze", lambda: freezes.append(1) or real_freeze())
    G.read_ahead([path])
    assert freezes == [] and path in G._ReadAhead.kept
    G.open_guarded(path)
    assert freezes                                       # settled by the open
    many = str(tmp_path / "many.pt")
    torch.save({f"m{i // 10}.p{i % 10}": torch.ones(1) for i in range(L.CHUNK * 2 + 5)}, many)
    decoded = []
    real = L.Received.__call__
    monkeypatch.setattr(L.Received, "__call__", lambda self, chunk: (decoded.append(1), real(self, chunk)))
    monkeypatch.setattr(G._ReadAhead, "KEPT_MAX", 5)
    G.read_ahead([many])
    assert decoded == [1] and many not in G._ReadAhead.kept     # the first chunk, then nothing


def test_a_read_ahead_gives_way_to_an_open_of_another_file(tmp_path):
    import threading
    slow, other = _small(tmp_path, "slow.pt"), _small(tmp_path, "other.pt")
    ahead = threading.Thread(target=G.read_ahead, args=([slow],), kwargs={"probe_fn": slow_probe})
    ahead.start()
    _wait_reading(slow)
    t = time.perf_counter()
    data = G.open_guarded(other)
    assert time.perf_counter() - t < 15             # not after the read-ahead's 30 s parse
    assert list(data.infos) == ["w"]
    ahead.join(10)
    assert not ahead.is_alive()


def test_an_open_of_a_file_being_read_ahead_waits_for_that_parse_not_for_a_second_one(tmp_path):
    """A file whose parse runs out of time, dragged over and dropped: the open reports the read-ahead's time-out,
    not another whole time limit later."""
    import threading

    from explorer.errors import ParseTimeout
    path = _small(tmp_path, "hangs.pt")
    ahead = threading.Thread(target=G.read_ahead, args=([path],), kwargs={"probe_fn": slow_probe, "timeout_s": 3})
    ahead.start()
    _wait_reading(path)
    t = time.perf_counter()
    with pytest.raises(ParseTimeout):
        G.open_guarded(path, timeout_s=3, probe_fn=slow_probe)
    assert time.perf_counter() - t < 5.5             # the read-ahead's 3 s, not 3 + 3
    ahead.join(10)
    assert list(G.open_guarded(path).infos) == ["w"]   # and the next open parses afresh


def test_a_newer_read_ahead_supersedes_an_older_one_that_has_not_started(tmp_path):
    """Pointing at one recent file, then another: the first is not parsed once the second is wanted (what a read-ahead
    is parsing finishes; one waiting for the parse process parses nothing)."""
    import threading
    busy, first, second = (_small(tmp_path, f"{name}.pt") for name in ("busy", "first", "second"))
    hold = threading.Thread(target=G.read_ahead, args=([busy],), kwargs={"probe_fn": slow_probe, "timeout_s": 3})
    hold.start()
    _wait_reading(busy)                          # the parse process is busy for 3 s
    older = threading.Thread(target=G.read_ahead, args=([first],))
    older.start()
    t_end = time.perf_counter() + 10
    while not any(first in a.texts for a in G._ReadAhead.running):
        assert time.perf_counter() < t_end
        time.sleep(0.005)
    G.read_ahead([second])                       # waits for the busy parse, then parses the newer one
    for t in (hold, older):
        t.join(20)
    eng = parse_engine()
    assert eng.call(listing_kept, second, timeout=30) and not eng.call(listing_kept, first, timeout=30)


# ---- what a review of the walk found: it never passes without walking, never waits for ever ---------------------
def test_a_walk_that_cannot_see_the_bytes_does_not_pass(tmp_path, monkeypatch):
    """The window's walk of bytes it cannot map (an address-space cap, a file system without mmap) raises: the
    parse process skipped its own walk, so its answer must not be used -- the bomb is refused all the same."""
    bomb = _bomb(tmp_path)
    monkeypatch.setattr(hash_work, "pickle_buffer", lambda f: None)     # in this process only
    with pytest.raises(OSError):
        torch_zip.precheck(bomb, _token(bomb))
    with pytest.raises(CorruptFileError, match="hash"):
        G.open_guarded(bomb)


def test_a_walk_that_never_ends_does_not_hold_the_open_past_its_time_limit(tmp_path, monkeypatch):
    """A walk stuck in a read (a mount that stopped answering): the open gives up on it within its time limit and
    parses the file the usual way."""
    import threading
    path = _benign(tmp_path)
    stuck = threading.Event()
    monkeypatch.setattr(torch_zip, "precheck", lambda *a: stuck.wait(60))
    got = []
    opener = threading.Thread(target=lambda: got.append(G.open_guarded(path, timeout_s=3)))
    try:
        opener.start()
        opener.join(30)
        assert not opener.is_alive(), "the open waited for the walk past its time limit"
        assert list(got[0].infos.items()) == list(load_side_data(path).infos.items())
    finally:
        stuck.set()


def test_an_open_cancelled_while_the_walk_runs_is_not_parsed_again(tmp_path, monkeypatch):
    import threading

    from explorer.errors import Cancelled
    path = _benign(tmp_path)
    stuck = threading.Event()
    monkeypatch.setattr(torch_zip, "precheck", lambda *a: stuck.wait(60))
    calls = _calls_to_the_parse_process(monkeypatch)
    start = time.perf_counter()
    try:
        with pytest.raises(Cancelled):
            G.open_guarded(path, timeout_s=30, should_stop=lambda: time.perf_counter() - start > 0.5)
        assert calls == ["probe"]               # the unchecked parse, stopped; no second parse to cancel
        assert time.perf_counter() - start < 5
    finally:
        stuck.set()


def test_a_file_rewritten_with_its_modification_time_set_back_is_another_file(tmp_path):
    path = _benign(tmp_path)
    before = os.stat(path)
    with open(path, "r+b") as f:          # same size, same place, one byte changed
        f.seek(before.st_size - 1)
        last = f.read(1)
        f.seek(before.st_size - 1)
        f.write(bytes([last[0] ^ 1]))
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = os.stat(path)
    assert (after.st_mtime_ns, after.st_size) == (before.st_mtime_ns, before.st_size)
    assert torch_zip.token_of_stat(after) != torch_zip.token_of_stat(before)


def test_a_zip_that_is_not_a_torch_file_is_refused_without_restarting_the_parse_process(tmp_path):
    import zipfile
    path = str(tmp_path / "archive.zip")
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("weights.bin", os.urandom(BIG))
    eng = parse_engine()
    eng.call(listing_kept, path, timeout=30)
    before = eng._proc.pid
    with pytest.raises(UnsupportedFormatError) as got:     # a zip, not one torch.save wrote
        G.open_guarded(path)
    with pytest.raises(UnsupportedFormatError) as usual:
        load_side_data(path)
    assert str(got.value) == str(usual.value) and "none of them a data.pkl" in str(got.value)
    assert eng._proc is not None and eng._proc.pid == before     # the walk had nothing to walk: no kill

