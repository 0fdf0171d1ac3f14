"""Compare two sides (checkpoint vs checkpoint, or model vs checkpoint) key by key, streamed tensor by tensor.

Statuses (constants of :mod:`explorer.core.records`): ``only_a``, ``only_b``, ``shape_differs``, ``dtype_differs``,
``identical``, ``changed``.

**Identical means bit-exact**: same shape, same dtype and the same bytes in logical order. So a NaN equals a NaN with
the same bit pattern (unlike ``torch.equal``, which calls any tensor holding NaN unequal even to itself), and -0.0
differs from +0.0 (a ``changed`` tensor whose max |delta| is then 0). Bytes are compared chunk by chunk straight
from the memory maps, stopping at the first difference.

For ``changed`` tensors (and ``dtype_differs`` ones of equal shape, compared after casting) we report:

* ``max_abs_diff`` = max |b - a|, ``mean_abs_diff`` = mean |b - a| (over all compared elements),
* ``rel_l2`` = ||b - a|| / ||a|| (None when ||a|| = 0 and b != a; 0 when both are zero),
* ``cosine`` = <a, b> / (||a|| ||b||) (None when either norm is 0),
* ``differing`` = how many elements differ in value (a NaN equals a NaN, -0.0 equals +0.0).

**Non-finite values** (NaN, +/-Inf) enter these figures the way IEEE arithmetic does, as ``(b - a).abs().max()``
and friends in torch would: one NaN on either side makes ``max_abs_diff`` NaN, an Inf facing a finite value makes it
Inf. The same four figures over the positions finite on *both* sides are given aside (``finite``, labelled "over
finite values"). Every compared key also carries, per side, its NaN and Inf counts (also for ``identical`` keys), and
the positions where finiteness differs (finite on one side only), where a NaN appeared or went, where an Inf
appeared or went. A NaN facing a NaN is an equal value; when their bits differ (payload, sign) they are counted in
``nan_bits_differ``; -0.0 facing +0.0 in ``signed_zeros_differ`` (both only when the dtypes are the same).

In JSON (``to_json``) a figure that is NaN or +/-Inf is the string ``"nan"``, ``"inf"`` or ``"-inf"`` (JSON has no
such numbers); ``null`` means "not computed".

Sums run in float64 per chunk of ~1M elements (integers are compared as float64: exact below 2**53). Complex
tensors are compared on their real and imaginary parts as separate numbers.
"""
from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass, field
from itertools import compress, repeat
from operator import attrgetter
from typing import Callable, Mapping

import numpy as np
import torch

from ..errors import Cancelled, ExplorerError
from .records import CHANGED, DTYPE_DIFFERS, IDENTICAL, ONLY_A, ONLY_B, SHAPE_DIFFERS
from .chunks import CHUNK, PARALLEL_MIN, THREADS, ProgressFn, StopFn, check_stop, iter_chunks, paired_chunks, \
    run_chunked, single_intraop

STATUSES = (IDENTICAL, CHANGED, ONLY_A, ONLY_B, SHAPE_DIFFERS, DTYPE_DIFFERS)
NUMBERS = ("figures that are NaN or +-Inf are the strings \"nan\", \"inf\", \"-inf\"; null: not computed; "
           "max/mean/rel/cosine include NaN/Inf as IEEE arithmetic does, \"finite\" gives them over the positions "
           "finite on both sides")
IDENTICAL_MEANS = ("identical = same shape, dtype and bytes (bit-exact): a NaN equals a NaN with the same bits "
                   "(torch.equal would call it unequal); -0.0 and +0.0 differ")


