"""``StateTreeModel``: a thin ``QAbstractItemModel`` over the comparison's ``explorer.core.tree.Tree``.

One model holds both sides' columns and the status column; the window shows it in three views (left columns,
status, right columns) that share one selection model, so rows are the same indexes everywhere and stay aligned.
``createIndex`` only ever gets nodes the core tree owns; ``parent()`` uses the cached ``node.row``.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Iterator

from PySide6.QtCore import QAbstractItemModel, QModelIndex, Qt
from PySide6.QtGui import QBrush, QColor, QFont

from ..session import compare as C
from ..session.compare import LEFT, RIGHT, Pane
from . import theme

NodeRole = Qt.UserRole + 1      # data() -> the core tree Node
KeyRole = Qt.UserRole + 2       # data() -> the full dotted path of the row
StatusRole = Qt.UserRole + 3    # data() -> status string (leaves) or problem count (modules)

GROUP = 1000    # rows shown under one node at most: more siblings (10**6 flat keys) come in groups of this many
_CELL_ROLES = (Qt.DisplayRole, Qt.DecorationRole, Qt.ForegroundRole, Qt.BackgroundRole, Qt.FontRole,
               Qt.TextAlignmentRole, Qt.ToolTipRole, StatusRole)
_ROLES = frozenset(int(r) for r in _CELL_ROLES) | {int(NodeRole), int(KeyRole)}


@dataclass(frozen=True)
class Column:
    header: str
    side: Pane | None                # LEFT / RIGHT / None (the status column)
    field: str                       # name / kind / shape / dtype / size / status
    align: Qt.AlignmentFlag = Qt.AlignLeft | Qt.AlignVCenter


COLUMNS = [
    Column("Name", LEFT, "name"), Column("Kind", LEFT, "kind"), Column("Shape", LEFT, "shape"),
    Column("Dtype", LEFT, "dtype"), Column("Size", LEFT, "size", Qt.AlignRight | Qt.AlignVCenter),
    Column("Status", None, "status"),
    Column("Name", RIGHT, "name"), Column("Kind", RIGHT, "kind"), Column("Shape", RIGHT, "shape"),
    Column("Dtype", RIGHT, "dtype"), Column("Size", RIGHT, "size", Qt.AlignRight | Qt.AlignVCenter),
]
LEFT_COLUMNS = [i for i, c in enumerate(COLUMNS) if c.side == LEFT]
RIGHT_COLUMNS = [i for i, c in enumerate(COLUMNS) if c.side == RIGHT]
STATUS_COLUMN = next(i for i, c in enumerate(COLUMNS) if c.side is None)
NAME_COLUMN = {LEFT: LEFT_COLUMNS[0], RIGHT: RIGHT_COLUMNS[0]}


class StateTreeModel(QAbstractItemModel):
    def __init__(self, parent=None):
        super().__init__(parent)
        self.comparison: C.Comparison | None = None
        self._root = _EmptyRoot()
        self._cells: dict[tuple[int, int], dict] = {}
        self._groups: dict[int, list[_Group]] = {}
        self._bold = QFont()
        self._bold.setBold(True)
        self._italic = QFont()
        self._italic.setItalic(True)

    # ---- content ------------------------------------------------------------------------------------------------
    def set_tree(self, comparison: "C.Comparison | None", tree=None) -> None:
        """Show a comparison (or a filtered tree of it): a reset, as a new file is a new model."""
        self.beginResetModel()
        self._cells.clear()
        self.comparison = comparison
        self._root = (tree.root if tree is not None else comparison.tree.root) if comparison else _EmptyRoot()
        self._groups: dict[int, list[_Group]] = {}
        self.endResetModel()

    def refresh(self) -> None:
        """Statuses changed (a simulation or diff landed): repaint everything, same structure."""
        self._cells.clear()
        if self.rowCount() == 0:
            return
        self.layoutAboutToBeChanged.emit()
        self.layoutChanged.emit()

    def node(self, index: QModelIndex):
        if index.isValid():
            return index.internalPointer()
        return self._root

    # ---- groups: a node with more than GROUP children shows them in runs of GROUP, each run a row of its own. Qt
    # lays out every row of an expanded level, calling index(), hasChildren() and flags() for each: 10**6 flat keys
    # would freeze the window for seconds (three views); a thousand rows at a time do not.
    def _groups_of(self, node) -> "list[_Group]":
        groups = self._groups.get(id(node))
        if groups is None:
            kids = node.children
            groups = self._groups[id(node)] = [_Group(node, j, kids[at:at + GROUP])
                                               for j, at in enumerate(range(0, len(kids), GROUP))]
        return groups

    def module_nodes(self) -> list:
        """Every node of the tree shown that has children (not the root, not the group rows), parents first (makes
        every level of the tree: :meth:`iter_module_nodes` makes them as it goes)."""
        return list(self.iter_module_nodes())

    def iter_module_nodes(self) -> Iterator:
        """:meth:`module_nodes` one at a time, each level made when the walk reaches it."""
        stack = [self._root] if self.comparison is not None else []
        while stack:
            node = stack.pop()
            kids = [k for k in node.children if k.has_children]
            yield from kids
            stack += reversed(kids)

    def keys_shown(self) -> int:
        """How many keys the tree shown holds."""
        return len(self._root.below)

    def has_groups(self, modules: list | None = None) -> bool:
        """Does any level of the tree shown have more than GROUP entries (shown in rows of GROUP)? ``modules``:
        :meth:`module_nodes`, when the caller has them."""
        modules = self.module_nodes() if modules is None else modules
        return len(self._root.children) > GROUP or any(len(n.children) > GROUP for n in modules)

    def index_of_node(self, node) -> QModelIndex:
        """The index of a node of the tree shown (invalid for the root)."""
        return self._index_of_node(node)

    def _kids(self, node) -> list:
        kids = node.children
        return self._groups_of(node) if len(kids) > GROUP and type(node) is not _Group else kids

    def _index_of_node(self, node) -> QModelIndex:
        """The index of a tree node or group (invalid for the root)."""
        if node is self._root or node is None:
            return QModelIndex()
        if type(node) is _Group:
            return self.createIndex(node.row, 0, node)
        return self.createIndex(node.row % GROUP if len(node.parent.children) > GROUP else node.row, 0, node)

    def index_of_path(self, path: str) -> QModelIndex:
        """The index of a dotted path in the tree shown (invalid if the filter hides it); walks parents, O(depth).
        A group's ``state_path`` (its parent's path, ``\x1f`` and its row) gives the group."""
        if self.comparison is None or not path:
            return QModelIndex()
        path, sep, group = path.partition(_GROUP_SEP)
        node = self._root
        for part in path.split(".") if path else ():
            nxt = _child(node, part)
            if nxt is None:
                return QModelIndex()
            node = nxt
        if sep:
            groups = self._groups_of(node) if len(node.children) > GROUP else []
            return self._index_of_node(groups[int(group)]) if group.isdigit() and int(group) < len(groups) \
                else QModelIndex()
        return self._index_of_node(node)

    # ---- QAbstractItemModel (Qt overrides keep Qt's names) ------------------------------------------------------
    def index(self, row: int, column: int, parent: QModelIndex = QModelIndex()) -> QModelIndex:
        if column < 0 or column >= len(COLUMNS) or row < 0:
            return QModelIndex()
        if parent.isValid() and parent.column() != 0:
            return QModelIndex()
        kids = self._kids(self.node(parent))
        if row >= len(kids):
            return QModelIndex()
        return self.createIndex(row, column, kids[row])

    def parent(self, index: QModelIndex = QModelIndex()):  # type: ignore[override]
        if not index.isValid():
            return QModelIndex()
        node = index.internalPointer()
        parent = node.parent
        if parent is None:
            return QModelIndex()
        if type(node) is not _Group and len(parent.children) > GROUP:   # its run of siblings is its parent row
            return self.createIndex(node.row // GROUP, 0, self._groups_of(parent)[node.row // GROUP])
        return self._index_of_node(parent)

    def rowCount(self, parent: QModelIndex = QModelIndex()) -> int:
        if parent.isValid() and parent.column() != 0:
            return 0
        return len(self._kids(self.node(parent)))

    def columnCount(self, parent: QModelIndex = QModelIndex()) -> int:
        return len(COLUMNS)

    def hasChildren(self, parent: QModelIndex = QModelIndex()) -> bool:
        if parent.isValid() and parent.column() != 0:
            return False
        return self.node(parent).has_children

    def flags(self, index: QModelIndex):
        return _FLAGS if index.isValid() else _NO_FLAGS

    def headerData(self, section: int, orientation, role=Qt.DisplayRole):
        if orientation == Qt.Horizontal and 0 <= section < len(COLUMNS):
            if role == Qt.DisplayRole:
                return COLUMNS[section].header
            if role == Qt.TextAlignmentRole:
                return int(COLUMNS[section].align)
        return None

    def data(self, index: QModelIndex, role=Qt.DisplayRole) -> Any:
        # Painting asks for ~10 roles per visible cell; most are not ours. Answer those at once, and compute each
        # cell's roles once (cached until the content or the statuses change): a repaint is then dict lookups.
        if role not in _ROLES or not index.isValid():
            return None
        node = index.internalPointer()
        if role == NodeRole:
            return node
        if role == KeyRole:
            return node.path
        ckey = (id(node), index.column())
        cell = self._cells.get(ckey)
        if cell is None:
            cell = self._cells[ckey] = self._cell(node, COLUMNS[index.column()])
        return cell.get(int(role))

    def _cell(self, node, col: Column) -> dict:
        if type(node) is _Group:
            comp = self.comparison
            if col.side is not None and comp is not None and (comp.left, comp.right)[col.side] is None:
                return {Qt.BackgroundRole: _HATCH if col.field == "name" else _PLACEHOLDER}   # nothing open there
            if col.field == "name" and col.side is not None:
                return {Qt.DisplayRole: node.name, Qt.ForegroundRole: _brush("#7f8c8d"),
                        Qt.ToolTipRole: f"{len(node.children):,} of the {len(node.parent.children):,} entries of "
                                        f"{node.parent.path or 'the top level'}, shown {GROUP:,} at a time"}
            return {}
        try:
            if node.is_leaf and not node.has_children:
                return self._leaf_cell(node, node.data, col)
            return self._module_cell(node, col)
        except Exception as e:  # noqa: BLE001 - one odd tensor shows an error text; painting carries on
            return {Qt.DisplayRole: f"**error**: {e}"}

    # ---- cells: every role of one cell at once ---------------------------------------------------------------
    def _leaf_cell(self, node, row: "C.Row", col: Column) -> dict:
        comp = self.comparison
        if col.side is None:
            status = comp.status(row) if comp else None
            text, glyph, color = theme.status_style(status)
            if row.alert and comp is not None and not comp.simulated:   # a NaN/Inf appeared, went or changed
                text, glyph, color = row.alert, "⚠", NONFINITE_COLOR
            out = {StatusRole: status, Qt.ToolTipRole: _tooltip(row, status), Qt.TextAlignmentRole: _CENTER}
            if text:
                out[Qt.DisplayRole] = f"{glyph} {text}"
                out[Qt.ForegroundRole] = _brush("white")
                if status != C.SAME_LAYOUT:
                    out[Qt.BackgroundRole] = _brush(color)
            else:
                out[Qt.DisplayRole] = ""
            return out
        info = row.info(col.side)
        f = col.field
        if info is None:          # the placeholder: this side lacks the key
            return {Qt.BackgroundRole: _HATCH if f == "name" else _PLACEHOLDER, Qt.DisplayRole: ""}
        out = {Qt.TextAlignmentRole: int(col.align)}
        if f == "name":
            out[Qt.DisplayRole] = f"{node.name}  ← {row.renamed_from}" if col.side == RIGHT and row.renamed_from \
                else node.name
            out[Qt.ToolTipRole] = (f"{row.key}\n{info.kind}, {C.shape_text(info.shape)} {info.dtype}, "
                                   f"{C.human_bytes(info.nbytes)}"
                                   f"{', saved from ' + info.device if info.device not in ('cpu', '?') else ''}")
        elif f == "kind":
            style = theme.KIND_STYLE.get(info.kind, theme.KIND_STYLE["tensor"])
            out[Qt.DisplayRole] = theme.KIND_STYLE.get(info.kind, (info.kind,))[0]
            out[Qt.DecorationRole] = theme.kind_icon(info.kind)
            out[Qt.ForegroundRole] = _brush(style[2])
        elif f == "shape":
            out[Qt.DisplayRole] = C.shape_text(info.shape)
        elif f == "dtype":
            out[Qt.DisplayRole] = info.dtype
        elif f == "size":
            out[Qt.DisplayRole] = C.human_bytes(info.nbytes)
        if info.kind == C.NON_PERSISTENT:
            out[Qt.FontRole] = self._italic
        return out

    def _module_cell(self, node, col: Column) -> dict:
        comp = self.comparison
        md = comp.modules.get(node.path) if comp else None
        if md is None:
            return {}
        if col.side is None:
            out = {StatusRole: md.problems, Qt.TextAlignmentRole: _CENTER}
            if md.problems:
                out[Qt.DisplayRole] = f"⚠ {md.problems} problem{'s' if md.problems != 1 else ''}"
                out[Qt.ForegroundRole] = _brush("#C0392B")
                out[Qt.FontRole] = self._bold
            elif md.differences:
                out[Qt.DisplayRole] = f"Δ {md.differences} differ"
            else:
                out[Qt.DisplayRole] = ""
            return out
        side = col.side
        present = md.present[side]
        f = col.field
        if not present:
            return {Qt.BackgroundRole: _HATCH if f == "name" else _PLACEHOLDER}
        cls = md.classes[side]
        out = {Qt.TextAlignmentRole: int(col.align),
               Qt.ToolTipRole: f"{node.path}{'  (' + cls + ')' if cls else ''}\n{present} tensors, "
                               f"{md.problems} problems below"}
        if f == "name":
            out[Qt.DisplayRole] = f"{node.name}  {cls}" if cls else node.name
        elif f == "kind":
            out[Qt.DisplayRole] = f"{present} tensor{'s' if present != 1 else ''}"
            out[Qt.ForegroundRole] = _brush("#7f8c8d")
        elif f == "size":
            out[Qt.DisplayRole] = C.human_bytes(md.nbytes[side])
        else:
            out[Qt.DisplayRole] = ""
        return out


_CENTER = int(Qt.AlignCenter)
_FLAGS = Qt.ItemIsEnabled | Qt.ItemIsSelectable
_NO_FLAGS = Qt.NoItemFlags
_PLACEHOLDER = QBrush(theme.PLACEHOLDER_BG)
_HATCH = QBrush(theme.PLACEHOLDER_BG, Qt.BDiagPattern)


@lru_cache(maxsize=None)
def _brush(color: str) -> QBrush:
    return QBrush(QColor(color))


NONFINITE_COLOR = "#C0392B"


def _tooltip(row: "C.Row", status) -> str:
    text = f"⚠ {row.alert}" if row.alert and status in (C.NONFINITE, C.DTYPE_DIFFERS) else theme.status_text(status)
    parts = [row.key, text]
    if row.renamed_from:
        parts.append(f"right side key: {row.renamed_from}")
    if row.max_abs_diff is not None:
        parts.append(f"max |Δ| = {row.max_abs_diff:.4g}")
    if row.explanation:
        parts.append(row.explanation)
    return "\n".join(p for p in parts if p)


def _child(node, name):
    child = getattr(node, "child", None)
    return child(name) if child else None


def is_group(node) -> bool:
    """Is this row a run of GROUP keys (not a node of the tree)?"""
    return type(node) is _Group


def row_key(node) -> str:
    """What identifies a row across a rebuild of the model: a node's dotted path, a group row's ``state_path``."""
    return node.state_path if type(node) is _Group else node.path


_GROUP_SEP = "\x1f"    # never in a key: a group's state_path is its parent's path, this and its row


class _Group:
    """A run of at most GROUP siblings shown as one row ("t0 … t999"). ``path`` is the parent's (selecting a group
    shows its module), ``state_path`` is the group's own (expanded state, :meth:`StateTreeModel.index_of_path`)."""

    __slots__ = ("parent", "row", "children", "name", "path", "state_path")
    key = None
    data = None
    is_leaf = False
    has_children = True

    def __init__(self, parent, row: int, children: list):
        self.parent, self.row, self.children = parent, row, children
        self.name = f"{children[0].name} … {children[-1].name}  ({len(children):,})"
        self.path = parent.path
        self.state_path = f"{parent.path}{_GROUP_SEP}{row}"


class _EmptyRoot:
    """The root shown before anything is open."""
    children: list = []
    below: tuple = ()
    has_children = False
    parent = None
    row = 0
    path = ""
    name = ""
    key = None
    data = None
    is_leaf = False
