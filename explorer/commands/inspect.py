"""Print the tree of a checkpoint or model with totals (tensors, parameters, bytes per dtype)."""
from __future__ import annotations

import json
import sys
from json.encoder import encode_basestring_ascii as _enc  # json.dumps' own string encoder (ensure_ascii)

from . import human_bytes
from ..core.records import SideSummary
from ..core.remote.files import is_remote, transferred
from ..core.side import open_side
from ..core.tree import Tree
from ..core.values import VALUE_TEXT, non_tensor_values, optimizer_states, short_text

VALUES_LISTED = 50   # non-tensor values listed in the text output (--json: every one, up to values.MAX_VALUES)


def add_arguments(p):
    p.add_argument("target", metavar="PATH_OR_MODEL",
                   help="a checkpoint file or folder, or a model spec MODULE:CALLABLE / file.py:CALLABLE / demo:NAME")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the tree")
    p.add_argument("--flat", action="store_true", help="list the state dict's full dotted keys, one a line, in file "
                   "order, instead of the tree of modules")


def _extras(side) -> dict:
    """What the listing shows besides the tensors: format metadata, non-tensor values, optimizer state groups, and
    the state dicts that are not part of one."""
    groups, refs = optimizer_states(side)
    values, more = non_tensor_values(side)
    return {"metadata": getattr(side, "metadata", None) or {}, "values": values, "values_truncated": more,
            "optimizer_states": groups, "state_dicts": refs}


def _json_metadata(meta) -> dict:
    """Format metadata as JSON carries it: plain values as they are, anything else as its text."""
    out = {}
    for k, v in meta.items():
        try:
            json.dumps(v, allow_nan=False)
            out[str(k)] = v
        except (TypeError, ValueError, RecursionError):
            out[str(k)] = short_text(v, 10_000)
    return out


def _json_tail(side, extras: dict) -> dict:
    return {"state_dicts": [{"path": list(r.path), "tensors": r.tensors} for r in extras["state_dicts"]],
            "default_state_dict": list(side.default_state_dict) if side.default_state_dict is not None else None,
            "references": list(side.references),
            "optimizer_states": [g.to_json() for g in extras["optimizer_states"]],
            "metadata": _json_metadata(extras["metadata"]),
            "values": [v.to_json() for v in extras["values"]],
            "values_truncated": extras["values_truncated"]}


def inspect_json(side) -> dict:
    """The ``--json`` object: every tensor in file order; ``state_dicts`` best first (an optimizer's per-parameter
    states are one entry of ``optimizer_states`` each); ``values``: what is not a tensor."""
    return {
        "path": side.path,
        "format": side.format,
        "entries": [{"path": list(i.path), "shape": list(i.shape), "dtype": i.dtype, "nbytes": i.nbytes,
                     "kind": i.kind, "device": i.device} for i in side.entries],
        **_json_tail(side, _extras(side)),
    }


class _Encoded(dict):
    """value -> its JSON text, made once per distinct value (dtypes, kinds, devices, shapes repeat)."""

    __slots__ = ("_encode",)

    def __init__(self, encode):
        super().__init__()
        self._encode = encode

    def __missing__(self, value):
        text = self[value] = self._encode(value)
        return text


def _entry_columns(side, chunk: int = 65536):
    """``side.entry_columns()`` (a checkpoint lists its entries column-wise), else made from ``side.entries``."""
    columns = getattr(side, "entry_columns", None)
    if columns is not None:
        yield from columns(chunk)
        return
    entries = list(side.entries)
    for start in range(0, len(entries), chunk):
        infos = entries[start:start + chunk]
        yield (None, [i.path for i in infos], [i.shape for i in infos], [i.dtype for i in infos],
               [i.nbytes for i in infos], [i.kind for i in infos], [i.device for i in infos])


