"""Predict what model.load_state_dict(checkpoint) would do -- raise or not, missing/unexpected keys, which values,
dtypes and running statistics change -- without touching the model or the file, and suggest key remaps.

Exit status: 0 the load would succeed, 1 it would raise, 2 bad input.
"""
from __future__ import annotations

import argparse
import sys
from itertools import chain, repeat
from typing import TYPE_CHECKING

from ..core.gc_pause import gc_paused
from ..core.load.passes import all_str
from ..core.model_build import BUDGET_ENV, parse_size
from ..core.model_source import ModelSide
from ..core.model_spec import looks_like_model_spec
from ..core.records import CHANGED, MATCHED, UNEXPECTED
from ..core.simulate.explain import UNCOMPARED_WORD
from ..core.side import open_side
from ..core.simulate.explain import fmt_shape
from ..core.simulate.report import LoadReport, key_runs
from ..core.simulate.run import simulate_load
from ..errors import ExplorerError, ModelSpecError

if TYPE_CHECKING:
    from ..core.simulate.explain import UnexpectedContext

LISTED = 100      # keys listed per status in the text output (--all: every one)


def add_arguments(p):
    p.add_argument("--model", required=True, metavar="SPEC",
                   help="the model: MODULE:CALLABLE, path/to/file.py:CALLABLE, demo:NAME or "
                        "hf:DIR_OR_CONFIG_JSON[:CLASS] (the model a transformers config.json describes)")
    p.add_argument("--model-budget", default=None, metavar="SIZE", type=_size,
                   help="memory the model may take when built for real (e.g. 8GB; default: $STATE_DICT_EXPLORER_"
                        "MODEL_BUDGET or a quarter of RAM); a bigger model stays on the meta device: keys, shapes, "
                        "dtypes and torch's raise are still exact, values are not compared")
    p.add_argument("--checkpoint", required=True, metavar="PATH",
                   help="the checkpoint file or folder (or a second model spec, to load one model into another)")
    p.add_argument("--entry", default=None, metavar="E",
                   help="what inside the file is passed to load_state_dict: keys joined by '/' (state_dict, "
                        "model/ema), '/' for the loaded object itself; default: the best state dict")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--strict", dest="strict", action="store_true", default=True,
                   help="strict=True (torch's default)")
    g.add_argument("--no-strict", dest="strict", action="store_false", help="strict=False")
    p.add_argument("--assign", action="store_true", help="assign=True")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--all", action="store_true",
                   help=f"list every key and torch's whole error message (default: the first {LISTED} keys of "
                        "each status)")
    p.add_argument("-v", "--verbose", action="store_true", help="explain every key and show the fix snippets")
    p.add_argument("--write-fixed", metavar="OUT", default=None,
                   help="apply the best remap suggestion and write the fixed state dict to OUT (.safetensors or .pt; "
                        "a new file, written atomically: never over an existing one); the exit status still describes "
                        "the original load")


def _size(text: str) -> int:
    try:
        return parse_size(text)
    except ModelSpecError as e:
        raise argparse.ArgumentTypeError(str(e).replace(f"{BUDGET_ENV}=", "")) from None


def run(args) -> int:
    budget = getattr(args, "model_budget", None)
    model = ModelSide.from_spec(args.model, budget_bytes=budget)
    if looks_like_model_spec(args.checkpoint):
        side = ModelSide.from_spec(args.checkpoint, budget_bytes=budget)
        if not side.materialized:   # its values are what is loaded: a meta model would read as a file without data
            raise ModelSpecError(f"--checkpoint {args.checkpoint}: a model loaded into another needs its values, "
                                 f"but {side.not_materialized}")
    else:
        side = open_side(args.checkpoint)
    if side.kind == "model" and args.entry not in (None, "/", ""):
        raise ModelSpecError(f"--entry {args.entry!r}: the checkpoint side is a model, it has no entries")
    entry = args.entry if side.kind != "model" else None
    report = simulate_load(model, side, entry=entry, strict=args.strict, assign=args.assign)
    if args.json:  # report.dumps() is json.dumps(report.to_json()), byte for byte, written in bulk
        sys.stdout.write(report.dumps())
        sys.stdout.write("\n")
    else:
        render_text(report, sys.stdout, verbose=args.verbose, listed=None if args.all else LISTED)
        others = _other_state_dicts(side, report.entry) if entry is None else []
        if others:   # the default was picked among several: the others are named, not left to be guessed
            shown = ", ".join(repr(p) for p in others[:5]) + (f" and {len(others) - 5} more" if len(others) > 5 else "")
            sys.stdout.write(f"note: the file holds other state dicts too: {shown} (--entry E simulates one)\n")
    if args.write_fixed:
        _write_fixed(report, side, entry, args.write_fixed, sys.stderr if args.json else sys.stdout)
    return 1 if report.raises else 0


