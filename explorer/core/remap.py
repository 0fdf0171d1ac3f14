"""Remap suggestions: when a checkpoint's keys do not line up with the model's, find the likely fix, preview it with
the structural simulation ("with this applied: 0 missing, 0 unexpected, 0 mismatched"), export a fixed checkpoint
atomically and give the equivalent Python snippet.

Kinds of fix: strip a prefix (``module.`` from DataParallel/DDP, ``_orig_mod.`` from torch.compile, ``model.`` from
Lightning, any other common prefix), add a prefix, replace one prefix by another (a backbone renamed), pick another
state dict nested in the file (``ema``, ``model``), and rename individual keys (one-edit typos, same suffix and shape,
same shape in the same order).
"""
from __future__ import annotations

import json
import os
import struct
from collections import Counter, OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from itertools import compress, filterfalse, repeat
from operator import itemgetter, or_
from typing import Any, Callable

import torch
import torch.nn as nn

from .atomic import atomic_output
from ..errors import Cancelled, RemapError
from .meta import meta_like
from .records import dtype_name, read_mask

KNOWN_PREFIXES = {"module.": "DataParallel / DistributedDataParallel", "_orig_mod.": "torch.compile",
                  "model.": "PyTorch Lightning / a wrapper module", "backbone.": "a backbone wrapper",
                  "encoder.": "an encoder wrapper", "net.": "a wrapper module"}
MAX_SUGGESTIONS = 5


@dataclass
class Remap:
    """A key transformation. ``kind``: strip_prefix | add_prefix | replace_prefix | rename | entry | chain."""

    kind: str
    old: str = ""                     # prefix to strip / replace
    new: str = ""                     # prefix to add / replacement
    renames: dict[str, str] = field(default_factory=dict)   # rename: old key -> new key
    entry: tuple[str, ...] | None = None                    # entry: the state dict to use instead
    parts: list["Remap"] = field(default_factory=list)      # chain: applied in order

    def new_key(self, key: str) -> str:
        k = self.kind
        if k == "strip_prefix":
            return key[len(self.old):] if key.startswith(self.old) else key
        if k == "add_prefix":
            return self.new + key
        if k == "replace_prefix":
            return self.new + key[len(self.old):] if key.startswith(self.old) else key
        if k == "rename":
            return self.renames.get(key, key)
        if k == "rename_part":
            return ".".join(self.new if p == self.old else p for p in key.split("."))
        if k == "chain":
            for p in self.parts:
                key = p.new_key(key)
            return key
        return key

    def _meta_key(self, prefix: str) -> str:
        """Where a ``_metadata`` module prefix ("module.bn", "" for the root) goes."""
        if self.kind == "chain":
            for p in self.parts:
                prefix = p._meta_key(prefix)
            return prefix
        if self.kind == "rename":
            return prefix
        if self.kind == "rename_part":
            return self.new_key(prefix) if prefix else prefix
        dotted = prefix + "." if prefix else ""
        if self.kind == "strip_prefix" and self.old and prefix + "." == self.old:
            return ""
        out = self.new_key(dotted) if dotted or self.kind == "add_prefix" else ""
        return out[:-1] if out.endswith(".") else out

    def apply(self, sd: Mapping) -> "OrderedDict":
        """A new mapping with the keys remapped (values are the same objects), ``_metadata`` remapped as well."""
        out: OrderedDict = OrderedDict()
        for k, v in sd.items():
            nk = self.new_key(k) if isinstance(k, str) else k
            if nk in out:
                raise RemapError(f"the remap maps two checkpoint keys onto {nk!r}")
            out[nk] = v
        meta = getattr(sd, "_metadata", None)
        if meta is not None:
            new_meta = OrderedDict()
            for k, v in meta.items():
                new_meta[self._meta_key(k)] = v  # later (deeper) entries win, as consume_prefix_... does
            out._metadata = new_meta  # type: ignore[attr-defined]
        return out

    def describe(self) -> str:
        k = self.kind
        if k == "strip_prefix":
            return f"strip the prefix '{self.old}'"
        if k == "add_prefix":
            return f"add the prefix '{self.new}'"
        if k == "replace_prefix":
            return f"replace the prefix '{self.old}' by '{self.new}'"
        if k == "rename":
            items = list(self.renames.items())
            shown = ", ".join(f"'{a}' -> '{b}'" for a, b in items[:3])
            return f"rename {len(items)} key(s): {shown}" + (" ..." if len(items) > 3 else "")
        if k == "rename_part":
            return f"rename the module '{self.old}' to '{self.new}' in every key"
        if k == "entry":
            return f"use the state dict at '{'/'.join(self.entry or ()) or '/'}' instead"
        return " then ".join(p.describe() for p in self.parts)

    def to_json(self) -> dict:
        out: dict[str, Any] = {"kind": self.kind}
        if self.kind in ("strip_prefix", "replace_prefix", "rename_part"):
            out["old"] = self.old
        if self.kind in ("add_prefix", "replace_prefix", "rename_part"):
            out["new"] = self.new
        if self.kind == "rename":
            out["renames"] = dict(self.renames)
        if self.kind == "entry":
            out["entry"] = list(self.entry or ())
        if self.kind == "chain":
            out["parts"] = [p.to_json() for p in self.parts]
        return out


