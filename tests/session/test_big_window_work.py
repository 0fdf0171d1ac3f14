"""What the window used to do over every key on its GUI thread is done in the worker, or a slice at a time, with the
same answers: the row chosen first (from the statuses counted in ``recount``), a side's byte total, the filter."""
from __future__ import annotations

import random

import pytest

from explorer.core import gc_pause as G
from explorer.core.records import TensorInfo
from explorer.session import compare as C
from explorer.session import jobs


def _side(infos: dict) -> C.SideData:
    return C.SideData(side=None, text="x", entry=(), infos=infos, classes={})


def _info(key: str, shape=(2,), dtype="float32") -> TensorInfo:
    return TensorInfo(path=(key,), shape=shape, dtype=dtype, nbytes=4 * shape[0])


def _scan(comp: C.Comparison):
    """The pass over every row ``auto_select_key`` made before (kept here as the reference)."""
    rank = {st: i for i, st in enumerate(jobs.AUTO_SELECT_ORDER)}
    best, best_rank = None, len(rank)
    for row in comp.rows.values():
        r = rank.get(comp.status(row), best_rank)
        if r < best_rank:
            best, best_rank = row, r
    return best.key if best is not None else None


@pytest.mark.parametrize("seed", range(8))
def test_the_row_shown_first_is_the_one_a_scan_of_every_row_finds(seed):
    rng = random.Random(seed)
    left, right = {}, {}
    for i in range(200):
        key = f"m{i % 7}.k{i}"
        kind = rng.choice(["same", "shape", "dtype", "left", "right"])
        if kind != "right":
            left[key] = _info(key)
        if kind != "left":
            right[key] = _info(key, (3,) if kind == "shape" else (2,), "float16" if kind == "dtype" else "float32")
    comp = C.Comparison(_side(left), _side(right))
    assert jobs.auto_select_key(comp) == _scan(comp)
    statuses = [C.CHANGED, C.IDENTICAL, C.NONFINITE, C.SAME_LAYOUT]
    for row in comp.rows.values():           # a diff landed: values changed here and there
        if row.left is not None and row.right is not None and rng.random() < 0.3:
            row.diff_status = rng.choice(statuses)
    comp.recount()
    assert jobs.auto_select_key(comp) == _scan(comp)
    one_side = C.Comparison(_side(left), None)
    assert jobs.auto_select_key(one_side) is None and _scan(one_side) is None


def test_a_side_copied_and_counted_a_slice_at_a_time_is_the_same(monkeypatch):
    monkeypatch.setattr(G, "SLICE", 3)
    infos = {f"k{i}": _info(f"k{i}", (i + 1,)) for i in range(10)}
    copy = C.copied(infos)
    assert copy == infos and list(copy) == list(infos) and copy is not infos
    assert C.total_bytes(infos) == sum(i.nbytes for i in infos.values())
    assert C.total_bytes({}) == 0 and C.copied({}) == {}


def test_the_filter_job_gives_the_keys_and_the_tree_the_window_showed():
    infos = {f"blocks.{i // 10}.p{i % 10}": _info(f"blocks.{i // 10}.p{i % 10}") for i in range(300)}
    comp = C.Comparison(_side(infos), _side({k: v for k, v in list(infos.items())[::2]}))
    for text, query in [("p5", {}), ("blocks.1", {}), (r"\.p[12]$", {"regex": True}),
                        ("", {"differences_only": True}), ("p3", {"problems_only": True})]:
        count, tree = jobs.filter_tree(comp, text, query)
        keys = comp.filtered_keys(text, **query)
        assert count == len(keys) and list(tree.by_key) == keys
        assert all(node.data is comp.rows[key] for key, node in tree.by_key.items())
    assert jobs.filter_tree(comp, "", {"regex": True}) == (None, None)
    with pytest.raises(ValueError, match="regular expression"):
        jobs.filter_tree(comp, "p[", {"regex": True})


@pytest.mark.parametrize("top", ["", "model."])
def test_module_totals_are_counted_a_slice_at_a_time_and_are_the_plain_counts(monkeypatch, top):
    """A module's tensors and bytes per side (the root's: every key, 10**6 of them) are summed a slice of rows per C
    call, the lock offered between two, and are what a plain count over its keys gives (with every key below one
    module, ``model.``: that module's totals are the root's)."""
    yields = [0]
    monkeypatch.setattr(G, "SLICE", 7)
    monkeypatch.setattr(G, "let_others_run", lambda: yields.__setitem__(0, yields[0] + 1))
    rng = random.Random(3)
    left = {f"{top}m{i % 4}.p{i}": _info(f"{top}m{i % 4}.p{i}", (rng.randint(1, 9),)) for i in range(60)}
    right = {k: _info(k, (rng.randint(1, 9),)) for k in list(left)[::2] + [f"{top}m9.extra"]}
    comp = C.Comparison(_side(left), _side(right))
    for path in ("", top + "m0", top + "m1", top + "m9") + (("model",) if top else ()):
        keys = [k for k in comp.rows if k.startswith(path + ".") or not path]
        md = comp.modules[path]
        for i, side in enumerate((left, right)):
            there = [side[k] for k in keys if k in side]
            assert md.present[i] == len(there) and md.nbytes[i] == sum(t.nbytes for t in there), (path, i)
    assert yields[0] >= 60 // 7      # the root's 61 keys: a slice of 7 per call