HINT_KEYS_MAX = 100_000


def _other_state_dicts(side, chosen) -> list[str]:
    """The paths (as ``--entry`` takes them) of the checkpoint's other copies of the state dict simulated: state
    dicts sharing at least half of its keys (an EMA beside the model, a teacher beside a student), not an
    optimizer's per-parameter state."""
    if side.kind == "model" or len(side.state_dicts) < 2:
        return []
    sizes = {tuple(sd.path): sd.tensors for sd in side.state_dicts}
    n = sizes.get(tuple(chosen), 0)
    if not 0 < n <= HINT_KEYS_MAX:   # a hint: not worth listing a second state dict of 10**5+ keys for
        return []
    def keys_of(path) -> set:   # the keys alone when the file lists them in bulk (no TensorInfo made)
        bulk = getattr(side, "state_dict_info_columns", lambda p: None)(path)
        return set(bulk[0] if bulk is not None else side.state_dict_infos(path))

    try:
        keys = keys_of(tuple(chosen))
        out = []
        for sd in side.state_dicts[:16]:
            if tuple(sd.path) == tuple(chosen) or not n <= 2 * sd.tensors <= 4 * n:   # other sizes: no copy
                continue
            if 2 * len(keys & keys_of(tuple(sd.path))) >= len(keys) > 0:
                out.append("/".join(sd.path) or "/")
    except ExplorerError:   # a hint only: an entry that cannot be listed is not named, and the answer stands
        return []
    return out


def _write_fixed(report, side, entry, out_path, stream) -> None:
    from ..core.remap.export import apply_remap
    from ..errors import RemapError
    if not report.suggestions:
        raise RemapError(f"{out_path}: nothing written — no remap suggestion improves this load")
    best = report.suggestions[0]
    if side.kind == "model":
        raise RemapError(f"{out_path}: the checkpoint side is a model; export needs a checkpoint file")
    apply_remap(side, best.remap, out_path, entry=entry)
    stream.write(f"wrote {out_path}: {best.title} ({best.preview_text()})\n")
    if str(out_path).endswith(".safetensors"):
        stream.write("note: .safetensors keeps no _metadata, so BatchNorm layers load as version-less from it "
                     "(a missing num_batches_tracked is then filled in silently)\n")
    stream.write(f"the same in Python:\n{best.snippet}")


# ---- the text answer ---------------------------------------------------------------------------------------------

LINE_CUT = 1000   # characters of one line of torch's error message shown when the listing is cut


