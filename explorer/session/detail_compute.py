"""The worker half of the detail pane: read one key's values on both sides and compute what the pane shows.

Plain Python (no Qt). Statistics and histograms come from ``explorer.core.stats`` (chunked, cancellable).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

CHANNEL_PLOT_MAX = 65536      # 1-D tensors up to this length get a per-channel plot
DELTA_MAX_ELEMENTS = 16_000_000  # above this, the delta histogram samples every k-th element
FIRST_LOOK_MIN = 4_000_000       # elements of float data needing a second pass, from which pass 1 is shown first


@dataclass
class SideValues:
    present: bool = False
    stats: Any = None               # TensorStats (core) or the fallback's namespace
    counts: np.ndarray | None = None   # histogram counts on the shared edges
    channel: np.ndarray | None = None  # values of a small 1-D tensor
    error: str = ""
    shape: tuple = ()
    dtype: str = ""


@dataclass
class DetailResult:
    key: str
    bins: int
    edges: np.ndarray | None = None
    left: SideValues = field(default_factory=SideValues)
    right: SideValues = field(default_factory=SideValues)
    delta_edges: np.ndarray | None = None
    delta_counts: np.ndarray | None = None
    delta_note: str = ""
    delta_max_abs: float | None = None   # over the finite deltas (said in delta_note when some are not)
    delta_nonfinite: int = 0        # positions (of those plotted) whose delta is NaN/Inf: left out of the delta plot
    estimated: bool = False         # a first look: histogram/percentiles from pass 1 alone; the exact result follows


def _read(sd, key: str):
    return None if sd is None else sd.side.read_key(key, sd.entry)


def read_pair(comparison, key: str) -> tuple[list, list, list[str]]:
    """Both sides' tensors at ``key`` (values read on demand), their infos, and read errors."""
    row = comparison.rows[key]
    tensors, infos, errors = [None, None], [row.left, row.right], ["", ""]
    for i, (sd, info) in enumerate(((comparison.left, row.left), (comparison.right, row.right))):
        if info is None:
            continue
        read_key = row.renamed_from if (i == 1 and row.renamed_from) else key
        try:
            t = _read(sd, read_key)
        except Exception as e:  # noqa: BLE001 - one unreadable side still shows the other
            errors[i] = f"{type(e).__name__}: {e}"
            continue
        if not hasattr(t, "dtype"):
            errors[i] = "not a tensor"
            continue
        tensors[i] = t.detach()
    return tensors, infos, errors


def compute_detail(comparison, key: str, bins: int = 128, *, progress=None, should_stop=None,
                   partial=None) -> DetailResult:
    """Statistics of both sides' tensor at ``key``, in this process (see ``compute_detail_isolated``)."""
    tensors, infos, errors = read_pair(comparison, key)
    return detail_from_tensors(key, bins, tensors, _brief(infos), errors, progress=progress,
                               should_stop=should_stop, partial=partial, siblings=siblings_of(comparison, key))


def siblings_of(comparison, key: str) -> list:
    """Per side, the keys beside ``key`` that its health flags depend on (a BatchNorm's buffers: a fresh
    BatchNorm's zero running_mean is then said in ``stats.info``, not flagged)."""
    from explorer.core.health import bn_siblings
    rows = comparison.rows
    return [bn_siblings(key, lambda k, i=i: k in rows and rows[k].info(i) is not None) for i in (0, 1)]


