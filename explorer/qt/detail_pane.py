"""The detail pane: the selected key's statistics on both sides, histograms overlaid, the delta histogram, a
per-channel plot for 1-D buffers, health flags, and export to PNG / CSV.

The numbers come from ``detail_compute.compute_detail`` in a worker; this widget only shows them
(``setData`` on a few long-lived plot items).
"""
from __future__ import annotations

import csv
import html
import io
import math

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QColor
from PySide6.QtWidgets import (QCheckBox, QFileDialog, QHBoxLayout, QHeaderView, QLabel, QPushButton, QSizePolicy,
                               QSpinBox, QSplitter, QTableWidget, QTableWidgetItem, QVBoxLayout, QWidget)

from ..core.atomic import atomic_write_bytes
from ..session import compare as C
from . import theme
from .plot_parts import legend_below, translucent_brush
from ..session.detail_compute import DetailResult

STAT_ROWS = [("shape", "shape"), ("dtype", "dtype"), ("elements", "numel"), ("finite", "count"), ("min", "min"), ("max", "max"),
             ("mean", "mean"), ("std", "std"), ("|max|", "absmax"), ("L2 norm", "l2"), ("zeros", "zero_count"),
             ("NaN", "nan"), ("+Inf", "posinf"), ("−Inf", "neginf")]


SHAPE_ROW = [attr for _, attr in STAT_ROWS].index("shape")


def _cell(text: str, *, tip: bool = False, align=None) -> QTableWidgetItem:
    item = QTableWidgetItem(text)
    if tip and text:
        item.setToolTip(text)
    if align is not None:
        item.setTextAlignment(align)
    return item


