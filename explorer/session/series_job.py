"""The series view's work, Qt-free: open and measure a run (``core.series``) in a worker, and shape its figures for
the window: the heat map matrix (keys x checkpoints), one key's trajectories, histograms at chosen checkpoints, the
CSV table. Every function here runs in a worker thread (``progress``/``should_stop`` keywords) or is cheap.
"""
from __future__ import annotations

import csv
import io
import math
import os
from dataclasses import dataclass, field

import numpy as np

METRICS = {"rel_change_prev": "relative change vs. the previous checkpoint  ‖x−prev‖/‖prev‖",
           "rel_change_first": "relative change vs. the first checkpoint  ‖x−first‖/‖first‖",
           "frac_changed": "fraction of elements changed since the previous checkpoint"}
CSV_COLUMNS = ("key", "checkpoint", "step", "path", "present", "shape", "dtype", "norm", "rel_change_prev",
               "rel_change_first", "frac_changed", "nonfinite")


@dataclass
class SeriesData:
    """An opened, measured run: ``series`` stays open (histograms read from it) until ``close()``."""

    paths: list[str]
    series: object              # explorer.core.series.run.Series opened here; None: it is open in ``engine``
    result: object              # explorer.core.series.run.SeriesResult
    keys: list[str] = field(default_factory=list)
    matrices: dict = field(default_factory=dict)     # metric -> heat_matrix (made in the worker)
    tree: object = None         # the keys as a module tree (explorer.core.tree.Tree; a leaf's data: its row)
    cells: dict = field(default_factory=dict)        # metric -> {dotted path: Cells} of every node of ``tree``
    engine: object = None       # the compute process (session.compute_process) holding the run open, or None
    columns: list = field(default_factory=list)      # per checkpoint: the keys it holds

    @property
    def n(self) -> int:
        return len(self.result.checkpoints)

    def steps(self) -> list[float]:
        """The x of each checkpoint: its step, or its index where no step is known."""
        return [float(m.step) if m.step is not None else float(i) for i, m in enumerate(self.result.checkpoints)]

    def label(self, i: int) -> str:
        m = self.result.checkpoints[i]
        return f"#{i}  step {m.step}" if m.step is not None else f"#{i}  {os.path.basename(m.path)}"

    def close(self) -> None:
        if self.series is not None:
            self.series.close()


def looks_like_run(path: str, *, progress=None, should_stop=None) -> bool:
    """Does ``path`` name a folder that ``discover`` reads as a run of two or more checkpoints (a dropped folder)?"""
    from ..core.series.discover import discover
    from ..errors import ExplorerError
    if not os.path.isdir(path):
        return False
    try:
        members = discover([path])
    except ExplorerError:
        return False
    return len(members) >= 2 and os.path.abspath(members[0].path) != os.path.abspath(path)


# Runs opened in the compute process (its module state): the last few, so that histograms need no second parse.
_OPEN: dict[tuple, object] = {}
KEPT_OPEN = 2


def _opened(paths: tuple):
    """The run ``paths`` name, opened once per process and kept open (the oldest closed beyond ``KEPT_OPEN``)."""
    from ..core.series.run import open_series
    series = _OPEN.pop(paths, None) or open_series(list(paths))
    _OPEN[paths] = series
    while len(_OPEN) > KEPT_OPEN:
        _OPEN.pop(next(iter(_OPEN))).close()
    return series


def measure_in_process(paths: tuple, use_cache: bool = True, cache_home: str | None = None, *, progress=None,
                       should_stop=None):
    """In the compute process: (result, columns) of the run ``paths`` name; it stays open there for histograms.
    ``cache_home``: the window's XDG_CACHE_HOME (the process may have started under another)."""
    if cache_home is not None:
        os.environ["XDG_CACHE_HOME"] = cache_home
    else:
        os.environ.pop("XDG_CACHE_HOME", None)
    _OPEN.pop(paths, None)      # files may have changed since: open afresh
    series = _opened(paths)
    result = series.measure(progress=progress, should_stop=should_stop, use_cache=use_cache)
    return result, [set(c) for c in series.columns]


