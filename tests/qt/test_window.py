"""The window with real files: aligned panes, drag and drop, simulate, the detail pane, errors, keyboard, settings."""
from __future__ import annotations

from PySide6.QtCore import QMimeData, QModelIndex, QPointF, Qt, QTimer, QUrl
from PySide6.QtGui import QDragEnterEvent, QDropEvent, QGuiApplication

from explorer.session import compare as C
from explorer.qt.tree_model import STATUS_COLUMN, NodeRole, StatusRole

from .conftest import open_both, wait_idle


def all_indexes(model):
    out, stack = [], [QModelIndex()]
    while stack:
        parent = stack.pop()
        for r in range(model.rowCount(parent)):
            idx = model.index(r, 0, parent)
            out.append(idx)
            stack.append(idx)
    return out


def row_tops(view, model):
    """y of every visible row in a view, by key path."""
    out = {}
    for idx in all_indexes(model):
        rect = view.visualRect(idx.siblingAtColumn(_shown_column(view)))
        if rect.isValid() and rect.height() > 0:
            out[model.data(idx, NodeRole).path] = (rect.top(), rect.height())
    return out


def _shown_column(view):
    return next(c for c in range(view.model().columnCount()) if not view.isColumnHidden(c))


def assert_aligned(window):
    cv = window.compare
    tops = [row_tops(v, cv.model) for v in cv.views]
    assert tops[0], "nothing visible"
    assert tops[0] == tops[1] == tops[2]
    ys = [v.viewport().mapTo(window, v.viewport().rect().topLeft()).y() for v in cv.views]
    assert len(set(ys)) == 1, f"views start at different heights: {ys}"


def test_rows_aligned_and_in_step(qtbot, make_window, two_checkpoints):
    w = make_window()
    open_both(qtbot, w, *two_checkpoints)
    cv = w.compare
    comp = w.comparison
    assert set(comp.rows) == {"fc1.weight", "fc1.bias", "fc2.weight", "bn.running_mean", "bn.running_var",
                              "head.weight"}
    assert comp.rows["fc2.weight"].right is None and comp.rows["head.weight"].left is None
    assert_aligned(w)
    # collapse in the right pane: the left pane and the status column follow
    fc1 = cv.model.index_of_path("fc1")
    assert all(v.isExpanded(fc1) for v in cv.views)
    cv.right.collapse(fc1)
    assert not cv.left.isExpanded(fc1) and not cv.status.isExpanded(fc1)
    assert_aligned(w)
    cv.left.expand(fc1)
    assert cv.right.isExpanded(fc1) and cv.status.isExpanded(fc1)
    # selection is shared
    cv.select_path("bn.running_var")
    for v in cv.views:
        assert v.currentIndex() == cv.model.index_of_path("bn.running_var")
    # status column says what differs, in words
    status = cv.model.data(cv.model.index_of_path("head.weight").siblingAtColumn(STATUS_COLUMN))
    assert "only right" in status


def test_rows_of_a_flat_checkpoint_aligned(qtbot, make_window, tmp_path):
    """Keys without a module (``k00``...): no row has a module badge, and the status column's rows (text only) are
    as tall as the panes' (text and a kind badge) -- a status beside another key's row is a wrong answer."""
    import torch
    a = {f"k{i:02d}": torch.full((2,), float(i)) for i in range(30)}
    b = {k: v for k, v in a.items() if k != "k20"}
    b["k05"] = torch.zeros(3)
    torch.save(a, tmp_path / "flat_a.pt")
    torch.save(b, tmp_path / "flat_b.pt")
    from PySide6.QtGui import QFont
    w = make_window()
    open_both(qtbot, w, tmp_path / "flat_a.pt", tmp_path / "flat_b.pt")
    cv = w.compare
    for points in (None, 10, 11, 12, 16):   # the desktop's font: a badge is shorter than a line of text from 10 pt
        if points is not None:
            font = QFont(cv.font())
            font.setPointSize(points)
            cv.setFont(font)
            qtbot.wait(20)
        assert_aligned(w)
        for key, word in (("k05", "shape"), ("k20", "only left")):
            idx = cv.model.index_of_path(key)
            rects = [v.visualRect(idx.siblingAtColumn(_shown_column(v))) for v in cv.views]
            assert len({(r.top(), r.height()) for r in rects}) == 1, (points, [(r.top(), r.height()) for r in rects])
            assert word in cv.model.data(idx.siblingAtColumn(STATUS_COLUMN))


