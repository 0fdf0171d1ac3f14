"""The two aligned panes and the status column between them.

Three ``QTreeView``s show one ``StateTreeModel`` (left columns | status | right columns) and share one selection
model, so a row is the same index in all three; expanding, collapsing and scrolling are mirrored. Drops of files,
folders or checkpoint URLs land here: one onto a pane opens it there, two fill both panes.
"""
from __future__ import annotations

from itertools import islice
from typing import Iterator

from PySide6.QtCore import QItemSelectionModel, QModelIndex, QPoint, QSize, Qt, QTimer, QUrl, Signal
from PySide6.QtGui import QFontMetrics
from PySide6.QtWidgets import (QAbstractItemView, QApplication, QComboBox, QFrame, QHBoxLayout, QHeaderView, QLabel,
                               QSizePolicy, QSplitter, QStyle, QStyledItemDelegate, QStyleOptionViewItem, QToolButton,
                               QTreeView, QVBoxLayout, QWidget)

from ..core.remote.files import is_remote
from ..session import compare as C
from ..session.compare import LEFT, RIGHT
from .tree_model import (COLUMNS, LEFT_COLUMNS, NAME_COLUMN, RIGHT_COLUMNS, STATUS_COLUMN, NodeRole, StateTreeModel,
                         is_group, row_key)

HEADER_HEIGHT = 62   # every panel's header has this height, so the three views start at the same y
EXPAND_BATCH = 500   # module rows expanded per turn of the event loop by "expand all"
EXPAND_AT_ONCE = 20_000   # "expand all" of a tree of more keys: batches from the start, levels made as they come


def urls_to_paths(mime) -> list[str]:
    """What a drag carries that a pane opens: local files and folders as paths, checkpoint URLs (``http(s)://``,
    ``hf://``, ``s3://``, ``gs://``) as written, from a ``text/uri-list`` or else from plain text holding them (a link
    dragged from a browser's address bar, or from a terminal)."""
    if mime is None:
        return []
    out = []
    if mime.hasUrls():
        for url in mime.urls():
            if url.isLocalFile():
                out.append(url.toLocalFile())
            elif is_remote(url.toString(QUrl.FullyEncoded)):
                out.append(url.toString(QUrl.FullyEncoded))
    if not out and mime.hasText():
        out = [word for word in mime.text().split() if is_remote(word)]
    return out