def histograms_in_process(paths: tuple, key: str, indices: list[int], bins: int | None = None, *, progress=None,
                          should_stop=None) -> dict:
    """In the compute process: :func:`histograms` of the run opened by :func:`measure_in_process`."""
    series = _opened(paths)
    return _histograms(series, [set(c) for c in series.columns], key, indices, bins, progress, should_stop)


def open_and_measure(paths: list[str], *, engine=None, progress=None, should_stop=None,
                     use_cache: bool = True) -> SeriesData:
    """Open the run ``paths`` name and measure every key at every checkpoint (cached by the core). With ``engine``
    (the compute process) the work runs there and the run stays open there: the window's GUI thread never competes
    for the GIL with the measuring; without, here."""
    paths = [os.fspath(p) for p in paths]
    if engine is not None:
        result, columns = engine.call(measure_in_process, tuple(paths), use_cache, os.environ.get("XDG_CACHE_HOME"),
                                      progress=progress, should_stop=should_stop)
        data = SeriesData(paths, None, result, [t.key for t in result.tracks], engine=engine, columns=columns)
    else:
        from ..core.series.run import open_series
        series = open_series(paths)
        try:
            result = series.measure(progress=progress, should_stop=should_stop, use_cache=use_cache)
        except BaseException:
            series.close()
            raise
        data = SeriesData(paths, series, result, [t.key for t in result.tracks],
                          columns=[set(c) for c in series.columns])
    data.tree = key_tree(data.keys)
    for metric in METRICS:       # the heat maps of every metric, here rather than in the GUI thread
        data.matrices[metric] = heat_matrix(data, metric)
        data.cells[metric] = tree_cells(data, metric)
    return data


def _num(v) -> float:
    return float("nan") if v is None else float(v)


def heat_matrix(data: SeriesData, metric: str = "rel_change_prev") -> np.ndarray:
    """keys x checkpoints of ``metric`` (NaN where the key is absent or the figure does not apply; +inf where the
    key holds NaN/Inf at that checkpoint, so the view paints it as alarming)."""
    tracks = data.result.tracks
    m = np.full((len(tracks), data.n), np.nan)
    for r, t in enumerate(tracks):
        values = getattr(t, metric)
        for c in range(data.n):
            if t.nonfinite[c]:
                m[r, c] = np.inf
            elif t.present[c] and values[c] is not None:
                m[r, c] = values[c]
    return m


@dataclass
class Cells:
    """One row of the heat map: a key's, or a module's (the largest figure of its keys at each checkpoint)."""

    values: np.ndarray      # per checkpoint: the figure; NaN where none applies; +inf where NaN/Inf values are
    present: np.ndarray     # per checkpoint: the key (any key of the module) is there
    nonfinite: np.ndarray   # per checkpoint: NaN/Inf values of the key (of the module's keys)
    keys: int = 1           # the keys the row stands for


def key_tree(keys: list[str]):
    """The keys as the dotted-name module tree the compare view shows (``core.tree``); a leaf's ``data``: its row
    in ``keys`` (and in the result's tracks)."""
    from ..core.tree import Tree
    return Tree(keys, data={key: row for row, key in enumerate(keys)})


def open_depth(tree, most: int) -> int | None:
    """How deep to open the key tree for at most ``most`` rows: None when every row fits; else the depth to expand
    to (0: the top level opened, its children showing; -1: nothing opened)."""
    per_depth: dict[int, int] = {}
    for path in tree.by_path:
        if path:
            d = path.count(".")
            per_depth[d] = per_depth.get(d, 0) + 1
    if sum(per_depth.values()) <= most:
        return None
    shown, depth = 0, -1
    for d in sorted(per_depth):
        shown += per_depth[d]
        if shown > most:
            break
        depth = d - 1
    return depth


