"""The explanations of a simulated load, in plain words: of each key (:func:`explain_key`), of each unexpected key
(:func:`explain_unexpected`, in bulk through :class:`UnexpectedContext`) and of the whole load (:func:`explain_load`)."""
from __future__ import annotations

from collections.abc import Mapping
from itertools import compress, repeat
from operator import itemgetter

import torch
import torch.nn as nn

from ..load.index import EXTRA_STATE_SUFFIX, Slot
from ..load.passes import all_str
from ..records import (CHANGED, DTYPE_CAST, MISSING, NOT_LOADED, RUNNING_STAT, RUNNING_STAT_NAMES, SHAPE_MISMATCH,
                       UNEXPECTED)
from ..remap.rules import within_one_edit
from .report import KeyReport, LoadReport, made_items

NOT_A_MAPPING = "Expected state_dict to be dict-like, got "   # how torch's TypeError for a non-mapping begins

UNCOMPARED_WORD = "loads, not compared"   # a changed key whose values could not be compared (a meta model)


def fmt_shape(s) -> str:
    return "[" + ", ".join(str(x) for x in s) + "]" if s is not None else "?"


def module_desc(model: nn.Module, path: str) -> str:
    try:
        mod = model.get_submodule(path) if path else model
    except AttributeError:
        return f"module {path!r}"
    cls = type(mod).__name__
    return f"the model itself ({cls})" if not path else f"module '{path}' ({cls})"


class UnexpectedContext:
    """What the report of an unexpected key is made from (see :class:`KeyTable`)."""

    def __init__(self, model, message: str, ck_infos: Mapping, special: dict):
        self.model = model
        self.message = message
        self.ck_infos = ck_infos
        self.special = special     # key -> kind, where not "parameter"
        self._explainers: dict = {}

    def kinds(self, keys: list) -> list:
        return list(map(self.special.get, keys, repeat("parameter")))

    def report(self, key) -> KeyReport:
        info = self.ck_infos.get(key)
        return KeyReport(key=key, kind=self.special.get(key, "parameter"), status=UNEXPECTED,
                         shape_checkpoint=info[0] if info else None, dtype_checkpoint=info[1] if info else None,
                         explanation=self.explain([key])[0])

    def explain(self, keys: list) -> list[str]:
        """``explain_unexpected(key, model, message)`` of each key, worked out once per module path."""
        cache = self._explainers
        if len(keys) > 1:  # keys all under one module path (a flat checkpoint): in bulk
            parts = list(map(str.rpartition, keys, repeat(".")))
            heads = set(map(itemgetter(0, 1), parts))
            if len(heads) == 1:
                path, dot = next(iter(heads))
                ex = cache.get(path + dot)
                if ex is None:
                    ex = cache[path + dot] = _unexpected_explainer(self.model, path.split(".") if dot else [])
                if type(ex) is str:
                    return [ex] * len(keys)
                leaves = list(map(itemgetter(2), parts))
                if ex[1].isdisjoint(leaves):
                    return list(map(str.__add__, map(ex[0].__add__, leaves), repeat("'.")))
        out = []
        append = out.append
        for key in keys:
            path, dot, leaf = key.rpartition(".")
            head = path + dot
            ex = cache.get(head)
            if ex is None:
                ex = cache[head] = _unexpected_explainer(self.model, path.split(".") if dot else [])
            if type(ex) is str:
                append(ex)
            elif leaf in ex[1]:
                append(explain_unexpected(key, self.model, self.message))
            else:
                append(ex[0] + leaf + "'.")
        return out


def _module_at(model: nn.Module, parts: list[str]) -> tuple[nn.Module, list[str], str | None]:
    """The submodule at the module path ``parts`` and that path; or, where the walk stops (a submodule set to None,
    or missing), the explanation of why torch rejects the keys under it."""
    mod = model
    path: list[str] = []
    for p in parts:
        child = mod._modules.get(p) if p in mod._modules else None
        if p in mod._modules and child is None:
            return mod, path, f"'{'.'.join(path + [p])}' is None in the model; torch ignores keys under it."
        if child is None:
            where = module_desc(model, ".".join(path))
            return mod, path, (f"Rejected by {where}: it has no submodule '{p}'. The model keeps its own value for "
                               "whatever this was meant to fill; check for a prefix or a renamed layer (see the "
                               "remap suggestions).")
        mod = child
        path.append(p)
    return mod, path, None


