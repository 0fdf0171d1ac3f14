"""The window's actions (menus, toolbar, shortcuts), each wired to a public method of the window."""
from __future__ import annotations

from PySide6.QtCore import Qt
from PySide6.QtGui import QAction, QKeySequence

from ..session.compare import LEFT, RIGHT


def make_action(parent, text: str, slot, shortcut=None, tip: str = "", checkable=False) -> QAction:
    a = QAction(text, parent)
    if shortcut is not None:
        a.setShortcut(QKeySequence(shortcut))
    if tip:
        a.setToolTip(tip)
        a.setStatusTip(tip)
    a.setCheckable(checkable)
    if slot is not None:
        (a.toggled if checkable else a.triggered).connect(slot)
    return a


def install_actions(w) -> None:
    """Create the window's ``act_*`` actions and put them in its menus and toolbar."""
    def act(*args, **kwargs) -> QAction:
        return make_action(w, *args, **kwargs)
    w.act_open_left = act("Open &left…", lambda: w.ask_open(LEFT), QKeySequence.Open,
                          "Open a checkpoint file in the left pane (Ctrl+O)")
    w.act_open_right = act("Open &right…", lambda: w.ask_open(RIGHT), "Ctrl+Shift+O",
                           "Open a checkpoint file in the right pane")
    w.act_folder_left = act("Open folder left…", lambda: w.ask_open_folder(LEFT))
    w.act_folder_right = act("Open folder right…", lambda: w.ask_open_folder(RIGHT))
    w.act_open_url = act("Open &URL…", lambda: w.ask_url(), "Ctrl+U",
                         "Open a checkpoint by URL: http(s)://, hf://ORG/REPO/PATH, s3://, gs:// (read in ranges)")
    w.act_open_model = act("Open &model…", w.ask_model, "Ctrl+M",
                           "Build a model from MODULE:CALLABLE, file.py:CALLABLE or demo:NAME")
    w.act_swap = act("&Swap sides", w.swap_sides, None, "Exchange the left and right panes")
    w.act_quit = act("&Quit", w.close, QKeySequence.Quit)
    w.act_simulate = act("Simulate &load", w.simulate, "Ctrl+L",
                         "What would left_model.load_state_dict(right) do? (Ctrl+L)")
    w.act_strict = act("strict", w.sim_option_changed, None,
                       "load_state_dict(strict=True): missing/unexpected keys raise", True)
    w.act_assign = act("assign", w.sim_option_changed, None,
                       "load_state_dict(assign=True): take the checkpoint's tensors as they are", True)
    w.act_strict.setChecked(True)
    w.act_cancel = act("Cancel", lambda: w.runner.cancel(), "Esc", "Cancel background work")
    w.act_find = act("Filter", w.focus_filter, QKeySequence.Find)
    w.act_copy = act("Copy key path", w.copy_key, QKeySequence.Copy)
    w.act_copy.setShortcutContext(Qt.WidgetWithChildrenShortcut)
    w.compare.addAction(w.act_copy)
    w.act_expand = act("Expand all", w.compare.expand_all, "Ctrl+E")
    w.act_collapse = act("Collapse all", lambda: [v.collapseAll() for v in w.compare.views], "Ctrl+Shift+E")
    w.act_demo_pair = act("Open the demo pair", w.open_demo, None,
                          "MyBatchNormModel vs. a checkpoint of it after a few train-mode steps")
    w.act_bn_demo = act("&BatchNorm…", w.open_batchnorm_demo, None,
                        "Step through what train/eval mode and loading do to BatchNorm")
    w.act_open_run = act("Open r&un folder…", lambda: _ask_run(w), "Ctrl+R",
                         "A training run at a glance: a folder of checkpoints in step order (findings, heat map)")
    w.act_export_series_csv = act("Export run table (CSV)…", lambda: w.series_view and w.series_view.ask_export_csv(),
                                  None, "Every key's figures at every checkpoint, one row per key and checkpoint")
    w.act_export_series_png = act("Export run plots (PNG)…", lambda: w.series_view and w.series_view.ask_export_png(),
                                  None, "The selected key's trajectories and histograms as a picture")
    for a in (w.act_export_series_csv, w.act_export_series_png):
        a.setEnabled(False)     # until a run is measured (series_view.sync_exports)
    _build_menus(w)
    _build_toolbar(w)


def _ask_run(w) -> None:
    from PySide6.QtWidgets import QFileDialog
    path = QFileDialog.getExistingDirectory(w, "Open a training run (a folder of checkpoints)")
    if path:
        w.open_series([path])


def _build_menus(w) -> None:
    mb = w.menuBar()
    m = mb.addMenu("&File")
    for a in (w.act_open_left, w.act_open_right, w.act_folder_left, w.act_folder_right, w.act_open_url,
              w.act_open_model):
        m.addAction(a)
    w.recent_menu = m.addMenu("Open &recent")
    w.recent_menu.aboutToShow.connect(w.fill_recent_menu)
    m.addAction(w.act_open_run)
    m.addAction(w.act_export_series_csv)
    m.addAction(w.act_export_series_png)
    m.addSeparator()
    m.addAction(w.act_swap)
    m.addSeparator()
    m.addAction(w.act_quit)
    m = mb.addMenu("&View")
    for a in (w.act_find, w.act_copy, w.act_expand, w.act_collapse):
        m.addAction(a)
    m = mb.addMenu("&Load")
    for a in (w.act_simulate, w.act_strict, w.act_assign, w.act_cancel):
        m.addAction(a)
    m = mb.addMenu("&Demo")
    m.addAction(w.act_demo_pair)
    m.addAction(w.act_bn_demo)
    for a in (w.act_find, w.act_cancel):
        w.addAction(a)


def _build_toolbar(w) -> None:
    tb = w.addToolBar("Main")
    tb.setObjectName("MainToolBar")
    tb.setMovable(False)
    tb.setToolButtonStyle(Qt.ToolButtonTextOnly)
    for a in (w.act_open_left, w.act_open_right, w.act_open_model):
        tb.addAction(a)
    tb.addSeparator()
    tb.addAction(w.act_simulate)
    tb.addAction(w.act_strict)
    tb.addAction(w.act_assign)
    tb.addSeparator()
    tb.addAction(w.act_swap)


def fill_recent_menu(w) -> None:
    menu = w.recent_menu
    menu.clear()
    files = w.recent_files()
    if not files:
        a = menu.addAction("(none yet)")
        a.setEnabled(False)
    for path in files:       # paths and URLs as written ("&" doubled: a URL's query must not become a mnemonic)
        sub = menu.addMenu(path.replace("&", "&&"))
        # pointed at: parsed while the pointer goes on to "Open left" (the open then finds it parsed)
        sub.menuAction().hovered.connect(lambda p=path: w.read_ahead([p]))
        sub.addAction("Open left", lambda p=path: w.open_path(LEFT, p))
        sub.addAction("Open right", lambda p=path: w.open_path(RIGHT, p))