def tree_cells(data: SeriesData, metric: str) -> dict:
    """{dotted path: Cells} of every node of ``data.tree`` (the root's path is ""): a key's own figures; a
    module's, at each checkpoint, the largest of its keys' (those that apply), present where any of its keys is,
    its keys' NaN/Inf values summed. A key that is also a module (``a`` and ``a.b``) counts among its own keys."""
    m = data.matrices[metric] if metric in data.matrices else heat_matrix(data, metric)
    tracks = data.result.tracks
    out: dict[str, Cells] = {}
    for node in reversed(list(data.tree.root.walk())):     # children before their parent
        rows = [out[c.path] for c in node.children]
        if node.is_leaf:
            t = tracks[node.data]
            rows.append(Cells(m[node.data], np.array(t.present, dtype=bool),
                              np.array([n or 0 for n in t.nonfinite], dtype=np.int64)))
        if not rows:        # an empty run's root
            out[node.path] = Cells(np.full(data.n, np.nan), np.zeros(data.n, bool), np.zeros(data.n, np.int64), 0)
        elif len(rows) == 1 and not node.children:
            out[node.path] = rows[0]
        else:
            out[node.path] = Cells(np.fmax.reduce([r.values for r in rows]), np.any([r.present for r in rows], 0),
                                   np.sum([r.nonfinite for r in rows], 0), sum(r.keys for r in rows))
    return out


def largest_key(data: SeriesData, path: str, metric: str, i: int) -> tuple[str, float] | None:
    """The key of module ``path`` with the largest ``metric`` at checkpoint ``i`` (its figure), or None."""
    node = data.tree.by_path.get(path)
    m = data.matrices[metric]
    best = None
    for leaf in (node.leaves() if node is not None else ()):
        v = m[leaf.data, i]
        if not math.isnan(v) and (best is None or v > best[1]):
            best = (leaf.key, float(v))
    return best


SPAN = 1.0     # the colour scale of a relative change spans at least one decade (log10)


def log_range(m: np.ndarray) -> tuple[float, float]:
    """The heat map's colour scale for this run's changes (log10): from the 2nd percentile of the finite positive
    ones to the largest, at least ``SPAN`` wide, so that the run's own differences show."""
    v = m[np.isfinite(m) & (m > 0)]
    if not v.size:
        return -6.0, 0.0
    lv = np.log10(v)
    lo, hi = float(np.percentile(lv, 2)), float(lv.max())
    if hi - lo < SPAN:
        mid = (hi + lo) / 2
        lo, hi = mid - SPAN / 2, mid + SPAN / 2
    return lo, hi


