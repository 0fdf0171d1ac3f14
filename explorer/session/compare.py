"""The aligned comparison the window shows: the union of two sides' keys as one module tree, each leaf holding what
the left and the right side have at that key and a status.

Plain Python (no Qt): built in a worker thread, then handed to the window's tree model. Filtering is done here too, on
Python lists, and gives a smaller ``Tree`` to show (a recursive ``QSortFilterProxyModel`` is ~1 s per keystroke
at 100k rows).
"""
from __future__ import annotations

import gc
import re
import sys
import threading
import weakref
from dataclasses import dataclass, field
from enum import IntEnum
from itertools import chain, compress, repeat
from operator import attrgetter, itemgetter, not_
from typing import Any, Callable, Iterable, Iterator, Mapping

from ..core.gc_pause import batches, gc_paused, slices
from ..core.side import MODEL
from ..core.tree import PREBUILD_ABOVE, Tree
from ..core.records import (  # noqa: F401  (re-exported for the views; records imports no torch)
    CHANGED, DTYPE_CAST, DTYPE_DIFFERS, IDENTICAL, MATCHED, MISSING, NOT_COMPARED, NOT_LOADED, NON_PERSISTENT, ONLY_A,
    ONLY_B, RUNNING_STAT, SHAPE_DIFFERS, SHAPE_MISMATCH, UNEXPECTED)

SAME_LAYOUT = "same_layout"        # ours: both sides have the key, same shape and dtype, values not compared yet
NONFINITE = "nonfinite"            # ours: values changed and a NaN/Inf appeared, went or changed (Row.alert says which)
UNCOMPARED = "uncompared"          # ours: a simulated load writes the key, its values not compared (a meta model side)

# What counts for "problems only": what would break or silently change a load, or a NaN/Inf that appeared or went.
PROBLEM_STATUSES = frozenset({MISSING, UNEXPECTED, SHAPE_MISMATCH, DTYPE_CAST, RUNNING_STAT, NOT_LOADED,
                              ONLY_A, ONLY_B, SHAPE_DIFFERS, DTYPE_DIFFERS, NONFINITE})
# What counts for "differences only": anything but "the same" (or not known to differ: values not compared).
SAME_STATUSES = frozenset({MATCHED, IDENTICAL, SAME_LAYOUT, UNCOMPARED, None})


class Pane(IntEnum):
    """The window's two sides: the left pane (the model, or "A") and the right one (the checkpoint, or "B")."""

    LEFT = 0
    RIGHT = 1

    @property
    def word(self) -> str:
        return self.name.lower()


LEFT, RIGHT = Pane.LEFT, Pane.RIGHT


@dataclass
class SideData:
    """One opened side, as the window needs it (computed off the GUI thread)."""

    side: Any                      # an explorer.core.side.Side: a checkpoint or a model
    text: str                      # what the user opened (path or spec)
    entry: tuple | None            # the chosen state dict inside a checkpoint
    infos: dict                    # key -> TensorInfo (a model: non-persistent buffers included)
    classes: dict                  # module name -> ModuleInfo
    config_model: tuple[str, str] | None = None   # ("hf:FOLDER", class) when the folder's config.json names a model
    nbytes: int | None = None      # the tensors' bytes in all (counted in the worker; None: not counted yet)

    @property
    def is_model(self) -> bool:
        return self.side.kind == MODEL

    @property
    def label(self) -> str:
        return str(self.side.label)


def load_side_data(text: str, entry: tuple | None = None, *, progress=None, should_stop=None) -> SideData:
    """Open a path or model spec (the worker half of File -> Open)."""
    with _INIT_LOCK:   # two panes open at once: the core's reader registry must be complete before either uses it
        from explorer.core.loaders import readers
        readers()
        from explorer.core.side import open_side   # a file lists without torch; a model spec imports it
        freeze_heap()
    with gc_paused():
        data = settled(side_data(open_side(text), text, entry))
    if not data.is_model:
        from .config_model import config_model
        data.config_model = config_model(text)
    return data


