"""Predict what model.load_state_dict(checkpoint) would do -- raise or not, missing/unexpected keys, which values,
dtypes and running statistics change -- without touching the model or the file, and suggest key remaps.

Exit status: 0 the load would succeed, 1 it would raise, 2 bad input.
"""
from __future__ import annotations

import sys

from ..core.model_source import ModelSide
from ..core.side import open_side
from ..errors import ModelSpecError

LISTED = 100      # keys listed per status in the text output (--all: every one)


def add_arguments(p):
    p.add_argument("--model", required=True, metavar="SPEC",
                   help="the model: MODULE:CALLABLE, path/to/file.py:CALLABLE or demo:NAME")
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
                        "written atomically, never over the input); the exit status still describes the original load")


def run(args) -> int:
    from ..core.simulate import render_text, simulate_load
    model = ModelSide.from_spec(args.model)
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
    if args.write_fixed:
        _write_fixed(report, side, entry, args.write_fixed, sys.stderr if args.json else sys.stdout)
    return 1 if report.raises else 0


def _write_fixed(report, side, entry, out_path, stream) -> None:
    from ..core.remap import RemapError, apply_remap
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
