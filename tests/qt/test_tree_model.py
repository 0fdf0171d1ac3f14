"""The tree model over the core tree: Qt's model tester, placeholders, problem counts, filtering."""
from __future__ import annotations

from PySide6.QtCore import QModelIndex, Qt

from explorer.core.records import BUFFER, NON_PERSISTENT, PARAMETER, TENSOR, ModuleInfo, TensorInfo
from explorer.session import compare as C
from explorer.qt.tree_model import (LEFT_COLUMNS, NAME_COLUMN, RIGHT_COLUMNS, STATUS_COLUMN, NodeRole, StateTreeModel,
                                     is_group, row_key)


def info(key, shape, dtype="float32", kind=PARAMETER):
    n = 1
    for s in shape:
        n *= s
    return TensorInfo((key,), tuple(shape), dtype, n * 4, None, "cpu", kind)


def side(infos, classes=None):
    return C.SideData(side=None, text="x", entry=(), infos={i.key: i for i in infos}, classes=classes or {})


def sample_comparison():
    left = side([info("enc.0.weight", (4, 4)), info("enc.0.bias", (4,)), info("enc.bn.running_mean", (4,), kind=BUFFER),
                 info("enc.bn.mask", (4,), kind=NON_PERSISTENT), info("head.weight", (2, 4))],
                {"": ModuleInfo("", "Net"), "enc": ModuleInfo("enc", "Encoder"), "enc.bn": ModuleInfo("enc.bn", "BatchNorm1d")})
    right = side([info("enc.0.weight", (4, 4), kind=TENSOR), info("enc.0.bias", (4,), "float16", kind=TENSOR),
                  info("enc.bn.running_mean", (4,), kind=TENSOR), info("head.weight", (3, 4), kind=TENSOR),
                  info("extra.scale", (1,), kind=TENSOR)])
    return C.Comparison(left, right)


def test_model_passes_qt_model_tester(qtmodeltester):
    model = StateTreeModel()
    qtmodeltester.check(model)                     # empty
    comp = sample_comparison()
    model.set_tree(comp)
    qtmodeltester.check(model)
    model.set_tree(comp, comp.subtree(comp.filtered_keys("bn")))   # a reset to a filtered tree
    qtmodeltester.check(model)
    model.set_tree(None)
    qtmodeltester.check(model)


def test_union_tree_placeholders_and_statuses():
    comp = sample_comparison()
    rows = comp.rows
    assert list(rows) == ["enc.0.weight", "enc.0.bias", "enc.bn.running_mean", "enc.bn.mask", "head.weight",
                          "extra.scale"]
    assert rows["enc.0.weight"].diff_status == C.SAME_LAYOUT
    assert rows["enc.0.bias"].diff_status == C.DTYPE_DIFFERS
    assert rows["head.weight"].diff_status == C.SHAPE_DIFFERS
    assert rows["extra.scale"].diff_status == C.ONLY_B and rows["extra.scale"].left is None
    assert rows["enc.bn.mask"].diff_status is None       # non-persistent: never saved, so never "only left"
    model = StateTreeModel()
    model.set_tree(comp)
    extra = model.index_of_path("extra.scale")
    assert extra.isValid()
    left_name = extra.siblingAtColumn(NAME_COLUMN[0])
    right_name = extra.siblingAtColumn(NAME_COLUMN[1])
    assert model.data(left_name) == ""                   # placeholder on the left
    assert model.data(left_name, Qt.BackgroundRole) is not None
    assert model.data(right_name) == "scale"
    assert "only right" in model.data(extra.siblingAtColumn(STATUS_COLUMN))
    # module rows: class and problem count
    enc = model.index_of_path("enc")
    assert model.data(enc.siblingAtColumn(NAME_COLUMN[0])) == "enc  Encoder"
    assert model.data(enc.siblingAtColumn(STATUS_COLUMN)) == "⚠ 1 problem"      # the dtype difference
    root_problems = comp.modules[""].problems
    assert root_problems == 3   # dtype, shape, only right
    # kinds are distinct in text and decoration
    mask = model.index_of_path("enc.bn.mask")
    kind_col = LEFT_COLUMNS[1]
    assert model.data(mask.siblingAtColumn(kind_col)) == "non-persistent"
    assert model.data(mask.siblingAtColumn(kind_col), Qt.DecorationRole) is not None
    assert model.data(model.index_of_path("enc.0.weight").siblingAtColumn(kind_col)) == "parameter"
    assert model.data(model.index_of_path("enc.0.weight").siblingAtColumn(RIGHT_COLUMNS[1])) == "tensor"


