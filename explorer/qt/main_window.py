"""The main window: wiring only. Panes, detail pane and banner are their own widgets; work runs in ``Runner``."""
from __future__ import annotations

import os
import time
from typing import Any

from PySide6.QtCore import QSettings, Qt, QTimer, Signal
from PySide6.QtGui import QAction, QGuiApplication, QKeySequence
from PySide6.QtWidgets import (QAbstractItemView, QCheckBox, QFileDialog, QHBoxLayout, QInputDialog, QLabel,
                               QLineEdit, QMainWindow, QProgressBar, QSplitter, QToolButton, QVBoxLayout, QWidget)

from . import compare as C
from .compare_view import CompareView, urls_to_paths
from .detail_compute import compute_detail, compute_detail_isolated
from .detail_pane import DetailPane
from .errors_ui import is_expected, show_error_dialog
from .parse_guard import PARSE_TIMEOUT_S, PROBE, open_guarded
from .simulate_view import Banner
from .tree_model import COLUMNS, LEFT, NAME_COLUMN, RIGHT
from .workers import Runner

SIDE_NAMES = {LEFT: "left", RIGHT: "right"}
MAX_RECENT = 10
BIG_FILTER_RESULT = 5000   # above this many matched keys, the filtered tree is built in a worker
# Tensors up to this many elements (per side) get their statistics in a worker thread of the window's process: a
# few milliseconds of work, which must not wait for the compute process to start (seconds on a busy machine).
SMALL_DETAIL_ELEMENTS = 65_536


# ---- functions run in workers (module level, no Qt) ------------------------------------------------------------
def _reselect_entry(data: C.SideData, entry, *, progress=None, should_stop=None) -> C.SideData:
    return C.side_data(data.side, data.text, entry)


def _build_comparison(left, right, rename, *, progress=None, should_stop=None) -> C.Comparison:
    return C.Comparison(left, right, rename)


def _build_subtree(comparison: C.Comparison, keys, *, progress=None, should_stop=None):
    return comparison.subtree(keys)


def _simulate(left: C.SideData, right: C.SideData, remap, strict: bool, assign: bool, *,
              progress=None, should_stop=None):
    """(LoadReport, note): ``note`` says what the prediction cannot know (a checkpoint on the left), else ""."""
    from explorer.core.simulate.run import simulate_load
    target: Any = right.side
    entry = right.entry if not right.is_model else None
    if remap is not None:   # a remap was applied: hand torch the renamed mapping, as the fixed file would hold it
        obj = right.side.load_object(entry, device="cpu") if hasattr(right.side, "load_object") \
            else right.side.model.state_dict()
        target, entry = remap.apply(obj), None
    model, note = left.side, ""
    if not left.is_model:    # two checkpoints: the left one's state dict as a model of plain modules
        from .checkpoint_model import CAVEAT, checkpoint_as_model
        model = checkpoint_as_model(left.side, left.entry, os.path.basename(left.label) or left.label,
                                    should_stop=should_stop)
        note = CAVEAT
        if model.skipped:
            note += (f" {len(model.skipped)} left key(s) cannot be a module attribute and are left out: "
                     + ", ".join(model.skipped[:5]) + (" …" if len(model.skipped) > 5 else "") + ".")
    report = simulate_load(model, target, entry=entry, strict=strict, assign=assign, progress=progress,
                           should_stop=should_stop)
    return report, note


def _diff(left: C.SideData, right: C.SideData, remap, *, progress=None, should_stop=None):
    if not left.is_model and not right.is_model:   # two files: the compute process opens them itself
        from .compute_process import engine
        return engine().call("explorer.qt.detail_compute.diff_paths", left.text, left.entry, right.text, right.entry,
                             remap, progress=progress, should_stop=should_stop)
    from explorer.core.diff import diff_sides
    return diff_sides(left.side, right.side, entry_a=left.entry if not left.is_model else None,
                      entry_b=right.entry if not right.is_model else None,
                      remap=remap.new_key if remap is not None else None,
                      progress=progress, should_stop=should_stop)


def _start_engine(eng, *, progress=None, should_stop=None) -> None:
    eng.start()


def _module_available(name: str) -> bool:
    import importlib.util
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


