"""A training run at a glance: the checkpoints of one model in step order, every key's norm and relative change at
every checkpoint, and what they say (frozen keys, the first NaN/Inf, the fastest-growing norms, keys that appear or
vanish, running statistics still moving). PATH: a folder of checkpoints (files or checkpoint-N/ folders), or several
checkpoint files or folders. Figures are cached in the user's cache folder: a second look reads no tensor."""
from __future__ import annotations

import sys

from . import print_json
from ..core.series.run import NUMBERS, open_series

LISTED = 200   # keys in the text table (--all: every one)


def add_arguments(p):
    p.add_argument("paths", metavar="PATH", nargs="+",
                   help="a folder of checkpoints, or several checkpoint files or folders of one run")
    p.add_argument("--json", action="store_true", help="print one JSON object (lists indexed like 'checkpoints'; "
                   + NUMBERS + ")")
    p.add_argument("--all", action="store_true", help=f"list every key (default: the first {LISTED})")
    p.add_argument("--no-cache", action="store_true", help="measure again, without reading or writing the cache")


def _f(v, spec=".4g") -> str:
    return "—" if v is None else format(v, spec)


def _last(values: list):
    """The last value that is not None (None when there is none)."""
    return next((v for v in reversed(values) if v is not None), None)


def _first(values: list):
    return next((v for v in values if v is not None), None)


def render_text(result, out, listed: int | None = LISTED) -> None:
    w = out.write
    cps = result.checkpoints
    sources = sorted({m.step_source for m in cps if m.step_source})
    how = f"ordered by step ({', '.join(sources)})" if sources else "ordered by name (no step found)"
    cached = "; figures from the cache" if result.cached else ""
    w(f"{len(cps):,} checkpoint{'s' if len(cps) != 1 else ''}, {how}{cached}:\n")
    for i, m in enumerate(cps):
        w(f"  {i:>3}  step {_f(m.step, '')}  {m.path}\n")
    w("\nfindings:\n")
    for f in result.findings:
        w(f"  {'⚠ ' if f.kind in ('nonfinite', 'unread') else '- '}{f.text}\n")
    if not result.findings:
        w("  none: no NaN/Inf, no frozen key, keys the same throughout, running statistics settled\n")
    tracks = result.tracks if listed is None else result.tracks[:listed]
    w(f"\n{len(result.tracks):,} keys (norm at the first and last checkpoint holding the key; "
      "rel Δ = ‖x−ref‖/‖ref‖ against the first and against the previous checkpoint, at the last; changed: fraction "
      "of elements changed over the last interval):\n")
    w(f"  {'key':<40} {'present':>7} {'norm first':>11} {'norm last':>11} {'rel Δ first':>11} {'rel Δ prev':>11} "
      f"{'changed':>8} {'NaN/Inf':>8}\n")
    for t in tracks:
        bad = max((n for n in t.nonfinite if n is not None), default=0)
        w(f"  {t.key:<40} {sum(t.present):>3}/{len(t.present):<3} {_f(_first(t.norm)):>11} {_f(_last(t.norm)):>11} "
          f"{_f(_last(t.rel_change_first)):>11} {_f(_last(t.rel_change_prev)):>11} "
          f"{_f(_last(t.frac_changed), '.2%'):>8} {bad:>8,}\n")
    if listed is not None and len(result.tracks) > listed:
        w(f"  … and {len(result.tracks) - listed:,} more keys (--all lists them, --json gives every figure)\n")


def run(args) -> int:
    with open_series(args.paths) as series:
        result = series.measure(use_cache=not args.no_cache)
    if args.json:
        print_json(result.to_json())
    else:
        render_text(result, sys.stdout, None if args.all else LISTED)
    return 0