def _walk_round_trip(model) -> list:
    """Every row's node, each index checked to round-trip through parent() and index_of_path() (a group row by its
    state_path)."""
    stack = [QModelIndex()]
    nodes = []
    while stack:
        parent = stack.pop()
        for r in range(model.rowCount(parent)):
            idx = model.index(r, 0, parent)
            assert model.parent(idx) == parent
            node = model.data(idx, NodeRole)
            assert model.index_of_path(row_key(node)) == idx
            nodes.append(node)
            stack.append(idx)
    return nodes


def test_parent_and_index_round_trip():
    comp = sample_comparison()
    model = StateTreeModel()
    model.set_tree(comp)
    nodes = _walk_round_trip(model)
    assert not any(map(is_group, nodes))     # no level is large enough for groups
    assert len(nodes) == len(comp.tree.by_path) - 1


def test_parent_and_index_round_trip_with_groups():
    """More than GROUP siblings come in rows of GROUP ("t0 … t999"): every index round-trips through parent() and
    index_of_path(), and every key is reached once."""
    keys = [info(f"t{i}", (1,)) for i in range(2_500)] + [info(f"layers.{i}.w", (2,)) for i in range(1_200)]
    comp = C.Comparison(side(keys), side(keys[::2]))
    model = StateTreeModel()
    model.set_tree(comp)
    assert model.rowCount() == 3                       # t0 … t999, t1000 … t1999, t2000 … layers (2,501 children)
    assert model.data(model.index(2, NAME_COLUMN[0]), Qt.DisplayRole) == "t2000 … layers  (501)"
    layers = model.index_of_path("layers")
    assert model.rowCount(layers) == 2 and model.rowCount(model.index(1, 0, layers)) == 200
    leaves = [n.key for n in _walk_round_trip(model) if n.is_leaf]
    assert sorted(leaves) == sorted(i.key for i in keys)
    idx = model.index_of_path("t2499")
    assert idx.row() == 499 and model.parent(idx) == model.index(2, 0)


def test_grouped_model_passes_qt_model_tester(qtmodeltester):
    keys = [info(f"t{i}", (1,)) for i in range(2_100)]
    model = StateTreeModel()
    model.set_tree(C.Comparison(side(keys), None))
    qtmodeltester.check(model)
    assert model.data(model.index(0, NAME_COLUMN[0]), Qt.DisplayRole) == "t0 … t999  (1,000)"
    assert model.data(model.index(0, NAME_COLUMN[1]), Qt.DisplayRole) is None    # nothing open on the right


def _shown_view(qtbot, comp):
    """The three synced panes, shown offscreen, holding ``comp``."""
    from explorer.qt.compare_view import CompareView
    view = CompareView()
    qtbot.addWidget(view)
    view.resize(1200, 600)
    view.show()
    view.set_tree(comp)
    return view


def test_a_huge_flat_level_is_laid_out_a_thousand_rows_at_a_time(qtbot):
    """Selecting the last of 30,000 flat keys: the three views lay out the rows of one group, not of all keys (Qt
    calls the model's index(), hasChildren() and flags() for every row of an expanded level: with 10**6 keys that
    was 15 s of a frozen window)."""
    import sys

    comp = C.Comparison(side([info(f"t{i}", (1,)) for i in range(30_000)]), None)
    view = _shown_view(qtbot, comp)
    qtbot.wait(50)
    calls = 0

    def prof(frame, event, arg):
        nonlocal calls
        if event == "call" and frame.f_code.co_filename.endswith("tree_model.py"):
            calls += 1
    sys.setprofile(prof)
    try:
        view.set_tree(comp)              # again, as after a diff or a simulation: the expanded rows are kept
        assert view.select_path("t29999")
        view.right.verticalScrollBar().setValue(0)
        qtbot.wait(50)
    finally:
        sys.setprofile(None)
    assert view.current_path() == "t29999"
    assert calls < 60_000, calls          # ~31,000; without groups ~790,000 (26 per key)