def settled(value):
    """``value``, with everything made so far moved out of the cyclic collector's reach (``gc.freeze``), before the
    collector runs again. A side's records and infos (10**5-10**6 objects) and a comparison's rows and tree hold no
    reference cycles (``tests/core/test_no_cycles.py``): reference counting frees them when they are dropped. Left
    in the collector's young generation, the first collection after the build -- on whichever thread allocates next,
    often the GUI thread -- walks every one of them: a 70 ms stall for 50,000 tensors, seconds for 10**6."""
    gc.freeze()
    return value


_frozen_after_torch = False
_INIT_LOCK = threading.Lock()


def freeze_heap() -> None:
    """Move everything allocated so far (Qt, pyqtgraph, torch: hundreds of thousands of objects) out of the cyclic
    GC's reach. Without it a full collection takes 50-110 ms and, holding the GIL, stalls the GUI thread."""
    global _frozen_after_torch
    if not _frozen_after_torch:
        gc.freeze()
        _frozen_after_torch = "torch" in sys.modules


def side_data(side, text: str, entry: tuple | None = None) -> SideData:
    if side.kind == MODEL:   # a model shows its non-persistent buffers too (never loaded: said so in the rows)
        infos = side.all_infos()
        entry = ()
    else:
        if entry is None:
            entry = side.default_state_dict
        infos = side.state_dict_infos(entry) if entry is not None else {}
    try:
        classes = side.module_classes(entry)
    except Exception:   # classes are decoration: never fail a load for them
        classes = {}
    if type(infos) is not dict:    # a side's state_dict_infos is a dict of its own (10**6 items: copied in slices)
        infos = copied(infos)
    return SideData(side, text, entry, infos, dict(classes), nbytes=total_bytes(infos))


def copied(mapping) -> dict:
    """``dict(mapping)``, 50,000 items per C call (one copy of 10**6 items holds the interpreter lock ~30 ms)."""
    out: dict = {}
    for part in batches(mapping.items()):
        out.update(part)
    return out


_NBYTES = attrgetter("nbytes")


def total_bytes(infos: dict) -> int:
    """The bytes of every tensor of ``infos`` (key -> TensorInfo), a slice at a time."""
    return sum(sum(map(_NBYTES, part)) for part in batches(infos.values()))


class Row:
    """A leaf: the key on both sides and its status."""

    __slots__ = ("key", "left", "right", "diff_status", "sim_status", "_explanation", "_explain_from", "max_abs_diff",
                 "renamed_from", "alert")

    def __init__(self, key: str, left=None, right=None, compared: bool = True):
        self.key = key
        self.left = left                 # TensorInfo or None
        self.right = right
        # with one side open nothing is "only left": there is no comparison
        self.diff_status: str | None = structural_status(left, right) if compared else None
        self.sim_status: str | None = None
        self._explanation = ""
        self._explain_from = None        # (report key table, key): an unexpected key's report, made when first read
        self.max_abs_diff: float | None = None
        self.renamed_from: str | None = None   # the right side's original key when a remap renamed it
        self.alert = ""                  # the diff's word on NaN/Inf: "NaN appeared", "Inf gone"... ("" when none)

    @property
    def explanation(self) -> str:
        if self._explain_from is not None:
            table, key = self._explain_from
            self._explain_from = None
            self._explanation = table[key].explanation or ""
        return self._explanation

    @explanation.setter
    def explanation(self, text: str) -> None:
        self._explain_from = None
        self._explanation = text

    def explain_later(self, table, key: str) -> None:
        """The explanation is ``table[key].explanation``, asked for only when shown (a lazy report table)."""
        self._explanation = ""
        self._explain_from = (table, key)

    def info(self, side: Pane):
        return self.left if side == LEFT else self.right


def structural_status(left, right) -> str | None:
    """What the two sides' headers alone say about a key."""
    if left is None and right is None:
        return None
    if right is None:
        return None if left.kind == NON_PERSISTENT else ONLY_A
    if left is None:
        return ONLY_B
    if tuple(left.shape) != tuple(right.shape):
        return SHAPE_DIFFERS
    if left.dtype != right.dtype:
        return DTYPE_DIFFERS
    return SAME_LAYOUT


