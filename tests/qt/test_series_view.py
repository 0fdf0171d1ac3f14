"""The series view (python main.py --series DIR): a generated run with a frozen key, a NaN from a known step, a key
added mid-run and BatchNorm statistics."""
import csv
import io
import json
import os
import subprocess
import sys

import pytest
from PySide6.QtCore import Qt

from explorer.qt.series_heat import ABSENT_ROLE, NONFINITE, PATH_ROLE, UNCHANGED
from tests.core.test_series import make_run
from tests.qt.conftest import wait_idle

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
STEPS = [100, 200, 300, 400, 500, 600, 700]
NAN_AT = 500      # checkpoint 4


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


@pytest.fixture
def run_dir(tmp_path):
    make_run(tmp_path / "run", STEPS, nan_at=NAN_AT, added_at=300)
    return tmp_path / "run"


def open_run(qtbot, window, path):
    window.open_series([str(path)])
    view = window.series_view
    qtbot.waitUntil(lambda: view.settled and window.is_idle(), timeout=60000)
    assert not view.failed, view.failed
    return view


def series_json(path, env_cache):
    env = dict(os.environ, XDG_CACHE_HOME=str(env_cache), PYTHONPATH=ROOT)
    r = subprocess.run([sys.executable, "main.py", "series", str(path), "--json"], cwd=ROOT, capture_output=True,
                       text=True, timeout=120, env=env)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_findings_heat_map_and_trajectory(qtbot, make_window, run_dir):
    w = make_window()
    view = open_run(qtbot, w, run_dir)
    assert view.isVisible() and not w.splitter.isVisible()
    text = view.findings.text()
    assert "emb.weight" in text and "never changed" in text            # the frozen key
    assert "first appear at checkpoint 4" in text and "fc.weight" in text   # the NaN's first checkpoint
    assert "head.bias (checkpoint 2)" in text                          # added mid-run
    model = view.model
    assert len(view.data.keys) == 7 and model.columnCount() == 1 + len(STEPS)
    assert [model.data(model.index(r, 0)) for r in range(model.rowCount())] == ["fc", "emb", "bn", "proj", "head"]
    fc = model.index_of_key("fc.weight")
    assert model.data(fc) == "weight" and model.data(fc.parent()) == "fc"
    assert model.data(fc.siblingAtColumn(1 + 4)) == "⚠" and model.data(fc.siblingAtColumn(1 + 3)) is None
    with qtbot.waitSignal(view.sig_key_shown, timeout=5000):
        view.select_key("head.bias")
    xs, ys = view.norm_curve.getData()
    assert list(xs) == [300.0, 400.0, 500.0, 600.0, 700.0] and len(ys) == 5
    with qtbot.waitSignal(view.sig_key_shown, timeout=5000):
        view.select_key("bn.running_mean")
    xs, _ = view.norm_curve.getData()
    assert len(xs) == len(STEPS)
    qtbot.waitUntil(w.is_idle, timeout=20000)
    with qtbot.waitSignal(view.sig_hist_shown, timeout=20000):
        view.slider.setValue(2)
    assert "step 300" in view.slider_label.text()
    for plot in (view.rel_plot, view.overlay_plot):   # each legend lies outside its data area: it covers no bar
        item = plot.getPlotItem()
        assert item.legend is not None and len(item.legend.items) == 2
        data_area = item.getViewBox().sceneBoundingRect()
        assert not item.legend.sceneBoundingRect().intersects(data_area)


def visible_rows(view) -> list[str]:
    """The dotted paths of the tree's rows as shown (expanded modules' rows in order, filtered)."""
    out, idx = [], view.table.indexAt(view.table.viewport().rect().topLeft())
    while idx.isValid():
        out.append(idx.data(PATH_ROLE))
        idx = view.table.indexBelow(idx)
    return out