def compute_detail_isolated(comparison, key: str, bins: int = 128, *, progress=None, should_stop=None, partial=None):
    """The same, computed in the compute process, so the GUI process never shares its GIL with the number
    crunching. A checkpoint side is opened there by path (nothing is copied); a model's tensor is copied once into
    shared memory."""
    import torch

    from .compute_process import engine
    row = comparison.rows[key]
    specs, infos = [], [row.left, row.right]
    for i, (sd, info) in enumerate(((comparison.left, row.left), (comparison.right, row.right))):
        if info is None:
            specs.append(None)
            continue
        read_key = row.renamed_from if (i == 1 and row.renamed_from) else key
        if not sd.is_model:
            specs.append(("file", sd.text, sd.entry, read_key))
            continue
        try:
            t = _read(sd, read_key).detach()
        except Exception as e:  # noqa: BLE001
            specs.append(("error", f"{type(e).__name__}: {e}"))
            continue
        if t.dtype.is_complex or t.is_sparse or t.device.type != "cpu" or t.numel() == 0:
            specs.append(("tensor", t.contiguous().clone()))
            continue
        s = torch.empty(t.shape, dtype=t.dtype).share_memory_()
        s.copy_(t)
        specs.append(("tensor", s))
    return engine().call(detail_from_specs, key, bins, specs, _brief(infos),
                         progress=progress, should_stop=should_stop, partial=partial,
                         siblings=siblings_of(comparison, key))


def detail_from_specs(key: str, bins: int, specs: list, infos: list, *, progress=None, should_stop=None,
                      partial=None, siblings=None):
    """In the compute process: get each side's tensor (open a file by path, cached; or take the shared tensor)."""
    tensors, errors = [None, None], ["", ""]
    for i, spec in enumerate(specs):
        if spec is None:
            continue
        try:
            if spec[0] == "file":
                _, text, entry, read_key = spec
                tensors[i] = open_cached(text).read_key(read_key, entry)
            elif spec[0] == "tensor":
                tensors[i] = spec[1]
            else:
                errors[i] = spec[1]
        except Exception as e:  # noqa: BLE001 - one unreadable side still shows the other
            errors[i] = f"{type(e).__name__}: {e}"
    return detail_from_tensors(key, bins, tensors, infos, errors, progress=progress, should_stop=should_stop,
                               partial=partial, siblings=siblings)


def _brief(infos) -> list:
    return [None if i is None else (tuple(i.shape), i.dtype) for i in infos]


def detail_from_tensors(key: str, bins: int, tensors: list, infos: list, errors: list, *, progress=None,
                        should_stop=None, partial=None, siblings=None) -> DetailResult:
    """What the detail pane shows, from the two tensors (either may be None). Runs in any process.

    ``partial(result)``: when the exact figures need a second pass over large float tensors (together at least
    ``FIRST_LOOK_MIN`` elements), called first with the result pass 1 gives (``estimated`` True: histogram and percentiles estimated, every other figure exact); the
    exact result is returned as usual. No value is read twice for it.
    ``siblings``: per side, the keys beside ``key`` its health flags depend on (:func:`siblings_of`); what the key
    is meant to hold is then said in ``stats.info`` instead of flagged.
    """
    from explorer.core.stats import tensor_stats_steps, with_context
    from explorer.core.stats_records import TensorStats
    from explorer.errors import Cancelled
    stop = should_stop or (lambda: False)
    tensors = list(tensors)
    sides = [SideValues(), SideValues()]
    fractions = [0.0, 0.0]
    steps: dict[int, Any] = {}
    for i in range(2):
        sv = sides[i]
        if infos[i] is None:
            continue
        sv.present = True
        sv.shape, sv.dtype = infos[i]
        sv.error = errors[i]
        if tensors[i] is None:
            continue

        def sub_progress(done, total, _i=i):
            fractions[_i] = done / max(total, 1)
            if progress:
                progress(int(1000 * sum(fractions)), 3000)
        steps[i] = tensor_stats_steps(tensors[i], bins=bins, progress=sub_progress, should_stop=should_stop)

    def step(i: int, send=None) -> None:
        """Side ``i``'s next figures (``send``: the histogram range of its final ones)."""
        try:
            got = next(steps[i]) if send is None else steps[i].send(send)
            if siblings and siblings[i] and isinstance(got, TensorStats):
                got = with_context(got, key, siblings[i])
            sides[i].stats = got
        except Cancelled:
            raise
        except Exception as e:  # noqa: BLE001 - one side's failure still shows the other
            sides[i].error = f"{type(e).__name__}: {e}"
            sides[i].stats = None
            tensors[i] = None
            del steps[i]

    for i in list(steps):   # pass 1 of each side
        if stop():
            raise Cancelled("detail: cancelled")
        step(i)
    rough = [i for i in steps if not sides[i].stats.exact and sides[i].stats.histogram is not None
             and _is_float(sides[i].stats.dtype)]    # integer buckets are too coarse to show
    if partial is not None and sum(sides[i].stats.numel for i in rough) >= FIRST_LOOK_MIN:
        partial(_assemble(key, bins, sides, tensors, exact=False, should_stop=stop))
    # the final figures of both sides on one range, so that their histograms overlay bin for bin (no extra pass)
    ranges = [r for r in (_finite_range(sides[i].stats) for i in steps) if r is not None]
    common = _common_range(ranges) if len({tuple(r) for r in ranges}) > 1 else None
    for i in list(steps):
        if stop():
            raise Cancelled("detail: cancelled")
        step(i, common)
    return _assemble(key, bins, sides, tensors, exact=True, should_stop=stop, progress=progress)