class PaneHeader(QFrame):
    """Above a pane: which side, what is open, the state-dict chooser and an inline error line."""

    sig_entry_chosen = Signal(object)       # the chosen entry path (tuple)
    sig_open_clicked = Signal()
    sig_model_clicked = Signal()            # "use the model its config.json describes"

    def __init__(self, title: str, parent=None):
        super().__init__(parent)
        self.setObjectName("PaneHeader")
        self.setFixedHeight(HEADER_HEIGHT)
        self.title = QLabel(f"<b>{title}</b>")
        self.path = QLabel("nothing open: drop a checkpoint here, or use File → Open")
        self.path.setTextInteractionFlags(Qt.TextSelectableByMouse)
        self.path.setMinimumWidth(50)
        self.info = QLabel("")
        self.info.setStyleSheet("color: palette(mid);")
        self.entry = QComboBox()
        self.entry.setToolTip("Which mapping of tensors inside the file to use as the state dict (best first)")
        self.entry.setSizeAdjustPolicy(QComboBox.AdjustToMinimumContentsLengthWithIcon)
        self.entry.setMinimumContentsLength(26)
        self.entry.hide()
        self.entry.activated.connect(self._on_entry)
        self.error = QLabel("")
        self.error.setObjectName("InlineError")
        self.error.setStyleSheet("color: #C0392B;")
        self.error.setWordWrap(True)     # two lines fit the header: the "what to do" part too (whole: tooltip)
        self.error.setAlignment(Qt.AlignLeft | Qt.AlignTop)
        self.error.setMaximumHeight(2 * self.error.fontMetrics().lineSpacing())   # no third line cut in half
        self.error.hide()
        for label in (self.path, self.info, self.error):   # long texts must never widen the pane
            label.setMinimumWidth(1)
            label.setSizePolicy(QSizePolicy.Ignored, QSizePolicy.Preferred)
        self.open_button = QToolButton()
        self.open_button.setText("Open…")
        self.open_button.clicked.connect(self.sig_open_clicked)
        self.model_button = QToolButton()       # shown when the checkpoint's folder has a config.json
        self.model_button.clicked.connect(self.sig_model_clicked)
        self.model_button.hide()
        top = QHBoxLayout()
        top.setContentsMargins(0, 0, 0, 0)
        top.addWidget(self.title)
        top.addWidget(self.path, 1)
        top.addWidget(self.model_button)
        top.addWidget(self.open_button)
        bottom = QHBoxLayout()
        bottom.setContentsMargins(0, 0, 0, 0)
        bottom.addWidget(self.info, 1)
        bottom.addWidget(self.error, 1)
        bottom.addWidget(self.entry)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(4, 2, 4, 2)
        lay.setSpacing(2)
        lay.addLayout(top)
        lay.addLayout(bottom)
        self._full_path = ""
        self._entries: list[tuple] = []

    def set_side(self, data: "C.SideData | None") -> None:
        self.error.hide()
        offer = data.config_model if data is not None and not data.is_model else None
        self.model_button.setVisible(offer is not None)
        if offer is not None:
            self.model_button.setText(f"Its model: {offer[1]}")
            self.model_button.setToolTip(
                f"Open the model this folder's config.json describes ({offer[1]}, built with transformers on the meta "
                f"device: {offer[0]}) as the left side, with this checkpoint on the right — then Simulate load")
        if data is None:
            self._full_path = ""
            self.path.setText("nothing open: drop a checkpoint here, or use File → Open")
            self.info.setText("")
            self.entry.hide()
            return
        side = data.side
        self._full_path = data.label
        self._elide_path()
        self.path.setToolTip(data.label)
        n = len(data.infos)
        nbytes = data.nbytes if data.nbytes is not None else C.total_bytes(data.infos)   # counted in the worker
        kind = side.format               # "model", or the checkpoint's format
        refs = side.references           # objects a checkpoint names (a model: none)
        extra = f", names {len(refs)} objects" if refs else ""
        self.info.setText(f"{kind} · {n:,} tensor{'' if n == 1 else 's'} · {C.human_bytes(nbytes)}{extra}")
        self.info.setToolTip("objects the file names (never run):\n" + "\n".join(refs[:40]) if refs else "")
        sds = list(side.state_dicts)
        self.entry.blockSignals(True)
        self.entry.clear()
        self._entries = []
        for ref in sds:
            label = "/".join(ref.path) or "(top level)"
            self.entry.addItem(f"{label}  · {ref.tensors} tensors")
            self.entry.setItemData(self.entry.count() - 1, ref.reason, Qt.ToolTipRole)
            self._entries.append(tuple(ref.path))
        if data.entry is not None and tuple(data.entry) in self._entries:
            self.entry.setCurrentIndex(self._entries.index(tuple(data.entry)))
        self.entry.blockSignals(False)
        self.entry.setVisible(not data.is_model and len(sds) > 1)

    def set_error(self, text: str, whole: str | None = None) -> None:
        """The inline error line (``text``); ``whole``: the message at full length, its tooltip."""
        self.error.setText(text)
        self.error.setToolTip(whole or text)
        self.error.setVisible(bool(text))
        self.info.setVisible(not text)

    def _on_entry(self, i: int) -> None:
        if 0 <= i < len(self._entries):
            self.sig_entry_chosen.emit(self._entries[i])

    def _elide_path(self) -> None:
        if self._full_path:
            fm = QFontMetrics(self.path.font())
            self.path.setText(fm.elidedText(self._full_path, Qt.ElideMiddle, max(self.path.width(), 80)))

    def resizeEvent(self, event):
        super().resizeEvent(event)
        self._elide_path()


class _BadgeHighRows(QStyledItemDelegate):
    """Every row as high as one with a line of text and a kind badge, as the style lays such a row out. Each view
    takes the height of its first row for all (uniform row heights): the status column shows text only, shorter
    than the panes' badge rows at any font size, so without this the status column's rows drift off the keys they
    describe, by 2 px a row."""

    def sizeHint(self, option, index):   # noqa: N802 - Qt API
        hint = super().sizeHint(option, index)
        row = QStyleOptionViewItem(option)
        row.text = "Xg"
        row.features |= QStyleOptionViewItem.HasDisplay | QStyleOptionViewItem.HasDecoration
        widget = option.widget
        style = widget.style() if widget is not None else QApplication.style()
        side = style.pixelMetric(QStyle.PM_SmallIconSize, None, widget)
        row.decorationSize = QSize(side, side)
        badge_row = style.sizeFromContents(QStyle.CT_ItemViewItem, row, QSize(), widget).height()
        return QSize(hint.width(), max(hint.height(), badge_row))