@dataclass(slots=True)
class KeyDiff:
    key: str                              # A's key (B's key after the remap)
    status: str
    shape_a: tuple | None = None
    shape_b: tuple | None = None
    dtype_a: str | None = None
    dtype_b: str | None = None
    key_b: str | None = None              # B's own key when a remap renamed it
    max_abs_diff: float | None = None     # IEEE: NaN when a NaN takes part, Inf when an Inf does (module docstring)
    mean_abs_diff: float | None = None
    rel_l2: float | None = None
    cosine: float | None = None
    differing: int | None = None          # elements that differ in value (NaN == NaN, -0.0 == +0.0)
    nonfinite: int = 0                    # positions with a NaN/Inf on a side whose values differ
    error: str | None = None              # a side could not be read
    nan_a: int | None = None              # NaN / +-Inf counts per side (None: values not read)
    inf_a: int | None = None
    nan_b: int | None = None
    inf_b: int | None = None
    finiteness_differs: int = 0           # positions finite on one side only
    nan_appeared: int = 0                 # NaN in B, not in A
    nan_gone: int = 0
    inf_appeared: int = 0                 # +-Inf in B, not in A
    inf_gone: int = 0
    nan_bits_differ: int | None = None    # NaN on both sides with other bits (same dtype only)
    signed_zeros_differ: int | None = None  # -0.0 facing +0.0 (same dtype only)
    finite: dict | None = None            # the four figures over the positions finite on both sides

    @property
    def module(self) -> str:
        return self.key.rpartition(".")[0]

    @property
    def alert(self) -> str:
        """What changed about non-finite values, for a status column ("NaN appeared", "Inf gone"...), or ""."""
        if not self.nonfinite:
            return ""
        parts = [text for n, text in ((self.nan_appeared, "NaN appeared"), (self.inf_appeared, "Inf appeared"),
                                      (self.nan_gone, "NaN gone"), (self.inf_gone, "Inf gone")) if n]
        return ", ".join(parts) or "Inf changed sign"

    def nonfinite_text(self) -> str:
        """One sentence on the non-finite values of both sides ("" when neither side holds any)."""
        if self.nan_a is None or not (self.nan_a or self.inf_a or self.nan_b or self.inf_b):
            return ""
        sides = f"A {self.nan_a:,} NaN, {self.inf_a:,} Inf; B {self.nan_b:,} NaN, {self.inf_b:,} Inf"
        if not self.nonfinite:
            return f"non-finite values unchanged ({sides})"
        what = []
        for n, text in ((self.nan_appeared, "NaN appeared"), (self.inf_appeared, "Inf appeared"),
                        (self.nan_gone, "NaN gone"), (self.inf_gone, "Inf gone")):
            if n:
                what.append(f"{text} at {n:,} position{'s' if n != 1 else ''}")
        what = what or [f"{self.nonfinite:,} Inf changed sign"]
        return (f"⚠ {', '.join(what)} ({self.finiteness_differs:,} position"
                f"{'s' if self.finiteness_differs != 1 else ''} finite on one side only; {sides})")

    def finite_text(self) -> str:
        """The figures over the positions finite on both sides, when some position is not ("" otherwise)."""
        f = self.finite
        if not f or not (self.nan_a or self.inf_a or self.nan_b or self.inf_b):
            return ""
        if not f["positions"]:
            return "no position is finite on both sides"
        return (f"over the {f['positions']:,} positions finite on both sides: max |Δ| {_g(f['max_abs_diff'])}, "
                f"||Δ||/||A|| {_g(f['rel_l2'], '.3g')}, cosine {_g(f['cosine'], '.6f')}")

    @property
    def explanation(self) -> str:
        """One sentence for a tooltip or the detail pane."""
        renamed = f" (B calls it {self.key_b!r})" if self.key_b else ""
        if self.status == IDENTICAL:
            text = f"bit-identical in both{renamed}"
            nf = self.nonfinite_text()
            return f"{text}; {nf}" if nf else text
        if self.status == ONLY_A:
            return "only in A"
        if self.status == ONLY_B:
            return f"only in B{renamed}"
        if self.status == SHAPE_DIFFERS:
            return f"shape {list(self.shape_a)} in A, {list(self.shape_b)} in B{renamed}"
        if self.error:
            return f"not compared: {self.error}"
        text = f"dtype {self.dtype_a} in A, {self.dtype_b} in B; " if self.status == DTYPE_DIFFERS else ""
        nf = self.nonfinite_text()
        fin = self.finite_text()
        if self.nonfinite:     # a NaN/Inf appeared or went: said first
            text, nf = f"{nf}; {text}", ""
        tail = "".join(f"; {t}" for t in (nf, fin) if t) + renamed
        if self.differing == 0 and self.status == CHANGED:
            what = []
            if self.signed_zeros_differ:
                what.append(f"{self.signed_zeros_differ:,} -0.0 facing +0.0")
            if self.nan_bits_differ:
                what.append(f"{self.nan_bits_differ:,} NaN facing a NaN with other bits (payload or sign)")
            return "equal values with different bits: " + (", ".join(what) or "bits differ") + tail
        if self.max_abs_diff is None:
            return text + "values not comparable" + tail
        n = self.differing or 0
        return (text + f"{n:,} element{'s' if n != 1 else ''} differ{'s' if n == 1 else ''}; "
                f"max |Δ| {_g(self.max_abs_diff)}, ||Δ||/||A|| {_g(self.rel_l2, '.3g')}, cosine {_g(self.cosine, '.6f')}" + tail)

    def to_json(self) -> dict:
        read = self.nan_a is not None
        return {"key": self.key, "status": self.status,
                "shape_a": list(self.shape_a) if self.shape_a is not None else None,
                "shape_b": list(self.shape_b) if self.shape_b is not None else None,
                "dtype_a": self.dtype_a, "dtype_b": self.dtype_b,
                "max_abs_diff": _num(self.max_abs_diff), "mean_abs_diff": _num(self.mean_abs_diff),
                "rel_l2": _num(self.rel_l2), "cosine": _num(self.cosine), "differing": self.differing,
                "nonfinite": {"a": {"nan": self.nan_a, "inf": self.inf_a}, "b": {"nan": self.nan_b, "inf": self.inf_b},
                              "differ": self.nonfinite, "finiteness_differs": self.finiteness_differs,
                              "nan_appeared": self.nan_appeared, "nan_gone": self.nan_gone,
                              "inf_appeared": self.inf_appeared, "inf_gone": self.inf_gone,
                              "nan_bits_differ": self.nan_bits_differ} if read else None,
                "signed_zeros_differ": self.signed_zeros_differ,
                "finite": {k: _num(v) if k != "positions" else v for k, v in self.finite.items()}
                if self.finite is not None else None}


