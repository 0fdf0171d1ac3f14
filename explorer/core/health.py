"""Health flags of a tensor (``nan``, ``inf``, ``all_zeros``, ``constant``, ``extreme``) and of a whole state dict,
and what a key is meant to hold (a fresh BatchNorm's zero ``running_mean``...) told in words instead of flagged."""
from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np

from ..errors import Cancelled, ExplorerError
from .chunks import CHUNK, ProgressFn, StopFn, check_stop, dense_order, iter_chunks, single_intraop
from .dtype_plan import Plan, values_of
from .np_values import widen
from .records import RUNNING_STAT_NAMES

NAN, INF, ALL_ZEROS, CONSTANT, EXTREME_FLAG = "nan", "inf", "all_zeros", "constant", "extreme"
EXTREME = 1e4                # a float tensor with max |x| above this is flagged "extreme"
NO_DATA = "no_data"   # saved from the meta device: a shape and a dtype, no values ("no data (meta)")


def flags_of(plan: Plan, count: int, mn, mx, absmax, nan: int, posinf: int, neginf: int, numel: int) -> list[str]:
    flags = []
    if nan:
        flags.append(NAN)
    if posinf or neginf:
        flags.append(INF)
    if count and count == numel and mn == 0 and mx == 0:
        flags.append(ALL_ZEROS)
    elif count > 1 and mn == mx:
        flags.append(CONSTANT)
    if not plan.integer and absmax is not None and absmax > EXTREME:
        flags.append(EXTREME_FLAG)
    return flags


FRESH_BN_MEAN = "fresh BatchNorm running_mean (zeros): what BatchNorm holds before its first training step"
FRESH_BN_VAR = "fresh BatchNorm running_var (ones): what BatchNorm holds before its first training step"
FRESH_BN_COUNT = "fresh BatchNorm num_batches_tracked (0): no training step counted yet"
FRESH_BN_WEIGHT = "BatchNorm weight of ones: its initial value (untrained, or never updated)"
FRESH_BN_BIAS = "BatchNorm bias of zeros: its initial value (untrained, or never updated)"
_BN_NAMES = RUNNING_STAT_NAMES + ("weight", "bias")


def bn_siblings(key: str, has: Callable[[str], bool]) -> list[str]:
    """The BatchNorm buffers beside ``key`` (same module) that ``has(k)`` says exist: what :func:`explain_flags`
    needs to know about a key's siblings."""
    prefix, dot, name = key.rpartition(".")
    if name not in _BN_NAMES:
        return []
    return [k for k in (f"{prefix}{dot}{b}" for b in RUNNING_STAT_NAMES) if k != key and has(k)]


def explain_flags(key: str, flags: Sequence[str], siblings, constant: float | None = None) \
        -> tuple[list[str], list[str]]:
    """(flags, info): health flags that are what the key is meant to hold move to ``info``, said in words.

    A ``running_mean`` of zeros beside a ``running_var`` of the same module is what a freshly built BatchNorm (or
    another norm layer tracking running statistics) holds, as is a ``running_var`` of ones (``constant`` is the
    tensor's value when flagged "constant"). Decided from the key's name and its sibling keys (``siblings``: keys of
    the same state dict, e.g. from :func:`bn_siblings`); so is a ``num_batches_tracked`` of 0, and the affine
    ``weight`` of ones / ``bias`` of zeros of such a layer (its initial values: said, not flagged). An all-zero
    weight (of a norm layer too) or any other tensor stays flagged.
    """
    flags, info = list(flags), []
    prefix, dot, name = key.rpartition(".")
    sib = set(siblings or ())
    if name == "running_mean" and ALL_ZEROS in flags and f"{prefix}{dot}running_var" in sib:
        flags.remove(ALL_ZEROS)
        info.append(FRESH_BN_MEAN)
    elif name == "running_var" and CONSTANT in flags and constant == 1.0 and f"{prefix}{dot}running_mean" in sib:
        flags.remove(CONSTANT)
        info.append(FRESH_BN_VAR)
    elif name == "num_batches_tracked" and ALL_ZEROS in flags and f"{prefix}{dot}running_mean" in sib:
        flags.remove(ALL_ZEROS)
        info.append(FRESH_BN_COUNT)
    elif name in ("weight", "bias") and {f"{prefix}{dot}running_mean", f"{prefix}{dot}running_var"} <= sib:
        if name == "weight" and CONSTANT in flags and constant == 1.0:
            flags.remove(CONSTANT)
            info.append(FRESH_BN_WEIGHT)
        elif name == "bias" and ALL_ZEROS in flags:
            flags.remove(ALL_ZEROS)
            info.append(FRESH_BN_BIAS)
    return flags, info