@dataclass
class Suggestion:
    remap: Remap
    title: str
    reason: str
    preview: dict          # {"missing", "unexpected", "mismatched", "raises"}
    snippet: str = ""

    def preview_text(self) -> str:
        p = self.preview
        return (f"with this applied: {p['missing']} missing, {p['unexpected']} unexpected, {p['mismatched']} "
                f"mismatched" + (" (the load would still raise)" if p.get("raises") else ""))

    def to_json(self) -> dict:
        return {"kind": self.remap.kind, "title": self.title, "reason": self.reason, "remap": self.remap.to_json(),
                "preview": {k: self.preview[k] for k in ("missing", "unexpected", "mismatched", "raises")},
                "preview_text": self.preview_text(), "snippet": self.snippet}


# ---- finding candidates -----------------------------------------------------------------------------------------

def _tensor_shapes(sd: Mapping) -> "OrderedDict[str, tuple]":
    return OrderedDict((k, tuple(v.shape)) for k, v in sd.items() if isinstance(k, str) and isinstance(v, torch.Tensor)
                       and not torch.nn.parameter.is_lazy(v))   # an uninitialized (lazy) parameter has no shape


def _dot_suffixes(key: str):
    """``a.b.c`` -> ``b.c``, ``c`` (with the prefix each leaves behind)."""
    i = key.find(".")
    while i != -1:
        yield key[:i + 1], key[i + 1:]
        i = key.find(".", i + 1)


def _leaf(key: str) -> str:
    return key.rpartition(".")[2]


def _with_leaves(keys, leaves: set) -> list:
    """The dotted keys whose last part is in ``leaves``, in order (C iterators: 10**6 keys in a blink)."""
    dotted = [k for k in keys if "." in k]
    return list(compress(dotted, map(leaves.__contains__, map(itemgetter(2), map(str.rpartition, dotted,
                                                                                   repeat("."))))))