def _is_float(dtype: str) -> bool:
    return dtype.startswith(("float", "bfloat", "complex"))


def _common_range(ranges: list) -> tuple[float, float] | None:
    """One histogram range holding every side's finite values."""
    if not ranges:
        return None
    lo = min(r[0] for r in ranges)
    hi = max(r[1] for r in ranges)
    if hi <= lo:
        lo, hi = lo - 0.5, hi + 0.5
    return lo, hi


def _assemble(key: str, bins: int, sides: list, tensors: list, *, exact: bool, should_stop, progress=None) \
        -> DetailResult:
    """A DetailResult from each side's statistics: histograms on shared edges (both sides overlay bin for bin),
    per-channel values, and (``exact``) the delta histogram."""
    from explorer.errors import Cancelled
    out = DetailResult(key, bins, estimated=not exact)
    for i, sv in enumerate(sides):
        mine = SideValues(sv.present, sv.stats, None, None, sv.error, sv.shape, sv.dtype)
        t = tensors[i]
        if t is not None and sv.stats is not None and t.dim() == 1 and 1 < t.numel() <= CHANNEL_PLOT_MAX \
                and not t.dtype.is_complex:
            mine.channel = t.float().numpy().copy()
        if i == 0:
            out.left = mine
        else:
            out.right = mine
    ranges = [_finite_range(s.stats) for s in (out.left, out.right) if s.stats is not None]
    ranges = [r for r in ranges if r is not None]
    if ranges:
        lo, hi = _common_range(ranges)
        for sv, t in ((out.left, tensors[0]), (out.right, tensors[1])):
            if t is None or sv.stats is None:
                continue
            h = getattr(sv.stats, "histogram", None)
            edges = _edges(h)
            if edges is not None and len(edges) == bins + 1 and np.isclose(edges[0], lo) and np.isclose(edges[-1], hi):
                sv.counts = _counts(h)
                out.edges = edges
            elif not exact and edges is not None:   # a first look: re-spread the estimated bins, no pass over values
                out.edges = np.linspace(lo, hi, bins + 1)
                sv.counts = _rebin(edges, _counts(h), out.edges)
            else:
                e, c = histogram(t, bins, (lo, hi))
                sv.counts, out.edges = c, e
            if should_stop():
                raise Cancelled("detail: cancelled")
    if not exact:
        return out
    if tensors[0] is not None and tensors[1] is not None and tuple(tensors[0].shape) == tuple(tensors[1].shape) \
            and tensors[0].numel() > 0 and not (tensors[0].dtype.is_complex or tensors[1].dtype.is_complex):
        if progress:
            progress(2000, 3000)
        a = tensors[0].reshape(-1)
        b = tensors[1].reshape(-1)
        step = 1
        if a.numel() > DELTA_MAX_ELEMENTS:
            step = -(-a.numel() // DELTA_MAX_ELEMENTS)
            a, b = a[::step], b[::step]
            out.delta_note = f"every {_ordinal(step)} element"
        import torch
        d = b.to(torch.float64 if a.dtype == torch.float64 else torch.float32) - \
            a.to(torch.float64 if a.dtype == torch.float64 else torch.float32)
        finite = d[torch.isfinite(d)]
        out.delta_nonfinite = d.numel() - finite.numel()
        if out.delta_nonfinite:   # a NaN/Inf on a side: the plot and max |Δ| are over the finite deltas, and say so
            n = out.delta_nonfinite
            out.delta_note = "; ".join(x for x in (out.delta_note, f"finite Δ only: {n:,} position"
                                                   f"{'s' if n != 1 else ''} with NaN/Inf left out") if x)
        if finite.numel():
            out.delta_max_abs = float(finite.abs().max())
            lo, hi = float(finite.min()), float(finite.max())
            if hi <= lo:
                lo, hi = lo - 0.5, hi + 0.5
            out.delta_edges, out.delta_counts = histogram(finite, bins, (lo, hi))
    if progress:
        progress(3000, 3000)
    return out


def _ordinal(n: int) -> str:
    """2 -> '2nd', 11 -> '11th', 23 -> '23rd'."""
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def _rebin(edges: np.ndarray, counts: np.ndarray, new_edges: np.ndarray) -> np.ndarray:
    """Counts on ``new_edges`` from a histogram on ``edges``, the values taken as spread evenly inside each bin."""
    cdf = np.concatenate(([0.0], np.cumsum(counts, dtype=np.float64)))
    at = np.interp(new_edges, np.asarray(edges, np.float64), cdf, left=0.0, right=cdf[-1])
    return np.maximum(np.diff(np.round(at)), 0).astype(np.int64)


_SIDES: dict = {}


def open_cached(text: str, stamp: tuple | None = None):
    """A checkpoint opened in this (compute) process, cached while the file is unchanged (``stamp``: its
    ``listing.stamp_of``, when the caller took it)."""
    from explorer.core.side import open_side

    from .listing import stamp_of
    stamp = stamp if stamp is not None else stamp_of(text)
    side = _SIDES.pop(stamp, None)
    if side is None:
        while len(_SIDES) > 8:      # the least recently used go first (a file the user keeps coming back to stays)
            del _SIDES[next(iter(_SIDES))]
        side = open_side(text)
    _SIDES[stamp] = side            # the most recently used last
    return side


def forget_opened(stamp: tuple) -> None:
    """Drop the checkpoint :func:`open_cached` keeps for ``stamp`` (``listing.stamp_of``), if any."""
    _SIDES.pop(stamp, None)


def diff_paths(text_a: str, entry_a, text_b: str, entry_b, remap=None, *, progress=None, should_stop=None):
    """``explorer.core.diff.diff_sides`` of two checkpoint files, opened here by path (for the compute process)."""
    from explorer.core.diff import diff_sides
    sides = [open_cached(text_a), open_cached(text_b)]
    return diff_sides(sides[0], sides[1], entry_a=entry_a, entry_b=entry_b,
                      remap=remap.new_key if remap is not None else None, progress=progress, should_stop=should_stop)


# ---- statistics: explorer.core.stats -------------------------------------------------------------------------
def histogram(t, bins: int, rng: tuple[float, float], should_stop=None):
    """(edges, counts) of ``t`` over a range."""
    from explorer.core.stats import histogram as core_histogram
    h = core_histogram(t, bins, range=rng, should_stop=should_stop)
    return _edges(h), _counts(h)


def _edges(h):
    e = getattr(h, "edges", None)
    return None if e is None else np.asarray(e)


def _counts(h):
    c = getattr(h, "counts", None)
    return None if c is None else np.asarray(c)


def _finite_range(stats):
    mn, mx = getattr(stats, "min", None), getattr(stats, "max", None)
    if mn is None or mx is None:
        return None
    mn, mx = float(mn), float(mx)
    if not (np.isfinite(mn) and np.isfinite(mx)):
        return None
    return mn, mx
