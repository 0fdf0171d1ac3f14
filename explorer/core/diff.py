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

One engine, numpy: a checkpoint's values are read as numpy (``read_key_array``: no torch), a model's tensors handed
over as numpy (``np_values.tensor_array``). Bytes are compared, values widened (bfloat16/float8 exactly), NaN/Inf
counted, differences taken and summed in numpy (the float64 sums: :mod:`.float_sums`). Torch is imported only when
a side is a model (its tensors are torch's) or a format only torch reads.
"""
from __future__ import annotations

import math
from itertools import compress, repeat
from typing import Callable, Mapping

import numpy as np

from ..errors import Cancelled, ExplorerError
from .chunks import CHUNK, PARALLEL_MIN, THREADS, ProgressFn, StopFn, check_stop, iter_chunks, paired_chunks, \
    run_chunked, single_intraop
from .diff_report import DiffReport, KeyDiff
from .float_sums import dot, total
from .np_values import COMPLEX, FLOAT8, FLOATING, Values, bits_of, numpy_dtype, tensor_array, torch_scalar_name, \
    widen
from .records import CHANGED, DTYPE_DIFFERS, IDENTICAL, NOT_COMPARED, ONLY_A, ONLY_B, SHAPE_DIFFERS


# ---- comparing one pair of tensors ----------------------------------------------------------------------------------
def as_values(t) -> Values:
    """``t`` as :class:`~.np_values.Values`: as it is, or a torch tensor (a model side's) handed over."""
    return t if isinstance(t, Values) else tensor_array(t)


def _as_bytes(c: np.ndarray) -> np.ndarray:
    u8 = np.ascontiguousarray(c).reshape(-1).view(np.uint8)
    return u8.view(np.int64) if u8.size % 8 == 0 else u8


def _work_view(c: np.ndarray, dtype: str) -> np.ndarray:
    """Numbers to compare: complex as (re, im) pairs, bfloat16/float8 widened to float32 (exact)."""
    if dtype in COMPLEX:
        c = np.ascontiguousarray(widen(c, dtype))
        return c.view(c.real.dtype).reshape(-1)
    if dtype == "bfloat16" or dtype in FLOAT8:
        return widen(c, dtype)
    if numpy_dtype(dtype) is None:   # raw bytes of a sub-byte/bits dtype: no numbers (as torch's copy_ says)
        raise NotImplementedError(f'"copy_" not implemented for {torch_scalar_name(dtype)!r}')
    return c


def _raw_bits(c: np.ndarray, dtype: str) -> np.ndarray:
    """The bit patterns of a 1-D chunk as integers, one per compared number (complex: one per part; complex32's
    raw bits are two float16 per element)."""
    c = np.ascontiguousarray(c)
    return c.view(np.uint16) if dtype == "complex32" else bits_of(c)


_EXPONENT = {"float16": 0x7C00, "bfloat16": 0x7F80}   # all exponent bits: Inf with a zero mantissa, else NaN


def _count_nonfinite(c: np.ndarray, dtype: str) -> tuple[int, int]:
    """(NaN, +-Inf) counts of a chunk (complex: of its parts); one cheap pass when there are none."""
    with np.errstate(all="ignore"):
        top = _EXPONENT.get(dtype)
        if top is not None:   # on the bits (numpy's float16 arithmetic is slow; bfloat16 needs no widening)
            m = np.bitwise_and(c.view(np.uint16), 0x7FFF)
            if m.max() < top:
                return 0, 0
            return int(np.count_nonzero(m > top)), int(np.count_nonzero(m == top))
        w = _work_view(c, dtype)
        if np.isfinite(np.dot(w, w)):   # NaN/Inf propagate into a sum of squares (an overflow just counts below)
            return 0, 0
        return int(np.count_nonzero(np.isnan(w))), int(np.count_nonzero(np.isinf(w)))


def identical_scan(a, b, *, threads: int = THREADS, should_stop: StopFn | None = None,
                   progress: ProgressFn | None = None) -> tuple[bool, int, int]:
    """(same bytes in logical order, NaN count, +-Inf count) of a and b (tensors or :class:`Values`) of the same
    shape and dtype; the counts (numbers: two per complex element) are complete only when the bytes are the same."""
    a, b = as_values(a), as_values(b)
    dtype = a.dtype
    a, b = a.array, b.array
    if a.size == 0:
        return True, 0, 0
    pairs = list(paired_chunks(a, b, CHUNK))
    state = {"equal": True}
    count = dtype in FLOATING or dtype in COMPLEX

    def work(st, i):
        if not state["equal"]:
            return 0
        ca, cb = pairs[i]
        if not np.array_equal(_as_bytes(ca), _as_bytes(cb)):
            state["equal"] = False
        elif count:
            n, f = _count_nonfinite(ca, dtype)
            st[0] += n
            st[1] += f
        return ca.size

    parallel = a.size >= PARALLEL_MIN and a.flags.c_contiguous and b.flags.c_contiguous
    states = run_chunked(len(pairs), lambda: [0, 0], work, total=a.size, progress=progress,
                         should_stop=should_stop, threads=threads if parallel else 1)
    return state["equal"], sum(s[0] for s in states), sum(s[1] for s in states)


class _Acc:
    """Sums of one thread. Finite part: positions finite on both sides; ``x_``: the other positions, summed the
    IEEE way (NaN and Inf propagate)."""

    def __init__(self, n: int):
        self.fa = np.empty(n, dtype=np.float64)
        self.fb = np.empty(n, dtype=np.float64)
        self.d = np.empty(n, dtype=np.float64)
        self.mask = np.empty(n, dtype=np.bool_)
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


def _metrics_chunk(acc: _Acc, ca: np.ndarray, cb: np.ndarray, dta: str, dtb: str, bits: bool) -> None:
    """Add one chunk to ``acc``. ``bits`` (same dtype): also count the positions whose bits differ, to tell -0.0
    facing +0.0 and NaN payloads apart -- only needed, and only done, in a chunk where some values are equal."""
    with np.errstate(all="ignore"):
        _metrics(acc, ca, cb, _work_view(ca, dta), _work_view(cb, dtb), dta if bits else None)


def _metrics(acc: _Acc, raw_a: np.ndarray, raw_b: np.ndarray, ca: np.ndarray, cb: np.ndarray,
             bits: str | None) -> None:
    """``bits``: the dtype of both raw chunks when they share it (their bits are then compared), else None."""
    n = total_n = ca.size
    if cb.size != n:   # a complex tensor facing a real one: torch's copy_ refuses it so
        raise RuntimeError(f"The size of tensor a ({n}) must match the size of tensor b ({cb.size}) at non-singleton "
                           "dimension 0")
    fa, fb, d = acc.fa[:n], acc.fb[:n], acc.d[:n]
    fa[...] = ca
    fb[...] = cb
    np.subtract(fb, fa, out=d)
    dd = dot(d, d)
    differing = 0
    if not math.isfinite(dd):  # NaN/Inf somewhere in this chunk (or a float64 overflow): counted and summed aside
        nan_a, nan_b = np.isnan(fa), np.isnan(fb)
        inf_a, inf_b = np.isinf(fa), np.isinf(fb)
        fin_a, fin_b = ~(nan_a | inf_a), ~(nan_b | inf_b)
        fin = fin_a & fin_b
        acc.nan_a += int(np.count_nonzero(nan_a))
        acc.nan_b += int(np.count_nonzero(nan_b))
        acc.inf_a += int(np.count_nonzero(inf_a))
        acc.inf_b += int(np.count_nonzero(inf_b))
        acc.fin_differs += int(np.count_nonzero(fin_a ^ fin_b))
        acc.nan_app += int(np.count_nonzero(nan_b & ~nan_a))
        acc.nan_gone += int(np.count_nonzero(nan_a & ~nan_b))
        acc.inf_app += int(np.count_nonzero(inf_b & ~inf_a))
        acc.inf_gone += int(np.count_nonzero(inf_a & ~inf_b))
        both_nan = nan_a & nan_b
        other = ~fin
        nf = int(np.count_nonzero(other & ~((fa == fb) | both_nan)))
        acc.nonfinite += nf
        differing += nf
        if bits and both_nan.any():
            acc.nan_bits += int(np.count_nonzero(_raw_bits(raw_a, bits)[both_nan] != _raw_bits(raw_b, bits)[both_nan]))
        xa, xb, xd = fa[other], fb[other], d[other]
        if xd.size:
            acc.x_n += xd.size
            acc.x_dd += dot(xd, xd)
            acc.x_aa += dot(xa, xa)
            acc.x_bb += dot(xb, xb)
            acc.x_ab += dot(xa, xb)
            xd = np.abs(xd)
            acc.x_sum_abs += total(xd)
            acc.x_max = _ieee_max(acc.x_max, float(xd.max()))
        fa, fb = fa[fin], fb[fin]
        d = fb - fa
        dd = dot(d, d)
        n = fa.size
    if n:
        acc.n += n
        acc.dd += dd
        acc.aa += dot(fa, fa)
        acc.bb += dot(fb, fb)
        acc.ab += dot(fa, fb)
        differing += int(np.count_nonzero(np.not_equal(d, 0, out=acc.mask[:n])))
        np.abs(d, out=d)
        acc.max_abs = max(acc.max_abs, float(d.max()))
        acc.sum_abs += total(d)
    acc.differing += differing
    if bits:   # every value differs: so do the bits; else count them (-0.0/+0.0, NaN payloads among the equal ones)
        acc.bits_differ += total_n if differing == total_n else \
            int(np.count_nonzero(_raw_bits(raw_a, bits) != _raw_bits(raw_b, bits)))


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


def compare_tensors(a, b, *, should_stop: StopFn | None = None,
                    progress: ProgressFn | None = None) -> dict:
    """Metrics of ``b - a`` for two tensors of the same shape (any dtypes): see the module docstring."""
    with single_intraop():
        return _compare_tensors(a, b, should_stop, progress)


def _compare_tensors(a, b, should_stop, progress) -> dict:
    a, b = as_values(a), as_values(b)
    dta, dtb = a.dtype, b.dtype
    a, b = a.array, b.array
    if tuple(a.shape) != tuple(b.shape):
        raise ExplorerError(f"cannot compare shapes {list(a.shape)} and {list(b.shape)}")
    bits = dta == dtb
    if not (a.flags.c_contiguous and b.flags.c_contiguous):
        pairs_iter = paired_chunks(a, b, CHUNK)
        pairs = None
    else:
        pairs = list(zip(iter_chunks(a, CHUNK), iter_chunks(b, CHUNK)))
    width = 2 if dta in COMPLEX or dtb in COMPLEX else 1
    size = max(1, min(a.size, CHUNK) * width)
    if pairs is not None:
        def work(acc, i):
            ca, cb = pairs[i]
            _metrics_chunk(acc, ca, cb, dta, dtb, bits)
            return ca.size
        threads = THREADS if a.size >= PARALLEL_MIN else 1
        accs = run_chunked(len(pairs), lambda: _Acc(size), work, total=a.size, progress=progress,
                           should_stop=should_stop, threads=threads)
    else:
        acc = _Acc(size)
        done = 0
        for ca, cb in pairs_iter:
            check_stop(should_stop)
            _metrics_chunk(acc, ca, cb, dta, dtb, bits)
            done += ca.size
            if progress is not None:
                progress(done, a.size)
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


def _read(side, key: str, entry):
    """A key's values: as numpy from a checkpoint (no torch), as the side gives them otherwise (a model's tensor)."""
    read_array = getattr(side, "read_key_array", None)
    return read_array(key, entry) if read_array is not None else side.read_key(key, entry)


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


def _index_of(keys_b: list[str], mapped: list[str]) -> dict[str, int]:
    """Position in B of each key in A's terms; a remap sending two of B's keys to one is refused."""
    index_b = dict(zip(mapped, range(len(mapped))))
    if len(index_b) != len(mapped):
        seen: dict[str, str] = {}
        for kb, ka in zip(keys_b, mapped):
            if ka in seen:
                raise ExplorerError(f"the remap sends two keys of B to {ka!r} ({seen[ka]!r} and {kb!r})")
            seen[ka] = kb
    return index_b


def _diff_sides(a, b, entry_a, entry_b, remap, progress, should_stop) -> DiffReport:
    keys_a, shapes_a, dtypes_a, nbytes_a = _columns(a, entry_a)
    keys_b, shapes_b, dtypes_b, nbytes_b = _columns(b, entry_b)
    fn = _remap_fn(remap)
    mapped = list(map(fn, keys_b)) if remap is not None else keys_b   # B's keys in A's terms
    index_b = _index_of(keys_b, mapped)
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
            ta = _read(a, ka, entry_a)
            tb = _read(b, kb, entry_b)
        except Cancelled:
            raise
        except ExplorerError as e:
            kd.status = DTYPE_DIFFERS if dtype_a != dtype_b else NOT_COMPARED   # unread values are no difference
            kd.error = str(e)
            tick(nb_a + nb_b)
            continue
        try:
            ta, tb = as_values(ta), as_values(tb)
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
            kd.status = NOT_COMPARED if kd.status == CHANGED else kd.status
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
