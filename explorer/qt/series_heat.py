"""The series view's heat map: the run's keys as the compare view's dotted-name module tree (``core.tree``, built
by ``session.series_job.key_tree``), one column per checkpoint. A key's cell is its figure there; a module's is the
largest figure of its keys (``series_job.tree_cells``), so a collapsed module still shows where its keys moved."""
from __future__ import annotations

import math

import pyqtgraph as pg
from PySide6.QtCore import QAbstractItemModel, QModelIndex, Qt
from PySide6.QtGui import QBrush, QColor, QFont, QPen
from PySide6.QtWidgets import QStyle, QStyledItemDelegate

from ..session import series_job as J

ABSENT = QColor("#f4f4f4")       # the key is not in this checkpoint
NOT_APPLICABLE = QColor("#fbfbfb")   # no previous checkpoint: nothing to compare with
UNCHANGED = QColor("#d6dde6")    # exactly 0: not a single value moved
NONFINITE = QColor("#C0392B")    # NaN/Inf in the tensor
ABSENT_ROLE = Qt.UserRole + 1    # True where the key is not in the checkpoint (painted hatched)
PATH_ROLE = Qt.UserRole + 2      # the row's dotted path (a key, or a module): what the filter matches


def _lut() -> list[QColor]:
    cmap = pg.colormap.get("viridis")
    return [QColor(*[int(v) for v in c[:3]]) for c in cmap.getLookupTable(0.0, 1.0, 256, alpha=False)]