def _g(v, spec=".4g") -> str:
    return "—" if v is None else format(v, spec)


def _num(v):
    """A figure for JSON: NaN and +-Inf as the strings "nan", "inf", "-inf" (JSON has no such numbers)."""
    if v is None:
        return None
    v = float(v)
    if math.isfinite(v):
        return v
    return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf")


def _rank(v) -> float:
    """Order of a figure for "largest": NaN above everything."""
    return math.inf if v != v else v


@dataclass
class ModuleDiff:
    """Counts for one module (a dotted key prefix; "" is the whole file) and its largest change."""

    name: str
    counts: dict[str, int] = field(default_factory=lambda: {s: 0 for s in STATUSES})
    tensors: int = 0
    max_rel_l2: float | None = None
    largest_key: str | None = None

    @property
    def all_identical(self) -> bool:
        return self.counts[IDENTICAL] == self.tensors


@dataclass
class DiffReport:
    a: str
    b: str
    keys: list[KeyDiff]
    identical_means: str = IDENTICAL_MEANS

    def __post_init__(self):
        self.by_key = dict(zip(map(attrgetter("key"), self.keys), self.keys))
        self.modules = self._modules()

    @property
    def summary(self) -> dict[str, int]:
        return dict(self.modules[""].counts) if "" in self.modules else {s: 0 for s in STATUSES}

    def _modules(self) -> "OrderedDict[str, ModuleDiff]":
        mods: OrderedDict[str, ModuleDiff] = OrderedDict()
        top = mods[""] = ModuleDiff("")
        for k in self.keys:
            if "." not in k.key:   # a key of the root module (10**6 tiny tensors: all of them): counted at once
                top.counts[k.status] += 1
                top.tensors += 1
                if k.rel_l2 is not None and (top.max_rel_l2 is None or _rank(k.rel_l2) > _rank(top.max_rel_l2)):
                    top.max_rel_l2, top.largest_key = k.rel_l2, k.key
                continue
            parts = k.key.split(".")
            names = [""] + [".".join(parts[:i]) for i in range(1, len(parts))]
            for name in names:
                m = mods.get(name)
                if m is None:
                    m = mods[name] = ModuleDiff(name)
                m.counts[k.status] += 1
                m.tensors += 1
                if k.rel_l2 is not None and (m.max_rel_l2 is None or _rank(k.rel_l2) > _rank(m.max_rel_l2)):
                    m.max_rel_l2, m.largest_key = k.rel_l2, k.key
        return mods

    def largest(self, n: int = 10, by: str = "rel_l2") -> list[KeyDiff]:
        """The ``n`` largest changes by ``rel_l2`` or ``max_abs_diff`` (tensors with no figure left out; a NaN
        figure ranks first)."""
        cand = [k for k in self.keys if getattr(k, by) is not None and _rank(getattr(k, by)) > 0]
        return sorted(cand, key=lambda k: -_rank(getattr(k, by)))[:n]

    @property
    def nonfinite_keys(self) -> list[KeyDiff]:
        """Keys whose non-finite values changed (a NaN or Inf appeared, went, or changed)."""
        return list(compress(self.keys, map(attrgetter("nonfinite"), self.keys)))

    @property
    def different(self) -> bool:
        """Anything but every key identical on both sides (``diff`` then exits 1)."""
        s = self.summary
        return s[IDENTICAL] != len(self.keys)

    def to_json(self) -> dict:
        return {"a": self.a, "b": self.b, "summary": self.summary,
                "nonfinite_changed": [k.key for k in self.nonfinite_keys], "numbers": NUMBERS,
                "keys": [k.to_json() for k in self.keys]}