def prefix_candidates(model_keys, ck_keys, missing, unexpected) -> list[Remap]:
    model_set, ck_set = set(model_keys), set(ck_keys)
    votes: Counter = Counter()
    # an unexpected key votes only when one of its dotted suffixes is a model key (strip) or a missing key's
    # (replace): both end with a model key's last part, so the others are skipped up front
    unexpected = _with_leaves(unexpected, {_leaf(k) for k in model_set} | {_leaf(m) for m in missing})
    for u in unexpected:
        for pre, suf in _dot_suffixes(u):
            if suf in model_set:
                votes[("strip_prefix", pre, "")] += 1
    for m in missing:
        for pre, suf in _dot_suffixes(m):
            if suf in ck_set:
                votes[("add_prefix", "", pre)] += 1
    # replace prefix: the longest shared dotted suffix of a missing and an unexpected key
    by_suffix: dict[str, list[str]] = {}
    for m in missing:
        for pre, suf in _dot_suffixes(m):
            if "." in suf:  # at least two components, so "weight" alone does not pair everything
                by_suffix.setdefault(suf, []).append(pre)
    for u in unexpected:
        for pre, suf in _dot_suffixes(u):
            if suf in by_suffix:
                for mpre in set(by_suffix[suf]):
                    if mpre != pre:
                        votes[("replace_prefix", pre, mpre)] += 1
                break
    # a known prefix on half the checkpoint's keys: counted only if some key has one (one C pass over 10**6 keys)
    ck_known = any(map(str.startswith, ck_keys, repeat(tuple(KNOWN_PREFIXES))))
    for pre in KNOWN_PREFIXES:
        n_ck = sum(map(str.startswith, ck_keys, repeat(pre))) if ck_known else 0
        if n_ck and n_ck >= len(ck_set) / 2:
            votes[("strip_prefix", pre, "")] += 0
        n_m = sum(map(str.startswith, model_keys, repeat(pre)))
        if n_m and n_m >= len(model_set) / 2 and not n_ck:
            votes[("add_prefix", "", pre)] += 0
    simpler = {"strip_prefix": 0, "add_prefix": 1, "replace_prefix": 2}
    ranked = sorted(votes.items(), key=lambda kv: (-kv[1], simpler[kv[0][0]], len(kv[0][1]) + len(kv[0][2]), kv[0]))
    out = []
    for (kind, old, new), _n in ranked[:4]:
        out.append(Remap(kind, old=old, new=new))
    return out


def part_candidates(missing: list[str], unexpected: list[str], limit: int = 2) -> list[Remap]:
    """A module renamed everywhere (``atn`` -> ``attn``, ``fc`` -> ``head``): keys that differ in exactly one
    dot-separated part, voted by how many key pairs the rename explains."""
    patterns: dict[tuple, str] = {}
    for m in missing:
        parts = m.split(".")
        for i in range(len(parts)):
            patterns.setdefault((len(parts), i, tuple(parts[:i]), tuple(parts[i + 1:])), parts[i])
    votes: Counter = Counter()
    # an unexpected key matches a pattern only if it has a missing key's module path (the last part differs) or a
    # missing key's last part (another part differs): skip the others up front
    m_leaves = {m.rpartition(".")[2] for m in missing}
    m_paths = {m.rpartition(".")[0] for m in missing}
    if len(unexpected) > 64:
        parts = list(map(str.rpartition, unexpected, repeat(".")))
        keep = list(map(m_leaves.__contains__, map(itemgetter(2), parts)))
        if not all(keep):
            keep = list(map(or_, keep, map(m_paths.__contains__, map(itemgetter(0), parts))))
        unexpected = list(compress(unexpected, keep))
        del parts, keep
    for u in unexpected:
        parts = u.split(".")
        for i in range(len(parts)):
            m_part = patterns.get((len(parts), i, tuple(parts[:i]), tuple(parts[i + 1:])))
            if m_part is not None and m_part != parts[i] and not parts[i].isdigit():
                votes[(parts[i], m_part)] += 1
    return [Remap("rename_part", old=o, new=n) for (o, n), c in votes.most_common(limit) if c >= 2]


def within_one_edit(a: str, b: str) -> bool:
    """At most one insertion, deletion, substitution or swap of two neighbouring characters."""
    if a == b:
        return True
    if abs(len(a) - len(b)) > 1:
        return False
    if len(a) == len(b):
        diff = [i for i, (x, y) in enumerate(zip(a, b)) if x != y]
        return len(diff) == 1 or (len(diff) == 2 and diff[1] == diff[0] + 1 and a[diff[0]] == b[diff[1]]
                                  and a[diff[1]] == b[diff[0]])
    if len(a) > len(b):
        a, b = b, a
    i = 0
    while i < len(a) and a[i] == b[i]:
        i += 1
    return a[i:] == b[i + 1:]


def _split(key: str) -> tuple[str, str]:
    mod, _, leaf = key.rpartition(".")
    return mod, leaf


