"""The main window: wiring only. Panes, detail pane, banner, bars, actions and settings are their own modules; the
work is done by ``explorer.session`` functions run in ``Runner``."""
from __future__ import annotations

import html
import os

from PySide6.QtCore import QSettings, Qt, QTimer, Signal
from PySide6.QtWidgets import QMainWindow, QSplitter, QVBoxLayout, QWidget

from ..core.remote.files import basename, is_remote
from ..session import compare as C
from ..errors import RangeNotSupportedError
from ..session import dispose, jobs, series_job
from ..session.compare import LEFT, RIGHT, Pane
from ..session.compute_process import engine
from ..session.parse_guard import PARSE_TIMEOUT_S, open_guarded, probe, read_ahead, warm_parse_process
from . import dialogs
from . import settings as S
from .actions import fill_recent_menu, install_actions
from .bars import Activity, FilterBar
from .compare_view import CompareView, urls_to_paths
from .detail_pane import DetailPane
from .series_view import SeriesView, show_series
from .errors_ui import is_expected, show_error_dialog
from .simulate_view import Banner
from .window_detail import DetailWiring
from .window_remote import RemoteWiring
from .window_simulate import SimulationWiring
from .workers import Runner

BIG_FILTER_RESULT = 5000   # above this many matched keys, the filtered tree is built in a worker
BIG_FILTER_SCAN = 100_000  # above this many keys, even the scan for matches runs in a worker (10**6 keys: 0.1-0.5 s)