class SyncedTree(QTreeView):
    def __init__(self, parent=None):
        super().__init__(parent)
        self.setUniformRowHeights(True)          # 100k rows stay fluid
        self.setSelectionBehavior(QAbstractItemView.SelectRows)
        self.setSelectionMode(QAbstractItemView.SingleSelection)
        self.setVerticalScrollMode(QAbstractItemView.ScrollPerPixel)
        self.setHorizontalScrollBarPolicy(Qt.ScrollBarAlwaysOff)   # same viewport height in all three views
        self.setAllColumnsShowFocus(True)
        self.setAcceptDrops(False)               # drops go to the CompareView
        self.setExpandsOnDoubleClick(True)
        self.setEditTriggers(QAbstractItemView.NoEditTriggers)
        self._rows = _BadgeHighRows(self)        # kept referenced: its Python sizeHint is the point
        self.setItemDelegate(self._rows)


class CompareView(QWidget):
    sig_current_changed = Signal(object)            # core tree Node or None
    sig_files_dropped = Signal(object, list)        # side (LEFT / RIGHT / None for "both"), paths
    sig_files_entered = Signal(list)                # paths dragged over the panes (not dropped yet)
    sig_entry_chosen = Signal(int, object)          # side, entry path
    sig_open_clicked = Signal(int)
    sig_model_clicked = Signal(int)                 # side whose checkpoint's config.json model is wanted

    def __init__(self, parent=None):
        super().__init__(parent)
        self.setAcceptDrops(True)
        self.model = StateTreeModel(self)
        self.left_header = PaneHeader("Left")
        self.right_header = PaneHeader("Right")
        self.left_header.sig_entry_chosen.connect(lambda e: self.sig_entry_chosen.emit(LEFT, e))
        self.left_header.sig_model_clicked.connect(lambda: self.sig_model_clicked.emit(LEFT))
        self.right_header.sig_model_clicked.connect(lambda: self.sig_model_clicked.emit(RIGHT))
        self.right_header.sig_entry_chosen.connect(lambda e: self.sig_entry_chosen.emit(RIGHT, e))
        self.left_header.sig_open_clicked.connect(lambda: self.sig_open_clicked.emit(LEFT))
        self.right_header.sig_open_clicked.connect(lambda: self.sig_open_clicked.emit(RIGHT))
        self.left = SyncedTree()
        self.status = SyncedTree()
        self.right = SyncedTree()
        self.views = (self.left, self.status, self.right)
        for v in self.views:
            v.setModel(self.model)
        # one selection model for all three: selecting is in step by construction
        self.selection = QItemSelectionModel(self.model, self)   # kept referenced (PySide segfault otherwise)
        for v in self.views:
            v.setSelectionModel(self.selection)
        self.selection.currentChanged.connect(self._on_current)
        self._configure_columns()
        self._syncing = False
        self.expanding = False       # "expand all" still expanding rows, a batch per turn of the event loop
        for v in self.views:
            v.expanded.connect(lambda idx, src=v: self._mirror(src, idx, True))
            v.collapsed.connect(lambda idx, src=v: self._mirror(src, idx, False))
            v.verticalScrollBar().valueChanged.connect(lambda val, src=v: self._scroll(src, val))
        self.left.setVerticalScrollBarPolicy(Qt.ScrollBarAlwaysOff)
        self.status.setVerticalScrollBarPolicy(Qt.ScrollBarAlwaysOff)
        self.right.setVerticalScrollBarPolicy(Qt.ScrollBarAlwaysOn)
        status_header = QLabel("<b>Status</b><br><span style='color:gray'>right → left</span>")
        status_header.setAlignment(Qt.AlignCenter)
        status_header.setFixedHeight(HEADER_HEIGHT)
        self.splitter = QSplitter(Qt.Horizontal)
        self.splitter.setChildrenCollapsible(False)
        for header, view in ((self.left_header, self.left), (status_header, self.status),
                             (self.right_header, self.right)):
            box = QWidget()
            lay = QVBoxLayout(box)
            lay.setContentsMargins(0, 0, 0, 0)
            lay.setSpacing(0)
            lay.addWidget(header)
            lay.addWidget(view, 1)
            self.splitter.addWidget(box)
        self.panels = [self.splitter.widget(i) for i in range(3)]
        self.splitter.setStretchFactor(0, 1)
        self.splitter.setStretchFactor(1, 0)
        self.splitter.setStretchFactor(2, 1)
        self.splitter.setSizes([560, 215, 560])
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addWidget(self.splitter)

    def _configure_columns(self) -> None:
        for view, shown, tree_col in ((self.left, LEFT_COLUMNS, NAME_COLUMN[LEFT]),
                                      (self.status, [STATUS_COLUMN], STATUS_COLUMN),
                                      (self.right, RIGHT_COLUMNS, NAME_COLUMN[RIGHT])):
            for c in range(len(COLUMNS)):
                view.setColumnHidden(c, c not in shown)
            view.setTreePosition(tree_col)
            h = view.header()
            h.setStretchLastSection(False)
            h.setSectionsMovable(False)
            h.setMinimumSectionSize(30)
            if view is self.status:
                view.setIndentation(0)
                view.setRootIsDecorated(False)
                h.setSectionResizeMode(STATUS_COLUMN, QHeaderView.Stretch)
                continue
            h.setSectionResizeMode(tree_col, QHeaderView.Stretch)
            widths = {"kind": 100, "shape": 90, "dtype": 70, "size": 70}
            for c in shown[1:]:
                h.setSectionResizeMode(c, QHeaderView.Interactive)
                h.resizeSection(c, widths[COLUMNS[c].field])

    # ---- content ------------------------------------------------------------------------------------------------
    def set_tree(self, comparison, tree=None, *, expand: str | int = "auto") -> None:
        """Show a comparison (or a filtered tree of it), keeping the current key and expanded modules if possible."""
        current = self.selection_key()
        expanded = self.expanded_paths() if self.model.comparison is not None else set()
        self.model.set_tree(comparison, tree)
        if comparison is None:
            return
        root = tree if tree is not None else comparison.tree
        n = len(root)
        if expand == "all" or (expand == "auto" and (n <= 400 or tree is not None and n <= 2000)):
            self.expand_all()
        else:
            self._restore_expanded(expanded)
        if current:
            self.select_path(current)

    def refresh(self) -> None:
        self.model.refresh()
        for v in self.views:
            v.viewport().update()

    def expand_all(self) -> None:
        """Open every module row; rows of 1,000 keys (a level with more than 1,000 entries) stay closed: opening them
        all would lay out every key, a long freeze with 10**6 keys. A large tree opens a batch of modules per turn
        of the event loop, each level made (``core/tree.py``) as its batch reaches it."""
        self._syncing = True
        try:
            model = self.model
            root = model.node(QModelIndex())
            if model.keys_shown() > EXPAND_AT_ONCE:
                self._expand_nodes(model.iter_module_nodes(), root)
                return
            modules = model.module_nodes()
            if not model.has_groups(modules):
                for v in self.views:
                    v.expandAll()
                return
            self._expand_nodes(iter(modules), root)
        finally:
            self._syncing = False

    def _expand_nodes(self, nodes: Iterator, root) -> None:
        """Expand the nodes ``nodes`` yields (of the tree whose root is ``root``), ``EXPAND_BATCH`` at a time with the
        event loop running between batches (10**4 modules of 10**6 keys: three views, 0.3 s in one go); given up
        once the model shows another tree."""
        model = self.model
        if model.node(QModelIndex()) is not root:
            self.expanding = False
            return
        was, self._syncing = self._syncing, True
        try:
            batch = list(islice(nodes, EXPAND_BATCH))
            for node in batch:
                idx = model.index_of_node(node)
                for v in self.views:
                    v.expand(idx)
        finally:
            self._syncing = was
        if len(batch) == EXPAND_BATCH:
            self.expanding = True
            QTimer.singleShot(0, lambda: self._expand_nodes(nodes, root))
        else:
            self.expanding = False

    def expanded_paths(self) -> set[str]:
        out = set()
        model = self.model
        stack = [QModelIndex()]
        while stack and len(out) < 5000:
            parent = stack.pop()
            for r in range(model.rowCount(parent)):
                idx = model.index(r, 0, parent)
                if model.hasChildren(idx) and self.left.isExpanded(idx):
                    out.add(row_key(model.data(idx, NodeRole)))
                    stack.append(idx)
        return out

    def _restore_expanded(self, paths: set[str]) -> None:
        self._syncing = True
        try:
            if not paths:   # a large tree: open the top level so the panes are not one lone row
                root = QModelIndex()
                for r in range(min(self.model.rowCount(root), 200)):
                    idx = self.model.index(r, 0, root)
                    if is_group(self.model.data(idx, NodeRole)):
                        break   # groups of a huge flat level: each one opened would lay out a thousand rows
                    for v in self.views:
                        v.expand(idx)
                return
            for path in sorted(paths, key=lambda p: p.count(".")):
                idx = self.model.index_of_path(path)
                if idx.isValid():
                    for v in self.views:
                        v.expand(idx)
        finally:
            self._syncing = False

    def scroll_right_to(self, idx: QModelIndex, hint) -> None:
        """Scroll the right pane (the panes scroll together) to the row of ``idx``."""
        self.right.scrollTo(idx.siblingAtColumn(NAME_COLUMN[RIGHT]), hint)

    def fit_shape_columns(self) -> None:
        """Widen each pane's Shape column to the shapes in view ((512, 256, 3, 3) whole), never narrower than it
        is. Qt measures the rows in view only, so this costs the same for 10**6 keys."""
        for view, side in ((self.left, LEFT), (self.right, RIGHT)):
            col = next((i for i, c in enumerate(COLUMNS) if c.field == "shape" and c.side == side), None)
            if col is None or view.isColumnHidden(col):
                continue
            want = view.sizeHintForColumn(col) + 8
            if want > view.header().sectionSize(col):
                view.header().resizeSection(col, min(want, 260))

    def current_node(self):
        idx = self.selection.currentIndex()
        return self.model.data(idx, NodeRole) if idx.isValid() else None

    def current_path(self) -> str:
        node = self.current_node()
        return node.path if node is not None else ""

    def selection_key(self) -> str:
        """What identifies the selected row across a rebuild: its dotted path, or a group row's ``state_path`` (a
        top-level group's path is the root's, "")."""
        node = self.current_node()
        return row_key(node) if node is not None else ""

    def select_path(self, path: str) -> bool:
        idx = self.model.index_of_path(path)
        if not idx.isValid():
            return False
        self.selection.setCurrentIndex(idx, QItemSelectionModel.ClearAndSelect | QItemSelectionModel.Rows)
        self.right.scrollTo(idx)
        return True

    # ---- keeping the views in step ----------------------------------------------------------------------------
    def _mirror(self, src, idx, expand: bool) -> None:
        if self._syncing:
            return
        self._syncing = True
        try:
            for v in self.views:
                if v is not src:
                    v.setExpanded(idx, expand)
        finally:
            self._syncing = False

    def _scroll(self, src, value: int) -> None:
        for v in self.views:
            if v is not src and v.verticalScrollBar().value() != value:
                v.verticalScrollBar().setValue(value)

    def _on_current(self, current: QModelIndex, previous: QModelIndex) -> None:
        self.sig_current_changed.emit(self.model.data(current, NodeRole) if current.isValid() else None)

    # ---- drag and drop (Qt overrides) -------------------------------------------------------------------------
    def side_at(self, pos: QPoint) -> int:
        """The pane under a point of this widget (the status column counts for the nearer pane)."""
        for side, panel in ((LEFT, self.panels[0]), (RIGHT, self.panels[2])):
            if panel.geometry().contains(self.splitter.mapFrom(self, pos)):
                return side
        return LEFT if pos.x() < self.width() / 2 else RIGHT

    def dragEnterEvent(self, event):
        paths = urls_to_paths(event.mimeData())
        if paths:
            event.acceptProposedAction()
            self.sig_files_entered.emit(paths[:2])
        else:
            event.ignore()

    def dragMoveEvent(self, event):
        if urls_to_paths(event.mimeData()):
            event.acceptProposedAction()

    def dropEvent(self, event):
        paths = urls_to_paths(event.mimeData())
        if not paths:
            event.ignore()
            return
        event.acceptProposedAction()
        if len(paths) >= 2:
            self.sig_files_dropped.emit(None, paths[:2])
        else:
            self.sig_files_dropped.emit(self.side_at(event.position().toPoint()), paths)
