"""Small pieces the window's plots share: a legend that never covers data, a translucent brush for overlaid
histograms."""
from __future__ import annotations

import pyqtgraph as pg
from PySide6.QtCore import Qt
from PySide6.QtGui import QColor


def legend_below(plot: pg.PlotWidget, columns: int = 4) -> pg.LegendItem:
    """A legend under the plot's bottom axis, outside the data area (a legend inside it covers bars and points).
    Curves made afterwards with ``name=`` enter it, as they would with ``addLegend``."""
    pi = plot.getPlotItem()
    legend = pg.LegendItem(colCount=columns, labelTextColor="#333", horSpacing=6, verSpacing=-6)
    pi.legend = legend
    pi.layout.addItem(legend, 4, 1, Qt.AlignHCenter)
    return legend


def translucent_brush(color: str, alpha: int = 70):
    """``color`` at ``alpha`` (0-255): two histograms drawn over each other both stay visible."""
    c = QColor(color)
    c.setAlpha(alpha)
    return pg.mkBrush(c)