@dataclass
class ModuleData:
    """A module row: classes on each side, totals, and how many problems/differences lie below."""

    path: str
    classes: list = field(default_factory=lambda: [None, None])
    present: list = field(default_factory=lambda: [0, 0])     # tensors below, per side
    nbytes: list = field(default_factory=lambda: [0, 0])
    problems: int = 0
    differences: int = 0


class ModuleTable(Mapping):
    """dotted path -> :class:`ModuleData` of every module row (a node with keys below it, or no key of its own), each
    made when first asked for: its totals are a pass over the keys below it. :meth:`prebuild` makes those of the nodes
    with many keys below (in the worker), so a module made later, on the GUI thread, is a short pass. Iterating it
    makes the whole tree."""

    def __init__(self, comparison: "Comparison"):
        # the comparison's tree, rows and classes, through a weak reference: this table adds no owner to them (a
        # replaced comparison is taken apart container by container, ``session/dispose.py``, only what one owner holds)
        self._of = weakref.ref(comparison)
        self._made: dict[str, ModuleData] = {}
        self._counts: dict[str, list[int]] = {}

    def set_counts(self, counts: dict[str, list[int]]) -> None:
        """Problems and differences below each module path (:meth:`Comparison.recount`)."""
        self._counts = counts
        for path, md in self._made.items():
            md.problems, md.differences = counts.get(path, _NONE)

    def prebuild(self, above: int) -> None:
        """Make the module data of every node made so far with more than ``above`` keys below it."""
        for node in self._of().tree.root.walk_built():
            if len(node.below) > above:
                self.of_node(node)

    def of_node(self, node) -> "ModuleData | None":
        """The module data of a node of this table's tree (None for a leaf with nothing below)."""
        path = node.path
        md = self._made.get(path)
        if md is not None or not _is_module(node):
            return md
        comp = self._of()
        md = ModuleData(path)
        below, rows = node.below, comp.rows
        only = node.children[0] if node.is_built and len(node.children) == 1 else None
        if comp.totals is not None and len(below) == len(rows):   # every row lies below: the sides' own totals
            md.present, md.nbytes = list(comp.totals[0]), list(comp.totals[1])
            below = ()
        elif only is not None and len(only.below) == len(below):   # "model." above everything: its totals are ours
            sub = self.of_node(only)
            md.present, md.nbytes = list(sub.present), list(sub.nbytes)
            below = ()
        for a, b in slices(len(below)):     # column-wise, a slice per C call (10**6 keys below the root)
            part = list(map(rows.__getitem__, below[a:b]))
            for i, side_of in enumerate(_SIDE_OF):   # a TensorInfo is always true, None false
                there = list(filter(None, map(side_of, part)))
                md.present[i] += len(there)
                md.nbytes[i] += sum(map(_NBYTES, there))
        for i, sd in enumerate((comp.left, comp.right)):
            mi = sd.classes.get(path) if sd is not None else None
            if mi is not None:
                md.classes[i] = mi.class_name
        md.problems, md.differences = self._counts.get(path, _NONE)
        self._made[path] = md
        return md

    def __getitem__(self, path: str) -> ModuleData:
        node = self._of().tree.by_path.get(path)
        md = self.of_node(node) if node is not None else None
        if md is None:
            raise KeyError(path)
        return md

    def __iter__(self) -> Iterator[str]:
        return (path for path, node in self._of().tree.by_path.items() if _is_module(node))

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def items(self):     # type: ignore[override]
        return ((path, self.of_node(node)) for path, node in self._of().tree.by_path.items() if _is_module(node))

    def values(self):    # type: ignore[override]
        return (md for _, md in self.items())


def _is_module(node) -> bool:
    """A module row: keys below it, or no key of its own (the root of an empty tree)."""
    return node.key is None or node.has_children


_NONE = (0, 0)
_SIDE_OF = (attrgetter("left"), attrgetter("right"))
_QUIET = SAME_STATUSES - PROBLEM_STATUSES     # neither a problem nor a difference
_KEY_OF, _ROW_OF = itemgetter(0), itemgetter(1)


