"""A training run at a glance, in the window: the findings on top, the keys with a heat map of their relative change
(keys x checkpoints), and for the selected key its trajectories over the steps, its histogram at a checkpoint chosen
with a slider and two checkpoints' histograms overlaid. Every figure is computed by ``session.series_job`` in the
window's ``Runner``; this module only paints."""
from __future__ import annotations

import html
import os

import pyqtgraph as pg
from PySide6.QtCore import QBuffer, QByteArray, QIODevice, QSortFilterProxyModel, Qt, Signal
from PySide6.QtGui import QColor
from PySide6.QtWidgets import (QAbstractItemView, QComboBox, QFileDialog, QGridLayout, QHBoxLayout, QHeaderView,
                               QLabel, QLineEdit, QPushButton, QSlider, QSplitter, QTreeView, QVBoxLayout, QWidget)

from ..session import series_job as J
from ..session.compute_process import engine
from .plot_parts import legend_below, translucent_brush
from .series_heat import NONFINITE, PATH_ROLE, UNCHANGED, CellDelegate, HeatModel

CELL_W = 26
ROWS_OPEN = 80                   # the key tree opens as deep as keeps its rows under this many (all, when it fits)
A_COLOR, B_COLOR, ONE_COLOR = "#0072B2", "#D55E00", "#009E73"
ALARM = ("nonfinite", "unread")


class _Plot(pg.PlotWidget):
    def __init__(self, title: str, xlabel: str, ylabel: str):
        super().__init__(background="w")
        self.setTitle(title, color="#333", size="9pt")
        self.setLabel("bottom", xlabel)
        self.setLabel("left", ylabel)
        self.showGrid(x=True, y=True, alpha=0.25)
        self.setMinimumSize(200, 150)
        self.getPlotItem().setMenuEnabled(False)
        for axis in ("bottom", "left"):
            self.getPlotItem().getAxis(axis).enableAutoSIPrefix(False)



