"""The window's background jobs: plain functions run by its worker threads (``progress``/``should_stop`` keywords, as
``qt.workers.Runner`` passes them), and the policies the window asks without Qt (which row to show first, which
statistics run where). No Qt here: tested without a display.
"""
from __future__ import annotations

import importlib.util
import os
from typing import Any

from ..core.side import CHECKPOINT
from ..errors import Cancelled
from . import compare as C
from .listing import ListedSide
from .checkpoint_model import CAVEAT, checkpoint_as_model
from .compute_process import engine
from .detail_compute import compute_detail, compute_detail_isolated, diff_paths

# Tensors up to this many elements (per side) get their statistics in a worker thread of the window's process: a
# few milliseconds of work, which must not wait for the compute process to start (seconds on a busy machine).
SMALL_DETAIL_ELEMENTS = 65_536
OPEN_HERE_MAX = 10_000     # tensors of a listed file the window parses itself for a small tensor's statistics

# The statuses a row is auto-selected for, the most telling first.
AUTO_SELECT_ORDER = (C.NONFINITE, C.RUNNING_STAT, C.SHAPE_MISMATCH, C.SHAPE_DIFFERS, C.MISSING, C.UNEXPECTED,
                     C.CHANGED, C.DTYPE_CAST, C.DTYPE_DIFFERS, C.ONLY_A, C.ONLY_B)
RAISING = (C.SHAPE_MISMATCH, C.MISSING, C.UNEXPECTED)   # what makes a strict load raise


def reselect_entry(data: C.SideData, entry, *, progress=None, should_stop=None) -> C.SideData:
    """The same side with another of its state dicts chosen."""
    return C.side_data(data.side, data.text, entry)


def build_comparison(left, right, rename, *, progress=None, should_stop=None) -> C.Comparison:
    return C.Comparison(left, right, rename)


def build_subtree(comparison: C.Comparison, keys, *, progress=None, should_stop=None):
    return comparison.subtree(keys)


def filter_tree(comparison: C.Comparison, text: str, query: dict, *, progress=None, should_stop=None):
    """``(keys matched, their tree)`` for a filter (``Comparison.filtered_keys``'s arguments), or ``(None, None)``
    when nothing is filtered; ``ValueError`` for a regular expression that does not compile."""
    keys = comparison.filtered_keys(text, **query)
    if keys is None:
        return None, None
    if should_stop is not None and should_stop():
        raise Cancelled("filtering: cancelled")
    return len(keys), comparison.subtree(keys)


def start_engine(eng, *, progress=None, should_stop=None) -> None:
    eng.start()


def remapped_state_dict(data: C.SideData, remap):
    """The right side's state dict with ``remap`` applied (``explorer.core.remap.Remap.apply``), as the fixed file
    would hold it: what torch is handed once the user applied a suggestion."""
    side = data.side
    sd = side.load_object(data.entry, device="cpu") if side.kind == CHECKPOINT else side.model.state_dict()
    return remap.apply(sd)


def simulate(left: C.SideData, right: C.SideData, remap, strict: bool, assign: bool, *,
             progress=None, should_stop=None):
    """(LoadReport, note): ``note`` says what the prediction cannot know (a checkpoint on the left), else ""."""
    from explorer.core.simulate.run import simulate_load
    target: Any = right.side
    entry = right.entry if not right.is_model else None
    if remap is not None:
        target, entry = remapped_state_dict(right, remap), None
    model, note = left.side, ""
    if not left.is_model:    # two checkpoints: the left one's state dict as a model of plain modules
        model = checkpoint_as_model(left.side, left.entry, os.path.basename(left.label) or left.label,
                                    should_stop=should_stop)
        note = CAVEAT
        if model.skipped:
            note += (f" {len(model.skipped)} left key(s) cannot be a module attribute and are left out: "
                     + ", ".join(model.skipped[:5]) + (" …" if len(model.skipped) > 5 else "") + ".")
    report = simulate_load(model, target, entry=entry, strict=strict, assign=assign, progress=progress,
                           should_stop=should_stop)
    return report, note


def diff(left: C.SideData, right: C.SideData, remap, *, progress=None, should_stop=None):
    """The value diff of the two sides (two files: in the compute process, which opens them itself)."""
    if not left.is_model and not right.is_model:
        return engine().call(diff_paths, left.text, left.entry, right.text, right.entry, remap,
                             progress=progress, should_stop=should_stop)
    from explorer.core.diff import diff_sides
    return diff_sides(left.side, right.side, entry_a=left.entry if not left.is_model else None,
                      entry_b=right.entry if not right.is_model else None,
                      remap=remap.new_key if remap is not None else None,
                      progress=progress, should_stop=should_stop)


def export_fixed(remap, right: C.SideData, path: str, *, progress=None, should_stop=None) -> str:
    """Write the right side with ``remap`` applied (atomically, by the core)."""
    from explorer.core.remap.export import apply_remap
    return apply_remap(right.side, remap, path, entry=right.entry if not right.is_model else None,
                       progress=progress, should_stop=should_stop)


def module_available(name: str) -> bool:
    """Is ``name`` part of this build (the simulation and the diff are optional modules)?"""
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def detail_job(row: C.Row, comparison: C.Comparison | None = None):
    """The statistics job for a row: small tensors in a worker thread here, larger ones in the compute process -- as
    are those of a file of many tensors this process knows only from the parse process's listing (reading one tensor
    here would mean parsing the whole file here first: 0.4 s for 50,000 tensors; the compute process opens it)."""
    if elements(row) > SMALL_DETAIL_ELEMENTS or (comparison is not None and any(
            sd is not None and isinstance(sd.side, ListedSide) and not sd.side.is_opened
            and len(sd.infos) > OPEN_HERE_MAX for sd in (comparison.left, comparison.right))):
        return compute_detail_isolated
    return compute_detail


def elements(row: C.Row) -> int:
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


def auto_select_key(comp: C.Comparison) -> str | None:
    """The most telling problem row (so the detail pane is never empty on first sight): when the simulated load
    raises, the keys that make it raise come first; else a NaN/Inf that appeared, then a running statistic..."""
    order = AUTO_SELECT_ORDER
    report = comp.report if comp.simulated else None
    if report is not None and report.raises:
        order = RAISING + tuple(o for o in order if o not in RAISING)
    first_of = comp.first_of     # the first key of each problem or difference (Comparison.recount)
    return next((first_of[st] for st in order if st in first_of), None)