def _unexpected_explainer(model: nn.Module, parts: list[str]):
    """For keys under the module path ``parts``: the explanation itself when it does not depend on the key's last
    part, else ``(text before the leaf name, leaf names that need explain_unexpected itself)``."""
    mod, path, stop = _module_at(model, parts)
    if stop is not None:
        return stop
    where = module_desc(model, ".".join(path))
    special = set(RUNNING_STAT_NAMES) | {EXTRA_STATE_SUFFIX} | set(mod._parameters) | set(mod._buffers) | \
        set(getattr(mod, "_non_persistent_buffers_set", ()))
    return (f"Rejected by {where}: it has no parameter or buffer '", special)


def near_index(rep: LoadReport) -> "Near":
    """A :class:`Near` over the report's unexpected keys, for its missing ones."""
    return Near(rep.unexpected_keys, leaves={k.rsplit(".", 1)[-1] for k in rep.missing_keys if isinstance(k, str)})


class Near:
    """Finds, for a missing key, the unexpected checkpoint key that most likely meant it (indexed once per report:
    a naive scan is quadratic and takes seconds on 2,000 prefixed keys)."""

    def __init__(self, candidates, leaves: set | None = None):
        """``leaves``: the last parts of the keys that will be asked about. Every rule pairs keys with the same last
        part, so the other candidates are left out of the index (10**6 unexpected keys, a few missing ones)."""
        self.all_candidates = candidates
        self.leaves = leaves
        if leaves is not None:
            if not all_str(candidates):
                candidates = [c for c in candidates if isinstance(c, str)]
            candidates = compress(candidates, map(leaves.__contains__, map(itemgetter(2), map(
                str.rpartition, candidates, repeat(".")))))
        self.candidates = list(candidates)
        self.exact = set(self.candidates)
        self.by_suffix: dict[str, str] = {}
        self.by_leaf: dict[str, list[str]] = {}
        for c in self.candidates:
            if not isinstance(c, str):
                continue
            i = c.find(".")
            while i != -1:
                self.by_suffix.setdefault(c[i + 1:], c)
                i = c.find(".", i + 1)
            self.by_leaf.setdefault(c.rsplit(".", 1)[-1], []).append(c)

    def __call__(self, key: str) -> str | None:
        if self.leaves is not None and key.rsplit(".", 1)[-1] not in self.leaves:
            self.__init__(self.all_candidates)   # a key nobody announced: index everything
        hit = self.by_suffix.get(key)            # the checkpoint's key carries an extra prefix
        if hit is not None:
            return hit
        i = key.find(".")
        while i != -1:                           # the model's key carries an extra prefix
            if key[i + 1:] in self.exact:
                return key[i + 1:]
            i = key.find(".", i + 1)
        for c in self.by_leaf.get(key.rsplit(".", 1)[-1], ())[:200]:
            if c != key and within_one_edit(c, key):
                return c
        return None


def explain_key(kr: KeyReport, slot: Slot, rep: LoadReport, tied: dict, message: str, near_of) -> str:
    """Why ``kr`` (a model key) ends as it does. ``tied``: id(tensor) -> the model keys sharing it; ``near_of(key)``:
    the unexpected key that most likely meant a missing one (see :class:`Near`), or None."""
    key = kr.key
    st = kr.status
    src = f"the checkpoint's '{kr.source_key}'" if kr.source_key and kr.source_key != key else "the checkpoint"
    renamed = f" (a load hook renamed it from '{kr.source_key}')" if kr.source_key and kr.source_key != key else ""
    aliases = [k for k in tied.get(id(slot.orig), []) if k != key] if isinstance(slot.orig, torch.Tensor) else []
    if st == SHAPE_MISMATCH:
        return _explain_mismatch(kr)
    if st == MISSING:
        return _explain_missing(kr, rep, aliases, near_of)
    if st == NOT_LOADED:
        return _explain_not_loaded(kr, rep, message)
    parts = []
    if st == DTYPE_CAST:
        f, t = kr.dtype_cast
        parts.append(f"Loads from {src}{renamed}, stored as {f}; copy_ converts it to the model's {t} (the model's "
                     f"dtype does not change; the values carry only {f} precision). Pass assign=True to keep {f}.")
    elif kr.running_stat:
        b, a = kr.before, kr.after
        what = "replaced by the checkpoint's" + (" meta tensor, which holds no data (saved from the meta device)"
                                                 if kr.no_data else "")
        if b and a and "mean" in b and "mean" in a:
            what += f" (mean {b['mean']:.4g} -> {a['mean']:.4g})"
        elif b and a and "value" in b and "value" in a:
            what += f" ({b['value']} -> {a['value']})"
        if kr.changed and key.endswith("num_batches_tracked"):
            parts.append(f"BatchNorm's count of training batches {what}{renamed}; it sets the averaging factor "
                         "when momentum=None and does not affect eval() outputs.")
        elif kr.changed:
            parts.append(f"Normalisation running statistic {what}{renamed}; in eval() mode the layer normalises "
                         "with these values, so outputs change.")
        else:
            parts.append(f"Normalisation running statistic loaded from {src}{renamed}; identical to the model's.")
    elif st == CHANGED:
        if rep.assign and kr.dtype_checkpoint and kr.dtype_checkpoint != kr.dtype_model:
            parts.append(f"assign=True replaces the model's {kr.dtype_model} tensor by the checkpoint's "
                         f"{kr.dtype_checkpoint} tensor: the model's dtype becomes {kr.dtype_checkpoint}.")
        elif rep.assign and kr.no_data:
            parts.append(f"assign=True puts {src}'s tensor itself into the model{renamed}: it holds no data (it was "
                         "saved from the meta device), so after the load this is a meta tensor with no values — any "
                         "forward pass fails until it is materialized.")
        elif rep.assign:
            parts.append(f"assign=True puts {src}'s tensor itself into the model{renamed}.")
        else:
            parts.append(f"Loads from {src}{renamed}; the model's current value is replaced.")
    else:
        parts.append(f"Loads from {src}{renamed}; identical to the model's current value.")
    if not kr.certain:
        parts.append("(Whether the value differs could not be computed; assumed changed.)")
    if aliases:
        parts.append(f"Shared (tied) with '{', '.join(aliases)}': whichever key torch loads last sets both.")
    return " ".join(parts)