def test_filters():
    comp = sample_comparison()
    assert comp.filtered_keys() is None
    assert comp.filtered_keys("BN") == ["enc.bn.running_mean", "enc.bn.mask"]
    assert comp.filtered_keys(r"^enc\.\d", regex=True) == ["enc.0.weight", "enc.0.bias"]
    assert comp.filtered_keys(problems_only=True) == ["enc.0.bias", "head.weight", "extra.scale"]
    assert "enc.0.weight" not in comp.filtered_keys(differences_only=True)
    try:
        comp.filtered_keys("[", regex=True)
    except ValueError as e:
        assert "regular expression" in str(e)
    else:
        raise AssertionError("a bad regex must raise ValueError")


def test_hundred_thousand_keys_build_and_filter_quickly():
    import time
    keys = [info(f"layers.{i}.block{j}.weight", (8,)) for i in range(10_000) for j in range(10)]
    t = time.process_time()
    comp = C.Comparison(side(keys), side(keys[:50_000]))
    build = time.process_time() - t
    t = time.process_time()
    few = comp.filtered_keys("layers.9999.")
    filt = time.process_time() - t
    assert len(few) == 10 and len(comp.subtree(few)) == 10
    model = StateTreeModel()
    model.set_tree(comp)
    assert model.rowCount() == 1 and model.rowCount(model.index(0, 0)) == 10      # 10,000 modules, 1,000 a row
    assert sum(model.rowCount(model.index(g, 0, model.index(0, 0))) for g in range(10)) == 10_000
    # CPU time, with wide margins (about 1 s and 0.1 s here): building is a worker's job, filtering per keystroke
    assert build < 10 and filt < 0.5, (build, filt)


def test_a_closed_file_is_freed(tmp_path):
    """Opening a file in the worker keeps nothing of it once it is dropped (its checkpoint and entries reference
    each other: a cycle, which a heap frozen after listing would keep for good)."""
    import gc
    import weakref

    import torch
    path = tmp_path / "x.pt"
    torch.save({f"t{i}": torch.zeros(1) for i in range(50)}, path)
    data = C.load_side_data(str(path))
    ref = weakref.ref(data.side)
    del data
    C.load_side_data(str(path))            # the next file
    gc.collect()
    assert ref() is None


def test_a_selected_group_row_stays_selected(make_window, qtbot, tmp_path):
    """A group row chosen by the user is a choice: a landing diff or simulation (auto-select) leaves it."""
    import torch
    from PySide6.QtCore import QItemSelectionModel
    from safetensors.torch import save_file

    from tests.qt.conftest import open_both, wait_idle
    a = {f"t{i}": torch.zeros(2) for i in range(1_500)}
    b = dict(a)
    b["t1400"] = torch.zeros(3)
    save_file(a, str(tmp_path / "a.safetensors"))
    save_file(b, str(tmp_path / "b.safetensors"))
    w = make_window()
    open_both(qtbot, w, tmp_path / "a.safetensors", tmp_path / "b.safetensors")
    wait_idle(qtbot, w)
    view = w.compare
    view.selection.setCurrentIndex(view.model.index(0, 0), QItemSelectionModel.ClearAndSelect | QItemSelectionModel.Rows)
    assert view.selection_key() == "\x1f0"
    w._auto_select()
    assert view.selection_key() == "\x1f0"
    view.set_tree(w.comparison)            # a rebuild (a diff or a simulation landed) keeps it too
    assert view.selection_key() == "\x1f0"


def test_expand_all_leaves_rows_of_keys_closed(qtbot):
    """Expand all opens every module but not the rows of 1,000 keys (opening 30 of them lays out every key)."""
    keys = [info(f"t{i}", (1,)) for i in range(30_000)] + [info(f"m.{i}.w", (1,)) for i in range(5)]
    view = _shown_view(qtbot, C.Comparison(side(keys), None))
    view.expand_all()
    qtbot.wait(20)
    model = view.model
    rows = [model.index(r, 0) for r in range(model.rowCount())]
    groups = [i for i in rows if is_group(model.data(i, NodeRole))]
    assert len(groups) == 31 and not any(view.left.isExpanded(g) for g in groups)
    m = model.index_of_path("m")
    assert view.left.isExpanded(m) and view.right.isExpanded(model.index_of_path("m.3"))
