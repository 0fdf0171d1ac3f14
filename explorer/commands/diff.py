"""Compare two checkpoints (or a model and a checkpoint) key by key: identical, changed (by how much), only in one,
shape or dtype differs. Exits as ``diff``/``cmp`` do: 0 every key identical, 1 something differs, 2 trouble."""
from __future__ import annotations

import sys

from . import print_json
from ..core.diff import diff_sides
from ..core.diff_report import IDENTICAL_MEANS, NUMBERS
from ..core.records import CHANGED, DTYPE_DIFFERS, IDENTICAL, NOT_COMPARED, ONLY_A, ONLY_B, SHAPE_DIFFERS
from ..core.remote.files import failures, is_remote, transferred
from ..core.side import open_side
from ..errors import Cancelled

LARGEST = 10
LISTED = 100      # keys listed per status in the text output (--all: every one)


def add_arguments(p):
    p.add_argument("a", metavar="A", help="a checkpoint file or folder, or a model spec (MODULE:CALLABLE, demo:NAME)")
    p.add_argument("b", metavar="B", help="the other checkpoint or model spec")
    p.add_argument("--json", action="store_true", help="print one JSON object (every key; " + NUMBERS + ")")
    p.add_argument("--all", action="store_true",
                   help=f"list every key that is not identical (default: the first {LISTED} of each status)")


def _f(v, spec=".4g") -> str:
    return "—" if v is None else format(v, spec)


def _finite(f) -> str:
    if not f or not f["positions"]:
        return "no position finite on both sides"
    return (f"finite: {f['positions']:,} positions, max|Δ| {_f(f['max_abs_diff'])}  rel {_f(f['rel_l2'])}  "
            f"cos {_f(f['cosine'], '.6f')}")


def _reason(k) -> str:
    """Why a key's values could not be read, without the key's own name (the same reason for many keys)."""
    return (k.error or "").replace(repr(k.key), "KEY").replace(k.key, "KEY")