class MainWindow(QMainWindow):
    sig_side_loaded = Signal(int)          # LEFT / RIGHT
    sig_load_failed = Signal(int, str)     # side, message
    sig_comparison_ready = Signal()
    sig_simulation_done = Signal(object)   # LoadReport
    sig_detail_shown = Signal(str)         # key
    sig_detail_first_look = Signal(str)    # key: pass 1's figures of a large tensor shown, exact ones to follow
    sig_filter_applied = Signal()
    sig_exported = Signal(str)

    def __init__(self, settings: QSettings | None = None, parent=None):
        super().__init__(parent)
        self.setWindowTitle("State-Dict Explorer")
        self.setAcceptDrops(True)
        self.settings = settings if settings is not None else QSettings("StateDictExplorer", "State-Dict Explorer")
        self.runner = Runner(self)
        self.sides: list[C.SideData | None] = [None, None]
        self.texts: list[str | None] = [None, None]
        self.comparison: C.Comparison | None = None
        self.rename: dict[str, str] = {}     # right key -> key it is shown (and loaded) as, from ``self.remap``
        self.remap = None                     # explorer.core.remap.Remap applied to the right side
        self.simulate_wanted = False      # run a simulation as soon as both sides are aligned
        self.select_when_ready: str | None = None   # a key to select once it is shown (--select)
        self.load_failures = 0
        self.failed_sides: dict[int, str] = {}   # side -> why it did not open (cleared when it opens)
        self.unmet: dict[str, str] = {}          # what was asked for and did not happen (--screenshot exits 2)
        self.parse_timeout_s = PARSE_TIMEOUT_S   # a file whose parse takes longer is stopped and reported
        self.parse_probe = PROBE                 # the compute-process function that parses a file first
        self._auto_key: str | None = None     # the row _auto_select chose (re-chosen until the user picks one)
        self._filter_pending = False
        self._last_progress_ui = 0.0
        self._diff_deferred = False        # a value diff was put off so the selected key's histograms come first

        self.banner = Banner()
        self.banner.sig_apply.connect(self.apply_suggestion)
        self.banner.sig_export.connect(self.export_suggestion)
        self.compare = CompareView()
        self.compare.sig_current_changed.connect(self._on_current)
        self.compare.sig_files_dropped.connect(self._on_dropped)
        self.compare.sig_entry_chosen.connect(self.choose_entry)
        self.compare.sig_open_clicked.connect(self.ask_open)
        self.detail = DetailPane()
        self.detail.sig_bins_changed.connect(lambda _: self._request_detail())

        self._build_filter_bar()
        self.splitter = QSplitter(Qt.Vertical)
        self.splitter.setChildrenCollapsible(False)
        self.splitter.addWidget(self.compare)
        self.splitter.addWidget(self.detail)
        self.splitter.setStretchFactor(0, 3)
        self.splitter.setStretchFactor(1, 2)
        self.splitter.setSizes([430, 370])
        central = QWidget()
        lay = QVBoxLayout(central)
        lay.setContentsMargins(4, 4, 4, 0)
        lay.setSpacing(4)
        lay.addWidget(self.filter_bar)
        lay.addWidget(self.banner)
        lay.addWidget(self.splitter, 1)
        self.setCentralWidget(central)

        self._build_actions()
        self._build_status_bar()
        self.runner.sig_activity.connect(self._update_activity)
        self.runner.sig_progress.connect(self._on_progress)
        self._filter_timer = QTimer(self)
        self._filter_timer.setSingleShot(True)
        self._filter_timer.setInterval(150)
        self._filter_timer.timeout.connect(self.apply_filter)
        self.resize(1400, 860)
        self._restore_settings()
        C.freeze_heap()
        QTimer.singleShot(300, self._prewarm)   # after the first paint

    # ---- building ----------------------------------------------------------------------------------------------
    def _build_filter_bar(self) -> None:
        self.filter_edit = QLineEdit()
        self.filter_edit.setPlaceholderText("Filter keys (substring; tick Regex for a regular expression)   Ctrl+F")
        self.filter_edit.setClearButtonEnabled(True)
        self.filter_edit.textChanged.connect(lambda _: self._schedule_filter())
        self.regex_box = QCheckBox("Regex")
        self.diff_only = QCheckBox("Differences only")
        self.problems_only = QCheckBox("Problems only")
        for box in (self.regex_box, self.diff_only, self.problems_only):
            box.toggled.connect(lambda _: self._schedule_filter(0))
        self.filter_count = QLabel("")
        self.filter_count.setStyleSheet("color: gray;")
        self.filter_bar = QWidget()
        lay = QHBoxLayout(self.filter_bar)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addWidget(self.filter_edit, 1)
        lay.addWidget(self.regex_box)
        lay.addWidget(self.diff_only)
        lay.addWidget(self.problems_only)
        lay.addWidget(self.filter_count)

    def _action(self, text: str, slot, shortcut=None, tip: str = "", checkable=False) -> QAction:
        a = QAction(text, self)
        if shortcut is not None:
            a.setShortcut(QKeySequence(shortcut))
        if tip:
            a.setToolTip(tip)
            a.setStatusTip(tip)
        a.setCheckable(checkable)
        if slot is not None:
            (a.toggled if checkable else a.triggered).connect(slot)
        return a

    def _build_actions(self) -> None:
        self.act_open_left = self._action("Open &left…", lambda: self.ask_open(LEFT), QKeySequence.Open,
                                          "Open a checkpoint file in the left pane (Ctrl+O)")
        self.act_open_right = self._action("Open &right…", lambda: self.ask_open(RIGHT), "Ctrl+Shift+O",
                                           "Open a checkpoint file in the right pane")
        self.act_folder_left = self._action("Open folder left…", lambda: self.ask_open_folder(LEFT))
        self.act_folder_right = self._action("Open folder right…", lambda: self.ask_open_folder(RIGHT))
        self.act_open_model = self._action("Open &model…", self.ask_model, "Ctrl+M",
                                           "Build a model from MODULE:CALLABLE, file.py:CALLABLE or demo:NAME")
        self.act_swap = self._action("&Swap sides", self.swap_sides, None, "Exchange the left and right panes")
        self.act_quit = self._action("&Quit", self.close, QKeySequence.Quit)
        self.act_simulate = self._action("Simulate &load", self.simulate, "Ctrl+L",
                                         "What would left_model.load_state_dict(right) do? (Ctrl+L)")
        self.act_strict = self._action("strict", self._sim_option_changed, None,
                                       "load_state_dict(strict=True): missing/unexpected keys raise", True)
        self.act_assign = self._action("assign", self._sim_option_changed, None,
                                       "load_state_dict(assign=True): take the checkpoint's tensors as they are", True)
        self.act_strict.setChecked(True)
        self.act_cancel = self._action("Cancel", lambda: self.runner.cancel(), "Esc", "Cancel background work")
        self.act_find = self._action("Filter", self._focus_filter, QKeySequence.Find)
        self.act_copy = self._action("Copy key path", self.copy_key, QKeySequence.Copy)
        self.act_copy.setShortcutContext(Qt.WidgetWithChildrenShortcut)
        self.compare.addAction(self.act_copy)
        self.act_expand = self._action("Expand all", self.compare.expand_all, "Ctrl+E")
        self.act_collapse = self._action("Collapse all", lambda: [v.collapseAll() for v in self.compare.views],
                                         "Ctrl+Shift+E")
        self.act_demo_pair = self._action("Open the demo pair", self.open_demo, None,
                                          "MyBatchNormModel vs. a checkpoint of it after a few train-mode steps")
        self.act_bn_demo = self._action("&BatchNorm…", self.open_batchnorm_demo, None,
                                        "Step through what train/eval mode and loading do to BatchNorm")

        mb = self.menuBar()
        m = mb.addMenu("&File")
        for a in (self.act_open_left, self.act_open_right, self.act_folder_left, self.act_folder_right,
                  self.act_open_model):
            m.addAction(a)
        self.recent_menu = m.addMenu("Open &recent")
        self.recent_menu.aboutToShow.connect(self._fill_recent)
        m.addSeparator()
        m.addAction(self.act_swap)
        m.addSeparator()
        m.addAction(self.act_quit)
        m = mb.addMenu("&View")
        for a in (self.act_find, self.act_copy, self.act_expand, self.act_collapse):
            m.addAction(a)
        m = mb.addMenu("&Load")
        for a in (self.act_simulate, self.act_strict, self.act_assign, self.act_cancel):
            m.addAction(a)
        m = mb.addMenu("&Demo")
        m.addAction(self.act_demo_pair)
        m.addAction(self.act_bn_demo)
        for a in (self.act_find, self.act_cancel):
            self.addAction(a)

        tb = self.addToolBar("Main")
        tb.setObjectName("MainToolBar")
        tb.setMovable(False)
        tb.setToolButtonStyle(Qt.ToolButtonTextOnly)
        for a in (self.act_open_left, self.act_open_right, self.act_open_model):
            tb.addAction(a)
        tb.addSeparator()
        tb.addAction(self.act_simulate)
        tb.addAction(self.act_strict)
        tb.addAction(self.act_assign)
        tb.addSeparator()
        tb.addAction(self.act_swap)

    def _build_status_bar(self) -> None:
        sb = self.statusBar()
        self.activity = QLabel("")
        self.progress = QProgressBar()
        self.progress.setMaximumWidth(180)
        self.progress.setMaximumHeight(16)
        self.progress.setTextVisible(False)
        self.cancel_button = QToolButton()
        self.cancel_button.setText("Cancel")
        self.cancel_button.clicked.connect(lambda: self.runner.cancel())
        for w in (self.activity, self.progress, self.cancel_button):
            sb.addPermanentWidget(w)
        self.progress.hide()
        self.cancel_button.hide()

    def _prewarm(self) -> None:
        """Start the compute process while the user looks at the window (it imports torch: ~1-2 s)."""
        from .compute_process import engine
        self.runner.start("prewarm", "Starting the compute process…", _start_engine, engine())

    # ---- settings ----------------------------------------------------------------------------------------------
    def _restore_settings(self) -> None:
        s = self.settings
        geo = s.value("window/geometry")
        if geo is not None:
            self.restoreGeometry(geo)
        state = s.value("window/state")
        if state is not None:
            self.restoreState(state)
        for name, splitter in (("main", self.splitter), ("panes", self.compare.splitter),
                               ("detail", self.detail.splitter)):
            v = s.value(f"splitters/{name}")
            if v is not None:
                splitter.restoreState(v)
        self.act_strict.setChecked(_bool(s.value("options/strict", True)))
        self.act_assign.setChecked(_bool(s.value("options/assign", False)))
        self.detail.log_y.setChecked(_bool(s.value("options/log_y", False)))
        try:
            self.detail.bins.setValue(int(s.value("options/bins", 128)))
        except (TypeError, ValueError):
            pass
        self.regex_box.setChecked(_bool(s.value("options/regex", False)))

    def save_settings(self) -> None:
        s = self.settings
        s.setValue("window/geometry", self.saveGeometry())
        s.setValue("window/state", self.saveState())
        for name, splitter in (("main", self.splitter), ("panes", self.compare.splitter),
                               ("detail", self.detail.splitter)):
            s.setValue(f"splitters/{name}", splitter.saveState())
        s.setValue("options/strict", self.act_strict.isChecked())
        s.setValue("options/assign", self.act_assign.isChecked())
        s.setValue("options/log_y", self.detail.log_y.isChecked())
        s.setValue("options/bins", self.detail.bins.value())
        s.setValue("options/regex", self.regex_box.isChecked())
        s.sync()

    def recent_files(self) -> list[str]:
        return _list(self.settings.value("recent/files"))

    def _add_recent(self, text: str) -> None:
        if text.startswith("demo:") or not text:
            return
        items = [t for t in self.recent_files() if t != text]
        self.settings.setValue("recent/files", [text] + items[:MAX_RECENT - 1])

    def model_history(self) -> list[str]:
        return _list(self.settings.value("recent/models"))

    def _add_model_history(self, spec: str) -> None:
        items = [t for t in self.model_history() if t != spec]
        self.settings.setValue("recent/models", [spec] + items[:MAX_RECENT - 1])

    def _fill_recent(self) -> None:
        self.recent_menu.clear()
        files = self.recent_files()
        if not files:
            a = self.recent_menu.addAction("(none yet)")
            a.setEnabled(False)
        for path in files:
            sub = self.recent_menu.addMenu(path)
            sub.addAction("Open left", lambda p=path: self.open_path(LEFT, p))
            sub.addAction("Open right", lambda p=path: self.open_path(RIGHT, p))

    def closeEvent(self, event):
        self.save_settings()
        self.runner.shutdown(3000)
        super().closeEvent(event)

    # ---- opening -----------------------------------------------------------------------------------------------
    def ask_open(self, side: int) -> None:
        start = os.path.dirname(self.recent_files()[0]) if self.recent_files() else ""
        path, _ = QFileDialog.getOpenFileName(
            self, f"Open a checkpoint ({SIDE_NAMES[side]})", start,
            "Checkpoints (*.pt *.pth *.bin *.ckpt *.safetensors *.json *.tar);;All files (*)")
        if path:
            self.open_path(side, path)

    def ask_open_folder(self, side: int) -> None:
        path = QFileDialog.getExistingDirectory(self, f"Open a checkpoint folder ({SIDE_NAMES[side]})")
        if path:
            self.open_path(side, path)

    def ask_model(self) -> None:
        history = self.model_history() or ["demo:MyBatchNormModel"]
        spec, ok = QInputDialog.getItem(
            self, "Open model", "Model spec — MODULE:CALLABLE, path/to/file.py:CALLABLE or demo:NAME\n"
            "(the callable is run to build the model):", history, 0, True)
        if ok and spec.strip():
            self.open_path(LEFT, spec.strip())

    def open_path(self, side: int, text: str, entry=None) -> None:
        """Open a file, folder or model spec in a pane, in a worker; what was open stays until it succeeds."""
        text = os.fspath(text)
        self.banner_clear_message()
        header = self.compare.left_header if side == LEFT else self.compare.right_header
        header.set_error("")
        # parsed first in the compute process, with a time limit: a parse stuck in C code there cannot freeze this
        # window (it would hold the interpreter lock of this process), and is stopped and reported
        self.runner.start(f"load{side}", f"Opening {os.path.basename(text) or text}…", open_guarded, text,
                          entry, timeout_s=self.parse_timeout_s, probe_path=self.parse_probe,
                          on_result=lambda data: self._side_loaded(side, data),
                          on_error=lambda exc: self._load_failed(side, text, exc))

    def _side_loaded(self, side: int, data: C.SideData) -> None:
        self.sides[side] = data
        self.failed_sides.pop(side, None)
        self.texts[side] = data.text
        (self.compare.left_header if side == LEFT else self.compare.right_header).set_side(data)
        if data.is_model and data.text and ":" in data.text:
            self._add_model_history(data.text)
        else:
            self._add_recent(data.text)
        self.rename, self.remap = {}, None
        self.sig_side_loaded.emit(side)
        self.rebuild()

    def _load_failed(self, side: int, text: str, exc: BaseException) -> None:
        msg = str(exc) or type(exc).__name__
        header = self.compare.left_header if side == LEFT else self.compare.right_header
        if is_expected(exc):
            header.set_error(f"⚠ {msg}")
            self.statusBar().showMessage(f"Could not open {text}: {msg}", 15000)
        else:
            header.set_error(f"⚠ unexpected error opening {os.path.basename(text)} (details in the dialog)")
            show_error_dialog(self, f"Opening {text} ({SIDE_NAMES[side]} pane)", exc)
        self.load_failures += 1
        self.failed_sides[side] = msg
        self.sig_load_failed.emit(side, msg)
        if self.simulate_wanted and not self._loads_pending(f"load{side}"):
            self._simulate_impossible()     # the simulation asked for cannot run now: say so, never wait for it

    def choose_entry(self, side: int, entry) -> None:
        data = self.sides[side]
        if data is None:
            return
        self.runner.start(f"load{side}", "Switching state dict…", _reselect_entry, data, tuple(entry),
                          on_result=lambda d: self._side_loaded(side, d),
                          on_error=lambda exc: self._load_failed(side, data.text, exc))

    def swap_sides(self) -> None:
        self.sides.reverse()
        self.texts.reverse()
        self.rename, self.remap = {}, None
        self.compare.left_header.set_side(self.sides[LEFT])
        self.compare.right_header.set_side(self.sides[RIGHT])
        self.rebuild()

    def _on_dropped(self, side, paths: list[str]) -> None:
        if side is None:
            self.open_path(LEFT, paths[0])
            self.open_path(RIGHT, paths[1])
        else:
            self.open_path(side, paths[0])

    def dragEnterEvent(self, event):
        if urls_to_paths(event.mimeData()):
            event.acceptProposedAction()

    def dropEvent(self, event):
        paths = urls_to_paths(event.mimeData())
        if not paths:
            return
        event.acceptProposedAction()
        if len(paths) >= 2:
            self._on_dropped(None, paths)
        else:
            self.open_path(RIGHT if self.sides[LEFT] is not None else LEFT, paths[0])

    # ---- aligning ----------------------------------------------------------------------------------------------
    def rebuild(self) -> None:
        left, right = self.sides
        if left is None and right is None:
            return
        self.runner.start("compare", "Aligning keys…", _build_comparison, left, right, dict(self.rename),
                          on_result=self._comparison_ready, on_error=lambda e: self._failed("Aligning keys", e))

    def _comparison_ready(self, comp: C.Comparison) -> None:
        was_simulated = self.comparison is not None and self.comparison.simulated
        self.comparison = comp
        self.detail.clear()
        self.apply_filter(initial=True)
        self._update_title()
        both = comp.left is not None and comp.right is not None
        self._diff_deferred = False
        if both:
            self.start_diff()
        if both and (self.simulate_wanted or was_simulated):
            self.simulate_wanted = False
            self.simulate()
        elif self.simulate_wanted and not self._loads_pending("compare"):
            self._simulate_impossible()     # says why at once, and stops waiting for it
        self._auto_select()
        self.sig_comparison_ready.emit()

    def start_diff(self) -> None:
        """Compare values (identical / changed, max |Δ|) in the compute process."""
        comp = self.comparison
        if comp is None or comp.left is None or comp.right is None or not _module_available("explorer.core.diff"):
            return
        self._diff_deferred = False
        self.runner.start("diff", "Comparing values…", _diff, comp.left, comp.right, self.remap,
                          on_result=lambda rep, c=comp: self._diff_ready(c, rep),
                          on_error=lambda e: self._soft_error("Comparing values", e))

    def _resume_diff(self) -> None:
        if self._diff_deferred:      # queued behind any newer detail job (one number cruncher at a time)
            self.start_diff()

    def _diff_ready(self, comp: C.Comparison, report) -> None:
        if comp is not self.comparison:
            return
        comp.apply_diff(report)
        self._statuses_changed()
        self._auto_select()      # files differing only in values: the first changed key, not an empty pane

    def _statuses_changed(self) -> None:
        if self.diff_only.isChecked() or self.problems_only.isChecked():
            self.apply_filter()
        else:
            self.compare.refresh()
        self._refresh_detail_title()

    def _update_title(self) -> None:
        names = [os.path.basename(s.label) if s and not s.is_model else (s.label if s else "—") for s in self.sides]
        self.setWindowTitle(f"{names[0]}  ⇄  {names[1]} — State-Dict Explorer")

    # ---- filter ------------------------------------------------------------------------------------------------
    def _schedule_filter(self, delay: int = 150) -> None:
        self._filter_pending = True
        self._filter_timer.start(delay)

    def _focus_filter(self) -> None:
        self.filter_edit.setFocus()
        self.filter_edit.selectAll()

    def apply_filter(self, initial: bool = False) -> None:
        self._filter_pending = False
        self._filter_timer.stop()
        comp = self.comparison
        if comp is None:
            return
        try:
            keys = comp.filtered_keys(self.filter_edit.text(), regex=self.regex_box.isChecked(),
                                      differences_only=self.diff_only.isChecked(),
                                      problems_only=self.problems_only.isChecked())
            self.filter_edit.setStyleSheet("")
            self.filter_edit.setToolTip("")
        except ValueError as e:
            self.filter_edit.setStyleSheet("QLineEdit { border: 1px solid #C0392B; }")
            self.filter_edit.setToolTip(str(e))
            self.filter_count.setText("bad regex")
            return
        if keys is None:
            self.compare.set_tree(comp, None, expand="auto")
            self._fit_shape_columns()
            self.filter_count.setText(f"{len(comp.rows):,} key{'' if len(comp.rows) == 1 else 's'}")
            self.sig_filter_applied.emit()
            return
        self.filter_count.setText(f"{len(keys):,} of {len(comp.rows):,} keys")
        if len(keys) > BIG_FILTER_RESULT:
            self.runner.start("filter", "Filtering…", _build_subtree, comp, keys,
                              on_result=lambda tree, c=comp: self._show_subtree(c, tree),
                              on_error=lambda e: self._failed("Filtering", e))
        else:
            self.runner.cancel("filter")
            self._show_subtree(comp, comp.subtree(keys))

    def _show_subtree(self, comp, tree) -> None:
        if comp is not self.comparison:
            return
        self.compare.set_tree(comp, tree, expand="auto")
        self._fit_shape_columns()
        self.sig_filter_applied.emit()

    def _fit_shape_columns(self) -> None:
        """Widen each pane's Shape column to the shapes in view ((512, 256, 3, 3) whole), never narrower than it
        is. Qt measures the rows in view only, so this costs the same for 10**6 keys."""
        for view, side in ((self.compare.left, LEFT), (self.compare.right, RIGHT)):
            col = next((i for i, c in enumerate(COLUMNS) if c.field == "shape" and c.side == side), None)
            if col is None or view.isColumnHidden(col):
                continue
            want = view.sizeHintForColumn(col) + 8
            if want > view.header().sectionSize(col):
                view.header().resizeSection(col, min(want, 260))

    # ---- simulate ----------------------------------------------------------------------------------------------
    def _sim_option_changed(self, _=None) -> None:
        if self.comparison is not None and self.comparison.simulated:
            self.simulate()

    def simulate(self) -> None:
        left, right = self.sides
        if left is None or right is None:
            if self._loads_pending():
                self.simulate_wanted = True    # runs once both sides are open
            else:
                self._simulate_impossible()
            return
        if not _module_available("explorer.core.simulate"):
            self.simulate_wanted = False
            self.unmet["simulate"] = "the load was not simulated (explorer.core.simulate is missing)"
            self.banner.show_message("Simulation is not available in this build (explorer.core.simulate missing).")
            return
        self.simulate_wanted = False
        self.unmet.pop("simulate", None)
        self.runner.start("simulate", "Simulating load_state_dict…", _simulate, left, right, self.remap,
                          self.act_strict.isChecked(), self.act_assign.isChecked(),
                          on_result=self._simulation_ready, on_error=self._simulation_failed)

    def _simulate_impossible(self) -> None:
        """A simulation was asked for, a side is missing and none is on its way: say so (never wait for it)."""
        self.simulate_wanted = False
        failed = bool(self.failed_sides)
        self.unmet["simulate"] = "the load was not simulated (" + \
            ("a side did not open" if failed else "it needs a side on the left and on the right") + ")"
        self.banner.show_message(
            "Simulate load runs <code>left.load_state_dict(right)</code>: it needs a <b>model</b> (File → Open "
            "model…) or a checkpoint on the left and a <b>checkpoint</b> on the right"
            + (" — a side did not open." if failed else "."), error=failed)

    def _simulation_failed(self, exc: BaseException) -> None:
        self.unmet["simulate"] = f"the load was not simulated ({type(exc).__name__}: {exc})"
        self._failed("Simulating the load", exc)

    def _simulation_ready(self, result) -> None:
        report, note = result
        comp = self.comparison
        if comp is None:
            return
        comp.apply_simulation(report)
        self.banner.show_report(report, comp, note=note)
        self._statuses_changed()
        self.centralWidget().layout().activate()   # the banner's height now, so that scrolling aims right
        self._auto_select()
        self._scroll_to_current()
        self.sig_simulation_done.emit(report)

    def apply_suggestion(self, suggestion) -> None:
        """Apply a remap suggestion to the right side: rows re-align and the simulation re-runs."""
        remap = getattr(suggestion, "remap", None)
        right = self.sides[RIGHT]
        if remap is None or right is None:
            return
        self.statusBar().showMessage(f"Applied: {getattr(suggestion, 'title', remap.describe())}", 8000)
        self.simulate_wanted = True
        if remap.kind == "entry":
            self.choose_entry(RIGHT, tuple(remap.entry or ()))
            return
        self.remap = remap
        self.rename = {k: remap.new_key(k) for k in right.infos if remap.new_key(k) != k}
        self.rebuild()

    def export_suggestion(self, suggestion) -> None:
        right = self.sides[RIGHT]
        if right is None:
            return
        base = os.path.splitext(os.path.basename(right.label))[0] if not right.is_model else "model"
        path, _ = QFileDialog.getSaveFileName(self, "Export the fixed checkpoint", f"{base}_fixed.safetensors",
                                              "safetensors (*.safetensors);;PyTorch checkpoint (*.pt *.pth)")
        if path:
            self.export_fixed(suggestion, path)

    def export_fixed(self, suggestion, path: str) -> None:
        """Write the right side with a suggestion's remap applied (atomically, by the core) in a worker."""
        right = self.sides[RIGHT]
        if right is None:
            return
        self.runner.start("export", f"Writing {os.path.basename(path)}…", _export_fixed, suggestion.remap, right,
                          path, on_result=self._exported,
                          on_error=lambda e: self._failed("Exporting the fixed checkpoint", e))

    def _exported(self, path: str) -> None:
        self.statusBar().showMessage(f"Wrote {path}", 10000)
        self.sig_exported.emit(path)

    # ---- detail ------------------------------------------------------------------------------------------------
    def _on_current(self, node) -> None:
        self._request_detail(node)

    def _request_detail(self, node=None) -> None:
        node = node if node is not None else self.compare.current_node()
        comp = self.comparison
        if node is None or comp is None:
            self.runner.cancel("detail")
            return
        if not (node.is_leaf and not node.children) or node.data is None:
            self.runner.cancel("detail")
            self.detail.show_module(node.path, comp.modules.get(node.path))
            return
        row = node.data
        key = row.key
        if self.runner.is_busy("diff"):      # one number cruncher: the key the user looks at goes first
            self.runner.cancel("diff")
            self._diff_deferred = True
        self.detail.show_pending(key, row, comp.status(row))
        fn = compute_detail if _elements(row) <= SMALL_DETAIL_ELEMENTS else compute_detail_isolated
        self.runner.start("detail", f"Statistics of {key}…", fn, comp, key, self.detail.bins.value(),
                          on_result=lambda res, r=row, c=comp: self._detail_ready(c, r, res),
                          on_partial=lambda res, r=row, c=comp: self._detail_first_look(c, r, res),
                          on_error=lambda e, k=key: self._detail_failed(k, e),
                          on_cancelled=self._resume_diff)

    def _detail_ready(self, comp, row, res) -> None:
        if comp is not self.comparison:
            return
        self.detail.show_result(res, row, comp.status(row))
        self.sig_detail_shown.emit(res.key)
        QTimer.singleShot(0, self._resume_diff)

    def _detail_first_look(self, comp, row, res) -> None:
        """Pass 1's figures of a large tensor (estimated histogram/percentiles), shown until the exact ones come."""
        if comp is self.comparison:
            self.detail.show_result(res, row, comp.status(row))
            self.sig_detail_first_look.emit(res.key)

    def _detail_failed(self, key: str, exc: BaseException) -> None:
        QTimer.singleShot(0, self._resume_diff)
        if is_expected(exc):
            self.detail.show_error(key, str(exc))
        else:
            self.detail.show_error(key, f"{type(exc).__name__}: {exc}")
            show_error_dialog(self, f"Computing statistics of {key}", exc)

    def _refresh_detail_title(self) -> None:
        node = self.compare.current_node()
        if node is not None and node.data is not None and self.comparison is not None and self.detail.key:
            self.detail._set_title(node.data.key, node.data, self.comparison.status(node.data))

    def _auto_select(self) -> None:
        """Select the key asked for (--select), else -- when nothing is selected -- the most telling problem, so the
        detail pane is never empty on first sight."""
        comp = self.comparison
        if comp is None:
            return
        if self.select_when_ready:
            if self.compare.select_path(self.select_when_ready):
                self.select_when_ready = None
            return
        current = self.compare.selection_key()
        if current and current != self._auto_key:
            return      # the user chose a row (a group row too): leave it
        order = (C.NONFINITE, C.RUNNING_STAT, C.SHAPE_MISMATCH, C.SHAPE_DIFFERS, C.MISSING, C.UNEXPECTED, C.CHANGED,
                 C.DTYPE_CAST, C.DTYPE_DIFFERS, C.ONLY_A, C.ONLY_B)
        report = comp.report if comp.simulated else None
        if report is not None and getattr(report, "raises", False):
            # the keys that make the load raise come first: they are what the user must see (and scroll to)
            order = (C.SHAPE_MISMATCH, C.MISSING, C.UNEXPECTED) + tuple(o for o in order if o not in
                                                                       (C.SHAPE_MISMATCH, C.MISSING, C.UNEXPECTED))
        best = None
        for row in comp.rows.values():
            st = comp.status(row)
            if st in order and (best is None or order.index(st) < order.index(comp.status(best))):
                best = row
        if best is not None and best.key != current:
            self._auto_key = best.key
            self.compare.select_path(best.key)

    def _scroll_to_current(self) -> None:
        """Bring the current row into view (the banner appearing above the panes shrinks them)."""
        idx = self.compare.selection.currentIndex()
        if idx.isValid():
            # a row chosen for the user (the first problem) is centred, so the problems after it show as well
            auto = self._auto_key is not None and self.compare.selection_key() == self._auto_key
            self.compare.right.scrollTo(idx.siblingAtColumn(NAME_COLUMN[RIGHT]),
                                        QAbstractItemView.PositionAtCenter if auto else QAbstractItemView.EnsureVisible)

    def copy_key(self) -> None:
        path = self.compare.current_path()
        if path:
            QGuiApplication.clipboard().setText(path)
            self.statusBar().showMessage(f"Copied {path}", 3000)

    # ---- demo --------------------------------------------------------------------------------------------------
    def open_demo(self) -> None:
        from .demo_data import demo_checkpoint_path, make_demo_checkpoint
        path = demo_checkpoint_path()
        self.simulate_wanted = True
        self.open_path(LEFT, "demo:MyBatchNormModel")
        self.runner.start("demo", "Preparing the demo checkpoint…", make_demo_checkpoint, path,
                          on_result=lambda p: self.open_path(RIGHT, p),
                          on_error=lambda e: self._failed("Preparing the demo", e))

    def open_batchnorm_demo(self) -> None:
        try:
            from .demo_view import open_batchnorm_demo
        except ImportError as e:
            self.banner.show_message(f"The BatchNorm demo is not available in this build ({e}).")
            return
        try:
            w = open_batchnorm_demo(self)
        except Exception as e:  # noqa: BLE001
            self._failed("Opening the BatchNorm demo", e)
            return
        if w is not None:
            self._bn_demo = w     # keep a reference while it is open
            w.show()

    # ---- status bar and errors ---------------------------------------------------------------------------------
    def _update_activity(self) -> None:
        active = self.runner.active()
        if active:
            self.activity.setText(active[-1].label)
            self.progress.setRange(0, 0)
            self.progress.show()
            self.cancel_button.show()
        else:
            self.activity.setText("")
            self.progress.hide()
            self.cancel_button.hide()

    def _on_progress(self, label: str, done: int, total: int) -> None:
        now = time.monotonic()
        if now - self._last_progress_ui < 0.2 and done < total:   # QProgressBar repaints synchronously: 5 Hz
            return
        self._last_progress_ui = now
        if self.activity.text() != label:
            self.activity.setText(label)
        if total > 0:
            if self.progress.maximum() != total:
                self.progress.setRange(0, total)
            self.progress.setValue(min(done, total))

    def banner_clear_message(self) -> None:
        if self.banner.isVisible() and self.banner.raises is None:
            self.banner.hide()

    def _failed(self, doing: str, exc: BaseException) -> None:
        if is_expected(exc):
            self.banner.show_message(f"<b>{doing} failed:</b> {_html(str(exc))}")
            self.statusBar().showMessage(f"{doing} failed: {exc}", 15000)
        else:
            self.statusBar().showMessage(f"{doing} failed: {type(exc).__name__}", 15000)
            show_error_dialog(self, doing, exc)

    def _soft_error(self, doing: str, exc: BaseException) -> None:
        self.statusBar().showMessage(f"{doing} failed: {type(exc).__name__}: {exc}", 15000)

    def _loads_pending(self, finishing: str = "") -> bool:
        """Is a side still being opened or aligned (``finishing``: the channel whose result is being handled)?"""
        return any(self.runner.is_busy(ch) for ch in ("load0", "load1", "demo", "compare") if ch != finishing)

    def unmet_requests(self) -> list[str]:
        """What was asked for (a side to open, ``--select``, a simulation) and did not happen, in words."""
        out = [f"the {SIDE_NAMES[side]} side did not open ({msg})" for side, msg in sorted(self.failed_sides.items())]
        if self.select_when_ready:
            out.append(f"--select {self.select_when_ready!r} matched no key")
        out += list(self.unmet.values())
        return out

    def is_idle(self) -> bool:
        return not self.runner.is_busy() and not self._filter_pending and not self.simulate_wanted \
            and not self._diff_deferred


# ---- helpers -------------------------------------------------------------------------------------------------------
def _export_fixed(remap, right: C.SideData, path: str, *, progress=None, should_stop=None) -> str:
    from explorer.core.remap.export import apply_remap
    return apply_remap(right.side, remap, path, entry=right.entry if not right.is_model else None,
                       progress=progress, should_stop=should_stop)


def _elements(row) -> int:
    """The larger side's element count of a row (shapes from the headers; nothing is read)."""
    n = 0
    for info in (row.left, row.right):
        shape = getattr(info, "shape", None)
        if info is None or shape is None:
            continue
        try:
            k = 1
            for d in shape:
                k *= int(d)
        except (TypeError, ValueError):
            return 1 << 62       # an odd shape: the isolated path, which reports it
        n = max(n, k)
    return n


def _list(value) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value] if value else []
    return [str(v) for v in value]


def _bool(value) -> bool:
    if isinstance(value, str):
        return value.lower() in ("1", "true", "yes")
    return bool(value)


def _html(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