class SeriesView(QWidget):
    """The series view. ``open(paths)`` measures in the runner; ``settled`` once the figures are shown or it failed."""

    sig_ready = Signal()            # figures shown
    sig_failed = Signal(str)        # the run did not open / was not measured
    sig_key_shown = Signal(str)     # a key's trajectories plotted
    sig_hist_shown = Signal(str)    # a key's histograms plotted
    sig_exported = Signal(str)      # path written
    sig_measured = Signal(bool)     # a measured run is there to export (True), or none is (False)

    def __init__(self, runner, parent=None):
        super().__init__(parent)
        self.runner = runner
        self.data: J.SeriesData | None = None
        self.failed = ""
        self.key = ""
        self.measuring = False
        self._build()
        runner.sig_activity.connect(self._check_cancelled)

    # ---- layout ------------------------------------------------------------------------------------------------
    def _build(self) -> None:
        self.title = QLabel("A training run: open a folder of checkpoints (File → Open run folder…).")
        self.title.setTextFormat(Qt.PlainText)
        self.title.setWordWrap(True)
        self.title.setStyleSheet("font-weight: 600;")
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.clicked.connect(self.cancel)
        self.cancel_button.hide()
        self.findings = QLabel()
        self.findings.setWordWrap(True)
        self.findings.setTextFormat(Qt.RichText)
        self.findings.setTextInteractionFlags(Qt.TextSelectableByMouse)
        self.findings.setStyleSheet("QLabel { background: #eef3fa; border: 1px solid #0072B2; border-radius: 4px; "
                                    "padding: 4px; }")
        self.findings.hide()
        head = QHBoxLayout()
        head.addWidget(self.title, 1)
        head.addWidget(self.cancel_button)

        left = self._build_keys()
        self._build_plots()

        self.splitter = QSplitter(Qt.Horizontal)
        self.splitter.setChildrenCollapsible(False)
        self.splitter.addWidget(left)
        self.splitter.addWidget(self.plots)
        self.splitter.setStretchFactor(0, 2)
        self.splitter.setStretchFactor(1, 3)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addLayout(head)
        lay.addWidget(self.findings)
        lay.addWidget(self.splitter, 1)

    def _build_keys(self) -> QWidget:
        """The key list with its heat map: a filter, the metric, the table, the colour legend."""
        self.metric = QComboBox()
        for name, text in J.METRICS.items():
            self.metric.addItem(text, name)
        self.metric.currentIndexChanged.connect(self._metric_changed)
        self.metric.setMinimumContentsLength(18)
        self.metric.setSizeAdjustPolicy(QComboBox.AdjustToMinimumContentsLengthWithIcon)
        self.filter = QLineEdit()
        self.filter.setMinimumWidth(110)
        self.filter.setPlaceholderText("Filter keys…")
        self.filter.setClearButtonEnabled(True)
        self.model = HeatModel(self)
        self.proxy = QSortFilterProxyModel(self)
        self.proxy.setSourceModel(self.model)
        self.proxy.setFilterKeyColumn(0)
        self.proxy.setFilterRole(PATH_ROLE)          # a key's or module's full dotted path
        self.proxy.setRecursiveFilteringEnabled(True)   # a module shows while any of its keys matches
        self.proxy.setFilterCaseSensitivity(Qt.CaseInsensitive)
        self.filter.textChanged.connect(self._filter_changed)
        self.table = QTreeView()
        self.table.setModel(self.proxy)
        self.table.setSelectionBehavior(QAbstractItemView.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SingleSelection)
        self.table.setUniformRowHeights(True)
        self.table.setIndentation(12)
        self.table.setAllColumnsShowFocus(True)
        self.table.selectionModel().currentRowChanged.connect(self._row_changed)
        self.table.setItemDelegate(CellDelegate(self.table))
        self.legend = QLabel(self._legend_text())
        self.legend.setWordWrap(True)
        self.legend.setStyleSheet("color: #555; font-size: 8pt;")
        left = QWidget()
        lv = QVBoxLayout(left)
        lv.setContentsMargins(0, 0, 0, 0)
        row = QHBoxLayout()
        row.addWidget(self.filter, 2)
        row.addWidget(self.metric, 3)
        lv.addLayout(row)
        lv.addWidget(self.table, 1)
        lv.addWidget(self.legend)
        return left

    def _build_plots(self) -> None:
        """The selected key's plots: norm, relative change, histogram at the slider's checkpoint, A/B overlay."""
        self.plots = QWidget()
        grid = QGridLayout(self.plots)
        grid.setContentsMargins(0, 0, 0, 0)
        self.norm_plot = _Plot("norm ‖x‖", "step", "‖x‖")
        self.rel_plot = _Plot("relative change", "step", "‖Δ‖/‖ref‖")
        legend_below(self.rel_plot)
        self.hist_plot = _Plot("histogram", "value", "count")
        self.overlay_plot = _Plot("two checkpoints overlaid", "value", "count")
        legend_below(self.overlay_plot)
        self.norm_curve = self.norm_plot.plot([], [], pen=pg.mkPen(A_COLOR, width=2), symbol="o", symbolSize=6,
                                              symbolBrush=A_COLOR, connect="finite")
        self.rel_prev_curve = self.rel_plot.plot([], [], pen=pg.mkPen(A_COLOR, width=2), symbol="o", symbolSize=6,
                                                 symbolBrush=A_COLOR, name="vs. previous", connect="finite")
        self.rel_first_curve = self.rel_plot.plot([], [], pen=pg.mkPen(B_COLOR, width=2, style=Qt.DashLine),
                                                  symbol="t", symbolSize=6, symbolBrush=B_COLOR, name="vs. first",
                                                  connect="finite")
        self.marks = [pg.InfiniteLine(angle=90, pen=pg.mkPen("#999", style=Qt.DotLine)) for _ in range(2)]
        self.norm_plot.addItem(self.marks[0])
        self.rel_plot.addItem(self.marks[1])
        self.nan_marks: list = []
        self.slider = QSlider(Qt.Horizontal)
        self.slider.setEnabled(False)
        self.slider.valueChanged.connect(self._slider_moved)
        self.slider_label = QLabel("checkpoint —")
        self.pick_a, self.pick_b = QComboBox(), QComboBox()
        for box in (self.pick_a, self.pick_b):
            box.currentIndexChanged.connect(lambda _: self.request_overlay())
        hist_box, over_box = QWidget(), QWidget()
        hv = QVBoxLayout(hist_box)
        hv.setContentsMargins(0, 0, 0, 0)
        hv.addWidget(self.hist_plot, 1)
        srow = QHBoxLayout()
        srow.addWidget(self.slider_label)
        srow.addWidget(self.slider, 1)
        hv.addLayout(srow)
        ov = QVBoxLayout(over_box)
        ov.setContentsMargins(0, 0, 0, 0)
        ov.addWidget(self.overlay_plot, 1)
        orow = QHBoxLayout()
        orow.addWidget(QLabel("A"))
        orow.addWidget(self.pick_a, 1)
        orow.addWidget(QLabel("B"))
        orow.addWidget(self.pick_b, 1)
        ov.addLayout(orow)
        grid.addWidget(self.norm_plot, 0, 0)
        grid.addWidget(self.rel_plot, 0, 1)
        grid.addWidget(hist_box, 1, 0)
        grid.addWidget(over_box, 1, 1)

    def _legend_text(self) -> str:
        def sw(c: QColor) -> str:
            return f"<span style='background:{c.name()}'>&nbsp;&nbsp;&nbsp;</span>"
        m = self.model
        lut = m.lut
        scale = "0 → 1" if self.metric.currentData() == "frac_changed" else \
            f"{10 ** m.lo:.2g} → {10 ** m.hi:.2g} (log)"
        return (f"{sw(lut[0])}{sw(lut[128])}{sw(lut[255])} {scale} &nbsp; {sw(UNCHANGED)} unchanged &nbsp; "
                f"{sw(NONFINITE)} NaN/Inf &nbsp; ▨ absent &nbsp; columns: checkpoints by step")

    # ---- measuring ---------------------------------------------------------------------------------------------
    @property
    def settled(self) -> bool:
        """The run is shown, or it could not be: nothing more will arrive unasked."""
        return self.data is not None or bool(self.failed)

    def open(self, paths: list[str]) -> None:
        self.failed = ""
        self.measuring = True
        self._close_data()
        names = ", ".join(os.path.basename(os.path.normpath(p)) or p for p in paths)
        self.title.setText(f"Measuring the run {names}…")
        self.cancel_button.show()
        self.runner.start("series", f"Measuring {names}…", J.open_and_measure, list(paths), engine=engine(),
                          on_result=self._measured, on_error=self._measure_failed,
                          on_cancelled=lambda: self._measure_failed(None))

    def cancel(self) -> None:
        self.runner.cancel("series")     # its sig_activity reaches _check_cancelled, which says so
        if self.measuring:
            self._measure_failed(None)

    def _check_cancelled(self) -> None:
        """The window's Cancel (Esc) stops every job without telling its owner: a measurement gone is a cancel."""
        if self.measuring and not self.runner.is_busy("series"):
            self._measure_failed(None)

    def _measure_failed(self, exc) -> None:
        self.measuring = False
        self.sig_measured.emit(self.data is not None)
        self.cancel_button.hide()
        self.failed = "measuring was cancelled" if exc is None else (str(exc) or type(exc).__name__)
        self.title.setText(f"⚠ The run was not measured: {self.failed}")
        self.sig_failed.emit(self.failed)

    def _close_data(self) -> None:
        if self.data is not None:
            self.data.close()
            self.data = None
            self.sig_measured.emit(False)

    def _measured(self, data: J.SeriesData) -> None:
        self._close_data()
        self.data = data
        self.measuring = False
        self.cancel_button.hide()
        self.title.setText(J.summary(data))
        self.findings.setText("<br>".join(
            ("⚠ " if kind in ALARM else "• ") + html.escape(text) for kind, text in J.findings_lines(data)))
        self.findings.show()
        self.model.set_data(data, self.metric.currentData())
        self.legend.setText(self._legend_text())
        self._expand()
        self._fit_columns()
        for box in (self.pick_a, self.pick_b):
            box.blockSignals(True)
            box.clear()
            for i in range(data.n):
                box.addItem(data.label(i), i)
            box.blockSignals(False)
        self.slider.blockSignals(True)
        self.slider.setRange(0, max(data.n - 1, 0))
        self.slider.setValue(data.n - 1)
        self.slider.blockSignals(False)
        self.slider.setEnabled(data.n > 0)
        if data.keys:
            self.select_key(self._first_key(data))
        self.sig_measured.emit(True)
        self.sig_ready.emit()

    @staticmethod
    def _first_key(data) -> str:
        """The most telling key to show first: the first NaN/Inf, else the first finding's key, else the first key."""
        for f in data.result.findings:
            if f.keys:
                return f.keys[0]
        return data.keys[0]

    def _expand(self) -> None:
        """The tree open as deep as keeps ROWS_OPEN rows or fewer (every module while filtering)."""
        depth = J.open_depth(self.data.tree, ROWS_OPEN)
        if depth is None or self.filter.text():
            self.table.expandAll()
        elif depth < 0:
            self.table.collapseAll()
        else:
            self.table.expandToDepth(depth)

    def _filter_changed(self, text: str) -> None:
        self.proxy.setFilterFixedString(text)
        if self.data is not None:
            self._expand()

    def _fit_columns(self) -> None:
        h = self.table.header()
        h.setStretchLastSection(False)
        h.setSectionResizeMode(0, QHeaderView.Interactive)
        tree = self.data.tree
        widest = max((len(n.name) + 2 * n.path.count(".") for n in tree.by_path.values() if n.path), default=10)
        self.table.setColumnWidth(0, min(max(120, 7 * widest + 28), 320))
        for c in range(1, self.model.columnCount()):
            h.setSectionResizeMode(c, QHeaderView.Fixed)
            self.table.setColumnWidth(c, max(CELL_W, 7 * len(str(self.model.headerData(c, Qt.Horizontal))) + 8))
        want = sum(self.table.columnWidth(c) for c in range(self.model.columnCount())) + 24
        total = sum(self.splitter.sizes()) or self.width()
        left = min(max(want, 320), int(0.6 * total))
        self.splitter.setSizes([left, max(total - left, 300)])

    def _metric_changed(self, _=None) -> None:
        if self.data is not None:
            key = self.key
            self.model.set_data(self.data, self.metric.currentData())
            self._expand()
            self._fit_columns()
            if key:
                self.select_key(key)
        self.legend.setText(self._legend_text())

    # ---- one key -----------------------------------------------------------------------------------------------
    def select_key(self, key: str) -> None:
        """Select ``key`` in the tree, its modules opened (its trajectories and histograms follow)."""
        if self.data is None or key not in self.data.tree.by_key:
            return
        src = self.model.index_of_key(key)
        idx = self.proxy.mapFromSource(src)
        if not idx.isValid():
            self.filter.clear()
            idx = self.proxy.mapFromSource(src)
        if self.table.currentIndex() == idx and self.key == key:
            return
        up = idx.parent()
        while up.isValid():
            self.table.expand(up)
            up = up.parent()
        self.table.setCurrentIndex(idx)
        self.table.scrollTo(idx)

    def _row_changed(self, current, _previous=None) -> None:
        """A key's row shows its plots; a module's row leaves them on the last key (its cells say the rest)."""
        if self.data is None or not current.isValid():
            return
        node = self.proxy.mapToSource(current).internalPointer()
        if node.is_leaf:
            self.show_key(node.key)

    def show_key(self, key: str) -> None:
        data = self.data
        self.key = key
        xs, norm = J.trajectory(data, key, "norm")
        _, prev = J.trajectory(data, key, "rel_change_prev")
        _, first = J.trajectory(data, key, "rel_change_first")
        self.norm_curve.setData(xs, norm)
        self.rel_prev_curve.setData(xs, prev)
        self.rel_first_curve.setData(xs, first)
        for item in self.nan_marks:
            item.scene() and item.getViewBox().removeItem(item)
        self.nan_marks = []
        t = data.result.track(key)
        steps = data.steps()
        bad = next((i for i, n in enumerate(t.nonfinite) if n), None)
        if bad is not None:        # the NaN norm is a gap in the line: mark where it starts
            for plot in (self.norm_plot, self.rel_plot):
                line = pg.InfiniteLine(steps[bad], angle=90, pen=pg.mkPen(NONFINITE, width=2),
                                       label="NaN/Inf from here", labelOpts={"color": NONFINITE, "position": 0.9})
                plot.addItem(line)
                self.nan_marks.append(line)
        self.norm_plot.setTitle(f"norm ‖x‖ — {key}", color="#333", size="9pt")
        present = J.present_indices(data, key)
        for box, want in ((self.pick_a, present[0]), (self.pick_b, present[-1])):
            box.blockSignals(True)
            box.setCurrentIndex(want)
            box.blockSignals(False)
        self.sig_key_shown.emit(key)
        self._slider_moved(self.slider.value())
        self.request_overlay()

    def _slider_moved(self, i: int) -> None:
        if self.data is None:
            return
        step = self.data.steps()[i]
        for m in self.marks:
            m.setValue(step)
        self.slider_label.setText(self.data.label(i))
        if not self.key:
            return
        if not self.data.result.track(self.key).present[i]:
            self.hist_plot.clear()
            self.hist_plot.setTitle(f"histogram — not in checkpoint {i}", color="#333", size="9pt")
            return
        self.runner.start("series_hist", "Histogram…", J.histograms, self.data, self.key, [i],
                          on_result=self._hist_ready, on_error=self._hist_failed)

    def request_overlay(self) -> None:
        if self.data is None or not self.key:
            return
        a, b = self.pick_a.currentData(), self.pick_b.currentData()
        if a is None or b is None:
            return
        self.runner.start("series_overlay", "Histograms…", J.histograms, self.data, self.key, [a, b],
                          on_result=self._overlay_ready, on_error=self._hist_failed)

    def _hist_failed(self, exc) -> None:
        self.hist_plot.setTitle(f"histogram: {type(exc).__name__}: {exc}"[:120], color="#C0392B", size="9pt")

    def _hist_ready(self, h: dict) -> None:
        if h["key"] != self.key or not h["counts"]:
            return
        (i, counts), = h["counts"].items()
        self.hist_plot.clear()
        self.hist_plot.plot(h["edges"], counts, stepMode="center", fillLevel=0, brush=translucent_brush(ONE_COLOR),
                            pen=pg.mkPen(ONE_COLOR, width=1.5))
        bad = self.data.result.track(self.key).nonfinite[i]
        note = f" — {bad:,} NaN/Inf not shown" if bad else ""
        self.hist_plot.setTitle(f"histogram at {self.data.label(i)}{note}", color=NONFINITE.name() if bad else "#333",
                                size="9pt")
        self.sig_hist_shown.emit(self.key)

    def _overlay_ready(self, h: dict) -> None:
        if h["key"] != self.key:
            return
        self.overlay_plot.clear()
        a, b = self.pick_a.currentData(), self.pick_b.currentData()
        for i, color in ((a, A_COLOR), (b, B_COLOR)):
            if i in h["counts"]:
                self.overlay_plot.plot(h["edges"], h["counts"][i], stepMode="center", fillLevel=0,
                                       brush=translucent_brush(color, 60), pen=pg.mkPen(color, width=1.5),
                                       name=self.data.label(i))
                if a == b:
                    break

    # ---- export ------------------------------------------------------------------------------------------------
    def plots_png(self) -> bytes:
        """The four plots as one PNG (a grab of their widget: cheap, on the GUI thread)."""
        ba = QByteArray()
        buf = QBuffer(ba)
        buf.open(QIODevice.WriteOnly)
        self.plots.grab().save(buf, "PNG", 6)
        buf.close()
        return bytes(ba.data())

    def export_csv(self, path: str) -> None:
        if self.data is not None:
            self.runner.start("series_export", f"Writing {os.path.basename(path)}…", J.write_csv, self.data, path,
                              on_result=self.sig_exported.emit, on_error=self._export_failed)

    def export_png(self, path: str) -> None:
        if self.data is not None:
            self.runner.start("series_export", f"Writing {os.path.basename(path)}…", J.write_bytes, path,
                              self.plots_png(), on_result=self.sig_exported.emit, on_error=self._export_failed)

    def _export_failed(self, exc) -> None:
        self.title.setText(f"⚠ Export failed: {exc}")

    def ask_export_csv(self) -> None:
        path = self.data and QFileDialog.getSaveFileName(self, "Export the run table", "run.csv", "CSV (*.csv)")[0]
        if path:
            self.export_csv(path)

    def ask_export_png(self) -> None:
        path = self.data and QFileDialog.getSaveFileName(self, "Export the plots", f"{self.key}.png", "PNG (*.png)")[0]
        if path:
            self.export_png(path)

    def shutdown(self) -> None:
        for ch in ("series", "series_hist", "series_overlay", "series_export"):
            self.runner.cancel(ch)
        self._close_data()


def show_series(window, on: bool) -> SeriesView | None:
    """Put the series view in place of the window's panes (``on``), or the panes back; returns the view. The view
    is made the first time (in the central layout, beside the panes it replaces)."""
    view = getattr(window, "series_view", None)
    if view is None and not on:
        return None
    if view is None:
        view = window.series_view = SeriesView(window.runner)
        view.sig_failed.connect(lambda msg: window.unmet.__setitem__("series", f"the run was not measured ({msg})"))
        view.sig_measured.connect(lambda _: sync_exports(window))
        window.centralWidget().layout().addWidget(view, 1)
    for w in (window.filter_bar, window.splitter):
        w.setVisible(not on)
    if on:
        window.banner.hide()
        window.setWindowTitle("Training run — State-Dict Explorer")
    view.setVisible(on)
    sync_exports(window)
    return view


def sync_exports(window) -> None:
    """The window's run exports (CSV table, PNG plots): enabled while a measured run is shown, else disabled."""
    view = getattr(window, "series_view", None)
    ok = view is not None and not view.isHidden() and view.data is not None
    for name in ("act_export_series_csv", "act_export_series_png"):
        action = getattr(window, name, None)
        if action is not None:
            action.setEnabled(ok)
