"""The worker half of the detail pane: read one key's values on both sides and compute what the pane shows.

Plain Python (no Qt). Statistics and histograms come from ``explorer.core.stats`` (chunked, cancellable).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

CHANNEL_PLOT_MAX = 65536      # 1-D tensors up to this length get a per-channel plot
DELTA_MAX_ELEMENTS = 16_000_000  # above this, the delta histogram samples every k-th element


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
    delta_max_abs: float | None = None


def _read(sd, key: str):
    if sd is None:
        return None
    return sd.side.read_key(key, sd.entry) if not sd.is_model else sd.side.read_key(key)


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


def compute_detail(comparison, key: str, bins: int = 128, *, progress=None, should_stop=None) -> DetailResult:
    """Statistics of both sides' tensor at ``key``, in this process (see ``compute_detail_isolated``)."""
    tensors, infos, errors = read_pair(comparison, key)
    return detail_from_tensors(key, bins, tensors, _brief(infos), errors, progress=progress,
                               should_stop=should_stop)


def compute_detail_isolated(comparison, key: str, bins: int = 128, *, progress=None, should_stop=None):
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
    return engine().call("explorer.qt.detail_compute.detail_from_specs", key, bins, specs, _brief(infos),
                         progress=progress, should_stop=should_stop)


def detail_from_specs(key: str, bins: int, specs: list, infos: list, *, progress=None, should_stop=None):
    """In the compute process: get each side's tensor (open a file by path, cached; or take the shared tensor)."""
    tensors, errors = [None, None], ["", ""]
    for i, spec in enumerate(specs):
        if spec is None:
            continue
        try:
            if spec[0] == "file":
                _, text, entry, read_key = spec
                tensors[i] = _side(text).read_key(read_key, entry)
            elif spec[0] == "tensor":
                tensors[i] = spec[1]
            else:
                errors[i] = spec[1]
        except Exception as e:  # noqa: BLE001 - one unreadable side still shows the other
            errors[i] = f"{type(e).__name__}: {e}"
    return detail_from_tensors(key, bins, tensors, infos, errors, progress=progress, should_stop=should_stop)


def _brief(infos) -> list:
    return [None if i is None else (tuple(i.shape), i.dtype) for i in infos]


def detail_from_tensors(key: str, bins: int, tensors: list, infos: list, errors: list, *, progress=None,
                        should_stop=None) -> DetailResult:
    """What the detail pane shows, from the two tensors (either may be None). Runs in any process."""
    from explorer.errors import Cancelled
    out = DetailResult(key, bins)
    stop = should_stop or (lambda: False)
    tensors = list(tensors)
    for i in range(2):
        sv = out.left if i == 0 else out.right
        if infos[i] is None:
            continue
        sv.present = True
        sv.shape, sv.dtype = infos[i]
        sv.error = errors[i]
        t = tensors[i]
        if t is None:
            continue
        if stop():
            raise Cancelled("detail: cancelled")

        def sub_progress(done, total, _i=i):
            if progress:
                progress(_i * 1000 + int(1000 * done / max(total, 1)), 3000)
        try:
            sv.stats = tensor_stats(t, bins=bins, progress=sub_progress, should_stop=should_stop)
        except Cancelled:
            raise
        except Exception as e:  # noqa: BLE001
            sv.error = f"{type(e).__name__}: {e}"
            tensors[i] = None
            continue
        if t.dim() == 1 and 1 < t.numel() <= CHANNEL_PLOT_MAX and not t.dtype.is_complex:
            sv.channel = t.float().numpy().copy()
    # shared edges so the two histograms overlay bin for bin
    ranges = [_finite_range(s.stats) for s in (out.left, out.right) if s.stats is not None]
    ranges = [r for r in ranges if r is not None]
    if ranges:
        lo = min(r[0] for r in ranges)
        hi = max(r[1] for r in ranges)
        if hi <= lo:
            lo, hi = lo - 0.5, hi + 0.5
        for sv, t in ((out.left, tensors[0]), (out.right, tensors[1])):
            if t is None or sv.stats is None:
                continue
            h = getattr(sv.stats, "histogram", None)
            edges = _edges(h)
            if edges is not None and len(edges) == bins + 1 and np.isclose(edges[0], lo) and np.isclose(edges[-1], hi):
                sv.counts = _counts(h)
                out.edges = edges
            else:
                e, c = histogram(t, bins, (lo, hi))
                sv.counts, out.edges = c, e
            if stop():
                raise Cancelled("detail: cancelled")
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
            out.delta_note = f"every {step}th element"
        import torch
        d = b.to(torch.float64 if a.dtype == torch.float64 else torch.float32) - \
            a.to(torch.float64 if a.dtype == torch.float64 else torch.float32)
        finite = d[torch.isfinite(d)]
        if finite.numel():
            out.delta_max_abs = float(finite.abs().max())
            lo, hi = float(finite.min()), float(finite.max())
            if hi <= lo:
                lo, hi = lo - 0.5, hi + 0.5
            out.delta_edges, out.delta_counts = histogram(finite, bins, (lo, hi))
    if progress:
        progress(3000, 3000)
    return out


_SIDES: dict = {}


def _side(text: str):
    """A checkpoint opened in this (compute) process, cached while the file is unchanged."""
    import os

    from explorer.core.sides import open_side
    try:
        st = os.stat(text)
        stamp = (text, st.st_mtime_ns, st.st_size)
    except OSError:
        stamp = (text, 0, 0)
    side = _SIDES.get(stamp)
    if side is None:
        if len(_SIDES) > 8:
            _SIDES.clear()
        side = _SIDES[stamp] = open_side(text)
    return side


def diff_paths(text_a: str, entry_a, text_b: str, entry_b, remap=None, *, progress=None, should_stop=None):
    """``explorer.core.diff.diff_sides`` of two checkpoint files, opened here by path (for the compute process)."""
    from explorer.core.diff import diff_sides
    sides = [_side(text_a), _side(text_b)]
    return diff_sides(sides[0], sides[1], entry_a=entry_a, entry_b=entry_b,
                      remap=remap.new_key if remap is not None else None, progress=progress, should_stop=should_stop)


# ---- statistics: explorer.core.stats -------------------------------------------------------------------------
def tensor_stats(t, *, bins=128, progress=None, should_stop=None):
    from explorer.core.stats import tensor_stats as core_tensor_stats
    return core_tensor_stats(t, bins=bins, progress=progress, should_stop=should_stop)


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
