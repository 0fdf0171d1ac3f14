"""Statistics, percentiles, histogram and health flags of one tensor of a checkpoint or model."""
from __future__ import annotations

import difflib
import math
import sys

from . import print_json
from ..core.remote.files import is_remote, transferred
from ..core.side import open_side
from ..core.health import bn_siblings
from ..core.stats import DEFAULT_PERCENTILES, tensor_stats, with_context
from ..errors import ExplorerError, KeyNotFoundError, shorten

TEXT_ROWS = 32  # histogram rows printed as text (adjacent bins merged); --json gives every bin


def add_arguments(p):
    p.add_argument("target", metavar="PATH", help="a checkpoint file or folder, or a model spec MODULE:CALLABLE / "
                   "file.py:CALLABLE / demo:NAME")
    p.add_argument("key", metavar="KEY", help="a state-dict key of the default state dict (e.g. 'fc.weight'), or an "
                   "entry path joined by '/' (e.g. 'state_dict/fc.weight', 'optimizer/state/0/exp_avg')")
    p.add_argument("--bins", type=int, default=256, help="histogram bins (default 256)")
    p.add_argument("--json", action="store_true", help="print one JSON object")


def resolve_tensor(side, key: str):
    """(values, display key) for KEY: a key of the default state dict, else an entry path joined by "/". A
    checkpoint's values come as numpy (``np_values.Values``: no torch where the format maps its bytes in place), a
    model's as its tensor."""
    if side.kind == "model":
        infos = side.all_infos()
        if key in infos:
            return side.read_key(key), key
        raise _not_found(side, key, infos)
    default = side.default_state_dict
    if default is not None:
        infos = side.state_dict_infos(default)
        if key in infos:
            return side.read_key_array(key, default), key
    path = tuple(p for p in key.strip("/").split("/") if p)
    known = {info.path: info for info in side.entries}
    if path in known:
        return side.read_array(path), key
    # the names KEY can take: a key of the default state dict, an entry's path. The two coincide for a state dict at
    # the top of the file ('conv1.weight' is both): each name once
    names = dict.fromkeys(side.state_dict_infos(default) if default is not None else ())
    names.update(dict.fromkeys("/".join(p) for p in known))
    raise _not_found(side, key, names)


def _not_found(side, key: str, names) -> KeyNotFoundError:
    close = difflib.get_close_matches(key, list(names), n=3)
    hint = f"; did you mean {', '.join(shorten(c) for c in close)}?" if close else \
        " — the file is one tensor: name it '/'" if list(names) == [""] else \
        " — list the keys with: python main.py inspect " + str(side.path)
    return KeyNotFoundError(f"{side.path}: no tensor {shorten(key)}{hint}")


def _siblings(side, key: str) -> list[str]:
    """The BatchNorm buffers beside KEY (a state-dict key or an entry path), for the health flags' context."""
    try:
        if side.kind == "model":
            names = set(side.state_dict_infos())
        else:
            default = side.default_state_dict
            names = set(side.state_dict_infos(default)) if default is not None else set()
            names |= {"/".join(i.path) for i in side.entries}
    except ExplorerError:
        return []
    return bn_siblings(key, names.__contains__)


def _fmt(v) -> str:
    if v is None:
        return "—"
    if isinstance(v, int) or (isinstance(v, float) and v.is_integer() and abs(v) < 1e15):
        return f"{int(v):,}" if isinstance(v, int) else f"{v:.6g}"
    return f"{v:.6g}"


def _shape(t) -> tuple:
    return tuple((t.array if hasattr(t, "array") else t).shape)


def render_text(key, t, s, out) -> None:
    w = out.write
    measured = ", measured as |z|" if s.measured != "value" else ""
    w(f"{key}  {list(_shape(t))} {s.dtype}  ({s.numel:,} elements{measured})\n")
    w(f"  finite   {s.count:,}    NaN {s.nan:,}    +Inf {s.posinf:,}    -Inf {s.neginf:,}\n")
    w(f"  min      {_fmt(s.min)}\n  max      {_fmt(s.max)}\n  mean     {_fmt(s.mean)}\n"
      f"  std      {_fmt(s.std)}   (population, ddof=0)\n  L2       {_fmt(s.l2)}\n  max |x|  {_fmt(s.absmax)}\n")
    w(f"  zeros    {s.zero_count:,} ({s.zeros:.2%})\n")
    if s.percentiles:
        w("  percentiles  " + "  ".join(f"p{k}={_fmt(v)}" for k, v in s.percentiles.items()) + "\n")
    w(f"  flags    {', '.join(s.flags) if s.flags else 'none'}\n")
    for line in s.info:
        w(f"  info     {line}\n")
    if not s.notes:
        w("  every figure above is exact\n")
    for note in s.notes:
        w(f"  note: {note}\n")
    h = s.histogram
    if not int(h.counts.sum()) and not (h.below or h.above):   # nothing finite to bin: no made-up range of bins
        w("  histogram: no finite value to bin (NaN/Inf counted above)\n")
        return
    nb = len(h.counts)
    group = max(1, math.ceil(nb / TEXT_ROWS))
    rows = [(h.edges[i], h.edges[min(i + group, nb)], int(h.counts[i:i + group].sum())) for i in range(0, nb, group)]
    peak = max((c for _, _, c in rows), default=0) or 1
    merged = f", {group} bins per row" if group > 1 else ""
    w(f"  histogram ({nb} bins{merged}{', integer-aligned' if h.integer else ''}; NaN/Inf counted above):\n")
    for lo, hi, c in rows:
        w(f"    [{lo:>12.5g}, {hi:>12.5g})  {c:>12,}  {'#' * round(40 * c / peak)}\n")
    if h.below or h.above:
        w(f"    outside the range: {h.below:,} below, {h.above:,} above\n")


def run(args) -> int:
    if args.bins < 1:
        raise ExplorerError(f"--bins must be at least 1 (got {args.bins})")
    remote = is_remote(args.target)
    start = transferred() if remote else 0
    side = open_side(args.target)
    t, key = resolve_tensor(side, args.key)
    s = with_context(tensor_stats(t, bins=args.bins, percentiles=DEFAULT_PERCENTILES), key, _siblings(side, key))
    if args.json:
        answer = s.to_json(key, _shape(t), s.dtype)
        if remote:   # only for a URL: a local file's answer stays byte for byte as it was
            answer["transferred_bytes"] = transferred() - start
        print_json(answer)
    else:
        render_text(key, t, s, sys.stdout)
    return 0