def test_module_tree_with_the_heat_map_rows(qtbot, make_window, run_dir):
    """Keys grouped by module (the compare view's dotted-name tree); a module's cell is the largest figure of its
    keys; the heat map's rows are the tree's rows, collapsed and filtered with it."""
    w = make_window()
    view = open_run(qtbot, w, run_dir)
    model, proxy, tree = view.model, view.proxy, view.table
    assert visible_rows(view) == ["fc", "fc.weight", "emb", "emb.weight", "bn", "bn.running_mean", "bn.running_var",
                                  "bn.num_batches_tracked", "proj", "proj.weight", "head", "head.bias"]
    bn_keys = ["bn.running_mean", "bn.running_var", "bn.num_batches_tracked"]
    bn = model.index_of_key("bn.running_mean").parent()
    assert model.rowCount(bn) == 3 and "3 keys" in model.data(bn, Qt.ToolTipRole)
    rel = {k: view.data.result.track(k).rel_change_prev for k in bn_keys}
    for c in range(1, len(STEPS)):     # the module's cell: its keys' largest change, painted as that figure is
        top = max(rel[k][c] for k in bn_keys)
        assert view.data.cells["rel_change_prev"]["bn"].values[c] == top
        cell = bn.siblingAtColumn(1 + c)
        assert model.data(cell, Qt.BackgroundRole) == model.color(view.data.cells["rel_change_prev"][
            next(k for k in bn_keys if rel[k][c] == top)], c)
        assert f"{top:.4g}" in model.data(cell, Qt.ToolTipRole)
    emb = model.index_of_key("emb.weight").parent()
    assert model.data(emb.siblingAtColumn(2), Qt.BackgroundRole) == UNCHANGED          # a frozen module
    fc = model.index_of_key("fc.weight").parent()
    assert model.data(fc.siblingAtColumn(1 + 4)) == "⚠" and model.data(fc.siblingAtColumn(1 + 4),
                                                                       Qt.BackgroundRole) == NONFINITE
    head = model.index_of_key("head.bias").parent()
    assert model.data(head.siblingAtColumn(1), ABSENT_ROLE) and not model.data(head.siblingAtColumn(3), ABSENT_ROLE)
    tree.collapse(proxy.mapFromSource(bn))                                                # rows follow the tree
    assert "bn" in visible_rows(view) and "bn.running_var" not in visible_rows(view)
    view.filter.setText("running")                                                        # a module shows with its keys
    assert visible_rows(view) == ["bn", "bn.running_mean", "bn.running_var"]
    view.filter.clear()
    with qtbot.waitSignal(view.sig_key_shown, timeout=5000):
        view.select_key("bn.running_var")                                                 # its module opens
    assert tree.isExpanded(proxy.mapFromSource(bn)) and view.key == "bn.running_var"
    tree.setCurrentIndex(proxy.mapFromSource(emb))     # a module's row: the plots stay on the last key
    assert view.key == "bn.running_var"
    view.metric.setCurrentIndex(2)                     # another metric: same rows, the key still selected
    assert view.key == "bn.running_var" and "bn.running_var" in visible_rows(view)
    assert proxy.mapToSource(tree.currentIndex()) == model.index_of_key("bn.running_var")
    wait_idle(qtbot, w)


def test_exports_are_enabled_once_a_run_is_measured(qtbot, make_window, run_dir, two_checkpoints):
    w = make_window()
    acts = (w.act_export_series_csv, w.act_export_series_png)
    assert not any(a.isEnabled() for a in acts)                   # no run open
    w.open_series([str(run_dir)])
    assert not any(a.isEnabled() for a in acts)                   # measuring
    qtbot.waitUntil(lambda: w.series_view.settled and w.is_idle(), timeout=60000)
    assert all(a.isEnabled() for a in acts)
    w.open_path(0, str(two_checkpoints[0]))                       # the panes come back: no run shown
    qtbot.waitUntil(lambda: w.sides[0] is not None and w.is_idle(), timeout=60000)
    assert not any(a.isEnabled() for a in acts)
    w.open_series([str(run_dir / "nothing")])                     # a run that does not open
    qtbot.waitUntil(lambda: w.series_view.settled and w.is_idle(), timeout=60000)
    assert w.series_view.failed and not any(a.isEnabled() for a in acts)