def test_recount_picks_out_counted_rows_a_slice_at_a_time_with_the_plain_counts(monkeypatch):
    """``recount`` picks out the rows whose status counts at C speed -- a slice per call, other threads let run in
    between (one call over 10**6 rows held the GUI thread ~100 ms) -- and counts what a plain pass over every row
    counts."""
    rng = random.Random(5)
    statuses = [None, C.MISSING, C.UNEXPECTED, C.SAME_LAYOUT, C.SHAPE_MISMATCH, C.CHANGED, C.IDENTICAL, C.DTYPE_CAST]
    infos = {f"m{i % 3}.s{i % 2}.w{i}": _info(f"m{i % 3}.s{i % 2}.w{i}") for i in range(40)}
    comp = C.Comparison(_side(infos), _side(dict(infos)))
    for row in comp.rows.values():
        row.diff_status = rng.choice(statuses)
    yields = []
    monkeypatch.setattr(G, "SLICE", 7)
    monkeypatch.setattr(G, "let_others_run", lambda: yields.append(1))
    comp.recount()
    assert len(yields) == 5          # 40 rows, 7 a slice: 6 slices
    first, counts = {}, {}
    for key, row in comp.rows.items():     # the plain pass
        st = row.diff_status
        problem, different = int(st in C.PROBLEM_STATUSES), int(st not in C.SAME_STATUSES)
        if not (problem or different):
            continue
        first.setdefault(st, key)
        parts = key.split(".")
        for depth in range(1, len(parts)):
            c = counts.setdefault(".".join(parts[:depth]), [0, 0])
            c[0] += problem
            c[1] += different
        total = counts.setdefault("", [0, 0])
        total[0] += problem
        total[1] += different
    assert comp.first_of == first and comp.modules._counts == counts


@pytest.mark.parametrize("top", ["", "model."])
@pytest.mark.parametrize("sides", ["both", "left", "right", "renamed"])
def test_the_module_above_every_key_takes_the_sides_totals_which_are_the_plain_counts(top, sides):
    """The root's module row (and a ``model.`` above every key) takes each side's tensor count and byte total as the
    side counted them when it was opened -- no pass over the rows -- and they are what a count of the rows shown
    gives; with keys renamed (two onto one key: one of them is shown) they are counted over the rows."""
    rng = random.Random(4)
    left = {f"{top}m{i % 4}.p{i}": _info(f"{top}m{i % 4}.p{i}", (rng.randint(1, 9),)) for i in range(60)}
    right = {k: _info(k, (rng.randint(1, 9),)) for k in list(left)[::2] + [f"{top}m9.extra"]}
    rename = {f"{top}m9.extra": f"{top}m0.p0"} if sides == "renamed" else {}
    opened = {name: C.SideData(side=None, text=name, entry=(), infos=infos, classes={}, nbytes=C.total_bytes(infos))
              for name, infos in (("left", left), ("right", right))}
    comp = C.Comparison(opened["left"] if sides != "right" else None, opened["right"] if sides != "left" else None,
                        rename)
    assert (comp.totals is None) == (sides == "renamed")
    for path in ("", top + "m0") + (("model",) if top else ()):
        rows = [row for key, row in comp.rows.items() if key.startswith(path + ".") or not path]
        md = comp.modules[path]
        for i, side in enumerate(("left", "right")):
            there = [getattr(row, side) for row in rows if getattr(row, side) is not None]
            assert md.present[i] == len(there) and md.nbytes[i] == sum(t.nbytes for t in there), (path, side)


def test_recount_with_one_side_open_counts_what_the_pass_over_every_row_counts():
    infos = {f"m{i % 3}.w{i}": _info(f"m{i % 3}.w{i}") for i in range(40)}
    for comp in (C.Comparison(_side(infos), None), C.Comparison(None, _side(infos))):
        first, counts = comp.first_of, comp.modules._counts      # one side: no pass
        comp.left, comp.right = comp.left or _side({}), comp.right or _side({})
        comp.recount()                                          # the pass (the rows unchanged: one side's)
        assert (first, counts) == (comp.first_of, comp.modules._counts) == ({}, {"": [0, 0]})