def trajectory(data: SeriesData, key: str, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """(steps, values) of one key's ``metric`` (norm, rel_change_prev...): one point per checkpoint holding the key
    (a figure that does not apply, or a NaN norm, is NaN: a gap in the line)."""
    t = data.result.track(key)
    xs = data.steps()
    values = getattr(t, metric)
    pts = [(xs[i], _num(values[i])) for i in range(data.n) if t.present[i]]
    return np.array([p[0] for p in pts], dtype=float), np.array([p[1] for p in pts], dtype=float)


def present_indices(data: SeriesData, key: str) -> list[int]:
    return [i for i, p in enumerate(data.result.track(key).present) if p]


def bins_for(numel: int, most: int = 96) -> int:
    """Bins for a histogram of ``numel`` values: about 2·√n, between 8 and ``most`` (few values, few bins)."""
    return int(min(most, max(8, round(2 * math.sqrt(max(numel, 0))))))


def histograms(data: SeriesData, key: str, indices: list[int], bins: int | None = None, *, progress=None,
               should_stop=None) -> dict:
    """Histograms of ``key`` at the checkpoints ``indices`` that hold it, on the same bins (their common finite
    range; ``bins``: by the element count when None): {"key", "edges", "counts": {index: counts}}."""
    if data.series is None:
        return data.engine.call(histograms_in_process, tuple(data.paths), key, list(indices), bins,
                                progress=progress, should_stop=should_stop)
    return _histograms(data.series, data.columns, key, indices, bins, progress, should_stop)


def _histograms(series, columns: list, key: str, indices: list[int], bins, progress, should_stop) -> dict:
    indices = [i for i in dict.fromkeys(indices) if key in columns[i]]
    lo, hi, numel = math.inf, -math.inf, 0
    for n, i in enumerate(indices):
        if should_stop is not None and should_stop():
            from ..errors import Cancelled
            raise Cancelled("histogram: cancelled")
        x = series.read(key, i).reshape(-1)
        x = x.abs() if x.is_complex() else x
        x = x.double() if not x.is_floating_point() else x.float()
        x = x[x.isfinite()]
        numel = max(numel, x.numel())
        if x.numel():
            lo, hi = min(lo, float(x.min())), max(hi, float(x.max()))
        if progress is not None:
            progress(n + 1, 2 * len(indices))
    rng = (lo, hi) if lo <= hi else None
    bins = bins or bins_for(numel)
    counts, edges = {}, None
    for n, i in enumerate(indices):
        e, c = series.histogram(key, i, bins=bins, value_range=rng)
        edges, counts[i] = e.numpy(), c.numpy()
        if progress is not None:
            progress(len(indices) + n + 1, 2 * len(indices))
    return {"key": key, "edges": edges, "counts": counts}


def _cell(v) -> str:
    """A figure for CSV: repr round-trips floats exactly; NaN/Inf as --json spells them; empty for none."""
    if v is None:
        return ""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if math.isnan(v):
        return "nan"
    if math.isinf(v):
        return "inf" if v > 0 else "-inf"
    return repr(float(v))


def table_rows(data: SeriesData) -> list[list[str]]:
    """One row per key and checkpoint (the heat map's cells, with every figure), header first."""
    rows = [list(CSV_COLUMNS)]
    cps = data.result.checkpoints
    for t in data.result.tracks:
        for i, m in enumerate(cps):
            shape = t.shape[i]
            rows.append([t.key, str(i), "" if m.step is None else str(m.step), m.path, _cell(t.present[i]),
                         "" if shape is None else "x".join(map(str, shape)), t.dtype[i] or "", _cell(t.norm[i]),
                         _cell(t.rel_change_prev[i]), _cell(t.rel_change_first[i]), _cell(t.frac_changed[i]),
                         _cell(t.nonfinite[i])])
    return rows


def table_csv(data: SeriesData) -> str:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(table_rows(data))
    return buf.getvalue()


def write_csv(data: SeriesData, path: str, *, progress=None, should_stop=None) -> str:
    """Write the table to ``path`` atomically; returns the path."""
    from ..core.atomic import atomic_output
    text = table_csv(data)
    with atomic_output(path, "w", encoding="utf-8") as f:
        f.write(text)
    return path


def write_bytes(path: str, data: bytes, *, progress=None, should_stop=None) -> str:
    """Write a rendered plot (PNG bytes) to ``path`` atomically; returns the path."""
    from ..core.atomic import atomic_write_bytes
    atomic_write_bytes(path, data)
    return path


def findings_lines(data: SeriesData) -> list[tuple[str, str]]:
    """(kind, sentence) of each finding, most alarming first; one line saying all is well when there is none."""
    out = [(f.kind, f.text) for f in data.result.findings]
    return out or [("none", "No NaN/Inf, no frozen key, the same keys throughout, running statistics settled.")]


def summary(data: SeriesData) -> str:
    cps = data.result.checkpoints
    sources = sorted({m.step_source for m in cps if m.step_source})
    how = f"ordered by step ({', '.join(sources)})" if sources else "ordered by name (no step found)"
    cached = "; figures from the cache" if data.result.cached else ""
    return f"{len(cps):,} checkpoints, {len(data.result.tracks):,} keys, {how}{cached}"