class Comparison:
    """Union of the left and right keys as one tree (``explorer.core.tree.Tree``), leaves carrying ``Row``."""

    def __init__(self, left: SideData | None, right: SideData | None, rename: dict | None = None):
        self.left = left
        self.right = right
        self.rename = dict(rename or {})            # right key -> key it is shown (and loaded) as
        self.simulated = False
        self.report = None                           # LoadReport of the last simulation
        self.rows: dict[str, Row] = {}
        self.first_of: dict[str | None, str] = {}    # a status that is a problem or a difference -> its first key
        lk = left.infos if left else {}
        rk = right.infos if right else {}
        with gc_paused():
            right_by_shown: dict[str, Any] = {}
            origin: dict[str, str] = {}
            for key, info in rk.items():
                shown = self.rename.get(key, key)
                right_by_shown[shown] = info
                if shown != key:
                    origin[shown] = key
            rows, compared = self.rows, left is not None and right is not None
            if compared:     # (column-wise: the loop is Row's own __init__ alone)
                rows.update(zip(lk, map(Row, lk, lk.values(), map(right_by_shown.get, lk))))
            else:
                rows.update(zip(lk, map(Row, lk, lk.values(), repeat(None), repeat(False))))
            for key, info in right_by_shown.items():
                if key not in rows:
                    rows[key] = Row(key, None, info, compared)
            for key, orig in origin.items():
                rows[key].renamed_from = orig
            # every row's tensors and bytes per side, where the sides know them: each key of a side is one row
            # (nothing renamed onto another key). The module row above every key (the root, a "model." prefix)
            # takes them, with no pass over the rows
            self.totals: tuple[list, list] | None = None
            sides = [sd for sd in (left, right) if sd is not None]
            if not origin and all(sd.nbytes is not None for sd in sides):
                self.totals = ([len(lk), len(rk)], [left.nbytes if left else 0, right.nbytes if right else 0])
            # the tree is made a level at a time (core/tree.py): here only the levels too long to make later
            self.tree = Tree(self.rows, data=self.rows).prebuild(PREBUILD_ABOVE)
            self.modules = ModuleTable(self)
            self.recount()
            self.modules.prebuild(PREBUILD_ABOVE)
            settled(None)

    def recount(self) -> None:
        """Problems and differences below each module, and :attr:`first_of` (the first key of each such status: the
        window picks the row it shows first from it, without a pass over 10**6 rows on its GUI thread)."""
        first_of: dict[str | None, str] = {}
        counts: dict[str, list[int]] = {}
        total = [0, 0]
        if not self.simulated and (self.left is None or self.right is None):   # one side: no status, nothing counts
            counts[""] = total
            self.first_of = first_of
            self.modules.set_counts(counts)
            return
        status_of = attrgetter("sim_status" if self.simulated else "diff_status")
        # only the keys of a status that counts are walked: picked out at C speed, a slice
        # of the rows per C call (one pass over 10**6 rows held the GUI thread ~100 ms)
        loud = (compress(zip(map(_KEY_OF, part), statuses), map(not_, map(_QUIET.__contains__, statuses)))
                for part in batches(self.rows.items()) for statuses in [list(map(status_of, map(_ROW_OF, part)))])
        for key, st in chain.from_iterable(loud):
            problem = int(st in PROBLEM_STATUSES)
            different = int(st not in SAME_STATUSES)
            if not (problem or different):
                continue
            if st not in first_of:
                first_of[st] = key
            total[0] += problem
            total[1] += different
            end = key.find(".")
            while end >= 0:         # every module above the key: the key's dotted prefixes
                if end:
                    c = counts.get(key[:end])
                    if c is None:
                        counts[key[:end]] = [problem, different]
                    else:
                        c[0] += problem
                        c[1] += different
                end = key.find(".", end + 1)
        counts[""] = total
        self.first_of = first_of
        self.modules.set_counts(counts)

    # ---- statuses -----------------------------------------------------------------------------------------------
    def status(self, row: Row) -> str | None:
        return row.sim_status if self.simulated else row.diff_status

    def apply_diff(self, report) -> None:
        """Fill value statuses (identical / changed / ...) from a core DiffReport."""
        for kr in report.keys:
            key = kr.key
            shown = self.rename.get(key, key)
            row = self.rows.get(shown) or self.rows.get(key)
            if row is None:
                continue
            row.diff_status = kr.status
            row.alert = kr.alert or ""
            if row.alert and row.diff_status == CHANGED:   # values changed, and a NaN/Inf with them: a problem
                row.diff_status = NONFINITE
            row.max_abs_diff = kr.max_abs_diff
            if kr.explanation and not self.simulated:
                row.explanation = kr.explanation
        self.recount()

    def apply_simulation(self, report) -> None:
        """Paint a core LoadReport: per key status and explanation."""
        self.simulated = True
        self.report = report
        for row in self.rows.values():
            row.sim_status = None
            row.explanation = ""
        keys = report.keys
        by_origin: dict[str, Row] | None = None

        def row_of(key: str) -> Row | None:
            nonlocal by_origin
            row = self.rows.get(key)
            if row is None:      # an unexpected key known under its original (un-renamed) name
                if by_origin is None:
                    by_origin = {}
                    for r in self.rows.values():
                        if r.renamed_from is not None:
                            by_origin.setdefault(r.renamed_from, r)
                row = by_origin.get(key)
            return row
        made = set()
        for key, kr in keys.made_items():
            made.add(key)
            row = row_of(key)
            if row is not None:
                row.sim_status = UNCOMPARED if kr.status == CHANGED and not kr.certain else kr.status
                row.explanation = kr.explanation or ""
        for key in report.unexpected_keys:   # the reports not made yet: read only when a row is shown
            if key not in made and key in keys:
                row = row_of(key)
                if row is not None:
                    row.sim_status = UNEXPECTED
                    row.explain_later(keys, key)
        for row in self.rows.values():
            if row.sim_status is None and row.left is not None and row.left.kind == NON_PERSISTENT:
                row.explanation = row.explanation or "non-persistent buffer: not in state_dict(), never loaded"
        self.recount()

    def clear_simulation(self) -> None:
        self.simulated = False
        self.report = None
        self.recount()

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for row in self.rows.values():
            st = self.status(row)
            out[st] = out.get(st, 0) + 1
        return out

    # ---- filtering ----------------------------------------------------------------------------------------------
    def filtered_keys(self, text: str = "", *, regex: bool = False, differences_only: bool = False,
                      problems_only: bool = False) -> list[str] | None:
        """Keys to show, or None when nothing is filtered (show the whole tree)."""
        if not text and not differences_only and not problems_only:
            return None
        match: Callable[[str], Any]
        if text and regex:
            try:
                pattern = re.compile(text, re.IGNORECASE)
            except re.error as e:
                raise ValueError(f"regular expression: {e}") from e
            match = pattern.search
        elif text:
            low = text.lower()
            match = lambda k: low in k.lower()  # noqa: E731
        else:
            match = None  # type: ignore[assignment]
        out = []
        status = self.status
        for key, row in self.rows.items():
            if match is not None and not match(key):
                continue
            if problems_only or differences_only:
                st = status(row)
                if problems_only and st not in PROBLEM_STATUSES:
                    continue
                if differences_only and st in SAME_STATUSES:
                    continue
            out.append(key)
        return out

    def subtree(self, keys: Iterable[str]):
        """A Tree over some keys, sharing this comparison's rows."""
        with gc_paused():
            return settled(Tree(keys, data=self.rows).prebuild(PREBUILD_ABOVE))


def human_bytes(n: int | None) -> str:
    if n is None:
        return ""
    f = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if f < 1024 or unit == "TiB":
            return f"{int(f)} B" if unit == "B" else f"{f:.1f} {unit}"
        f /= 1024
    return str(n)


def shape_text(shape) -> str:
    if shape is None:
        return ""
    return "(" + ", ".join(str(s) for s in shape) + ")" if len(shape) != 1 else f"({shape[0]},)"