def tensor_flags(t, should_stop: StopFn | None = None) -> list[str]:
    """Health flags of one tensor (numpy values, :class:`~.np_values.Values` or a torch tensor) from one cheap
    min/max pass (NaN/Inf counted only in chunks that hold them)."""
    with single_intraop():
        return _tensor_flags(t, should_stop)


def _tensor_flags(t, should_stop: StopFn | None) -> list[str]:
    device = getattr(t, "device", None)
    if device is not None and getattr(device, "type", None) == "meta":
        return [NO_DATA]
    a, plan = values_of(t)
    a = dense_order(a)
    mn, mx = math.inf, -math.inf
    nan = posinf = neginf = count = 0
    numel = a.size
    for c in iter_chunks(a, 4 * CHUNK):
        check_stop(should_stop)
        with np.errstate(invalid="ignore"):   # min/max over signalling NaN bits
            mn, mx, count, nan, posinf, neginf = _chunk_flags(plan, c, mn, mx, count, nan, posinf, neginf)
    if not count:
        return flags_of(plan, 0, None, None, None, nan, posinf, neginf, numel)
    return flags_of(plan, count, mn, mx, max(abs(mn), abs(mx)), nan, posinf, neginf, numel)


def _chunk_flags(plan, c, mn, mx, count, nan, posinf, neginf):
    """One chunk's part of the min/max pass: the running (min, max, finite count, NaN, +Inf, -Inf)."""
    if plan.measured == "magnitude":
        c = plan.convert(c)
    elif plan.name == "bool":
        c = c.view(np.uint8)
    else:
        c = widen(c, plan.name)   # bfloat16, float8: their values as float32
    a_, b_ = float(c.min()), float(c.max())
    if not (math.isfinite(a_) and math.isfinite(b_)) and c.dtype.kind == "f":
        nan += int(np.count_nonzero(np.isnan(c)))
        posinf += int(np.count_nonzero(np.isposinf(c)))
        neginf += int(np.count_nonzero(np.isneginf(c)))
        c = c[np.isfinite(c)]
        if c.size == 0:
            return mn, mx, count, nan, posinf, neginf
        a_, b_ = float(c.min()), float(c.max())
    return min(mn, a_), max(mx, b_), count + c.size, nan, posinf, neginf


def health_scan(side, entry=None, progress: ProgressFn | None = None,
                should_stop: StopFn | None = None) -> dict[str, list[str]]:
    """key -> health flags for every tensor of a side's state dict, in one pass over the bytes.

    ``progress(done, total)`` counts bytes. Tensors that cannot be measured (quantized, no storage) get
    ``["unreadable"]``. What a key is meant to hold is no problem (a fresh BatchNorm's zero ``running_mean``, see
    :func:`explain_flags`): not flagged.
    """
    infos = side.state_dict_infos(entry)
    total = sum(i.nbytes for i in infos.values())
    done = 0
    out: dict[str, list[str]] = {}
    with single_intraop():
        for key, info in infos.items():
            check_stop(should_stop)
            if info.device == "meta":
                out[key] = [NO_DATA]
                continue
            try:
                t = side.read_key(key, entry)
                flags = tensor_flags(t, should_stop)
                if (ALL_ZEROS in flags or CONSTANT in flags) and key.endswith(_BN_NAMES):
                    value = float(t.reshape(-1)[0]) if CONSTANT in flags else None
                    flags = explain_flags(key, flags, bn_siblings(key, infos.__contains__), value)[0]
                out[key] = flags
            except Cancelled:
                raise
            except ExplorerError:
                out[key] = ["unreadable"]
            done += info.nbytes
            if progress is not None:
                progress(done, total)
    return out