def render_text(report, out, listed: int | None = LISTED) -> None:
    """``listed``: keys listed per status (None: all); the rest are counted in one line per status."""
    w = out.write
    s = report.summary
    w(f"A: {report.a}\nB: {report.b}\n")
    w(f"{len(report.keys):,} keys: {s[IDENTICAL]:,} identical, {s[CHANGED]:,} changed, {s[ONLY_A]:,} only in A, "
      f"{s[ONLY_B]:,} only in B, {s[SHAPE_DIFFERS]:,} shape differs, {s[DTYPE_DIFFERS]:,} dtype differs"
      + (f", {s[NOT_COMPARED]:,} not compared" if s.get(NOT_COMPARED) else "") + "\n")
    w(f"({IDENTICAL_MEANS})\n")
    unread = [k for k in report.keys if k.error]
    first_reason = _reason(unread[0]) if unread else None
    if unread:
        w(f"\n⚠ the values of {len(unread):,} key{'s' if len(unread) != 1 else ''} could not be read, so they were "
          f"not compared (neither identical nor changed as far as this diff knows):\n  {unread[0].error}\n")
    alarms = report.nonfinite_keys
    if alarms:
        w(f"\n⚠ {len(alarms):,} key{'s' if len(alarms) != 1 else ''} where NaN/Inf values changed "
          "(max|Δ|, mean|Δ|, rel and cos include them as IEEE arithmetic does; 'finite:' gives them over the "
          "positions finite on both sides):\n")
        for k in alarms[:listed] if listed is not None else alarms:
            w(f"  {k.key}: {k.nonfinite_text()}\n")
        if listed is not None and len(alarms) > listed:
            w(f"  … and {len(alarms) - listed:,} more\n")
    held = [k for k in report.keys if k.status == IDENTICAL and (k.nan_a or k.inf_a)]
    if held:
        names = ", ".join(k.key for k in held[:5]) + (f", … ({len(held) - 5:,} more)" if len(held) > 5 else "")
        verb = "s hold" if len(held) != 1 else " holds"
        w(f"{len(held):,} identical key{verb} NaN/Inf, the same bits on both sides: {names}\n")
    others = [k for k in report.keys if k.status != IDENTICAL]
    if others:
        w("\nkeys that are not identical (A's order, then B-only):\n")
        shown = {st: 0 for st in s}
        for k in others:
            shown[k.status] += 1
            if listed is not None and shown[k.status] > listed:
                continue
            if k.status in (CHANGED, DTYPE_DIFFERS) and k.shape_a == k.shape_b:
                extra = (f"max|Δ| {_f(k.max_abs_diff)}  mean|Δ| {_f(k.mean_abs_diff)}  rel {_f(k.rel_l2)}  "
                         f"cos {_f(k.cosine, '.6f')}")
                if k.differing is not None:
                    extra += f"  {k.differing:,} differ"
                if k.nonfinite:
                    extra += f"  ⚠ {k.alert}"
                if k.nan_a or k.inf_a or k.nan_b or k.inf_b:
                    extra += (f"  (A {k.nan_a:,} NaN {k.inf_a:,} Inf, B {k.nan_b:,} NaN {k.inf_b:,} Inf; "
                              f"{_finite(k.finite)})")
                elif k.differing == 0 and k.status == CHANGED:
                    extra += f"  (equal values, other bits: {k.explanation.partition(': ')[2]})"
            elif k.status == SHAPE_DIFFERS:
                extra = f"{list(k.shape_a)} -> {list(k.shape_b)}"
            elif k.status == ONLY_A:
                extra = f"{list(k.shape_a)} {k.dtype_a}"
            elif k.status == ONLY_B:
                extra = f"{list(k.shape_b)} {k.dtype_b}"
            else:
                extra = ""
            if k.status == DTYPE_DIFFERS:
                extra = f"{k.dtype_a} -> {k.dtype_b}  " + extra
            if k.error:   # the reason is said once above; a key's own line says it again only when it differs
                extra += "  (not compared)" if _reason(k) == first_reason else f"  (not compared: {k.error})"
            renamed = f"  (B: {k.key_b})" if k.key_b else ""
            w(f"  {k.status:<14} {k.key}{renamed}  {extra}\n")
        for st, n in shown.items():
            if listed is not None and n > listed:
                w(f"  … and {n - listed:,} more {st} keys (--all lists them, --json gives every key)\n")
    big = report.largest(LARGEST)
    if big:
        w("\nlargest changes (by ||Δ||/||A||):\n")
        for k in big:
            w(f"  {k.key:<40} rel {_f(k.rel_l2)}  max|Δ| {_f(k.max_abs_diff)}  cos {_f(k.cosine, '.6f')}\n")
    tops = [m for name, m in report.modules.items() if name and "." not in name]
    if len(tops) > 1:
        w("\nper top-level module:\n")
        for m in tops:
            parts = ", ".join(f"{n} {st}" for st, n in m.counts.items() if n)
            w(f"  {m.name:<30} {m.tensors} tensors: {parts}\n")


def run(args) -> int:
    remote = is_remote(args.a) or is_remote(args.b)
    start, failed = (transferred(), len(failures())) if remote else (0, 0)
    a = open_side(args.a)
    b = open_side(args.b)
    if not remote:
        report = diff_sides(a, b)
    else:   # a key whose bytes the network failed to bring is no difference: the first failure is the answer
        try:
            report = diff_sides(a, b, should_stop=lambda: len(failures()) > failed)
        except Cancelled:
            if len(failures()) <= failed:
                raise
        new = failures()[failed:]
        if new:
            raise new[0]
    if args.json:
        answer = report.to_json()
        if remote:   # only when a side is a URL: two local files' answer stays byte for byte as it was
            answer["transferred_bytes"] = transferred() - start
        print_json(answer)
    else:
        render_text(report, sys.stdout, None if args.all else LISTED)
    unread = report.summary.get(NOT_COMPARED)
    if unread:                            # values that could not be read: no answer to "are they the same?"
        first = next(k for k in report.keys if k.status == NOT_COMPARED)
        print(f"error: {unread:,} key{'s' if unread != 1 else ''} not compared, values unreadable (the first: "
              f"{first.error})", file=sys.stderr)
        return 2
    return 1 if report.different else 0   # as diff and cmp: 0 identical, 1 different, 2 trouble