def test_scrolling_in_step_with_many_rows(qtbot, make_window, tmp_path):
    import torch
    a = {f"blocks.{i}.w": torch.zeros(2) for i in range(600)}
    b = {f"blocks.{i}.w": torch.zeros(2) for i in range(0, 600, 2)}
    torch.save(a, tmp_path / "many_a.pt")
    torch.save(b, tmp_path / "many_b.pt")
    w = make_window()
    open_both(qtbot, w, tmp_path / "many_a.pt", tmp_path / "many_b.pt")
    cv = w.compare
    cv.expand_all()
    bar = cv.left.verticalScrollBar()
    assert bar.maximum() > 1000
    bar.setValue(bar.maximum() // 2)
    assert cv.right.verticalScrollBar().value() == bar.value() == cv.status.verticalScrollBar().value()
    cv.right.verticalScrollBar().setValue(77)
    assert bar.value() == 77
    assert_aligned(w)


def drop(widget, paths, pos):
    """Real QDragEnterEvent + QDropEvent objects with file URLs, handed to the widget's handlers (Qt only routes
    sendEvent()'d drops during a platform drag, which offscreen tests cannot start)."""
    mime = QMimeData()
    mime.setUrls([QUrl.fromLocalFile(str(p)) for p in paths])
    enter = QDragEnterEvent(pos, Qt.CopyAction, mime, Qt.LeftButton, Qt.NoModifier)
    enter.setAccepted(False)
    widget.dragEnterEvent(enter)
    assert enter.isAccepted(), "the drag was refused"
    event = QDropEvent(QPointF(pos), Qt.CopyAction, mime, Qt.LeftButton, Qt.NoModifier)
    event.setAccepted(False)
    widget.dropEvent(event)
    accepted = event.isAccepted()
    return accepted


def test_drop_two_files_opens_both(qtbot, make_window, two_checkpoints):
    w = make_window()
    cv = w.compare
    assert drop(cv, two_checkpoints, cv.rect().center())

    def both():
        return all(s is not None for s in w.sides) and w.comparison is not None and w.comparison.right is not None
    qtbot.waitUntil(both, timeout=20000)
    assert w.sides[0].text == str(two_checkpoints[0]) and w.sides[1].text == str(two_checkpoints[1])


def test_drop_one_file_on_the_right_pane(qtbot, make_window, two_checkpoints):
    w = make_window()
    cv = w.compare
    right_panel = cv.panels[2]
    pos = right_panel.mapTo(cv, right_panel.rect().center())
    with qtbot.waitSignal(w.sig_side_loaded, timeout=20000) as blocker:
        assert drop(cv, [two_checkpoints[1]], pos)
    assert blocker.args == [1]
    assert w.sides[0] is None and w.sides[1].text == str(two_checkpoints[1])


def test_a_file_dragged_over_the_window_is_parsed_before_it_is_dropped(qtbot, make_window, two_checkpoints):
    from explorer.session.compute_process import parse_engine
    from tests.in_parse_process import listing_kept
    w = make_window()
    cv = w.compare
    path = str(two_checkpoints[0])
    mime = QMimeData()
    mime.setUrls([QUrl.fromLocalFile(path)])
    enter = QDragEnterEvent(cv.rect().center(), Qt.CopyAction, mime, Qt.LeftButton, Qt.NoModifier)
    cv.dragEnterEvent(enter)
    assert enter.isAccepted()
    qtbot.waitUntil(lambda: parse_engine().call(listing_kept, path, timeout=30), timeout=20000)   # not dropped yet
    assert w.sides == [None, None]                 # nothing shown of a drag
    with qtbot.waitSignal(w.sig_side_loaded, timeout=20000):
        cv.dropEvent(QDropEvent(QPointF(cv.rect().center()), Qt.CopyAction, mime, Qt.LeftButton, Qt.NoModifier))
    assert w.sides[0].text == path and list(w.sides[0].infos) == list(C.load_side_data(path).infos)


def test_a_recent_file_pointed_at_in_the_menu_is_parsed_before_it_is_chosen(qtbot, make_window, tmp_path):
    import torch

    from explorer.session.compute_process import parse_engine
    from tests.in_parse_process import listing_kept
    path = str(tmp_path / "recent.pt")            # a file no other test's window parsed
    torch.save({"w": torch.ones(3)}, path)
    w = make_window()
    w.history.add_file(path)
    w.fill_recent_menu()
    sub = next(a for a in w.recent_menu.actions() if a.menu() is not None and a.text() == path)
    assert not parse_engine().call(listing_kept, path, timeout=30)
    sub.hover()
    qtbot.waitUntil(lambda: parse_engine().call(listing_kept, path, timeout=30), timeout=20000)
    assert w.sides == [None, None]


def test_a_file_selected_in_file_open_is_parsed_before_open_is_clicked(qtbot, make_window, tmp_path):
    import torch
    from PySide6.QtWidgets import QAbstractItemView, QApplication, QFileDialog, QFileSystemModel

    from explorer.session.compute_process import parse_engine
    from tests.in_parse_process import listing_kept
    path = str(tmp_path / "selected.pt")           # a file no other test's window parsed
    torch.save({"w": torch.ones(3)}, path)
    w = make_window()
    w.history.add_file(path)                       # the dialog starts in the folder of the last file opened
    seen = {}

    def in_the_dialog():
        dialog = QApplication.activeModalWidget()
        if not isinstance(dialog, QFileDialog):
            QTimer.singleShot(20, in_the_dialog)
            return
        try:
            view = dialog.findChild(QAbstractItemView, "listView")
            index = dialog.findChild(QFileSystemModel).index(path)
            qtbot.waitUntil(lambda: view.visualRect(index).isValid(), timeout=10000)
            qtbot.mouseClick(view.viewport(), Qt.LeftButton, pos=view.visualRect(index).center())   # a click on it
            qtbot.waitUntil(lambda: parse_engine().call(listing_kept, path, timeout=30), timeout=20000)
            seen["before open"] = list(w.sides)
        finally:
            dialog.accept()                        # ... and on Open
    QTimer.singleShot(0, in_the_dialog)
    with qtbot.waitSignal(w.sig_side_loaded, timeout=20000):
        w.ask_open(0)
    assert seen["before open"] == [None, None]     # parsed, nothing shown before Open
    assert w.sides[0].text == path and list(w.sides[0].infos) == ["w"]


def test_drop_of_non_files_is_refused(make_window):
    w = make_window()
    mime = QMimeData()
    mime.setText("just text")
    enter = QDragEnterEvent(w.compare.rect().center(), Qt.CopyAction, mime, Qt.LeftButton, Qt.NoModifier)
    enter.setAccepted(False)
    w.compare.dragEnterEvent(enter)
    assert not enter.isAccepted()


def test_simulate_paints_statuses(qtbot, make_window, model_spec, problem_checkpoint):
    w = make_window()
    open_both(qtbot, w, model_spec, problem_checkpoint)
    with qtbot.waitSignal(w.sig_simulation_done, timeout=30000) as blocker:
        w.act_simulate.trigger()
    report = blocker.args[0]
    model = w.compare.model
    wait_idle(qtbot, w)

    def status(key):
        return model.data(model.index_of_path(key).siblingAtColumn(STATUS_COLUMN), StatusRole)

    def text(key):
        return model.data(model.index_of_path(key).siblingAtColumn(STATUS_COLUMN))
    assert status("2.bias") == C.MISSING and "missing" in text("2.bias")
    assert status("extra.weight") == C.UNEXPECTED and "unexpected" in text("extra.weight")
    assert status("2.weight") == C.SHAPE_MISMATCH and "shape mismatch" in text("2.weight")
    for key in ("1.running_mean", "1.running_var", "1.num_batches_tracked"):
        assert status(key) == C.RUNNING_STAT and "running stat" in text(key)
    assert status("0.weight") == C.CHANGED
    # module rows count the problems below them
    assert model.data(model.index_of_path("2").siblingAtColumn(STATUS_COLUMN)) == "⚠ 2 problems"
    # the banner: raises, torch's exact message, running statistics named
    banner = w.banner
    assert banner.isVisible() and banner.raises is True
    assert report.error_message and report.error_message in banner.message.toPlainText()
    assert "size mismatch for 2.weight" in banner.message.toPlainText()
    assert "would raise RuntimeError" in banner.summary.text()
    assert "1.running_mean" in banner.summary.text()
    # problems only: the matched keys go, the problems stay
    w.problems_only.setChecked(True)
    qtbot.waitUntil(lambda: not w._filter_pending, timeout=5000)
    shown = {model.data(i, NodeRole).path for i in all_indexes(model) if model.data(i, NodeRole).is_leaf}
    assert shown == {"2.bias", "extra.weight", "2.weight", "1.running_mean", "1.running_var",
                     "1.num_batches_tracked"}


def test_simulate_with_one_side_says_why_at_once(qtbot, make_window, two_checkpoints):
    w = make_window()
    w.open_path(1, str(two_checkpoints[1]))
    qtbot.waitUntil(lambda: w.comparison is not None and w.is_idle(), timeout=30000)
    w.act_simulate.trigger()
    assert w.banner.isVisible() and "<b>model</b>" in w.banner.summary.text()
    assert not w.simulate_wanted and w.is_idle()          # nothing is waited for
    assert w.unmet_requests() == ["the load was not simulated (it needs a side on the left and on the right)"]
    assert w.act_simulate.shortcut().toString() == "Ctrl+L"


def test_per_channel_plot_of_non_finite_values_shows_the_finite_ones(qtbot, make_window, tmp_path):
    """A 1-D tensor holding NaN, +Inf and -Inf beside finite values: the per-channel plot's axis spans the finite
    values (an infinite point stretched it until none showed), and the axis says how many points it leaves out."""
    import torch
    torch.save({"t": torch.tensor([1.0, float("nan"), float("inf"), float("-inf"), -2.0, 3.0])}, tmp_path / "nf.pt")
    w = make_window()
    with qtbot.waitSignal(w.sig_detail_shown, timeout=20000):
        w.open_path(C.LEFT, str(tmp_path / "nf.pt"))
        qtbot.waitUntil(lambda: w.comparison is not None, timeout=20000)
        w.compare.select_path("t")
    d = w.detail
    assert d.channel.isVisible()
    qtbot.wait(50)
    (_, _), (y0, y1) = d.channel.getPlotItem().getViewBox().viewRange()
    assert y0 <= -2 and y1 >= 3 and y1 - y0 < 10, (y0, y1)
    assert "not finite, not drawn: left 3" in d.channel.getPlotItem().getAxis("bottom").labelText


def test_health_line_never_claims_no_all_zero_beside_zeros(qtbot, make_window, tmp_path):
    """A fresh BatchNorm's running_mean is all zeros by design: said in words (not flagged), and the health line
    does not say "no all-zero tensors" beside a table of 5 zeros."""
    import torch
    torch.save(torch.nn.BatchNorm1d(5).state_dict(), tmp_path / "bn.pt")
    w = make_window()
    with qtbot.waitSignal(w.sig_detail_shown, timeout=20000, check_params_cb=lambda key: key == "running_mean"):
        w.open_path(C.LEFT, str(tmp_path / "bn.pt"))
        qtbot.waitUntil(lambda: w.comparison is not None, timeout=20000)
        w.compare.select_path("running_mean")
    text = w.detail.flags.text()
    assert "fresh BatchNorm running_mean" in text and "all-zero" not in text, text


def test_selecting_a_key_draws_both_histograms(qtbot, make_window, two_checkpoints):
    w = make_window()
    open_both(qtbot, w, *two_checkpoints)
    with qtbot.waitSignal(w.sig_detail_shown, timeout=20000,
                          check_params_cb=lambda key: key == "fc1.weight"):
        w.compare.select_path("fc1.bias")     # fc1.weight may be selected already (the first changed key)
        w.compare.select_path("fc1.weight")
    d = w.detail
    xl, yl = d.left_item.getData()
    xr, yr = d.right_item.getData()
    assert d.left_item.isVisible() and d.right_item.isVisible()
    assert yl.sum() == 128 and yr.sum() == 128             # every element of both 16x8 tensors is binned
    assert len(xl) == len(yl) + 1 or len(xl) == len(yl)   # step mode edges
    assert d.delta.isVisible() and d.delta_item.isVisible()   # same shapes: right - left
    dx, dy = d.delta_item.getData()
    assert dy.sum() == 128
    assert d.result.delta_max_abs is not None and abs(d.result.delta_max_abs - 0.5) < 1e-5
    assert d.table.item(2, 0).text() == "128"              # elements
    # 1-D buffer: per-channel plot of both sides
    with qtbot.waitSignal(w.sig_detail_shown, timeout=20000):
        w.compare.select_path("bn.running_mean")
    assert d.channel.isVisible()
    assert len(d.channel_left.getData()[1]) == 16 and len(d.channel_right.getData()[1]) == 16
    # exports
    png = w.settings.fileName() + ".png"
    csvp = w.settings.fileName() + ".csv"
    d.export_png_to(png)
    d.export_csv_to(csvp)
    with open(png, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    with open(csvp, encoding="utf-8") as f:
        text = f.read()
    assert "bin_low,bin_high,count_left,count_right" in text and "channel,left,right" in text
    # log y and bins
    d.log_y.setChecked(True)
    assert d.hist.getPlotItem().ctrl.logYCheck.isChecked()
    with qtbot.waitSignal(w.sig_detail_shown, timeout=20000):
        d.bins.setValue(32)
    assert len(d.result.left.counts) == 32


def test_bad_file_shows_error_and_keeps_working(qtbot, make_window, two_checkpoints, tmp_path):
    bad = tmp_path / "broken.pt"
    bad.write_bytes(b"PK\x03\x04 this is not really a zip file")
    w = make_window()
    open_both(qtbot, w, *two_checkpoints)
    before = w.sides[1]
    with qtbot.waitSignal(w.sig_load_failed, timeout=20000) as blocker:
        w.open_path(1, str(bad))
    assert blocker.args[0] == 1
    header = w.compare.right_header
    assert header.error.isVisible() and "broken.pt" in header.error.text()
    # the pane names the file by its name (it still shows another) and keeps the rest for what is wrong and what
    # to do, on two lines; the whole message is the tooltip
    said = header.error.text()
    assert said.startswith("⚠ broken.pt: ") and str(tmp_path) not in said and header.error.wordWrap(), said
    assert header.error.toolTip().startswith(f"{bad}: ")
    assert w.sides[1] is before and w.comparison.right is before      # what was open stays open
    # and the window still works
    with qtbot.waitSignal(w.sig_detail_shown, timeout=20000):
        w.compare.select_path("fc1.bias")
    with qtbot.waitSignal(w.sig_side_loaded, timeout=20000):
        w.open_path(1, str(two_checkpoints[0]))
    assert not header.error.isVisible()


def test_unexpected_error_goes_to_a_dialog(qtbot, make_window, two_checkpoints, monkeypatch):
    import explorer.qt.main_window as mw
    shown = []
    monkeypatch.setattr(mw, "show_error_dialog", lambda parent, doing, exc: shown.append((doing, exc)))

    def boom(text, entry=None, **kw):
        raise ZeroDivisionError("a bug")
    monkeypatch.setattr(mw.C, "load_side_data", boom)                       # the window's own parse
    monkeypatch.setattr("explorer.session.listing.side_data_of", boom)       # ... or the parse process's listing
    w = make_window()
    with qtbot.waitSignal(w.sig_load_failed, timeout=10000):
        w.open_path(0, str(two_checkpoints[0]))
    assert shown and isinstance(shown[0][1], ZeroDivisionError) and "Opening" in shown[0][0]


def test_newest_request_wins(qtbot, make_window):
    import threading
    w = make_window()
    got = []
    gate = threading.Event()

    def slow(value, *, progress=None, should_stop=None):
        gate.wait(5)
        return value
    w.runner.start("test", "first", slow, "first", on_result=got.append)
    w.runner.start("test", "second", lambda v, **k: v, "second", on_result=got.append)
    gate.set()
    qtbot.waitUntil(lambda: not w.runner.is_busy(), timeout=10000)
    assert got == ["second"]


def test_keyboard_filter_copy_and_settings(qtbot, make_window, two_checkpoints):
    w = make_window()
    open_both(qtbot, w, *two_checkpoints)
    # Ctrl+F / Ctrl+C / Ctrl+O are wired
    assert w.act_find.shortcut().toString() == "Ctrl+F"
    assert w.act_copy.shortcut().toString() == "Ctrl+C"
    assert w.act_open_left.shortcut().toString() == "Ctrl+O"
    w.compare.select_path("bn.running_mean")
    w.act_copy.trigger()
    assert QGuiApplication.clipboard().text() == "bn.running_mean"
    # filter: substring, then a bad regex shows an error instead of filtering
    w.filter_edit.setText("running")
    w.apply_filter()
    model = w.compare.model
    leaves = {model.data(i, NodeRole).path for i in all_indexes(model) if model.data(i, NodeRole).is_leaf}
    assert leaves == {"bn.running_mean", "bn.running_var"}
    w.regex_box.setChecked(True)
    w.filter_edit.setText("fc[")
    w.apply_filter()
    assert w.filter_count.text() == "bad regex"
    w.filter_edit.setText("")
    w.apply_filter()
    # settings persist: recent files, options, splitters
    w.act_assign.setChecked(True)
    w.compare.splitter.setSizes([500, 200, 500])
    sizes = w.compare.splitter.sizes()
    w.close()
    w2 = make_window()
    assert set(w2.recent_files()[:2]) == {str(two_checkpoints[0]), str(two_checkpoints[1])}
    assert w2.act_assign.isChecked() and w2.regex_box.isChecked()
    assert w2.compare.splitter.sizes() == sizes


def test_nested_checkpoint_offers_its_state_dicts(qtbot, make_window, tmp_path):
    import torch
    sd = {"fc.weight": torch.ones(2, 2), "fc.bias": torch.zeros(2)}
    ema = {"fc.weight": torch.full((2, 2), 0.5), "fc.bias": torch.zeros(2), "fc.extra": torch.zeros(1)}
    path = tmp_path / "nested.pt"
    torch.save({"epoch": 3, "state_dict": sd, "ema": ema}, path)
    w = make_window()
    with qtbot.waitSignal(w.sig_side_loaded, timeout=20000):
        w.open_path(1, str(path))
    combo = w.compare.right_header.entry
    assert combo.isVisible() and combo.count() >= 2
    assert combo.currentText().startswith("state_dict")          # the best one is the default
    assert w.sides[1].entry == ("state_dict",)
    i = next(i for i in range(combo.count()) if combo.itemText(i).startswith("ema"))
    with qtbot.waitSignal(w.sig_side_loaded, timeout=20000):
        combo.activated.emit(i)
    assert w.sides[1].entry == ("ema",) and "fc.extra" in w.sides[1].infos


def test_one_side_open_is_not_a_comparison(tmp_path):
    """With only the left side open no key is "only left": there is nothing to compare it with."""
    import torch
    from explorer.session import compare as C
    from explorer.core.loaders import open_checkpoint
    path = tmp_path / "tiny.pt"
    torch.save({"w": torch.tensor(3.0)}, path)
    side = C.side_data(open_checkpoint(path), str(path))
    comp = C.Comparison(side, None)
    assert comp.rows["w"].diff_status is None
    both = C.Comparison(side, C.side_data(open_checkpoint(path), str(path)))
    assert both.rows["w"].diff_status == C.SAME_LAYOUT


def test_large_tensor_first_look_then_exact(qtbot, make_window, tmp_path):
    """A large float tensor: pass 1's figures are shown first (marked ≈, exports off), then replaced by the exact
    ones -- which equal numpy's."""
    import numpy as np
    import torch
    from safetensors.torch import save_file

    from explorer.session.detail_compute import FIRST_LOOK_MIN
    g = torch.Generator().manual_seed(3)
    a = torch.randn(FIRST_LOOK_MIN // 2 + 1000, generator=g)
    b = a + 0.01 * torch.randn(a.shape, generator=g)
    pa, pb = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    save_file({"w": a}, str(pa))
    save_file({"w": b}, str(pb))
    w = make_window()
    d = w.detail
    looks = []
    w.sig_detail_first_look.connect(
        lambda key: looks.append((key, d.result.estimated, d.export_csv.isEnabled(),
                                  [d.pct_table.item(r, 0).text() for r in range(d.pct_table.rowCount())])))
    # the only key differs in values: it is selected on its own once the values are compared
    open_both(qtbot, w, str(pa), str(pb), timeout=60000)
    qtbot.waitUntil(lambda: d.result is not None and d.result.key == "w" and not d.result.estimated, timeout=60000)
    assert w.compare.selection_key() == "w"
    assert len(looks) == 1 and looks[0][0] == "w" and looks[0][1] is True and looks[0][2] is False
    assert any(t.startswith("≈ ") for t in looks[0][3]), looks[0][3]
    res = d.result
    assert not res.estimated and d.export_csv.isEnabled()
    assert d.pct_table.rowCount() == 7
    assert not any(d.pct_table.item(r, 0).text().startswith("≈") for r in range(d.pct_table.rowCount()))
    assert d.pct_table.verticalHeaderItem(3).text() == "p50"
    from explorer.qt.detail_pane import fmt
    assert d.pct_table.item(3, 0).text() == fmt(float(res.left.stats.percentiles[50]))
    ref = np.percentile(a.double().numpy(), [1, 50, 99])
    got = [res.left.stats.percentiles[p] for p in (1, 50, 99)]
    assert got == [float(v) for v in ref]
    assert res.left.counts.sum() == a.numel() and res.right.counts.sum() == b.numel()
    np.testing.assert_array_equal(res.left.counts, np.histogram(a.double().numpy(), bins=res.edges)[0])


def test_legend_names_only_the_sides_drawn(qtbot, make_window, two_checkpoints):
    def names(w):
        return [label.text for _, label in w.detail.hist.getPlotItem().legend.items]
    w = make_window()
    w.open_path(0, str(two_checkpoints[0]))
    qtbot.waitUntil(lambda: w.comparison is not None and w.is_idle(), timeout=30000)
    with qtbot.waitSignal(w.sig_detail_shown, timeout=20000, check_params_cb=lambda key: key == "fc1.weight"):
        w.compare.select_path("fc1.weight")
    assert names(w) == ["left"]
    with qtbot.waitSignal(w.sig_detail_shown, timeout=20000, check_params_cb=lambda key: key == "bn.running_mean"):
        w.compare.select_path("bn.running_mean")
    assert w.detail.channel.isVisible()
    assert [label.text for _, label in w.detail.channel.getPlotItem().legend.items] == ["left (before)"]
    w.open_path(1, str(two_checkpoints[1]))
    qtbot.waitUntil(lambda: w.comparison.right is not None and w.is_idle(), timeout=30000)
    with qtbot.waitSignal(w.sig_detail_shown, timeout=20000, check_params_cb=lambda key: key == "fc1.weight"):
        w.compare.select_path("fc1.bias")
        w.compare.select_path("fc1.weight")
    assert names(w) == ["left", "right"]
    with qtbot.waitSignal(w.sig_detail_shown, timeout=20000, check_params_cb=lambda key: key == "bn.running_mean"):
        w.compare.select_path("bn.running_mean")
    assert [label.text for _, label in w.detail.channel.getPlotItem().legend.items] == \
        ["left (before)", "right (after)"]