# ---- comparing one pair of tensors ----------------------------------------------------------------------------------
def _as_bytes(c: torch.Tensor) -> np.ndarray:
    c = c.contiguous()
    u8 = c.reshape(-1).view(torch.uint8).numpy()
    return u8.view(np.int64) if u8.size % 8 == 0 else u8


def _work_view(c: torch.Tensor) -> torch.Tensor:
    """Numbers to compare: complex as (re, im) pairs, bool/float8 as something ``copy_`` into float64 takes."""
    if c.is_complex():
        if c.dtype == torch.complex32:
            c = c.to(torch.complex64)
        return torch.view_as_real(c.contiguous()).reshape(-1)
    if c.dtype.is_floating_point and c.element_size() == 1:
        return c.float()
    return c


def _raw_bits(c: torch.Tensor) -> np.ndarray:
    """The bit patterns of a 1-D chunk as integers, one per compared number (complex: one per part)."""
    size = c.element_size() // (2 if c.is_complex() else 1)
    return c.contiguous().view(_INT_OF_SIZE[size]).numpy()


_INT_OF_SIZE = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def _may_hold_nonfinite(c: torch.Tensor) -> bool:
    return c.is_floating_point() or c.is_complex()


def _count_nonfinite(w: torch.Tensor) -> tuple[int, int]:
    """(NaN, +-Inf) counts of a work view (float or real parts); one cheap sum when there are none."""
    if math.isfinite(float(w.sum())):
        return 0, 0
    return int(torch.isnan(w).sum()), int(torch.isinf(w).sum())


def bytes_equal(a: torch.Tensor, b: torch.Tensor, *, threads: int = THREADS, should_stop: StopFn | None = None,
                progress: ProgressFn | None = None) -> bool:
    """Same bytes in logical order (a and b of the same shape and dtype)."""
    return identical_scan(a, b, threads=threads, should_stop=should_stop, progress=progress)[0]


