"""Print the tree of a checkpoint or model with totals (tensors, parameters, bytes per dtype)."""
from __future__ import annotations

import sys

from . import print_json
from ..core.records import SideSummary
from ..core.sides import open_side
from ..core.tree import Tree


def add_arguments(p):
    p.add_argument("target", metavar="PATH_OR_MODEL",
                   help="a checkpoint file or folder, or a model spec MODULE:CALLABLE / file.py:CALLABLE / demo:NAME")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the tree")


def inspect_json(side) -> dict:
    """The ``--json`` object of issue 2: every tensor in file order; ``state_dicts`` best first."""
    return {
        "path": side.path,
        "format": side.format,
        "entries": [{"path": list(i.path), "shape": list(i.shape), "dtype": i.dtype, "nbytes": i.nbytes,
                     "kind": i.kind, "device": i.device} for i in side.entries],
        "state_dicts": [{"path": list(r.path), "tensors": r.tensors} for r in side.state_dicts],
        "default_state_dict": list(side.default_state_dict) if side.default_state_dict is not None else None,
        "references": list(side.references),
    }


def human_bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def render_text(side, out) -> None:
    w = out.write
    w(f"{side.path}  [{side.format}]\n")
    if side.references:
        w("objects the file names (shown, never imported or run):\n")
        for r in side.references:
            w(f"  {r}\n")
    if len(side.state_dicts) > 1:
        w("state dicts found (best first):\n")
        for r in side.state_dicts:
            w(f"  {'/'.join(r.path) or '/'}: {r.tensors} tensors\n")
    default = side.default_state_dict
    if default is None:
        w("no state dict (no mapping of tensors) in this file\n")
        for i in side.entries:
            w(f"  {'/'.join(i.path) or '(the file is one tensor)'}  {list(i.shape)} {i.dtype} {human_bytes(i.nbytes)}\n")
        if side.entries:
            w(f"totals: {len(side.entries)} tensors\n")
        return
    infos = side.state_dict_infos(default) if side.kind == "checkpoint" else side.all_infos()
    modules = side.module_classes(default)
    tree = Tree(infos.keys())
    w(f"state dict {'/'.join(default) or '/'}:\n")
    for node in tree.root.walk():
        if node is tree.root:
            continue
        depth = node.path.count(".")
        indent = "  " * (depth + 1)
        if node.is_leaf:
            i = infos[node.key]
            dev = f"  ({i.device})" if i.device not in ("cpu", "") else ""
            w(f"{indent}{node.name:<24} {i.kind:<14} {str(list(i.shape)):<18} {i.dtype:<10} "
              f"{human_bytes(i.nbytes)}{dev}\n")
        if node.children:
            cls = modules.get(node.path)
            label = f"  {cls.class_name}" if cls else ""
            if not node.is_leaf:
                w(f"{indent}{node.name}{label}\n")
    total = SideSummary.of(i for i in infos.values() if i.kind != "non_persistent")
    w(f"totals: {total.tensors} tensors, {total.parameters:,} elements, {human_bytes(total.nbytes)}\n")
    for dt, nb in sorted(total.bytes_per_dtype.items(), key=lambda kv: -kv[1]):
        w(f"  {dt}: {human_bytes(nb)}\n")
    if side.kind == "checkpoint" and len(side.entries) != total.tensors:
        w(f"the whole file holds {len(side.entries)} tensors\n")


def run(args) -> int:
    side = open_side(args.target)
    if args.json:
        print_json(inspect_json(side))
    else:
        render_text(side, sys.stdout)
    return 0