class MainWindow(RemoteWiring, SimulationWiring, DetailWiring, QMainWindow):
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
        self.settings = settings if settings is not None else S.default_settings()
        self.history = S.History(self.settings)
        self.runner = Runner(self)
        self.sides: list[C.SideData | None] = [None, None]
        self.comparison: C.Comparison | None = None
        self.rename: dict[str, str] = {}     # right key -> key it is shown (and loaded) as, from ``self.remap``
        self.remap = None                     # explorer.core.remap.Remap applied to the right side
        self.simulate_wanted = False      # run a simulation as soon as both sides are aligned
        self.select_when_ready: str | None = None   # a key to select once it is shown (--select)
        self.load_failures = 0
        self.failed_sides: dict[int, str] = {}   # side -> why it did not open (cleared when it opens)
        self.unmet: dict[str, str] = {}          # what was asked for and did not happen (--screenshot exits 2)
        self.parse_timeout_s = PARSE_TIMEOUT_S   # a file whose parse takes longer is stopped and reported
        self.parse_probe = probe                 # the compute-process function that parses a file first
        self._auto_key: str | None = None     # the row _auto_select chose (re-chosen until the user picks one)
        self._filter_pending = False
        self._diff_deferred = False        # a value diff was put off so the selected key's histograms come first
        self.series_view: SeriesView | None = None   # made when a run opens (--series, a dropped run folder)

        self.banner = Banner()
        self.banner.sig_apply.connect(self.apply_suggestion)
        self.banner.sig_export.connect(self.export_suggestion)
        self.compare = CompareView()
        self.compare.sig_current_changed.connect(self._on_current)
        self.compare.sig_files_dropped.connect(self._on_dropped)
        self.compare.sig_files_entered.connect(self.read_ahead)
        self.compare.sig_entry_chosen.connect(self.choose_entry)
        self.compare.sig_open_clicked.connect(self.ask_open)
        self.compare.sig_model_clicked.connect(self.open_config_model)
        self.detail = DetailPane()
        self.detail.sig_bins_changed.connect(lambda _: self._request_detail())

        self.filter_bar = FilterBar()
        self.filter_bar.sig_changed.connect(self._schedule_filter)
        self.filter_edit, self.regex_box = self.filter_bar.edit, self.filter_bar.regex
        self.diff_only, self.problems_only = self.filter_bar.diff_only, self.filter_bar.problems_only
        self.filter_count = self.filter_bar.count
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

        install_actions(self)
        self.activity = Activity(self.statusBar(), self.runner.cancel)
        self._init_remote()
        self.runner.sig_activity.connect(self._update_activity)
        self.runner.sig_progress.connect(self.activity.show_progress)
        self._filter_timer = QTimer(self)
        self._filter_timer.setSingleShot(True)
        self._filter_timer.setInterval(150)
        self._filter_timer.timeout.connect(self.apply_filter)
        self.resize(1400, 860)
        S.restore_window(self, self.settings)
        C.freeze_heap()
        self._prewarm_timer = QTimer(self)      # after the first paint; stopped if the window closes first
        self._prewarm_timer.setSingleShot(True)
        self._prewarm_timer.timeout.connect(self._prewarm)
        self._prewarm_timer.start(300)

    def _prewarm(self) -> None:
        """Start the compute process while the user looks at the window (it imports torch: ~1-2 s). Not while a
        side is being opened: listing needs no torch, and importing it would hold this process's interpreter lock
        for a second before the tree shows; it starts once the tree is there."""
        if self._loads_pending():
            self._prewarm_timer.start(300)
            return
        self.runner.start("prewarm", "Starting the compute process…", jobs.start_engine, engine())
        self.runner.start("prewarm-parse", "Starting the parse process…", warm_parse_process)

    # ---- settings ----------------------------------------------------------------------------------------------
    def save_settings(self) -> None:
        S.save_window(self, self.settings)

    def recent_files(self) -> list[str]:
        return self.history.files()

    def fill_recent_menu(self) -> None:
        fill_recent_menu(self)

    def closeEvent(self, event):
        self._prewarm_timer.stop()
        self.save_settings()
        self.runner.shutdown(3000)
        if self.series_view is not None:
            self.series_view.shutdown()
        super().closeEvent(event)

    # ---- opening -----------------------------------------------------------------------------------------------
    def ask_open(self, side: int) -> None:
        local = [p for p in self.recent_files() if not is_remote(p)]    # a URL has no folder to start in
        start = os.path.dirname(local[0]) if local else ""
        path = dialogs.checkpoint_path(self, Pane(side).word, start, pointed_at=lambda p: self.read_ahead([p]))
        if path:
            self.open_path(side, path)

    def ask_open_folder(self, side: int) -> None:
        path = dialogs.folder_path(self, Pane(side).word)
        if path:
            self.open_path(side, path)

    def ask_model(self) -> None:
        spec = dialogs.model_spec(self, self.history.models() or ["demo:MyBatchNormModel"])
        if spec:
            self.open_path(LEFT, spec)

    interactive = True      # may ask the user (a --screenshot run asks nothing: app.py sets False)

    def open_path(self, side: int, text: str, entry=None, download: bool = False) -> None:
        """Open a file, folder, URL or model spec in a pane, in a worker; what was open stays until it succeeds."""
        text = os.fspath(text)
        self.banner_clear_message()
        header = self.compare.left_header if side == LEFT else self.compare.right_header
        header.set_error("")
        # parsed first in the compute process, with a time limit: a parse stuck in C code there cannot freeze this
        # window (it would hold the interpreter lock of this process), and is stopped and reported
        doing = "Downloading" if download else "Opening"
        self.runner.start(f"load{side}", f"{doing} {basename(text) or text}…", open_guarded, text, entry,
                          timeout_s=self.parse_timeout_s, probe_fn=self.parse_probe, download=download,
                          on_result=lambda data: self._side_loaded(side, data),
                          on_error=lambda exc: self._load_failed(side, text, exc))

    def open_config_model(self, side: int) -> None:
        """The model a checkpoint's config.json describes, on the left; the checkpoint on the right (one click)."""
        data = self.sides[side]
        if data is None or data.config_model is None:
            return
        if side == LEFT:
            self.swap_sides()
        self.open_path(LEFT, data.config_model[0])

    def open_series(self, paths: list[str]) -> None:
        """Show the series view in place of the panes and measure the run ``paths`` name, in a worker."""
        self.unmet.pop("series", None)
        show_series(self, True).open(paths)

    def _open_dropped(self, side: int, path: str) -> None:
        """A dropped folder that is a run opens the series view, anything else the pane (decided in a worker)."""
        self.runner.start("drop", "Looking at the drop…", series_job.looks_like_run, path,
                          on_result=lambda run: self.open_series([path]) if run else self.open_path(side, path))

    def _side_loaded(self, side: int, data: C.SideData) -> None:
        show_series(self, False)
        self.sides[side] = data
        self.failed_sides.pop(side, None)
        (self.compare.left_header if side == LEFT else self.compare.right_header).set_side(data)
        if data.is_model and data.text and ":" in data.text:
            self.history.add_model(data.text)
        else:
            self.history.add_file(data.text)
        self.rename, self.remap = {}, None
        self.sig_side_loaded.emit(side)
        self.rebuild()

    def _load_failed(self, side: int, text: str, exc: BaseException) -> None:
        if isinstance(exc, RangeNotSupportedError) and is_remote(text) and self.interactive \
                and dialogs.confirm_download(self, text, getattr(exc, "size", None)):
            self.open_path(side, text, download=True)     # the same open, the file fetched whole first
            return
        msg = str(exc) or type(exc).__name__
        header = self.compare.left_header if side == LEFT else self.compare.right_header
        if is_expected(exc):
            named = msg.startswith(f"{text}: ")     # the message names the file already
            said = msg if named else f"{text}: {msg}"
            # the pane names a local file by its name (it may still show another; a URL in full: its host matters),
            # then what is wrong and what to do
            name = text if is_remote(text) else basename(text)
            header.set_error(f"⚠ {name}: {msg[len(text) + 2:] if named else msg}", whole=said)
            self.statusBar().showMessage(f"Could not open {said}", 15000)
        else:
            header.set_error(f"⚠ unexpected error opening {basename(text)} (details in the dialog)")
            show_error_dialog(self, f"Opening {text} ({Pane(side).word} pane)", exc)
        self.load_failures += 1
        self.failed_sides[side] = msg
        self.sig_load_failed.emit(side, msg)
        if self.simulate_wanted and not self._loads_pending(f"load{side}"):
            self._simulate_impossible()     # the simulation asked for cannot run now: say so, never wait for it

    def choose_entry(self, side: int, entry) -> None:
        data = self.sides[side]
        if data is None:
            return
        self.runner.start(f"load{side}", "Switching state dict…", jobs.reselect_entry, data, tuple(entry),
                          on_result=lambda d: self._side_loaded(side, d),
                          on_error=lambda exc: self._load_failed(side, data.text, exc))

    def swap_sides(self) -> None:
        self.sides.reverse()
        self.rename, self.remap = {}, None
        self.compare.left_header.set_side(self.sides[LEFT])
        self.compare.right_header.set_side(self.sides[RIGHT])
        self.reset_transfers()
        self.rebuild()

    def _on_dropped(self, side, paths: list[str]) -> None:
        if side is None:
            self.open_path(LEFT, paths[0])
            self.open_path(RIGHT, paths[1])
        else:
            self._open_dropped(side, paths[0])

    def read_ahead(self, paths: list[str]) -> None:
        """Files dragged over the window: parse them now, in a thread of their own, so their open, when they are
        dropped a moment later, finds them parsed (``parse_guard.read_ahead``: nothing shown, nothing reported; it
        gives way to any other open)."""
        import threading
        threading.Thread(target=read_ahead, args=(list(paths[:2]),),
                         kwargs={"probe_fn": self.parse_probe, "timeout_s": self.parse_timeout_s},
                         name="read ahead", daemon=True).start()

    def dragEnterEvent(self, event):
        paths = urls_to_paths(event.mimeData())
        if paths:
            event.acceptProposedAction()
            self.read_ahead(paths)

    def dropEvent(self, event):
        paths = urls_to_paths(event.mimeData())
        if not paths:
            return
        event.acceptProposedAction()
        if len(paths) >= 2:
            self._on_dropped(None, paths)
        else:
            self._open_dropped(RIGHT if self.sides[LEFT] is not None else LEFT, paths[0])

    # ---- aligning ----------------------------------------------------------------------------------------------
    def rebuild(self) -> None:
        left, right = self.sides
        if left is None and right is None:
            return
        self.runner.start("compare", "Aligning keys…", jobs.build_comparison, left, right, dict(self.rename),
                          on_result=self._comparison_ready, on_error=lambda e: self._failed("Aligning keys", e))

    def _comparison_ready(self, comp: C.Comparison) -> None:
        was_simulated = self.comparison is not None and self.comparison.simulated
        replaced, self.comparison = [self.comparison], comp
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
        if replaced[0] is not None:     # taken apart in a thread: dropped here, it stalls this one (see dispose)
            dispose.release_later(replaced)

    def start_diff(self) -> None:
        """Compare values (identical / changed, max |Δ|) in the compute process."""
        comp = self.comparison
        if comp is None or comp.left is None or comp.right is None or not jobs.module_available("explorer.core.diff"):
            return
        self._diff_deferred = False
        self.runner.start("diff", "Comparing values…", jobs.diff, comp.left, comp.right, self.remap,
                          on_result=lambda rep, c=comp: self._diff_ready(c, rep),
                          on_error=lambda e: self._soft_error("Comparing values", e))

    def _resume_diff(self) -> None:
        if self._diff_deferred:      # queued behind any newer detail job (one number cruncher at a time)
            self.start_diff()

    def _diff_ready(self, comp: C.Comparison, report) -> None:
        if comp is not self.comparison:
            return
        comp.apply_diff(report)
        self.refresh_transfers()      # the diff read every tensor's values
        self._statuses_changed()
        self._auto_select()      # files differing only in values: the first changed key, not an empty pane

    def _statuses_changed(self) -> None:
        if self.filter_bar.by_status():
            self.apply_filter()
        else:
            self.compare.refresh()
        self._refresh_detail_title()

    def _update_title(self) -> None:
        names = [basename(s.label) if s and not s.is_model else (s.label if s else "—") for s in self.sides]
        self.setWindowTitle(f"{names[0]}  ⇄  {names[1]} — State-Dict Explorer")

    # ---- filter ------------------------------------------------------------------------------------------------
    def _schedule_filter(self, delay: int = 150) -> None:
        self._filter_pending = True
        self._filter_timer.start(delay)

    def focus_filter(self) -> None:
        self.filter_edit.setFocus()
        self.filter_edit.selectAll()

    def apply_filter(self, initial: bool = False) -> None:
        self._filter_pending = False
        self._filter_timer.stop()
        comp = self.comparison
        if comp is None:
            return
        text, query = self.filter_edit.text(), self.filter_bar.query()
        if len(comp.rows) > BIG_FILTER_SCAN and (text or self.filter_bar.by_status()):
            if self.compare.model.comparison is not comp:   # never keep showing a replaced comparison meanwhile
                self._show_filtered(comp, None)
            self.runner.start("filter", "Filtering…", jobs.filter_tree, comp, text, query,
                              on_result=lambda res, c=comp: self._filter_done(c, res),
                              on_error=lambda e: self._filter_failed(e))
            return
        try:
            keys = comp.filtered_keys(text, **query)
            self.filter_bar.show_error("")
        except ValueError as e:
            self.filter_bar.show_error(str(e))
            return
        if keys is None:
            self._show_filtered(comp, None)
            return
        self.filter_count.setText(f"{len(keys):,} of {len(comp.rows):,} keys")
        if len(keys) > BIG_FILTER_RESULT:
            self.runner.start("filter", "Filtering…", jobs.build_subtree, comp, keys,
                              on_result=lambda tree, c=comp: self._show_subtree(c, tree),
                              on_error=lambda e: self._failed("Filtering", e))
        else:
            self.runner.cancel("filter")
            self._show_subtree(comp, comp.subtree(keys))

    def _filter_done(self, comp, result) -> None:
        """A filter of a large comparison, scanned and built in a worker: ``(keys matched, tree)``."""
        if comp is not self.comparison:
            return
        self.filter_bar.show_error("")
        self._show_filtered(comp, *result)

    def _filter_failed(self, exc: BaseException) -> None:
        if isinstance(exc, ValueError):       # a regular expression that does not compile
            self.filter_bar.show_error(str(exc))
        else:
            self._failed("Filtering", exc)

    def _show_filtered(self, comp, count: int | None, tree=None) -> None:
        """Show ``tree`` (``count`` keys of ``comp``), or the whole comparison when ``count`` is None."""
        if count is None:
            self.compare.set_tree(comp, None, expand="auto")
            self.compare.fit_shape_columns()
            self.filter_count.setText(f"{len(comp.rows):,} key{'' if len(comp.rows) == 1 else 's'}")
            self.sig_filter_applied.emit()
            return
        self.filter_count.setText(f"{count:,} of {len(comp.rows):,} keys")
        self._show_subtree(comp, tree)

    def _show_subtree(self, comp, tree) -> None:
        if comp is not self.comparison:
            return
        self.compare.set_tree(comp, tree, expand="auto")
        self.compare.fit_shape_columns()
        self.sig_filter_applied.emit()

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
        self.activity.show_active(active[-1].label if active else None)

    def banner_clear_message(self) -> None:
        if self.banner.isVisible() and self.banner.raises is None:
            self.banner.hide()

    def _failed(self, doing: str, exc: BaseException) -> None:
        if is_expected(exc):
            self.banner.show_message(f"<b>{doing} failed:</b> {html.escape(str(exc), quote=False)}")
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
        out = [f"the {Pane(side).word} side did not open ({msg})" for side, msg in sorted(self.failed_sides.items())]
        if self.select_when_ready:
            out.append(f"--select {self.select_when_ready!r} matched no key")
        out += list(self.unmet.values())
        return out

    def is_idle(self) -> bool:
        return not self.runner.is_busy() and not self._filter_pending and not self.simulate_wanted \
            and not self._diff_deferred and not dispose.pending() and not self.compare.expanding