def identical_scan(a: torch.Tensor, b: torch.Tensor, *, threads: int = THREADS, should_stop: StopFn | None = None,
                   progress: ProgressFn | None = None) -> tuple[bool, int, int]:
    """(same bytes in logical order, NaN count, +-Inf count) of a and b of the same shape and dtype; the counts
    (numbers: two per complex element) are complete only when the bytes are the same."""
    if a.numel() == 0:
        return True, 0, 0
    pairs = list(paired_chunks(a, b, CHUNK))
    state = {"equal": True}
    count = _may_hold_nonfinite(a)

    def work(st, i):
        if not state["equal"]:
            return 0
        ca, cb = pairs[i]
        if not np.array_equal(_as_bytes(ca), _as_bytes(cb)):
            state["equal"] = False
        elif count:
            n, f = _count_nonfinite(_work_view(ca))
            st[0] += n
            st[1] += f
        return ca.numel()

    parallel = a.numel() >= PARALLEL_MIN and a.is_contiguous() and b.is_contiguous()
    states = run_chunked(len(pairs), lambda: [0, 0], work, total=a.numel(), progress=progress,
                         should_stop=should_stop, threads=threads if parallel else 1)
    return state["equal"], sum(s[0] for s in states), sum(s[1] for s in states)


class _Acc:
    """Sums of one thread. Finite part: positions finite on both sides; ``x_``: the other positions, summed the
    IEEE way (NaN and Inf propagate)."""

    def __init__(self, n: int):
        self.fa = torch.empty(n, dtype=torch.float64)
        self.fb = torch.empty(n, dtype=torch.float64)
        self.d = torch.empty(n, dtype=torch.float64)
        self.n = 0                 # positions finite on both sides
        self.max_abs = 0.0
        self.sum_abs = 0.0
        self.dd = self.aa = self.bb = self.ab = 0.0
        self.x_n = 0               # positions with a NaN/Inf on a side
        self.x_max = 0.0
        self.x_sum_abs = self.x_dd = self.x_aa = self.x_bb = self.x_ab = 0.0
        self.differing = 0
        self.nonfinite = 0
        self.nan_a = self.inf_a = self.nan_b = self.inf_b = 0
        self.fin_differs = self.nan_app = self.nan_gone = self.inf_app = self.inf_gone = 0
        self.nan_bits = 0
        self.bits_differ = 0

    _SUMS = ("n", "sum_abs", "dd", "aa", "bb", "ab", "x_n", "x_sum_abs", "x_dd", "x_aa", "x_bb", "x_ab", "differing",
             "nonfinite", "nan_a", "inf_a", "nan_b", "inf_b", "fin_differs", "nan_app", "nan_gone", "inf_app",
             "inf_gone", "nan_bits", "bits_differ")

    def merge(self, o: "_Acc"):
        for name in self._SUMS:
            setattr(self, name, getattr(self, name) + getattr(o, name))
        self.max_abs = max(self.max_abs, o.max_abs)
        self.x_max = _ieee_max(self.x_max, o.x_max)


def _ieee_max(a: float, b: float) -> float:
    return math.nan if a != a or b != b else max(a, b)