def rename_candidates(missing: list[str], unexpected: list[str], model_shapes: Mapping, ck_shapes: Mapping) -> dict:
    """old checkpoint key -> model key: keys one edit apart (same shape); whole modules renamed (same leaf names and
    shapes, the closest name or else the same order); what is left, paired in order when leaf names and shapes agree."""
    renames: dict[str, str] = {}
    taken: set[str] = set()
    miss = [m for m in missing if m in model_shapes]
    unex = list(compress(unexpected, map(ck_shapes.__contains__, unexpected)))
    # 1. whole modules renamed: every missing leaf of a model module is in one checkpoint module with the same shape
    miss_groups: "OrderedDict[str, dict]" = OrderedDict()
    for m in miss:
        if m not in taken:
            mod, leaf = _split(m)
            miss_groups.setdefault(mod, {})[leaf] = model_shapes[m]
    # only checkpoint keys whose last part names a model tensor can be renamed here: the others are left out of the
    # groups (a group without any cannot fit), keeping the groups in the order of their first key among all
    model_leaves = {_split(k)[1] for k in model_shapes}
    # (a key ending with no model leaf at all is dropped first, by one C call each)
    maybe = list(compress(unex, map(str.endswith, unex, repeat(tuple(model_leaves))))) if model_leaves else []
    useful_keys = list(compress(maybe, map(model_leaves.__contains__, map(itemgetter(2), map(
        str.rpartition, maybe, repeat("."))))))
    del maybe
    useful = [(u, *_split(u)) for u in useful_keys]
    unex_groups: "OrderedDict[str, dict]" = OrderedDict()
    if len({mod for _, mod, _ in useful}) > 1:   # the order of the groups matters: that of their first key
        for mod in dict.fromkeys(map(itemgetter(0), map(str.rpartition, unex, repeat(".")))):
            unex_groups[mod] = None  # type: ignore[assignment]
    for u, mod, leaf in useful:
        if u not in renames:
            g = unex_groups.get(mod)
            if g is None:
                g = unex_groups[mod] = {}
            g[leaf] = ck_shapes[u]
    for mod in [m for m, g in unex_groups.items() if g is None]:
        del unex_groups[mod]
    del useful_keys, useful
    used: set[str] = set()
    for mmod, leaves in miss_groups.items():
        fits = [umod for umod, uleaves in unex_groups.items() if umod not in used and umod != mmod
                and all(uleaves.get(leaf) == shape for leaf, shape in leaves.items())]
        if not fits:
            continue
        close = [f for f in fits if within_one_edit(f, mmod)]
        choice = close[0] if len(close) == 1 else fits[0]
        used.add(choice)
        for leaf in unex_groups[choice]:
            target = f"{mmod}.{leaf}" if mmod else leaf
            src = f"{choice}.{leaf}" if choice else leaf
            if target in model_shapes and model_shapes[target] == ck_shapes[src] and target not in taken \
                    and (target in miss or target not in ck_shapes):
                renames[src] = target
                taken.add(target)
    # 2. one-edit typos with the same shape, unique
    by_shape: dict[tuple, list[str]] = {}
    for m in miss:
        by_shape.setdefault(model_shapes[m], []).append(m)
    # one edit changes the length by at most one: other checkpoint keys cannot pair
    lengths = {len(m) + d for m in miss for d in (-1, 0, 1)}
    near = list(compress(unex, map(lengths.__contains__, map(len, unex))))
    for u in compress(near, map(by_shape.__contains__, map(ck_shapes.__getitem__, near))):
        if u in renames:
            continue
        same = by_shape.get(ck_shapes[u], ())
        if len(same) > 5000:  # a quadratic search would take seconds: leave it to the other rules
            continue
        cands = [m for m in same if m not in taken and within_one_edit(u, m)]
        if len(cands) == 1:
            renames[u] = cands[0]
            taken.add(cands[0])
    # 3. what is left, in order, when the shapes and leaf names line up one for one
    rest_u = list(filterfalse(renames.__contains__, unex))
    rest_m = [m for m in miss if m not in taken]
    if rest_u and len(rest_u) == len(rest_m) and all(
            ck_shapes[u] == model_shapes[m] and _split(u)[1] == _split(m)[1] for u, m in zip(rest_u, rest_m)):
        for u, m in zip(rest_u, rest_m):
            renames[u] = m
    return renames