class HeatModel(QAbstractItemModel):
    """Rows: the nodes of the run's key tree (modules, then keys). Column 0: the name; column 1 + i: the figure at
    checkpoint i, painted (tooltip: the exact figure; for a module, which key has it)."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self.data_: J.SeriesData | None = None
        self.cells: dict = {}
        self.root = None
        self.metric = "rel_change_prev"
        self.lut = _lut()
        self.lo, self.hi = -6.0, 0.0     # log10 of the change at the bottom and top of the colour scale
        self._bold = QFont()
        self._bold.setBold(True)

    def set_data(self, data, metric: str) -> None:
        self.beginResetModel()
        self.data_, self.metric = data, metric
        if data is None:
            self.cells, self.root = {}, None
        else:
            self.cells = data.cells[metric] if metric in data.cells else J.tree_cells(data, metric)
            self.root = data.tree.root
            self.lo, self.hi = J.log_range(data.matrices[metric] if metric in data.matrices else
                                           J.heat_matrix(data, metric))
        self.endResetModel()

    # ---- the tree ----------------------------------------------------------------------------------------------
    def node(self, index: QModelIndex):
        return index.internalPointer() if index.isValid() else self.root

    def index(self, row, column, parent=QModelIndex()):
        node = self.node(parent)
        if node is None or not (0 <= row < len(node.children)) or not (0 <= column < self.columnCount()):
            return QModelIndex()
        return self.createIndex(row, column, node.children[row])

    def parent(self, index=QModelIndex()):
        if not index.isValid():
            return QModelIndex()
        up = index.internalPointer().parent
        if up is None or up is self.root:
            return QModelIndex()
        return self.createIndex(up.row, 0, up)

    def rowCount(self, parent=QModelIndex()):
        if parent.column() > 0:
            return 0
        node = self.node(parent)
        return 0 if node is None else len(node.children)

    def columnCount(self, parent=QModelIndex()):
        return 0 if self.data_ is None else 1 + self.data_.n

    def hasChildren(self, parent=QModelIndex()):
        return self.rowCount(parent) > 0

    def index_of_key(self, key: str) -> QModelIndex:
        """Column 0 of ``key``'s row (invalid if the run has no such key)."""
        node = self.data_.tree.by_key.get(key) if self.data_ is not None else None
        return QModelIndex() if node is None else self.createIndex(node.row, 0, node)

    # ---- cells -------------------------------------------------------------------------------------------------
    def color(self, cells: J.Cells, c: int) -> QColor:
        v = cells.values[c]
        if not cells.present[c]:
            return ABSENT
        if cells.nonfinite[c]:
            return NONFINITE
        if math.isnan(v):
            return NOT_APPLICABLE
        if v == 0:
            return UNCHANGED
        if math.isinf(v):      # a change from an all-zero reference: off the scale
            return self.lut[255]
        x = v if self.metric == "frac_changed" else (math.log10(v) - self.lo) / (self.hi - self.lo)
        return self.lut[int(round(255 * min(max(x, 0.0), 1.0)))]

    def tooltip(self, node, c: int) -> str:
        cells = self.cells[node.path]
        where = self.data_.label(c)
        module = bool(node.children)
        head = f"{node.path}  (module: {cells.keys:,} keys)" if module else node.path
        if not cells.present[c]:
            return f"{head}\n{where}: not in this checkpoint"
        lines = [head, where]
        if module:
            top = J.largest_key(self.data_, node.path, self.metric, c)
            lines.append(f"largest {self.metric}: " + ("—" if top is None else
                                                       f"{_fmt(top[1])} ({top[0]})" if top[1] < math.inf else
                                                       f"NaN/Inf or off the scale ({top[0]})"))
        else:
            t = self.data_.result.tracks[node.data]
            v = getattr(t, self.metric)[c]
            lines += [f"{self.metric}: {'—' if v is None else _fmt(v)}",
                      f"norm: {'—' if t.norm[c] is None else format(t.norm[c], '.6g')}"]
        if cells.nonfinite[c]:
            lines.append(f"⚠ {int(cells.nonfinite[c]):,} NaN/Inf values")
        return "\n".join(lines)

    def data(self, index, role=Qt.DisplayRole):
        if not index.isValid() or self.data_ is None:
            return None
        node, c = index.internalPointer(), index.column()
        if role == PATH_ROLE:
            return node.path
        if c == 0:
            if role == Qt.DisplayRole:
                return node.name
            if role == Qt.ToolTipRole:
                cells = self.cells[node.path]
                return f"{node.path}  ({cells.keys:,} keys)" if node.children else node.path
            if role == Qt.FontRole and node.children:
                return self._bold
            return None
        cells = self.cells[node.path]
        if role == Qt.BackgroundRole:
            return self.color(cells, c - 1)
        if role == ABSENT_ROLE:
            return not bool(cells.present[c - 1])
        if role == Qt.ToolTipRole:
            return self.tooltip(node, c - 1)
        if role == Qt.DisplayRole and cells.nonfinite[c - 1]:
            return "⚠"
        return None

    def headerData(self, section, orientation, role=Qt.DisplayRole):
        if orientation != Qt.Horizontal or self.data_ is None:
            return None
        if role == Qt.DisplayRole:
            if section == 0:
                return "module / key"
            m = self.data_.result.checkpoints[section - 1]
            return str(m.step) if m.step is not None else f"#{section - 1}"
        if role == Qt.ToolTipRole and section > 0:
            return self.data_.label(section - 1) + "\n" + self.data_.result.checkpoints[section - 1].path
        return None


def _fmt(v: float) -> str:
    return format(v, ".4g")


class CellDelegate(QStyledItemDelegate):
    """Heat cells keep their colour when their row is selected (the selection is a frame, not a fill)."""

    def paint(self, painter, option, index):
        if index.column() == 0:
            super().paint(painter, option, index)
            return
        painter.save()
        painter.fillRect(option.rect, index.data(Qt.BackgroundRole) or QColor("white"))
        if index.data(ABSENT_ROLE):
            painter.fillRect(option.rect, QBrush(QColor("#c8c8c8"), Qt.BDiagPattern))
        text = index.data(Qt.DisplayRole)
        if text:
            painter.setPen(QColor("white"))
            painter.drawText(option.rect, Qt.AlignCenter, text)
        if option.state & QStyle.State_Selected:
            painter.setPen(QPen(option.palette.highlight().color(), 2))
            r = option.rect.adjusted(0, 1, 0, -1)
            painter.drawLine(r.topLeft(), r.topRight())
            painter.drawLine(r.bottomLeft(), r.bottomRight())
        painter.restore()