def _metrics_chunk(acc: _Acc, ca: torch.Tensor, cb: torch.Tensor, bits: bool) -> None:
    """Add one chunk to ``acc``. ``bits`` (same dtype): also count the positions whose bits differ, to tell -0.0
    facing +0.0 and NaN payloads apart -- only needed, and only done, in a chunk where some values are equal."""
    raw_a, raw_b = ca, cb
    ca, cb = _work_view(ca), _work_view(cb)
    n = total = ca.numel()
    fa, fb, d = acc.fa[:n], acc.fb[:n], acc.d[:n]
    fa.copy_(ca)
    fb.copy_(cb)
    torch.sub(fb, fa, out=d)
    dd = float(torch.dot(d, d))
    differing = 0
    if not math.isfinite(dd):  # NaN/Inf somewhere in this chunk (or a float64 overflow): counted and summed aside
        nan_a, nan_b = torch.isnan(fa), torch.isnan(fb)
        inf_a, inf_b = torch.isinf(fa), torch.isinf(fb)
        fin_a, fin_b = ~(nan_a | inf_a), ~(nan_b | inf_b)
        fin = fin_a & fin_b
        acc.nan_a += int(nan_a.sum())
        acc.nan_b += int(nan_b.sum())
        acc.inf_a += int(inf_a.sum())
        acc.inf_b += int(inf_b.sum())
        acc.fin_differs += int((fin_a ^ fin_b).sum())
        acc.nan_app += int((nan_b & ~nan_a).sum())
        acc.nan_gone += int((nan_a & ~nan_b).sum())
        acc.inf_app += int((inf_b & ~inf_a).sum())
        acc.inf_gone += int((inf_a & ~inf_b).sum())
        both_nan = nan_a & nan_b
        other = ~fin
        nf = int((other & ~((fa == fb) | both_nan)).sum())
        acc.nonfinite += nf
        differing += nf
        if bits and bool(both_nan.any()):
            where = both_nan.numpy()
            acc.nan_bits += int(np.count_nonzero(_raw_bits(raw_a)[where] != _raw_bits(raw_b)[where]))
        xa, xb, xd = fa[other], fb[other], d[other]
        if xd.numel():
            acc.x_n += xd.numel()
            acc.x_dd += float(torch.dot(xd, xd))
            acc.x_aa += float(torch.dot(xa, xa))
            acc.x_bb += float(torch.dot(xb, xb))
            acc.x_ab += float(torch.dot(xa, xb))
            xd = xd.abs()
            acc.x_sum_abs += float(xd.sum())
            acc.x_max = _ieee_max(acc.x_max, float(xd.max()))
        fa, fb = fa[fin], fb[fin]
        d = fb - fa
        dd = float(torch.dot(d, d))
        n = fa.numel()
    if n:
        acc.n += n
        acc.dd += dd
        acc.aa += float(torch.dot(fa, fa))
        acc.bb += float(torch.dot(fb, fb))
        acc.ab += float(torch.dot(fa, fb))
        differing += int(torch.count_nonzero(d))
        d.abs_()
        acc.max_abs = max(acc.max_abs, float(d.max()))
        acc.sum_abs += float(d.sum())
    acc.differing += differing
    if bits:   # every value differs: so do the bits; else count them (-0.0/+0.0, NaN payloads among the equal ones)
        acc.bits_differ += total if differing == total else \
            int(np.count_nonzero(_raw_bits(raw_a) != _raw_bits(raw_b)))


def _figures(n: int, max_abs: float, sum_abs: float, dd: float, aa: float, bb: float, ab: float) -> dict:
    """max/mean |Δ|, rel_l2, cosine from sums (IEEE: NaN and Inf propagate; see the module docstring)."""
    out = {"max_abs_diff": None, "mean_abs_diff": None, "rel_l2": None, "cosine": None}
    if not n:
        return out
    out["max_abs_diff"] = max_abs
    out["mean_abs_diff"] = sum_abs / n
    na, nb, nd = math.sqrt(aa), math.sqrt(bb), math.sqrt(dd)
    if na != 0:
        out["rel_l2"] = nd / na if not (math.isinf(nd) and math.isinf(na)) else math.nan
    elif dd == 0:
        out["rel_l2"] = 0.0
    if na != 0 and nb != 0:
        den = na * nb
        c = ab / den if not (math.isinf(ab) and math.isinf(den)) else math.nan
        out["cosine"] = c if c != c else max(-1.0, min(1.0, c))
    return out


def compare_tensors(a: torch.Tensor, b: torch.Tensor, *, should_stop: StopFn | None = None,
                    progress: ProgressFn | None = None) -> dict:
    """Metrics of ``b - a`` for two tensors of the same shape (any dtypes): see the module docstring."""
    with single_intraop():
        return _compare_tensors(a, b, should_stop, progress)