def suggest_remaps(model: nn.Module, checkpoint_side, *, entry=None, report=None, strict: bool = True,
                   assign: bool = False, limit: int = MAX_SUGGESTIONS, index=None, meta_sd=None,
                   ck_shapes=None) -> list[Suggestion]:
    """Candidate fixes, each previewed by re-running the structural simulation; best first, only improvements.

    ``meta_sd`` / ``ck_shapes``: the meta checkpoint at ``entry`` and its ``_tensor_shapes``, when the caller has them
    already (the simulation does: 10**6 meta tensors are not made twice)."""
    from .simulate import _CheckpointInput, _ModelIndex, structural_counts
    index = index or _ModelIndex(model)
    ck = _CheckpointInput(checkpoint_side, entry)
    if meta_sd is None:
        meta_sd = ck.meta()
        ck_shapes = None
    if not isinstance(meta_sd, Mapping):
        return []
    model_shapes = OrderedDict((k, tuple(sl.orig.shape)) for k, sl in index.slots.items()
                               if isinstance(sl.orig, torch.Tensor))
    if ck_shapes is None:
        ck_shapes = _tensor_shapes(meta_sd)
    if report is None:
        base = structural_counts(model, meta_sd, strict=strict, assign=assign, index=index)
        missing, unexpected = base["missing_keys"], base["unexpected_keys"]
        base_total = base["missing"] + base["unexpected"] + base["mismatched"]
    else:
        missing, unexpected = list(report.missing_keys), list(report.unexpected_keys)
        base_total = len(missing) + len(unexpected) + len(report.mismatched_keys)
    model_keys = list(index.slots)
    out: list[Suggestion] = []
    seen: set[str] = set()
    effects: set = set()
    # keys the model cannot read may share one meta tensor per layout (Checkpoint.meta_state_dict); a remap can make
    # such a key readable, and model code must then get a tensor of its own, as with torch
    stand_ins = getattr(meta_sd, "_stand_ins", None)
    read = index.read_keys() if stand_ins else None

    def consider(remap: Remap, reason: str, sd=None, path=None) -> dict | None:
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
    # another state dict in the same file
    for ref in getattr(checkpoint_side, "state_dicts", [])[:8]:
        if tuple(ref.path) == tuple(ck.entry_path) or not hasattr(checkpoint_side, "load_object"):
            continue
        try:
            other = checkpoint_side.load_object(tuple(ref.path), device="meta")
        except Exception:
            continue
        if isinstance(other, Mapping):
            consider(Remap("entry", entry=tuple(ref.path)), f"the file holds another state dict at "
                     f"'{'/'.join(ref.path) or '/'}' ({ref.tensors} tensors)", sd=other)
    # renames, on top of the best prefix fix so far (or of nothing)
    best = min(out, key=lambda s: _rank(s)) if out else None
    first = best.remap if best is not None and best.remap.kind != "entry" else None
    sd1 = first.apply(meta_sd) if first is not None else meta_sd
    if first is not None:
        c = best.preview
        miss1, unex1 = c["missing_keys"], c["unexpected_keys"]
    else:
        miss1, unex1 = missing, unexpected
    renames = rename_candidates(miss1, unex1, model_shapes, _tensor_shapes(sd1) if sd1 is not meta_sd else ck_shapes)
    if renames:
        rn = Remap("rename", renames=renames)
        remap = Remap("chain", parts=[first, rn]) if first is not None else rn
        consider(remap, "keys one edit apart, with the same suffix, or with the same shapes in the same order")
    out.sort(key=_rank)
    if out:  # keep the fixes worth showing: the best, and those that at least halve the problems
        best_total = _rank(out[0])[1]
        out = [s for s in out if _rank(s)[1] <= max(best_total, base_total // 2)]
    return out[:limit]


def _own_tensors(sd: "OrderedDict", stand_ins: frozenset, read: tuple[set, tuple] | None) -> None:
    """Give each key of ``sd`` (a remap's own new mapping) that model code can read and that holds a shared stand-in
    a meta tensor of its own, of the same layout (``read``: see ``_ModelIndex.read_keys``; None: every key)."""
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


# ---- snippets ---------------------------------------------------------------------------------------------------

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


# ---- applying ---------------------------------------------------------------------------------------------------

_ST_CODES = {"float64": "F64", "float32": "F32", "float16": "F16", "bfloat16": "BF16", "int64": "I64", "int32": "I32",
             "int16": "I16", "int8": "I8", "uint8": "U8", "uint16": "U16", "uint32": "U32", "uint64": "U64",
             "bool": "BOOL", "float8_e4m3fn": "F8_E4M3", "float8_e5m2": "F8_E5M2", "complex64": "C64",
             "complex128": "C128", "float8_e8m0fnu": "F8_E8M0"}


def _tensor_bytes(t: torch.Tensor) -> bytes:
    t = t.detach().to("cpu").contiguous().reshape(-1)
    if t.numel() == 0:
        return b""
    if t.is_complex():
        t = torch.view_as_real(t).reshape(-1)
    return t.view(torch.uint8).numpy().tobytes()


def _write_safetensors(f, items: list[tuple[str, Callable[[], torch.Tensor], tuple, str]], should_stop=None,
                       progress=None) -> None:
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for key, _read, shape, dt in items:
        code = _ST_CODES.get(dt)
        if code is None:
            raise RemapError(f"{key}: dtype {dt} cannot be stored in .safetensors; export to .pt instead")
        n = 1
        for s in shape:
            n *= s
        size = n * torch.empty((), dtype=getattr(torch, dt)).element_size() * (1 if "complex" not in dt else 1)
        header[key] = {"dtype": code, "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % 8)
    f.write(struct.pack("<Q", len(raw)))
    f.write(raw)
    for i, (key, read, shape, dt) in enumerate(items):
        if should_stop is not None and should_stop():
            raise Cancelled("export cancelled")
        data = _tensor_bytes(read())
        expect = header[key]["data_offsets"][1] - header[key]["data_offsets"][0]
        if len(data) != expect:
            raise RemapError(f"{key}: read {len(data)} bytes, expected {expect}")
        f.write(data)
        if progress is not None:
            progress(i + 1, len(items))


def apply_remap(checkpoint_side, remap: Remap, out_path: str | os.PathLike, *, entry=None,
                progress: Callable[[int, int], Any] | None = None,
                should_stop: Callable[[], bool] | None = None) -> str:
    """Write the remapped state dict to ``out_path`` (``.safetensors`` or ``.pt``/``.pth``/``.bin``) atomically:
    a temporary file in the same folder, then ``os.replace``. Tensors are read one at a time. Returns the path."""
    from .simulate import _CheckpointInput
    out_path = os.fspath(out_path)
    src_path = getattr(checkpoint_side, "path", None)
    if src_path and os.path.exists(src_path) and os.path.exists(out_path) and os.path.samefile(src_path, out_path):
        raise RemapError(f"{out_path}: refusing to overwrite the checkpoint being read; choose a new file name")
    folder = os.path.dirname(os.path.abspath(out_path))
    if not os.path.isdir(folder):
        raise RemapError(f"{out_path}: folder {folder} does not exist")
    use_entry = remap.entry if remap.kind == "entry" else entry
    ck = _CheckpointInput(checkpoint_side, use_entry)
    meta_sd = ck.meta()
    if not isinstance(meta_sd, Mapping):
        raise RemapError(f"{ck.label}: the object at this entry is not a state dict")
    is_st = out_path.endswith(".safetensors")
    with atomic_output(out_path) as f:
        if is_st:
            items = []
            new_keys = remap.apply(OrderedDict((k, None) for k in meta_sd)) if remap.kind != "entry" else \
                OrderedDict((k, None) for k in meta_sd)
            for (old, v), new in zip(meta_sd.items(), new_keys):
                if not isinstance(v, torch.Tensor):
                    continue
                items.append((new, _reader(checkpoint_side, ck, old), tuple(v.shape), dtype_name(v.dtype)))
            _write_safetensors(f, items, should_stop, progress)
        else:
            real = ck.real()
            fixed = remap.apply(real) if remap.kind != "entry" else real
            if should_stop is not None and should_stop():
                raise Cancelled("export cancelled")
            torch.save(fixed, f)
            if progress is not None:
                progress(1, 1)
    return out_path


def _reader(side, ck, key):
    def read():
        if hasattr(side, "read_key") and hasattr(side, "resolve_entry") and not isinstance(side, Mapping) \
                and not isinstance(side, nn.Module) and hasattr(side, "record"):
            return side.read_key(key, ck.entry_path)
        sd = ck.real()
        return sd[key]
    return read
