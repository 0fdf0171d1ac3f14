"""A window holding many keys filters in a worker (the scan of 10**6 keys took 0.1-0.5 s of its GUI thread): the
tree shown, the count and a bad regex's error are those of the filter run on the GUI thread."""
from __future__ import annotations

import sys
import threading

from explorer.qt import main_window as M
from explorer.qt.tree_model import NodeRole
from explorer.session import jobs

from .conftest import open_both, wait_idle
from .test_window import all_indexes


def _leaves(w) -> set[str]:
    model = w.compare.model
    return {model.data(i, NodeRole).path for i in all_indexes(model) if model.data(i, NodeRole).is_leaf}


def _shown(qtbot, w, text: str, regex: bool = False, problems: bool = False) -> tuple[set[str], str]:
    w.regex_box.setChecked(regex)
    w.problems_only.setChecked(problems)
    w.filter_edit.setText(text)
    w.apply_filter()
    wait_idle(qtbot, w)
    return _leaves(w), w.filter_count.text()


def test_a_filter_run_in_a_worker_shows_what_the_gui_thread_filter_showed(qtbot, make_window, two_checkpoints,
                                                                           monkeypatch):
    w = make_window()
    open_both(qtbot, w, *two_checkpoints)
    cases = [("running", False, False), ("fc", False, False), (r"^fc1\.", True, False), ("", False, True),
             ("zzz", False, False), ("", False, False)]
    inline = [_shown(qtbot, w, *case) for case in cases]
    monkeypatch.setattr(M, "BIG_FILTER_SCAN", 0)
    started = []
    start = w.runner.start
    monkeypatch.setattr(w.runner, "start", lambda ch, *a, **k: (started.append(ch), start(ch, *a, **k))[1])
    in_worker = [_shown(qtbot, w, *case) for case in cases]
    assert in_worker == inline
    assert started.count("filter") == len(cases) - 1         # the last one filters nothing: no job
    assert inline[0][0] == {"bn.running_mean", "bn.running_var"} and inline[-1][1].endswith("keys")
    _shown(qtbot, w, "fc[", regex=True)
    assert w.filter_count.text() == "bad regex"


def test_a_new_comparison_is_never_shown_filtered_by_the_old_ones_tree(qtbot, make_window, two_checkpoints,
                                                                        monkeypatch):
    monkeypatch.setattr(M, "BIG_FILTER_SCAN", 0)
    w = make_window()
    w.filter_edit.setText("fc1")
    open_both(qtbot, w, *two_checkpoints)
    wait_idle(qtbot, w)
    assert w.compare.model.comparison is w.comparison
    assert _leaves(w) == {"fc1.weight", "fc1.bias"}
    gate = threading.Event()                      # the filter of the next comparison waits until let go
    real = jobs.filter_tree
    monkeypatch.setattr(jobs, "filter_tree", lambda *a, **k: (gate.wait(20), real(*a, **k))[1])
    old = w.comparison
    w.open_path(1, str(two_checkpoints[0]))       # replaced: the filter runs again over the new comparison
    qtbot.waitUntil(lambda: w.comparison is not old, timeout=20000)
    assert w.compare.model.comparison is w.comparison     # the new one, whole, while its filter runs
    assert w.runner.is_busy("filter") and not w.is_idle()
    gate.set()
    wait_idle(qtbot, w)
    assert w.compare.model.comparison is w.comparison and w.comparison.right.text == str(two_checkpoints[0])
    assert _leaves(w) == {"fc1.weight", "fc1.bias"}


def test_a_window_lets_a_waiting_thread_have_the_interpreter_lock_within_a_millisecond(make_window):
    make_window()
    assert sys.getswitchinterval() <= 0.001