def _explain_mismatch(kr: KeyReport) -> str:
    ck = kr.shape_checkpoint
    m = kr.shape_model
    hint = ""
    if ck is not None and m is not None and len(ck) == len(m) == 2 and tuple(reversed(ck)) == tuple(m):
        hint = " The shapes are transposed: the checkpoint may come from a layer that stores the weight the " \
               "other way round (e.g. Conv1D vs Linear); transpose it before loading."
    elif ck is not None and m is not None and len(ck) == len(m) and ck[1:] == m[1:]:
        hint = (f" Only the first dimension differs ({ck[0]} vs {m[0]}): a different number of outputs (classes, "
                "vocabulary, channels). Build the model with the checkpoint's size, or drop this key from the "
                "checkpoint and retrain that layer.")
    return (f"The checkpoint has shape {fmt_shape(ck)}, the model {fmt_shape(m)}: torch refuses to copy it and "
            f"raises, even with strict=False; the model keeps its current value.{hint}")


def _explain_missing(kr: KeyReport, rep: LoadReport, aliases: list, near_of) -> str:
    key = kr.key
    near = near_of(key)
    text = "Not in the checkpoint: the model keeps its current (initial) value."
    if kr.changed and aliases:
        text = (f"Not in the checkpoint, but this tensor is shared (tied) with '{', '.join(aliases)}', which is "
                f"loaded, so its value changes anyway; torch still lists it as missing.")
    if key.endswith("num_batches_tracked"):
        text += (" The checkpoint's _metadata gives this BatchNorm version 2 or later, so torch requires "
                 "num_batches_tracked; a checkpoint without _metadata (e.g. .safetensors) or of version 1 would "
                 "have it filled in silently.")
    if near:
        text += f" The checkpoint has '{near}' instead: see the remap suggestions."
    if rep.strict:
        text += " With strict=True this alone makes load_state_dict raise."
    return text


def _explain_not_loaded(kr: KeyReport, rep: LoadReport, message: str) -> str:
    key = kr.key
    if kr.no_data:
        return ("The checkpoint holds no data for this key: it was saved from the meta device (a shape and a "
                "dtype, no values). torch cannot copy out of a meta tensor, so the model keeps its current value "
                "and the load raises. assign=True would put the meta tensor itself into the model (no values "
                "either): re-save the checkpoint from a model whose weights are materialized.")
    if f'While copying the parameter named "{key}"' in message or f'While swapping the parameter named "{key}"' \
            in message:
        return ("The checkpoint's value for this key cannot be copied (see the error message: not a tensor, or a "
                "copy error); the model keeps its current value and the load raises.")
    if message.startswith(NOT_A_MAPPING):
        return "Not loaded: load_state_dict raises before loading anything (it was not given a mapping)."
    if rep.aborted:
        return ("Would load, but the load stopped part way with an exception before reaching this module; the "
                "model keeps its current value.")
    return ("Not loaded and not reported missing by torch (a hook or a custom _load_from_state_dict skipped it); "
            "the model keeps its current value.")


