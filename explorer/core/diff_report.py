"""The result of a diff: one :class:`KeyDiff` per key, counts per module (:class:`ModuleDiff`) and the
:class:`DiffReport` of two sides, with their JSON (see :mod:`.diff` for what each figure means)."""
from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass, field
from itertools import compress
from operator import attrgetter

from .records import CHANGED, DTYPE_DIFFERS, IDENTICAL, NOT_COMPARED, ONLY_A, ONLY_B, SHAPE_DIFFERS

STATUSES = (IDENTICAL, CHANGED, ONLY_A, ONLY_B, SHAPE_DIFFERS, DTYPE_DIFFERS, NOT_COMPARED)
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
        """Keys per status ("not_compared" only when some key could not be read)."""
        counts = dict(self.modules[""].counts) if "" in self.modules else {s: 0 for s in STATUSES}
        if not counts.get(NOT_COMPARED):
            counts.pop(NOT_COMPARED, None)
        return counts

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