def _compare_tensors(a, b, should_stop, progress) -> dict:
    a, b = a.detach().cpu(), b.detach().cpu()
    if tuple(a.shape) != tuple(b.shape):
        raise ExplorerError(f"cannot compare shapes {list(a.shape)} and {list(b.shape)}")
    bits = a.dtype == b.dtype
    if not (a.is_contiguous() and b.is_contiguous()):
        pairs_iter = paired_chunks(a, b, CHUNK)
        pairs = None
    else:
        pairs = list(zip(iter_chunks(a, CHUNK), iter_chunks(b, CHUNK)))
    width = 2 if a.is_complex() or b.is_complex() else 1
    size = max(1, min(a.numel(), CHUNK) * width)
    if pairs is not None:
        def work(acc, i):
            ca, cb = pairs[i]
            _metrics_chunk(acc, ca, cb, bits)
            return ca.numel()
        threads = THREADS if a.numel() >= PARALLEL_MIN else 1
        accs = run_chunked(len(pairs), lambda: _Acc(size), work, total=a.numel(), progress=progress,
                           should_stop=should_stop, threads=threads)
    else:
        acc = _Acc(size)
        done = 0
        for ca, cb in pairs_iter:
            check_stop(should_stop)
            _metrics_chunk(acc, ca, cb, bits)
            done += ca.numel()
            if progress is not None:
                progress(done, a.numel())
        accs = [acc]
    acc = accs[0]
    for o in accs[1:]:
        acc.merge(o)
    finite = _figures(acc.n, acc.max_abs, acc.sum_abs, acc.dd, acc.aa, acc.bb, acc.ab)
    if acc.x_n:
        out = _figures(acc.n + acc.x_n, _ieee_max(acc.max_abs, acc.x_max), acc.sum_abs + acc.x_sum_abs,
                       acc.dd + acc.x_dd, acc.aa + acc.x_aa, acc.bb + acc.x_bb, acc.ab + acc.x_ab)
    else:
        out = dict(finite)
    out.update(differing=acc.differing, nonfinite=acc.nonfinite, nan_a=acc.nan_a, inf_a=acc.inf_a,
               nan_b=acc.nan_b, inf_b=acc.inf_b, finiteness_differs=acc.fin_differs, nan_appeared=acc.nan_app,
               nan_gone=acc.nan_gone, inf_appeared=acc.inf_app, inf_gone=acc.inf_gone,
               nan_bits_differ=acc.nan_bits if bits else None,
               signed_zeros_differ=acc.bits_differ - acc.differing - acc.nan_bits if bits else None,
               finite=dict(positions=acc.n, **finite))
    return out


_RESULT_FIELDS = ("max_abs_diff", "mean_abs_diff", "rel_l2", "cosine", "differing", "nonfinite", "nan_a", "inf_a",
                  "nan_b", "inf_b", "finiteness_differs", "nan_appeared", "nan_gone", "inf_appeared", "inf_gone",
                  "nan_bits_differ", "signed_zeros_differ", "finite")


# ---- comparing two sides --------------------------------------------------------------------------------------------
def _remap_fn(remap) -> Callable[[str], str]:
    if remap is None:
        return lambda k: k
    if isinstance(remap, Mapping):
        return lambda k: remap.get(k, k)
    if callable(remap):
        return remap
    raise ExplorerError(f"remap must be a mapping or a callable, not {type(remap).__name__}")


def _label(side) -> str:
    return str(getattr(side, "label", None) or getattr(side, "path", "") or type(side).__name__)


def diff_sides(a, b, *, entry_a=None, entry_b=None, remap=None, progress: ProgressFn | None = None,
               should_stop: StopFn | None = None) -> DiffReport:
    """Key-by-key comparison of the state dicts of two sides (see the module docstring for what is measured).

    ``remap`` (a dict or a callable) maps B's keys to A's. ``progress(done, total)`` counts bytes of both sides;
    ``should_stop()`` returning True raises :class:`explorer.errors.Cancelled`. Keys come in A's order, then the
    keys only B has, in B's order.
    """
    with single_intraop():  # small ops on ~1M-element chunks: torch's own threads only add barrier waits
        return _diff_sides(a, b, entry_a, entry_b, remap, progress, should_stop)


def _columns(side, entry) -> tuple[list, list, list, list]:
    """(keys, shapes, dtypes, nbytes) of one state dict of a side, in its order (column-wise when the side can:
    10**6 tiny tensors then cost no TensorInfo each)."""
    columns = getattr(side, "state_dict_columns", None)
    if columns is not None:
        keys, shapes, dtypes, nbytes, *_ = columns(entry)
        return keys, [s if type(s) is tuple else tuple(s) for s in shapes], dtypes, nbytes
    infos = side.state_dict_infos(entry)
    return (list(infos), [tuple(i.shape) for i in infos.values()], [i.dtype for i in infos.values()],
            [i.nbytes for i in infos.values()])