def write_inspect_json(side, out, last=None) -> None:
    """``print_json(inspect_json(side))``, byte for byte, written in chunks: no dict, list or TensorInfo per entry
    and no 100 MB string for a file of 10**6 tensors (the strings come from json's own encoder). ``last()``, when
    given, is called after the entries are written: a dict of members to end the object with."""
    head = json.dumps({"path": side.path, "format": side.format})
    tail = json.dumps(_json_tail(side, _extras(side)))
    out.write(head[:-1] + ', "entries": [')
    # everything after an entry's last path element, per distinct (shape, dtype, nbytes, kind, device): entries
    # repeat these, so most entries cost one key encoding, one lookup and two concatenations
    suffix = _Encoded(lambda row: '], "shape": %s, "dtype": %s, "nbytes": %s, "kind": %s, "device": %s}' % (
        json.dumps(list(row[0])), _enc(row[1]), int.__repr__(row[2]), _enc(row[3]), _enc(row[4])))
    first = True
    for prefix, keys, shapes, dtypes, nbytes, kinds, devices in _entry_columns(side):
        if prefix is None:  # whole paths
            paths = map('{"path": '.__add__, (json.dumps(list(path))[:-1] for path in keys))
        else:
            paths = map(('{"path": [' + "".join(_enc(p) + ", " for p in prefix)).__add__, map(_enc, keys))
        body = ", ".join(map(str.__add__, paths, map(suffix.__getitem__, zip(shapes, dtypes, nbytes, kinds, devices))))
        if len(suffix) > 100_000:  # sizes all different: the cache would only hold memory
            suffix.clear()
        if body:
            out.write(body if first else ", " + body)
            first = False
    if last is not None:
        more = json.dumps(last())
        tail = tail[:-1] + ", " + more[1:] if more != "{}" else tail
    out.write("], " + tail[1:] + "\n")


def _numeric_names(names: list[str]) -> list[str]:
    """The order :class:`Tree` gives one level of names: numeric names sorted among themselves, in their slots."""
    if sum(map(str.isdigit, names)) < 2:
        return names
    numeric = iter(sorted((n for n in names if n.isdigit()), key=int))
    return [next(numeric) if n.isdigit() else n for n in names]


TREE_DEPTH = 64   # levels of the text tree; deeper keys are listed whole


class _LeafText:
    """One tree line of a tensor; everything after its name is made once per distinct (kind, shape, dtype, size,
    device)."""

    def __init__(self):
        self._tails: dict[tuple, str] = {}

    def __call__(self, indent: str, name: str, row: tuple) -> str:
        """``row``: (kind, shape, dtype, nbytes, device)."""
        tail = self._tails.get(row)
        if tail is None:
            if len(self._tails) > 100_000:
                self._tails.clear()
            kind, shape, dtype, nbytes, device = row
            dev = "  (no data: meta)" if device == "meta" else f"  ({device})" if device not in ("cpu", "") else ""
            tail = self._tails[row] = (f" {kind:<14} {str(list(shape)):<18} {dtype:<10} "
                                       f"{human_bytes(nbytes)}{dev}\n")
        return f"{indent}{name:<24}{tail}"


def _rows(side, entry) -> dict[str, tuple]:
    """key -> (kind, shape, dtype, nbytes, device) of a state dict (a model: every tensor), in order; column-wise
    where the side can (10**6 tiny tensors: no TensorInfo each)."""
    if side.kind == "checkpoint" and hasattr(side, "state_dict_columns"):
        keys, shapes, dtypes, nbytes, kinds, devices = side.state_dict_columns(entry)
        return dict(zip(keys, zip(kinds, map(tuple, shapes), dtypes, nbytes, devices)))
    infos = side.state_dict_infos(entry) if side.kind == "checkpoint" else side.all_infos()
    return {k: (i.kind, tuple(i.shape), i.dtype, i.nbytes, i.device) for k, i in infos.items()}


