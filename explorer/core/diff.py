"""Compare two sides (checkpoint vs checkpoint, or model vs checkpoint) key by key, streamed tensor by tensor.

Statuses (constants of :mod:`explorer.core.records`): ``only_a``, ``only_b``, ``shape_differs``, ``dtype_differs``,
``identical``, ``changed``.

**Identical means bit-exact**: same shape, same dtype and the same bytes in logical order. So a NaN equals a NaN with
the same bit pattern (unlike ``torch.equal``, which calls any tensor holding NaN unequal even to itself), and -0.0
differs from +0.0 (a ``changed`` tensor whose max |delta| is then 0). Bytes are compared chunk by chunk straight
from the memory maps, stopping at the first difference.

For ``changed`` tensors (and ``dtype_differs`` ones of equal shape, compared after casting) we report, over the
positions where both values are finite (positions where either is NaN/Inf are counted in ``nonfinite`` when the two
differ there):

* ``max_abs_diff`` = max |b - a|, ``mean_abs_diff`` = mean |b - a| (over all compared elements),
* ``rel_l2`` = ||b - a|| / ||a|| (None when ||a|| = 0 and b != a; 0 when both are zero),
* ``cosine`` = <a, b> / (||a|| ||b||) (None when either norm is 0),
* ``differing`` = how many elements differ.

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
from .stats import CHUNK, PARALLEL_MIN, THREADS, ProgressFn, StopFn, _check_stop, _single_intraop, iter_chunks, \
    paired_chunks, run_chunked

STATUSES = (IDENTICAL, CHANGED, ONLY_A, ONLY_B, SHAPE_DIFFERS, DTYPE_DIFFERS)
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
    max_abs_diff: float | None = None
    mean_abs_diff: float | None = None
    rel_l2: float | None = None
    cosine: float | None = None
    differing: int | None = None          # elements that differ
    nonfinite: int = 0                    # positions where a NaN/Inf is on one side only (or differs)
    error: str | None = None              # a side could not be read

    @property
    def module(self) -> str:
        return self.key.rpartition(".")[0]

    @property
    def explanation(self) -> str:
        """One sentence for a tooltip or the detail pane."""
        renamed = f" (B calls it {self.key_b!r})" if self.key_b else ""
        if self.status == IDENTICAL:
            return f"bit-identical in both{renamed}"
        if self.status == ONLY_A:
            return "only in A"
        if self.status == ONLY_B:
            return f"only in B{renamed}"
        if self.status == SHAPE_DIFFERS:
            return f"shape {list(self.shape_a)} in A, {list(self.shape_b)} in B{renamed}"
        if self.error:
            return f"not compared: {self.error}"
        text = f"dtype {self.dtype_a} in A, {self.dtype_b} in B; " if self.status == DTYPE_DIFFERS else ""
        if self.max_abs_diff is None:
            return text + "values not comparable (no finite values in common)" + renamed
        if self.differing == 0 and self.status == CHANGED:
            return "equal values with different bits (-0.0 vs +0.0, or NaN payloads)" + renamed
        rel = "—" if self.rel_l2 is None else f"{self.rel_l2:.3g}"
        cos = "—" if self.cosine is None else f"{self.cosine:.6f}"
        return (text + f"{self.differing or 0:,} elements differ; max |Δ| {self.max_abs_diff:.4g}, "
                f"||Δ||/||A|| {rel}, cosine {cos}" + renamed)

    def to_json(self) -> dict:
        return {"key": self.key, "status": self.status,
                "shape_a": list(self.shape_a) if self.shape_a is not None else None,
                "shape_b": list(self.shape_b) if self.shape_b is not None else None,
                "dtype_a": self.dtype_a, "dtype_b": self.dtype_b,
                "max_abs_diff": _num(self.max_abs_diff), "mean_abs_diff": _num(self.mean_abs_diff),
                "rel_l2": _num(self.rel_l2), "cosine": _num(self.cosine)}


def _num(v):
    if v is None:
        return None
    v = float(v)
    return v if math.isfinite(v) else None


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
                if k.rel_l2 is not None and (top.max_rel_l2 is None or k.rel_l2 > top.max_rel_l2):
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
                if k.rel_l2 is not None and (m.max_rel_l2 is None or k.rel_l2 > m.max_rel_l2):
                    m.max_rel_l2, m.largest_key = k.rel_l2, k.key
        return mods

    def largest(self, n: int = 10, by: str = "rel_l2") -> list[KeyDiff]:
        """The ``n`` largest changes by ``rel_l2`` or ``max_abs_diff`` (tensors with no figure left out)."""
        cand = [k for k in self.keys if getattr(k, by) is not None and getattr(k, by) > 0]
        return sorted(cand, key=lambda k: -getattr(k, by))[:n]

    def to_json(self) -> dict:
        return {"a": self.a, "b": self.b, "summary": self.summary, "keys": [k.to_json() for k in self.keys]}


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


def bytes_equal(a: torch.Tensor, b: torch.Tensor, *, threads: int = THREADS, should_stop: StopFn | None = None,
                progress: ProgressFn | None = None) -> bool:
    """Same bytes in logical order (a and b of the same shape and dtype)."""
    if a.numel() == 0:
        return True
    pairs = list(paired_chunks(a, b, CHUNK))
    state = {"equal": True}

    def work(_st, i):
        if not state["equal"]:
            return 0
        ca, cb = pairs[i]
        if not np.array_equal(_as_bytes(ca), _as_bytes(cb)):
            state["equal"] = False
        return ca.numel()

    parallel = a.numel() >= PARALLEL_MIN and a.is_contiguous() and b.is_contiguous()
    run_chunked(len(pairs), lambda: None, work, total=a.numel(), progress=progress, should_stop=should_stop,
                threads=threads if parallel else 1)
    return state["equal"]


class _Acc:
    def __init__(self, n: int):
        self.fa = torch.empty(n, dtype=torch.float64)
        self.fb = torch.empty(n, dtype=torch.float64)
        self.d = torch.empty(n, dtype=torch.float64)
        self.n = 0
        self.max_abs = 0.0
        self.sum_abs = 0.0
        self.dd = self.aa = self.bb = self.ab = 0.0
        self.differing = 0
        self.nonfinite = 0

    def merge(self, o: "_Acc"):
        self.n += o.n
        self.max_abs = max(self.max_abs, o.max_abs)
        self.sum_abs += o.sum_abs
        self.dd += o.dd
        self.aa += o.aa
        self.bb += o.bb
        self.ab += o.ab
        self.differing += o.differing
        self.nonfinite += o.nonfinite


def _metrics_chunk(acc: _Acc, ca: torch.Tensor, cb: torch.Tensor) -> None:
    ca, cb = _work_view(ca), _work_view(cb)
    n = ca.numel()
    fa, fb, d = acc.fa[:n], acc.fb[:n], acc.d[:n]
    fa.copy_(ca)
    fb.copy_(cb)
    torch.sub(fb, fa, out=d)
    dd = float(torch.dot(d, d))
    if not math.isfinite(dd):  # NaN/Inf somewhere in this chunk: compare finite positions only
        fin = torch.isfinite(fa) & torch.isfinite(fb)
        same_nonfinite = (~fin) & ((fa == fb) | (torch.isnan(fa) & torch.isnan(fb)))
        acc.nonfinite += int((~fin).sum()) - int(same_nonfinite.sum())
        fa, fb = fa[fin], fb[fin]
        d = fb - fa
        dd = float(torch.dot(d, d))
        n = fa.numel()
        if n == 0:
            return
    acc.n += n
    acc.dd += dd
    acc.aa += float(torch.dot(fa, fa))
    acc.bb += float(torch.dot(fb, fb))
    acc.ab += float(torch.dot(fa, fb))
    acc.differing += int(torch.count_nonzero(d))
    d.abs_()
    acc.max_abs = max(acc.max_abs, float(d.max()))
    acc.sum_abs += float(d.sum())


def compare_tensors(a: torch.Tensor, b: torch.Tensor, *, should_stop: StopFn | None = None,
                    progress: ProgressFn | None = None) -> dict:
    """Metrics of ``b - a`` for two tensors of the same shape (any dtypes): see the module docstring."""
    with _single_intraop():
        return _compare_tensors(a, b, should_stop, progress)


def _compare_tensors(a, b, should_stop, progress) -> dict:
    a, b = a.detach().cpu(), b.detach().cpu()
    if tuple(a.shape) != tuple(b.shape):
        raise ExplorerError(f"cannot compare shapes {list(a.shape)} and {list(b.shape)}")
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
            _metrics_chunk(acc, ca, cb)
            return ca.numel()
        threads = THREADS if a.numel() >= PARALLEL_MIN else 1
        accs = run_chunked(len(pairs), lambda: _Acc(size), work, total=a.numel(), progress=progress,
                           should_stop=should_stop, threads=threads)
    else:
        acc = _Acc(size)
        done = 0
        for ca, cb in pairs_iter:
            _check_stop(should_stop)
            _metrics_chunk(acc, ca, cb)
            done += ca.numel()
            if progress is not None:
                progress(done, a.numel())
        accs = [acc]
    acc = accs[0]
    for o in accs[1:]:
        acc.merge(o)
    out = {"max_abs_diff": None, "mean_abs_diff": None, "rel_l2": None, "cosine": None,
           "differing": acc.differing, "nonfinite": acc.nonfinite}
    if acc.n:
        out["max_abs_diff"] = acc.max_abs
        out["mean_abs_diff"] = acc.sum_abs / acc.n
        na, nb = math.sqrt(acc.aa), math.sqrt(acc.bb)
        if na > 0:
            out["rel_l2"] = math.sqrt(acc.dd) / na
        elif acc.dd == 0:
            out["rel_l2"] = 0.0
        if na > 0 and nb > 0:
            out["cosine"] = max(-1.0, min(1.0, acc.ab / (na * nb)))
    return out


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
    with _single_intraop():  # small ops on ~1M-element chunks: torch's own threads only add barrier waits
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
        _check_stop(should_stop)
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
                if bytes_equal(ta, tb, should_stop=should_stop, progress=sub):
                    kd.status = IDENTICAL
                    kd.differing = 0
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
            kd.max_abs_diff, kd.mean_abs_diff = m["max_abs_diff"], m["mean_abs_diff"]
            kd.rel_l2, kd.cosine = m["rel_l2"], m["cosine"]
            kd.differing, kd.nonfinite = m["differing"], m["nonfinite"]
        done[0] = base
        tick(nb_a + nb_b)
    _check_stop(should_stop)
    only_b = [j for j, ka in enumerate(mapped) if ka not in index_a]
    keys += [KeyDiff(mapped[j], ONLY_B, None, shapes_b[j], None, dtypes_b[j],
                     key_b=keys_b[j] if keys_b[j] != mapped[j] else None) for j in only_b]
    tick(sum(map(nbytes_b.__getitem__, only_b)))
    if progress is not None:
        progress(total, total)
    return DiffReport(_label(a), _label(b), keys)