def explain_unexpected(key: str, model: nn.Module, message: str) -> str:
    parts = key.split(".")
    mod, path, stop = _module_at(model, parts[:-1])
    if stop is not None:
        return stop
    leaf = parts[-1]
    where = module_desc(model, ".".join(path))
    if leaf in RUNNING_STAT_NAMES and getattr(mod, "track_running_stats", True) is False:
        return (f"Rejected by {where}: it has track_running_stats=False, so it keeps no running statistics; the "
                "checkpoint's statistics are not used (the checkpoint's layer tracked them: the model normalises "
                "with batch statistics instead, also in eval()).")
    if leaf in mod._parameters and mod._parameters[leaf] is None:
        return f"Rejected by {where}: its parameter '{leaf}' is registered as None, so torch refuses any value for it."
    if leaf in mod._buffers and mod._buffers[leaf] is None:
        return f"Rejected by {where}: its buffer '{leaf}' is registered as None, so torch refuses any value for it."
    if leaf in getattr(mod, "_non_persistent_buffers_set", ()):
        return (f"Rejected by {where}: '{leaf}' is a non-persistent buffer (register_buffer(..., persistent=False)); "
                "it is never loaded from a state dict.")
    if leaf == EXTRA_STATE_SUFFIX:
        return f"Rejected by {where}: it does not implement set_extra_state, so it takes no extra state."
    return f"Rejected by {where}: it has no parameter or buffer '{leaf}'."


def explain_load(rep: LoadReport, loaded: int) -> str:
    n_changed = len([k for k in rep.changed_keys if rep.keys[k].status not in (MISSING, UNEXPECTED)])
    made = [r for _, r in made_items(rep.keys)]   # the reports not made yet are all unexpected keys
    casts = sum(1 for r in made if r.status == DTYPE_CAST)
    stats = sum(1 for r in made if r.status == RUNNING_STAT)
    total = sum(1 for r in made if r.status != UNEXPECTED)
    pieces = []
    values = ("values not compared: the model side is not materialized" if rep.model_not_materialized else
              f"{n_changed} change value")
    head = (f"{loaded} of {total} model keys load from the checkpoint ({values}"
            + (f", {casts} with a dtype conversion" if casts else "")
            + (f", {stats} BatchNorm/norm running statistics replaced" if stats else "") + ").")
    if rep.raises and rep.error_type == "TypeError" and (rep.error_message or "").startswith(NOT_A_MAPPING):
        pieces.append("load_state_dict raises TypeError before loading anything: the object passed is not a mapping "
                      "(a whole pickled model is not its state dict: pass model.state_dict(), which is what the "
                      "default entry of such a file simulates). The model is unchanged.")
    elif rep.raises and (rep.error_message or "").startswith("Can't access the shape of an uninitialized parameter"):
        pieces.append("load_state_dict raises RuntimeError: the checkpoint holds uninitialized parameters of a lazy "
                      "module (saved before its first forward pass: no shape, no values), and torch cannot load one "
                      "into an initialized parameter. " + head.replace("load from", "are already loaded from")
                      + " Re-save the checkpoint after a forward pass of the lazy model.")
    elif not rep.raises:
        pieces.append("The load succeeds. " + head)
        if rep.missing_keys:
            pieces.append(f"{len(rep.missing_keys)} missing key(s) keep their current (initial) values — the model is "
                          "only partly loaded, silently (strict=False).")
        if rep.unexpected_keys:
            pieces.append(f"{len(rep.unexpected_keys)} unexpected checkpoint key(s) are ignored.")
    elif rep.aborted:
        pieces.append(f"load_state_dict raises {rep.error_type} part way through (raised by code that runs during the "
                      f"load, e.g. a hook). " + head.replace("load from", "are already loaded from")
                      + " The model is left half-loaded: those copies are not undone.")
    else:
        reasons = []
        no_data = sum(1 for r in made if r.no_data)
        if no_data:
            reasons.append(f"{no_data} key(s) whose checkpoint tensor holds no data (saved from the meta device: "
                           "torch cannot copy out of a meta tensor)")
        if rep.mismatched_keys:
            reasons.append(f"{len(rep.mismatched_keys)} size mismatch(es) (these raise even with strict=False)")
        if rep.strict and rep.missing_keys:
            reasons.append(f"{len(rep.missing_keys)} missing key(s)")
        if rep.strict and rep.unexpected_keys:
            reasons.append(f"{len(rep.unexpected_keys)} unexpected key(s)")
        why = ", ".join(reasons) if reasons else "the errors in the message"
        pieces.append(f"load_state_dict raises {rep.error_type} because of {why}. It raises only after copying: "
                      + head.replace("load from", "are already loaded from")
                      + (" The model is left half-loaded, not unchanged." if n_changed else
                         " No value changes, so the model is effectively unchanged."))
        if rep.strict and not rep.mismatched_keys and not no_data:
            pieces.append("With strict=False the same call would return the missing and unexpected keys instead of "
                          "raising.")
    return " ".join(pieces)