def render_text(rep: LoadReport, out, *, verbose: bool = False, listed: int | None = None) -> None:
    """The human-readable report of the ``simulate`` command. ``listed``: keys listed per status (None: every one);
    the rest are counted in one line per status, and a line of torch's error message longer than ``LINE_CUT``
    characters is cut at a key (a load with 10**6 unexpected keys names every one of them in that message)."""
    w = out.write
    w(f"model:      {rep.model}\n")
    w(f"checkpoint: {rep.checkpoint}" + (f"  [entry {'/'.join(rep.entry)}]" if rep.entry else "") + "\n")
    w(f"call:       model.load_state_dict(sd, strict={rep.strict}, assign={rep.assign})\n")
    if rep.model_not_materialized:
        w(f"{rep.model_not_materialized}\n")
    w("\n")
    if rep.raises:
        w(f"WOULD RAISE {rep.error_type}:\n")
        for line in (rep.error_message or "").splitlines():
            w(f"    {line if listed is None else _cut_line(line)}\n")
    else:
        w(f"would succeed: missing_keys={len(rep.missing_keys)}, unexpected_keys={len(rep.unexpected_keys)}\n")
    w("\n" + rep.explanation + "\n\n")
    keys = rep.keys
    width = min(60, max(max(map(len, keys), default=0), 10))
    runs = key_runs(keys)
    shown: dict[str, int] = {}   # status -> keys of that status met so far
    for lazy, run in runs:
        if lazy:  # unexpected keys without a report yet: the same lines, written in bulk
            before = shown.get(UNEXPECTED, 0)
            shown[UNEXPECTED] = before + len(run)
            if listed is not None:
                run = run[:max(listed - before, 0)]
            if run:
                _write_unexpected(w, run, keys.context, width)
            continue
        for key, r in run:
            flag = "*" if r.changed and r.status != UNEXPECTED else " "
            word = r.status
            if not r.certain:     # written by the load; whether its value differs is not known
                flag = "?"
                if r.status == CHANGED:
                    word = UNCOMPARED_WORD
            n = shown[word] = shown.get(word, 0) + 1
            if listed is not None and n > listed:
                continue
            cast = f" {r.dtype_cast[0]}->{r.dtype_cast[1]}" if r.dtype_cast else \
                f" {r.dtype_assigned[0]}->{r.dtype_assigned[1]} (assigned: the model's dtype changes)" \
                if r.dtype_assigned else ""
            w(f" {flag} {key:<{width}} {word:<26}{cast}\n")
            if verbose or r.status not in (MATCHED, CHANGED):
                w(f"     {r.explanation}\n")
    for status, n in shown.items():
        if listed is not None and n > listed:
            w(f"   … and {n - listed:,} more {status} keys (--all lists them, --json gives every key)\n")
    uncompared = sum(1 for _, r in keys.made_items() if not r.certain)
    w(f"\n(* = value, dtype or shape changes"
      + (f"; ? = written, values not compared: assumed changed, {uncompared:,} keys" if uncompared else "")
      + f")  changed: {len(rep.changed_keys)}, changed buffers: {len(rep.changed_buffers)}\n")
    if rep.running_stats:
        w("running statistics overwritten:\n")
        for k, v in rep.running_stats.items():
            w(f"  {k}: {_brief(v['before'])} -> {_brief(v['after'])}\n")
    for note in rep.notes:
        w(f"note: {note}\n")
    fixes = [s for s in rep.suggestions if not s.preview.get("raises")]
    partial = [s for s in rep.suggestions if s.preview.get("raises")]
    for title, group in (("suggested fixes (preview with the fix applied)", fixes),
                         ("partial fixes: the load would still raise with these applied", partial)):
        if not group:
            continue
        w(f"\n{title}:\n")
        for s in group:
            w(f"  - {s.title}: {s.preview_text()}\n")
            if verbose:
                for line in s.snippet.splitlines():
                    w(f"      {line}\n")


def _cut_line(line: str) -> str:
    """``line`` whole up to ``LINE_CUT`` characters, else cut after a quoted key (torch's lists read
    ``"a", "b", ...``) and the number of keys left out."""
    if len(line) <= LINE_CUT:
        return line
    at = line.rfind('", "', 0, LINE_CUT)
    if at < 0:
        return f"{line[:LINE_CUT]} … ({len(line) - LINE_CUT:,} more characters; --all prints the whole message)"
    more = line.count('", "', at)
    return f"{line[:at + 1]}, … and {more:,} more (--all prints the whole message)"


def _write_unexpected(w, keys: list, ctx: UnexpectedContext, width: int, chunk: int = 65536) -> None:
    """What render_text writes for each of these keys' reports (status unexpected, unchanged, no cast)."""
    mid = f" {UNEXPECTED:<26}\n     "
    with gc_paused():  # millions of short-lived strings: with 10**6 tensors alive, each full GC pass costs more
        for at in range(0, len(keys), chunk):
            part = keys[at:at + chunk]
            expl = ctx.explain(part)
            # "   {key:<width}{mid}{explanation}\n" for each key, without a Python frame per key
            padded = map(str.ljust, part, repeat(width)) if all_str(part) else \
                [f"{k:<{width}}" for k in part]
            w("".join(chain.from_iterable(zip(repeat("   "), padded, repeat(mid), expl, repeat("\n")))))


def _brief(summary: dict | None) -> str:
    if not summary:
        return "?"
    if "value" in summary:
        return str(summary["value"])
    if "mean" in summary:
        return f"mean {summary['mean']:.4g} [{summary['min']:.4g}, {summary['max']:.4g}]"
    return fmt_shape(summary.get("shape"))