def test_csv_export_matches_series_json(qtbot, make_window, run_dir, tmp_path):
    w = make_window()
    view = open_run(qtbot, w, run_dir)
    out = tmp_path / "table.csv"
    with qtbot.waitSignal(view.sig_exported, timeout=20000):
        view.export_csv(str(out))
    rows = list(csv.DictReader(io.StringIO(out.read_text())))
    doc = series_json(run_dir, tmp_path / "cache2")    # measured afresh, not from the view's cache
    assert len(rows) == len(doc["keys"]) * len(doc["checkpoints"])
    by = {(r["key"], int(r["checkpoint"])): r for r in rows}
    for k in doc["keys"]:
        for i, norm in enumerate(k["norm"]):
            r = by[(k["key"], i)]
            for name in ("norm", "rel_change_prev", "rel_change_first"):
                v = k[name][i]
                cell = r[name]
                if v is None:
                    assert cell == ""
                elif isinstance(v, str):
                    assert cell == v
                else:
                    assert float(cell) == pytest.approx(v, rel=1e-12, abs=0)
            assert r["present"] == ("true" if k["present"][i] else "false")
            assert r["step"] == str(doc["checkpoints"][i]["step"])
    png = tmp_path / "plots.png"
    with qtbot.waitSignal(view.sig_exported, timeout=20000):
        view.export_png(str(png))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_dropped_run_folder_opens_the_series_view(qtbot, make_window, run_dir, two_checkpoints):
    w = make_window()
    w._open_dropped(0, str(run_dir))
    qtbot.waitUntil(lambda: w.series_view is not None and w.series_view.settled and w.is_idle(), timeout=60000)
    assert w.series_view.data.n == len(STEPS)
    w._open_dropped(0, str(two_checkpoints[0]))     # a file: opens in the pane, the panes come back
    qtbot.waitUntil(lambda: w.sides[0] is not None and w.is_idle(), timeout=60000)
    assert w.splitter.isVisible() and not w.series_view.isVisible()


def test_cancel_and_a_folder_that_is_no_run(qtbot, make_window, tmp_path):
    w = make_window()
    (tmp_path / "empty").mkdir()
    w.open_series([str(tmp_path / "empty")])
    view = w.series_view
    qtbot.waitUntil(lambda: view.settled, timeout=30000)
    assert "holds no checkpoint" in view.failed and "run was not measured" in " ".join(w.unmet_requests())
    assert "holds no checkpoint" in view.title.text()
    wait_idle(qtbot, w)


def test_cancel_measuring(qtbot, make_window, run_dir):
    w = make_window()
    w.open_series([str(run_dir)])
    view = w.series_view
    assert view.cancel_button.isVisible()
    view.cancel()
    assert view.settled and "cancelled" in view.failed and not view.cancel_button.isVisible()
    wait_idle(qtbot, w)
    assert view.data is None          # the cancelled result never lands
    w.open_series([str(run_dir)])
    assert not view.settled
    w.act_cancel.trigger()            # the window's Cancel (Esc) stops it too, and the view says so
    assert view.settled and "cancelled" in view.failed
    wait_idle(qtbot, w)
    assert view.data is None


def test_screenshot_of_a_run(tmp_path, run_dir):
    out = tmp_path / "x.png"
    env = dict(os.environ, XDG_CACHE_HOME=str(tmp_path / "cache"), QT_QPA_PLATFORM="offscreen", PYTHONPATH=ROOT)
    r = subprocess.run([sys.executable, "main.py", "--series", str(run_dir), "--screenshot", str(out), "--settings",
                        str(tmp_path / "s.ini")], cwd=ROOT, capture_output=True, text=True, timeout=180, env=env)
    assert r.returncode == 0, r.stderr
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