def _cut(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else text[:limit] + "…"


def _render_extras(side, extras: dict, w) -> None:
    meta = extras["metadata"]
    if meta:
        w("metadata (the header's __metadata__):\n" if side.format == "safetensors" else "metadata:\n")
        for k, v in meta.items():
            w(f"  {_cut(k if type(k) is str else short_text(k))}: {short_text(v)}\n")
    values, groups = extras["values"], extras["optimizer_states"]
    if values:
        # a value inside an optimizer's per-parameter state (an old-style integer "step") is one line for all
        # parameters: optimizer/state/*/step
        lines: dict[str, list] = {}
        for v in values:
            shown = list(v.path)
            for g in groups:
                n = len(g.path)
                if len(shown) > n + 1 and tuple(shown[:n]) == g.path and shown[n].isdigit():
                    shown[n] = "*"
                    break
            lines.setdefault(_cut("/".join(shown) or "/"), [v.text, 0])[1] += 1
        w(f"values that are not tensors (cut to {VALUE_TEXT} characters; inert data, nothing was run):\n")
        for i, (where, (text, n)) in enumerate(lines.items()):
            if i == VALUES_LISTED:
                more = "or more " if extras["values_truncated"] else ""
                w(f"  … and {len(lines) - VALUES_LISTED:,} {more}more (--json lists every value)\n")
                break
            w(f"  {where}: {text}" + (f"   (first of {n:,}, one per parameter)\n" if n > 1 else "\n"))
    if groups:
        w("optimizer state (per-parameter tensors, not a state dict to load):\n")
        for g in groups:
            w(f"  {_cut('/'.join(g.path) or '/')}: {g.parameters:,} parameters, {g.tensors:,} tensors "
              f"({_cut(', '.join(g.slots), 120)})\n")


def render_text(side, out, flat: bool = False) -> None:
    """``flat``: the state dict's keys whole, one a line, in file order (else the tree of modules)."""
    w = out.write
    w(f"{side.path}  [{side.format}]\n")
    if side.references:
        w("objects the file names (shown, never imported or run):\n")
        for r in side.references:
            w(f"  {r}\n")
    extras = _extras(side)
    _render_extras(side, extras, w)
    refs = extras["state_dicts"]
    if len(refs) > 1:
        w("state dicts found (best first):\n")
        for r in refs:
            w(f"  {'/'.join(r.path) or '/'}: {r.tensors} tensors\n")
    default = side.default_state_dict
    if default is None:
        w("no state dict (no mapping of tensors) in this file\n")
        for i in side.entries:
            where = '/'.join(i.path) or '(the file is one tensor)'
            w(f"  {where}  {list(i.shape)} {i.dtype} {human_bytes(i.nbytes)}\n")
        if side.entries:
            w(f"totals: {len(side.entries)} tensors\n")
        return
    infos = _rows(side, default)
    modules = side.module_classes(default)
    w(f"state dict {'/'.join(default) or '/'}:\n")
    leaf = _LeafText()
    lines: list[str] = []
    keys = list(infos)
    if flat:
        for key in keys:
            lines.append(leaf("  ", key, infos[key]))
            if len(lines) >= 65536:
                w("".join(lines))
                lines.clear()
    elif "." not in "\n".join(keys):  # flat keys: the tree is one level, numeric names in numeric order
        for key in _numeric_names(keys):
            lines.append(leaf("  ", key, infos[key]))
            if len(lines) >= 65536:
                w("".join(lines))
                lines.clear()
    else:
        # a key nested deeper than TREE_DEPTH levels is listed whole after the tree: indenting each of its levels
        # would print ~depth**2 characters (a 20,000-part key: 400 MB of spaces)
        deep = [k for k in keys if k.count(".") >= TREE_DEPTH]
        if deep:
            deep_set = set(deep)
            keys = [k for k in keys if k not in deep_set]
        tree = Tree(keys)
        for node in tree.root.walk():
            if node is tree.root:
                continue
            depth = node.path.count(".")
            indent = "  " * (depth + 1)
            if node.is_leaf:
                lines.append(leaf(indent, node.name, infos[node.key]))
            if node.children:
                cls = modules.get(node.path)
                label = f"  {cls.class_name}" if cls else ""
                if not node.is_leaf:
                    lines.append(f"{indent}{node.name}{label}\n")
            if len(lines) >= 65536:
                w("".join(lines))
                lines.clear()
        if deep:
            lines.append(f"  keys nested more than {TREE_DEPTH} levels deep, shown whole:\n")
            lines += (leaf("    ", key, infos[key]) for key in deep)
    w("".join(lines))
    persistent = [r for r in infos.values() if r[0] != "non_persistent"]   # (kind, shape, dtype, nbytes, device)
    total = SideSummary.of([r[1] for r in persistent], [r[2] for r in persistent], [r[3] for r in persistent])
    w(f"totals: {total.tensors} tensors, {total.parameters:,} elements, {human_bytes(total.nbytes)}\n")
    for dt, nb in sorted(total.bytes_per_dtype.items(), key=lambda kv: -kv[1]):
        w(f"  {dt}: {human_bytes(nb)}\n")
    if side.kind == "checkpoint" and len(side.entries) != total.tensors:
        w(f"the whole file holds {len(side.entries)} tensors\n")


def run(args) -> int:
    remote = is_remote(args.target)
    start = transferred() if remote else 0
    side = open_side(args.target)
    if args.json:   # transferred_bytes: only for a URL (a local file's answer stays byte for byte as it was)
        write_inspect_json(side, sys.stdout, (lambda: {"transferred_bytes": transferred() - start}) if remote else None)
    else:
        render_text(side, sys.stdout, flat=args.flat)
    return 0
