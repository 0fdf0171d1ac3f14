"""What a remap is (:class:`Remap`: a key transformation; :class:`Suggestion`: one previewed) and how candidates are
found from the missing and unexpected keys: prefixes, a module renamed everywhere, single keys renamed."""
from __future__ import annotations

from collections import Counter, OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from itertools import compress, filterfalse, repeat
from operator import itemgetter, or_
from typing import Any

import torch

from ...errors import RemapError

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


def tensor_shapes(sd: Mapping) -> "OrderedDict[str, tuple]":
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