def fmt(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if value == 0:
            return "0"
        if abs(value) >= 1e5 or abs(value) < 1e-3:
            return f"{value:.4e}"
        return f"{value:.6g}"
    if isinstance(value, (int, np.integer)):
        return f"{int(value):,}"
    return str(value)


def _pname(p) -> str:
    """Percentile key (1, 50.0, "p99") -> "p1", "p50", "p99"."""
    if isinstance(p, str):
        return p if p.startswith("p") else f"p{p}"
    return f"p{float(p):g}"


class _Plot(pg.PlotWidget):
    def __init__(self, title: str, xlabel: str, ylabel: str):
        super().__init__(background="w")
        self.setTitle(title, color="#333", size="9pt")
        self.setLabel("bottom", xlabel)
        self.setLabel("left", ylabel)
        self.showGrid(x=True, y=True, alpha=0.25)
        self.setMinimumSize(160, 120)
        self.getPlotItem().setMenuEnabled(False)
        for axis in ("bottom", "left"):
            self.getPlotItem().getAxis(axis).enableAutoSIPrefix(False)
        self.setSizePolicy(QSizePolicy.Expanding, QSizePolicy.Expanding)
        self.getPlotItem().getViewBox().setDefaultPadding(0.04)   # the first and last point clear of the frame

    def fit_width(self) -> None:
        """Never narrower than what the plot draws (title, axes, legend): a layout wider than its widget is cut off
        on the right. Titles stay short; figures that vary go in the axis label."""
        layout = self.getPlotItem().layout
        layout.invalidate()
        need = layout.effectiveSizeHint(Qt.MinimumSize).width()
        self.setMinimumWidth(max(160, int(math.ceil(need)) + 6))


NO_DATA = "NoDataError: "


def _said(error: str) -> tuple[str, str]:
    """(the statistics cell, the line under the table) for a side's error text (``Class: message``): a side that has
    no values (saved from meta, a model over its budget) is no failure -- its message says why, without the class."""
    if error.startswith(NO_DATA):
        return "no values", error[len(NO_DATA):]
    return "error", error


class DetailPane(QWidget):
    sig_bins_changed = Signal(int)

    def __init__(self, parent=None):
        super().__init__(parent)
        self.result: DetailResult | None = None
        self.key = ""
        self.title = QLabel("Select a tensor to see its statistics and histograms.")
        self.title.setTextInteractionFlags(Qt.TextSelectableByMouse)
        self.title.setWordWrap(True)
        self.flags = QLabel("")
        self.flags.setObjectName("HealthFlags")
        self.flags.setWordWrap(True)
        self._build_tables()
        self._build_controls()
        self._build_plots()
        self._build_layout()
        self.clear()

    def _build_tables(self) -> None:
        self.table = QTableWidget(len(STAT_ROWS), 2)
        self.table.setHorizontalHeaderLabels(["Left", "Right"])
        self.table.setVerticalHeaderLabels([r[0] for r in STAT_ROWS])
        self.table.horizontalHeader().setSectionResizeMode(QHeaderView.Stretch)
        self.table.verticalHeader().setDefaultSectionSize(19)
        self.table.verticalHeader().setSectionResizeMode(QHeaderView.Fixed)
        # the shape row grows to show a long shape whole, wrapped after a comma (and has it as a tooltip)
        self.table.verticalHeader().setSectionResizeMode(SHAPE_ROW, QHeaderView.ResizeToContents)
        self.table.setWordWrap(True)
        self.table.setEditTriggers(QTableWidget.NoEditTriggers)
        self.table.setMinimumWidth(250)
        # percentiles beside the statistics, so both are in view without scrolling
        self.pct_table = QTableWidget(0, 2)
        self.pct_table.setHorizontalHeaderLabels(["Left", "Right"])
        self.pct_table.horizontalHeader().setSectionResizeMode(QHeaderView.Stretch)
        self.pct_table.verticalHeader().setDefaultSectionSize(19)
        self.pct_table.verticalHeader().setSectionResizeMode(QHeaderView.Fixed)
        self.pct_table.setEditTriggers(QTableWidget.NoEditTriggers)
        self.pct_table.setMinimumWidth(190)
        self.pct_table.setToolTip("Percentiles of the finite values (numpy's linear interpolation); "
                                  "≈: estimated, the exact figures follow")

    def _build_controls(self) -> None:
        self.log_y = QCheckBox("Log y")
        self.log_y.toggled.connect(self._apply_log)
        self.bins = QSpinBox()
        self.bins.setRange(8, 4096)
        self.bins.setValue(128)
        self.bins.setPrefix("bins ")
        self.bins.setKeyboardTracking(False)
        self.bins.valueChanged.connect(self.sig_bins_changed)
        self.export_png = QPushButton("Export PNG…")
        self.export_csv = QPushButton("Export CSV…")
        self.export_png.clicked.connect(lambda: self._ask_export("png"))
        self.export_csv.clicked.connect(lambda: self._ask_export("csv"))
        self.export_png.setEnabled(False)
        self.export_csv.setEnabled(False)

    def _build_plots(self) -> None:
        self.hist = _Plot("Histogram (both sides)", "value", "count")
        legend_below(self.hist)
        self.left_item = self.hist.plot([0, 1], [0], stepMode="center", fillLevel=0, name="left",
                                        pen=pg.mkPen(theme.LEFT_COLOR, width=1.5),
                                        brush=translucent_brush(theme.LEFT_COLOR))
        self.right_item = self.hist.plot([0, 1], [0], stepMode="center", fillLevel=0, name="right",
                                         pen=pg.mkPen(theme.RIGHT_COLOR, width=1.5),
                                         brush=translucent_brush(theme.RIGHT_COLOR))
        self.delta = _Plot("Delta (right − left)", "difference", "count")
        self.delta_item = self.delta.plot([0, 1], [0], stepMode="center", fillLevel=0,
                                          pen=pg.mkPen(theme.DELTA_COLOR, width=1.5),
                                          brush=translucent_brush(theme.DELTA_COLOR))
        self.channel = _Plot("Per channel", "channel", "value")
        legend_below(self.channel)
        self.channel_left = self.channel.plot([], [], name="left (before)", pen=pg.mkPen(theme.LEFT_COLOR, width=2),
                                              symbol="o", symbolSize=5, symbolBrush=theme.LEFT_COLOR)
        self.channel_right = self.channel.plot([], [], name="right (after)",
                                               pen=pg.mkPen(theme.RIGHT_COLOR, width=2, style=Qt.DashLine),
                                               symbol="s", symbolSize=5, symbolBrush=theme.RIGHT_COLOR)
        self.delta.hide()
        self.channel.hide()

    def _build_layout(self) -> None:
        controls = QHBoxLayout()
        controls.setContentsMargins(0, 0, 0, 0)
        controls.addWidget(self.title, 1)
        controls.addWidget(self.log_y)
        controls.addWidget(self.bins)
        controls.addWidget(self.export_png)
        controls.addWidget(self.export_csv)
        left_box = QWidget()
        lb = QVBoxLayout(left_box)
        lb.setContentsMargins(0, 0, 0, 0)
        tables = QHBoxLayout()
        tables.setContentsMargins(0, 0, 0, 0)
        tables.addWidget(self.table, 5)
        tables.addWidget(self.pct_table, 4)
        lb.addLayout(tables, 1)
        lb.addWidget(self.flags)
        self.plots = QWidget()
        pl = QHBoxLayout(self.plots)
        pl.setContentsMargins(0, 0, 0, 0)
        pl.addWidget(self.hist, 3)
        pl.addWidget(self.delta, 2)
        pl.addWidget(self.channel, 2)
        self.splitter = QSplitter(Qt.Horizontal)
        self.splitter.addWidget(left_box)
        self.splitter.addWidget(self.plots)
        self.splitter.setStretchFactor(0, 0)
        self.splitter.setStretchFactor(1, 1)
        self.splitter.setSizes([540, 760])
        lay = QVBoxLayout(self)
        lay.setContentsMargins(4, 2, 4, 2)
        lay.addLayout(controls)
        lay.addWidget(self.splitter, 1)

    # ---- states ----------------------------------------------------------------------------------------------------
    def clear(self, text: str = "Select a tensor to see its statistics and histograms.") -> None:
        self.result = None
        self.key = ""
        self.title.setText(text)
        self.flags.setText("")
        for r in range(self.table.rowCount()):
            for c in range(2):
                self.table.setItem(r, c, QTableWidgetItem(""))
        self.pct_table.setRowCount(0)
        for item in (self.left_item, self.right_item, self.delta_item):
            item.setData([0, 1], [0], stepMode="center", fillLevel=0)
            item.hide()
        for item in (self.channel_left, self.channel_right):
            item.setData([], [])
            item.hide()
        self._sync_legend()
        self.delta.hide()
        self.channel.hide()
        self.export_png.setEnabled(False)
        self.export_csv.setEnabled(False)

    def show_pending(self, key: str, row: "C.Row | None", status: str | None) -> None:
        """A key was selected; its numbers are being computed. Shows the header facts at once."""
        self.key = key
        self.set_title(key, row, status, computing=True)
        for r, (_, attr) in enumerate(STAT_ROWS):
            for c, info in enumerate((row.left, row.right) if row else (None, None)):
                text = ""
                if info is not None and attr == "shape":
                    text = C.shape_text(info.shape)
                elif info is not None and attr == "dtype":
                    text = info.dtype
                elif info is None and attr == "shape":
                    text = "(absent)"
                self.table.setItem(r, c, _cell(text, tip=attr == "shape"))
        for r in range(self.pct_table.rowCount()):
            for c in range(2):
                self.pct_table.setItem(r, c, QTableWidgetItem(""))

    def show_module(self, path: str, md) -> None:
        self.clear(f"<b>{path or '(root)'}</b> — module"
                   + (f" <b>{md.classes[0] or ''}</b>" if md and md.classes[0] else "")
                   + (f" / <b>{md.classes[1]}</b>" if md and md.classes[1] and md.classes[1] != md.classes[0] else "")
                   + (f": {md.present[0]} tensors left, {md.present[1]} right, {md.problems} problems below"
                      if md else ""))

    def set_title(self, key: str, row, status, computing=False) -> None:
        text = f"<b>{key}</b>"
        st = theme.status_text(status)
        if st:
            color = theme.status_style(status)[2]
            text += f" &nbsp;<span style='color:{color}'><b>{st}</b></span>"
        if row is not None and row.renamed_from:
            text += f" &nbsp;(right side key: {row.renamed_from})"
        if row is not None and row.explanation:
            text += f"<br><span style='color:#555'>{row.explanation}</span>"
        if computing:
            text += " &nbsp;<i>computing…</i>" if computing is True else f" &nbsp;<i>{computing}</i>"
        self.title.setText(text)

    def show_error(self, key: str, message: str) -> None:
        if key != self.key:
            return
        self.title.setText(f"<b>{key}</b> &nbsp;<span style='color:#C0392B'>could not read values: {message}</span>")

    def show_result(self, res: DetailResult, row: "C.Row | None" = None, status: str | None = None) -> None:
        """Show a result; one marked ``estimated`` (a large tensor's first pass) is replaced by the exact one."""
        self.result = res
        self.key = res.key
        self.set_title(res.key, row, status,
                        computing="≈ histogram and percentiles estimated; computing exact figures…"
                        if res.estimated else False)
        for c, sv in enumerate((res.left, res.right)):
            st = sv.stats
            for r, (_, attr) in enumerate(STAT_ROWS):
                if attr == "shape":
                    text = C.shape_text(sv.shape) if sv.present else "(absent)"
                elif attr == "dtype":
                    text = sv.dtype
                elif sv.error:   # a side with no values at all (meta, a model over its budget) is no error
                    text = _said(sv.error)[0] if attr == "count" else ""
                else:
                    text = fmt(getattr(st, attr, None)) if st is not None else ""
                item = _cell(text, tip=attr == "shape", align=Qt.AlignRight | Qt.AlignVCenter)
                if attr in ("nan", "posinf", "neginf") and text not in ("", "0"):
                    item.setForeground(QColor("#C0392B"))
                self.table.setItem(r, c, item)
        self._show_percentiles(res)
        self._show_flags(res)
        # histograms
        for item, sv in ((self.left_item, res.left), (self.right_item, res.right)):
            if res.edges is not None and sv.counts is not None:
                item.setData(res.edges, sv.counts.astype(float), stepMode="center", fillLevel=0)
                item.show()
            else:
                item.setData([0, 1], [0], stepMode="center", fillLevel=0)
                item.hide()
        if res.delta_counts is not None:
            mad = f", max |Δ| {res.delta_max_abs:.3g}" if res.delta_max_abs is not None else ""
            if res.delta_nonfinite:
                # the axis has no room for the whole note: the title says the plot is partial, the tooltip says why
                self.delta.setTitle(f"Delta, finite only ({res.delta_nonfinite:,} NaN/Inf out)", color="#b00",
                                    size="9pt")
                self.delta.setLabel("bottom", f"difference{mad}")
            else:
                self.delta.setTitle("Delta (right − left)", color="#333", size="9pt")
                self.delta.setLabel("bottom", f"difference{mad}" + (f" ({res.delta_note})" if res.delta_note else ""))
            self.delta.setToolTip(f"right − left{mad}" + (f"; {res.delta_note}" if res.delta_note else ""))
            self.delta_item.setData(res.delta_edges, res.delta_counts.astype(float), stepMode="center", fillLevel=0)
            self.delta_item.show()
            self.delta.show()
        else:
            self.delta.hide()
        if res.left.channel is not None or res.right.channel is not None:
            undrawn = []
            for word, item, sv in (("left", self.channel_left, res.left), ("right", self.channel_right, res.right)):
                if sv.channel is not None:
                    # NaN and +-Inf are not drawn (an infinite point would stretch the axis until nothing else
                    # shows); the line breaks there, and the axis says how many
                    y = np.asarray(sv.channel, dtype=np.float64)
                    finite = np.isfinite(y)
                    if not finite.all():
                        undrawn.append(f"{word} {y.size - np.count_nonzero(finite)}")
                    item.setData(np.arange(len(y)), np.where(finite, y, np.nan), connect="finite")
                else:
                    item.setData([], [])
                item.setVisible(sv.channel is not None)
            self.channel.setLabel("bottom", f"channel of {res.key.rsplit('.', 1)[-1]}"
                                  + (f" (not finite, not drawn: {', '.join(undrawn)})" if undrawn else ""))
            self.channel.show()
        else:
            self.channel.hide()
        self._sync_legend()
        self._apply_log(self.log_y.isChecked())
        for plot in (self.hist, self.delta, self.channel):
            plot.enableAutoRange()
            plot.fit_width()
        self.export_png.setEnabled(not res.estimated)    # exports carry exact figures only
        self.export_csv.setEnabled(not res.estimated)

    def _sync_legend(self) -> None:
        """Each legend names only the sides drawn (one side open: no 'right' entry)."""
        for plot, entries in ((self.hist, ((self.left_item, "left"), (self.right_item, "right"))),
                              (self.channel, ((self.channel_left, "left (before)"),
                                              (self.channel_right, "right (after)")))):
            legend = plot.getPlotItem().legend
            for item, _ in entries:
                legend.removeItem(item)
            for item, name in entries:
                if item.isVisibleTo(plot.getPlotItem()):
                    legend.addItem(item, name)

    def _show_percentiles(self, res: DetailResult) -> None:
        names: list[str] = []
        for sv in (res.left, res.right):
            for k in (getattr(sv.stats, "percentiles", None) or {}):
                if _pname(k) not in names:
                    names.append(_pname(k))
        self.pct_table.setRowCount(len(names))
        for i, name in enumerate(names):
            self.pct_table.setVerticalHeaderItem(i, QTableWidgetItem(name))
            for c, sv in enumerate((res.left, res.right)):
                pct = getattr(sv.stats, "percentiles", None) or {}
                value = next((v for k, v in pct.items() if _pname(k) == name), None)
                text = fmt(float(value)) if value is not None else ""
                if text and not getattr(sv.stats, "exact", True):   # interpolated inside a value bucket
                    text = f"≈ {float(value):.4g}"
                item = QTableWidgetItem(text)
                item.setTextAlignment(Qt.AlignRight | Qt.AlignVCenter)
                self.pct_table.setItem(i, c, item)

    def _show_flags(self, res: DetailResult) -> None:
        parts = []
        for side, sv in (("left", res.left), ("right", res.right)):
            if sv.error:
                parts.append(f"<span style='color:#C0392B'>⚠ {side}: {_said(sv.error)[1]}</span>")
            for flag in (getattr(sv.stats, "flags", None) or []):
                parts.append(f"<span style='color:#C0392B'>⚠ {side}: {flag}</span>")
        # what a key is meant to hold (a fresh BatchNorm's zero running_mean): said, not flagged -- and the line
        # does not then claim "no all-zero tensor" beside a table of zeros
        said = [f"<span style='color:#555'>ℹ {side}: {html.escape(text)}</span>"
                for side, sv in (("left", res.left), ("right", res.right))
                for text in (getattr(sv.stats, "info", None) or [])]
        if not parts and (res.left.stats is not None or res.right.stats is not None):
            parts.append("<span style='color:#009E73'>✓ no NaN or Inf</span>" if said else
                         "<span style='color:#009E73'>✓ no NaN, Inf, all-zero or constant tensors</span>")
        self.flags.setText(" &nbsp; ".join(parts + said))

    def _apply_log(self, on: bool) -> None:
        for plot in (self.hist, self.delta):
            plot.setLogMode(x=False, y=on)
            plot.setLabel("left", "count (log)" if on else "count")

    # ---- export --------------------------------------------------------------------------------------------------
    def _ask_export(self, kind: str) -> None:
        if self.result is None:
            return
        base = self.key.replace("/", "_") or "tensor"
        if kind == "png":
            path, _ = QFileDialog.getSaveFileName(self, "Export plot", f"{base}.png", "PNG image (*.png)")
            if path:
                self.export_png_to(path)
        else:
            path, _ = QFileDialog.getSaveFileName(self, "Export numbers", f"{base}.csv", "CSV (*.csv)")
            if path:
                self.export_csv_to(path)

    def export_png_to(self, path: str) -> None:
        from PySide6.QtCore import QBuffer, QByteArray, QIODevice
        pm = self.plots.grab()
        ba = QByteArray()
        buf = QBuffer(ba)
        buf.open(QIODevice.WriteOnly)
        pm.save(buf, "PNG")
        buf.close()
        atomic_write_bytes(path, bytes(ba.data()))

    def csv_text(self) -> str:
        res = self.result
        out = io.StringIO()
        w = csv.writer(out)
        w.writerow(["key", res.key if res else self.key])
        w.writerow(["statistic", "left", "right"])
        for table in (self.table, self.pct_table):
            for r in range(table.rowCount()):
                head = table.verticalHeaderItem(r)
                w.writerow([head.text() if head else "",
                            *((table.item(r, c).text() if table.item(r, c) else "") for c in range(2))])
        if res is not None and res.edges is not None:
            w.writerow([])
            w.writerow(["bin_low", "bin_high", "count_left", "count_right"])
            lc, rc = res.left.counts, res.right.counts
            for i in range(len(res.edges) - 1):
                w.writerow([repr(float(res.edges[i])), repr(float(res.edges[i + 1])),
                            int(lc[i]) if lc is not None else "", int(rc[i]) if rc is not None else ""])
        if res is not None and res.delta_counts is not None:
            w.writerow([])
            w.writerow(["delta_bin_low", "delta_bin_high", "count"])
            for i in range(len(res.delta_edges) - 1):
                w.writerow([repr(float(res.delta_edges[i])), repr(float(res.delta_edges[i + 1])),
                            int(res.delta_counts[i])])
        if res is not None and (res.left.channel is not None or res.right.channel is not None):
            w.writerow([])
            w.writerow(["channel", "left", "right"])
            n = max(len(x) for x in (res.left.channel, res.right.channel) if x is not None)
            for i in range(n):
                w.writerow([i] + [repr(float(x[i])) if x is not None and i < len(x) else ""
                                  for x in (res.left.channel, res.right.channel)])
        return out.getvalue()

    def export_csv_to(self, path: str) -> None:
        atomic_write_bytes(path, self.csv_text().encode("utf-8"))
