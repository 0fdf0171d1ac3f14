"""A replaced comparison is taken apart in slices, and only what nothing else holds."""
from __future__ import annotations

import gc
import weakref

import torch

from explorer.session import dispose
from explorer.session.compare import Comparison, load_side_data


def _side(tmp_path, name, n=9000):
    sd = {f"blocks.{i}.w": torch.full((2,), float(i)) for i in range(n)}
    torch.save(sd, tmp_path / name)
    return load_side_data(str(tmp_path / name))


def test_a_replaced_comparison_is_emptied_and_freed_but_a_side_still_shown_is_left_whole(tmp_path):
    left, right = _side(tmp_path, "a.pt"), _side(tmp_path, "b.pt")
    comp = Comparison(left, right)
    tree = weakref.ref(comp.tree.root)
    gone = weakref.ref(comp)
    right_infos = right.infos
    assert len(right_infos) == 9000
    objects = [comp]
    del comp
    gc.disable()
    try:
        dispose.release(objects)
        assert objects == [] and gone() is None and tree() is None
    finally:
        gc.enable()
    # the right side is still shown elsewhere (we hold it): untouched
    assert len(right.infos) == 9000 and right.infos is right_infos
    assert len(left.infos) == 9000         # so is the left one: this test holds it too


def test_a_comparison_someone_still_holds_is_not_touched(tmp_path):
    comp = Comparison(_side(tmp_path, "a.pt", 100), None)
    holder = comp                           # a job still reading it
    dispose.release([comp])
    assert len(holder.rows) == 100 and len(holder.tree.by_key) == 100 and holder.tree.root.children


def test_an_unshared_side_is_taken_apart_with_its_comparison(tmp_path):
    comp = Comparison(_side(tmp_path, "a.pt", 5000), None)
    infos = weakref.ref(comp.left.side)
    objects = [comp]
    del comp
    gc.disable()
    try:
        dispose.release(objects)
        assert infos() is None
    finally:
        gc.enable()


def test_the_taking_apart_pauses_between_slices(tmp_path, monkeypatch):
    """Dropped at once, 9,000 rows, their tree and their side are freed in one cascade that holds the interpreter
    lock; taken apart, the lock is offered to other threads (the GUI's) between slices."""
    comp = Comparison(_side(tmp_path, "a.pt", 9000), None)
    pauses = []
    monkeypatch.setattr(dispose.time, "sleep", lambda s: pauses.append(s))
    objects = [comp]
    del comp
    dispose.release(objects)
    # rows (9,000), the tree's two indexes and its ~18,000 nodes, the side's infos: each at least 3 slices of 4,096
    assert len(pauses) >= 10


def test_the_heap_is_trimmed_once_a_release_is_done(monkeypatch):
    """After a replaced comparison is taken apart, the C heap's free pages go back to the system (glibc's
    malloc_trim: the window's resident size grew with each re-open while no Python object was left alive)."""
    import time

    from explorer.session import dispose as D
    calls = []
    monkeypatch.setattr(D, "give_back_free_memory", lambda: calls.append(D.pending()))
    D.release_later([{"a": list(range(10))}])
    deadline = time.monotonic() + 10
    while D.pending() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert calls == [1]            # once, after the release, while it still counted as pending
    monkeypatch.undo()
    D.give_back_free_memory()      # the real call returns (or does nothing where there is no glibc)


def test_the_rows_are_emptied_in_slices_not_dropped_whole(tmp_path, monkeypatch):
    """The comparison's rows dict (and what its rows hold) is emptied a slice at a time: nothing else of the
    comparison -- its module table, its tree's nodes and key lookup -- keeps a reference that would leave it to one
    cascade when the comparison is dropped (a 312 ms GUI stall at a re-open of 50,000 keys)."""
    comp = Comparison(_side(tmp_path, "a.pt", 9000), None)
    comp.modules.get("blocks")                 # module data made, as the window's paint makes them
    comp.tree.by_key["blocks.17.w"]            # a lookup made levels
    rows_id = id(comp.rows)
    objects = [comp]
    del comp
    assert (rows_id, 9000) in _shrunk_releasing(objects, monkeypatch)


def test_a_listed_side_is_taken_apart_though_its_infos_are_held_twice(tmp_path, monkeypatch):
    """A side the window made from the parse process's listing holds its infos, and so does its SideData: neither
    holds them alone, yet both go with the comparison -- the infos dict is emptied in slices, not dropped at once
    (10**6 infos dropped at once: a 200 ms GUI stall)."""
    from explorer.core.side import open_side
    from explorer.session import listing as L
    path = tmp_path / "a.pt"
    torch.save({f"blocks.{i}.w": torch.full((2,), float(i)) for i in range(9000)}, path)
    data = L.side_data_of(L.listing_of(str(path), open_side(str(path))))
    assert data.side._infos is data.infos
    comp = Comparison(data, None)
    infos_id = id(data.infos)
    objects = [comp]
    del data, comp
    assert (infos_id, 9000) in _shrunk_releasing(objects, monkeypatch)


def _shrunk_releasing(objects: list, monkeypatch) -> list[tuple[int, int]]:
    """(id, length) of every container :func:`dispose.release` of ``objects`` (the caller's only reference to them)
    empties a slice at a time."""
    shrunk = []
    real = dispose._shrink
    monkeypatch.setattr(dispose, "_shrink", lambda c: (shrunk.append((id(c), len(c))), real(c))[1])
    dispose.release(objects)
    return shrunk