def _diff_sides(a, b, entry_a, entry_b, remap, progress, should_stop) -> DiffReport:
    keys_a, shapes_a, dtypes_a, nbytes_a = _columns(a, entry_a)
    keys_b, shapes_b, dtypes_b, nbytes_b = _columns(b, entry_b)
    fn = _remap_fn(remap)
    mapped = list(map(fn, keys_b)) if remap is not None else keys_b   # B's keys in A's terms
    index_b = dict(zip(mapped, range(len(mapped))))
    if len(index_b) != len(mapped):
        seen: dict[str, str] = {}
        for kb, ka in zip(keys_b, mapped):
            if ka in seen:
                raise ExplorerError(f"the remap sends two keys of B to {ka!r} ({seen[ka]!r} and {kb!r})")
            seen[ka] = kb
    index_a = dict(zip(keys_a, range(len(keys_a))))
    total = max(1, sum(nbytes_a) + sum(nbytes_b))
    done = [0]

    def tick(n):
        done[0] += n
        if progress is not None:
            progress(min(done[0], total), total)

    # every key of A as "only in A" at first, made in bulk (10**6 tiny tensors: no Python loop per key); the keys
    # both sides have are then compared and replaced, in A's order
    keys: list[KeyDiff] = list(map(KeyDiff, keys_a, repeat(ONLY_A), shapes_a, repeat(None), dtypes_a, repeat(None)))
    common = list(compress(range(len(keys_a)), map(index_b.__contains__, keys_a)))
    tick(sum(nbytes_a) - sum(map(nbytes_a.__getitem__, common)))
    for i in common:
        check_stop(should_stop)
        ka, shape_a, dtype_a, nb_a = keys_a[i], shapes_a[i], dtypes_a[i], nbytes_a[i]
        j = index_b[ka]
        kb, shape_b, dtype_b, nb_b = keys_b[j], shapes_b[j], dtypes_b[j], nbytes_b[j]
        kd = keys[i] = KeyDiff(ka, CHANGED, shape_a, shape_b, dtype_a, dtype_b, key_b=kb if kb != ka else None)
        if shape_a != shape_b:
            kd.status = SHAPE_DIFFERS
            tick(nb_a + nb_b)
            continue
        base = done[0]
        sub = None if progress is None else (lambda d, t, base=base, nb=nb_a + nb_b:
                                             progress(min(base + (nb * d // max(t, 1)), total), total))
        try:
            ta = a.read_key(ka, entry_a)
            tb = b.read_key(kb, entry_b)
        except Cancelled:
            raise
        except ExplorerError as e:
            kd.status = DTYPE_DIFFERS if dtype_a != dtype_b else CHANGED
            kd.error = str(e)
            tick(nb_a + nb_b)
            continue
        try:
            if dtype_a == dtype_b and ta.dtype == tb.dtype:
                same, nan, inf = identical_scan(ta, tb, should_stop=should_stop, progress=sub)
                if same:
                    kd.status = IDENTICAL
                    kd.differing = 0
                    kd.nan_a = kd.nan_b = nan
                    kd.inf_a = kd.inf_b = inf
                    done[0] = base
                    tick(nb_a + nb_b)
                    continue
            else:
                kd.status = DTYPE_DIFFERS
            m = compare_tensors(ta, tb, should_stop=should_stop, progress=sub)
        except Cancelled:
            raise
        except (ExplorerError, RuntimeError, TypeError, ValueError) as e:  # a dtype torch cannot convert...
            kd.error = f"{type(e).__name__}: {e}".splitlines()[0]
        else:
            for name in _RESULT_FIELDS:
                setattr(kd, name, m[name])
        done[0] = base
        tick(nb_a + nb_b)
    check_stop(should_stop)
    only_b = [j for j, ka in enumerate(mapped) if ka not in index_a]
    keys += [KeyDiff(mapped[j], ONLY_B, None, shapes_b[j], None, dtypes_b[j],
                     key_b=keys_b[j] if keys_b[j] != mapped[j] else None) for j in only_b]
    tick(sum(map(nbytes_b.__getitem__, only_b)))
    if progress is not None:
        progress(total, total)
    return DiffReport(_label(a), _label(b), keys)
