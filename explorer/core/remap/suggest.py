"""Remap suggestions: candidate fixes, each previewed with the structural simulation ("with this applied: 0 missing,
0 unexpected, 0 mismatched"), ranked, with the equivalent Python snippet."""
from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Mapping
from itertools import compress

import torch
import torch.nn as nn

from ...errors import RemapError
from ..load.index import ModelIndex
from ..load.inputs import CheckpointInput, as_side
from ..load.passes import structural_counts
from ..meta import meta_like
from ..records import read_mask
from .rules import (KNOWN_PREFIXES, MAX_SUGGESTIONS, Remap, Suggestion, part_candidates, prefix_candidates,
                    rename_candidates, tensor_shapes)


def suggest_remaps(model: nn.Module, checkpoint_side, *, entry=None, report=None, strict: bool = True,
                   assign: bool = False, limit: int = MAX_SUGGESTIONS, index=None, meta_sd=None,
                   ck_shapes=None) -> list[Suggestion]:
    """Candidate fixes, each previewed by re-running the structural simulation; best first, only improvements.

    ``meta_sd`` / ``ck_shapes``: the meta checkpoint at ``entry`` and its ``_tensor_shapes``, when the caller has them
    already (the simulation does: 10**6 meta tensors are not made twice)."""
    side = as_side(checkpoint_side)
    index = index or ModelIndex(model)
    ck = CheckpointInput(side, entry)
    if meta_sd is None:
        meta_sd = ck.meta()
        ck_shapes = None
    if not isinstance(meta_sd, Mapping):
        return []
    model_shapes = OrderedDict((k, tuple(sl.orig.shape)) for k, sl in index.slots.items()
                               if isinstance(sl.orig, torch.Tensor))
    if ck_shapes is None:
        ck_shapes = tensor_shapes(meta_sd)
    missing, unexpected, base_total = _baseline(model, meta_sd, report, index, strict=strict, assign=assign)
    model_keys = list(index.slots)
    out: list[Suggestion] = []
    seen: set[str] = set()
    effects: set = set()
    # keys the model cannot read may share one meta tensor per layout (Checkpoint.meta_state_dict); a remap can make
    # such a key readable, and model code must then get a tensor of its own, as with torch
    stand_ins = getattr(meta_sd, "_stand_ins", None)
    read = index.read_keys() if stand_ins else None

    def consider(remap: Remap, reason: str, sd=None) -> dict | None:
        key = json.dumps(remap.to_json(), sort_keys=True)
        if key in seen:
            return None
        seen.add(key)
        try:
            new_sd = remap.apply(meta_sd) if sd is None else sd
        except RemapError:
            return None
        if sd is None and stand_ins:
            _own_tensors(new_sd, stand_ins, read)
        effect = (remap.entry if remap.kind == "entry" else None, tuple(new_sd.keys()))
        if effect in effects:  # another remap already gives exactly these keys (and is simpler: it came first)
            return None
        effects.add(effect)
        counts = structural_counts(model, new_sd, strict=strict, assign=assign, index=index)
        total = counts["missing"] + counts["unexpected"] + counts["mismatched"]
        if total < base_total:
            out.append(Suggestion(remap, remap.describe(), reason, counts,
                                  snippet_for(remap, ck.label, ck.entry_path, strict=strict, assign=assign)))
        return counts

    for r in prefix_candidates(model_keys, list(ck_shapes), missing, unexpected):
        why = KNOWN_PREFIXES.get(r.old or r.new, "keys match once the prefix is changed")
        consider(r, f"the checkpoint's keys carry the prefix of {why}" if r.kind == "strip_prefix" and r.old in
                 KNOWN_PREFIXES else why)
    for r in part_candidates(missing, unexpected):
        consider(r, "keys that differ only in the name of one module")
    _other_entries(side, ck.entry_path, consider)
    # renames, on top of the best prefix fix so far (or of nothing)
    best = min(out, key=_rank) if out else None
    first = best.remap if best is not None and best.remap.kind != "entry" else None
    if first is not None:
        miss1, unex1 = best.preview["missing_keys"], best.preview["unexpected_keys"]
        shapes1 = tensor_shapes(first.apply(meta_sd))
    else:
        miss1, unex1, shapes1 = missing, unexpected, ck_shapes
    renames = rename_candidates(miss1, unex1, model_shapes, shapes1)
    if renames:
        rn = Remap("rename", renames=renames)
        remap = Remap("chain", parts=[first, rn]) if first is not None else rn
        consider(remap, "keys one edit apart, with the same suffix, or with the same shapes in the same order")
    out.sort(key=_rank)
    if out:  # keep the fixes worth showing: the best, and those that at least halve the problems
        best_total = _rank(out[0])[1]
        out = [s for s in out if _rank(s)[1] <= max(best_total, base_total // 2)]
    return out[:limit]


def _baseline(model, meta_sd, report, index, *, strict, assign) -> tuple[list, list, int]:
    """(missing keys, unexpected keys, missing + unexpected + mismatched) of the load as it is."""
    if report is None:
        base = structural_counts(model, meta_sd, strict=strict, assign=assign, index=index)
        return base["missing_keys"], base["unexpected_keys"], base["missing"] + base["unexpected"] + base["mismatched"]
    missing, unexpected = list(report.missing_keys), list(report.unexpected_keys)
    return missing, unexpected, len(missing) + len(unexpected) + len(report.mismatched_keys)


def _other_entries(side, entry_path: tuple, consider) -> None:
    """Another state dict in the same file, as a candidate fix (``consider(remap, reason, sd=...)``)."""
    for ref in side.state_dicts[:8]:
        if tuple(ref.path) == tuple(entry_path):
            continue
        try:
            other = side.load_object(tuple(ref.path), device="meta")
        except Exception:
            continue
        if isinstance(other, Mapping):
            consider(Remap("entry", entry=tuple(ref.path)), f"the file holds another state dict at "
                     f"'{'/'.join(ref.path) or '/'}' ({ref.tensors} tensors)", sd=other)


def _own_tensors(sd: "OrderedDict", stand_ins: frozenset, read: tuple[set, tuple] | None) -> None:
    """Give each key of ``sd`` (a remap's own new mapping) that model code can read and that holds a shared stand-in
    a meta tensor of its own, of the same layout (``read``: see ``ModelIndex.read_keys``; None: every key)."""
    keys = list(sd)
    if read is not None and all(type(k) is str for k in set(map(type, keys))):
        keys = list(compress(keys, read_mask(keys, *read)))
    for k in keys:
        v = sd[k]
        if id(v) in stand_ins:
            t = meta_like(v)
            sd[k] = nn.Parameter(t, requires_grad=v.requires_grad) if isinstance(v, nn.Parameter) else t


def _rank(s: Suggestion):
    p = s.preview
    return (bool(p["raises"]), p["missing"] + p["unexpected"] + p["mismatched"], len(s.remap.describe()))


def _load_lines(path: str, entry: tuple[str, ...]) -> list[str]:
    if str(path).endswith(".safetensors"):
        return ["from safetensors.torch import load_file", f"sd = load_file({str(path)!r})"]
    index = "".join(f"[{p!r}]" for p in entry)
    return [f"sd = torch.load({str(path)!r}, map_location=\"cpu\", weights_only=True){index}"]


def snippet_for(remap: Remap, path: str, entry: tuple[str, ...], *, strict: bool = True, assign: bool = False) -> str:
    lines = ["import torch"]
    if remap.kind == "entry":
        lines += _load_lines(path, tuple(remap.entry or ()))
    else:
        lines += _load_lines(path, entry)
        body = _transform_lines(remap)
        if any("OrderedDict" in line for line in body):
            lines.insert(1, "from collections import OrderedDict")
        lines += body
    call = "model.load_state_dict(sd" + ("" if strict else ", strict=False") + (", assign=True" if assign else "") + ")"
    lines.append(call)
    return "\n".join(lines) + "\n"


def _transform_lines(remap: Remap) -> list[str]:
    if remap.kind == "chain":
        out = []
        for p in remap.parts:
            out += _transform_lines(p)
        return out
    if remap.kind == "strip_prefix":
        return ["from torch.nn.modules.utils import consume_prefix_in_state_dict_if_present",
                f"consume_prefix_in_state_dict_if_present(sd, {remap.old!r})  # also fixes sd._metadata"]
    if remap.kind == "rename_part":
        f = f"lambda k: \".\".join({remap.new!r} if p == {remap.old!r} else p for p in k.split(\".\"))"
    elif remap.kind == "add_prefix":
        f = f"lambda k: {remap.new!r} + k"
    elif remap.kind == "replace_prefix":
        f = (f"lambda k: {remap.new!r} + k[{len(remap.old)}:] if k.startswith({remap.old!r}) else k")
    elif remap.kind == "rename":
        return [f"renames = {json.dumps(remap.renames, indent=4)}",
                "meta = getattr(sd, \"_metadata\", None)",
                "sd = OrderedDict((renames.get(k, k), v) for k, v in sd.items())",
                "if meta is not None:",
                "    sd._metadata = meta"]
    else:
        return []
    return [f"new_key = {f}",
            "meta = getattr(sd, \"_metadata\", None)  # BatchNorm versions: keep them, or num_batches_tracked changes "
            "meaning",
            "sd2 = OrderedDict((new_key(k), v) for k, v in sd.items())",
            "if meta is not None:",
            "    sd2._metadata = OrderedDict((new_key(m + \".\")[:-1] if m else new_key(\"\")[:-1], v) "
            "for m, v in meta.items())",
            "sd = sd2"]
