""""Expand all" over a tree of many modules expands them a batch per turn of the event loop (10**4 modules in three
views was 0.3 s of GUI thread in one go): in the end every module row is open, in all three views; a tree shown
meanwhile stops it. The modules listed for it are those a walk of the tree finds."""
from __future__ import annotations

import pytest

from PySide6.QtCore import QModelIndex

from explorer.qt import compare_view as V
from explorer.qt.compare_view import CompareView
from explorer.session import compare as C

from .test_tree_model import info, side

N_MODULES = 1200      # more than GROUP (1,000) rows at the top: "expand all" opens modules one by one


def _comparison() -> C.Comparison:
    infos = [info(f"m{i}.sub.w", (1,)) for i in range(N_MODULES)] + [info(f"m{i}.b", (1,)) for i in range(5)]
    return C.Comparison(side(infos), None)


def _walked(model) -> list:
    out, stack = [], [model.node(QModelIndex())]
    while stack:
        node = stack.pop()
        kids = [k for k in node.children if k.children]
        out += kids
        stack += kids
    return out


def _expanded(view, model, nodes) -> int:
    return sum(view.isExpanded(model.index_of_node(n)) for n in nodes)


@pytest.fixture
def shown(qtbot, monkeypatch):
    """(a compare view showing a comparison of many modules, the comparison), expanding 100 modules a batch."""
    monkeypatch.setattr(V, "EXPAND_BATCH", 100)
    cv = CompareView()
    qtbot.addWidget(cv)
    comp = _comparison()
    cv.set_tree(comp)
    return cv, comp


def test_expand_all_opens_every_module_a_batch_at_a_time(qtbot, shown):
    cv, comp = shown
    model = cv.model
    modules = model.module_nodes()
    assert sorted(n.path for n in modules) == sorted(n.path for n in _walked(model))
    assert len(modules) == 2 * N_MODULES and model.has_groups(modules)
    cv.expand_all()
    assert cv.expanding and _expanded(cv.left, model, modules) == 100      # the first batch at once
    qtbot.waitUntil(lambda: not cv.expanding, timeout=10000)
    for view in cv.views:
        assert _expanded(view, model, modules) == len(modules)


def test_a_tree_shown_while_expanding_stops_the_batches(qtbot, monkeypatch, shown):
    cv, comp = shown
    cv.expand_all()
    assert cv.expanding
    few = comp.subtree(comp.filtered_keys("m1"))
    cv.set_tree(comp, few, expand="none")     # keeps the rows expanded so far open, no more
    asked = []
    index_of_node = cv.model.index_of_node
    monkeypatch.setattr(cv.model, "index_of_node", lambda node: (asked.append(node), index_of_node(node))[1])
    sub = cv.model.module_nodes()       # a filtered tree's modules: walked
    assert sorted(n.path for n in sub) == sorted(n.path for n in _walked(cv.model))
    kept = _expanded(cv.left, cv.model, sub)
    assert kept < len(sub)
    qtbot.waitUntil(lambda: not cv.expanding, timeout=10000)
    qtbot.wait(50)
    assert _expanded(cv.left, cv.model, sub) == kept
    on_screen = {id(n) for n in few.by_path.values()}
    assert all(id(n) in on_screen for n in asked)          # never a node of the tree no longer shown


def test_expand_all_of_a_large_tree_makes_its_levels_a_batch_at_a_time(qtbot, monkeypatch):
    """Above ``EXPAND_AT_ONCE`` keys, "expand all" makes the tree's levels as its batches reach them (a 50,000-key
    tree's 60,000 modules are not made in one go on the GUI thread); in the end every module is open."""
    monkeypatch.setattr(V, "EXPAND_BATCH", 100)
    monkeypatch.setattr(V, "EXPAND_AT_ONCE", 50)
    cv = CompareView()
    qtbot.addWidget(cv)
    comp = C.Comparison(side([info(f"b.{i}.s{j}.w", (1,)) for i in range(150) for j in range(2)]), None)
    cv.set_tree(comp)
    cv.expand_all()
    assert cv.expanding
    made = sum(n.is_built for n in comp.tree.root.walk_built())
    assert made < 150                        # the first batch's levels, not the whole tree's
    qtbot.waitUntil(lambda: not cv.expanding, timeout=10000)
    modules = _walked(cv.model)
    assert len(modules) == 1 + 150 + 300
    for view in cv.views:
        assert _expanded(view, cv.model, modules) == len(modules)
