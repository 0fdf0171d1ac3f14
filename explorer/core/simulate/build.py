"""A :class:`LoadReport` made from the last pass of a simulated load: what happens to each key of the model, to the
keys code of the load registers, to the unexpected and mismatched keys, and to the rest of the checkpoint."""
from __future__ import annotations

from collections.abc import Mapping
from itertools import chain, compress, repeat

import torch
import torch.nn as nn

from ..load.index import EXTRA_STATE_SUFFIX, Slot, is_running_stat
from ..load.inputs import CheckpointInput
from ..load.passes import FINAL_PREFIX, PassResult, all_str, mismatched_keys
from ..load.recorder import Recorder, same_bits, summarize
from ..load.standins import StandIn, StandInMixin
from ..records import (CHANGED, DTYPE_CAST, MATCHED, MISSING, NOT_LOADED, RUNNING_STAT, RUNNING_STAT_NAMES,
                       SHAPE_MISMATCH, UNEXPECTED, dtype_name)
from .explain import UnexpectedContext, explain_key, explain_load, near_index
from .report import KeyReport, LoadReport, made_items


def build_report(model, model_label, ckpt: CheckpointInput, slots, res: PassResult, meta_sd, *, strict, assign,
                 compared: bool, not_materialized: str = "") -> LoadReport:
    """The report of the pass ``res`` (the last one run): one :class:`KeyReport` per model key, then the keys
    code of the load registered, the unexpected keys (made when asked for), the mismatched ones and the rest.
    ``not_materialized``: the model's meta tensors stand for real ones (built on the meta device over the budget), so
    a copy into one may change its value (unknown), where a copy into a real meta tensor changes nothing."""
    b = _Builder(model, model_label, ckpt, slots, res, strict=strict, assign=assign, compared=compared)
    b.rep.model_not_materialized = not_materialized
    for key, slot in slots.items():
        b.rep.keys[key] = b.model_key(key, slot)
    if res.extra_state_set:
        b.registered_keys()
    b.unexpected_keys(meta_sd)
    b.mismatched_only()
    return b.finish()


class _Builder:
    """The state shared while one report is built."""

    def __init__(self, model, model_label, ckpt: CheckpointInput, slots, res: PassResult, *, strict, assign,
                 compared: bool):
        self.model, self.ckpt, self.slots, self.res, self.compared = model, ckpt, slots, res, compared
        rep = self.rep = LoadReport(model=model_label, checkpoint=ckpt.label, entry=list(ckpt.entry_path),
                                    strict=strict, assign=assign, values_compared=compared)
        exc = res.exc
        message = self.message = str(exc) if exc is not None else ""
        if exc is not None:
            rep.raises = True
            rep.error_type = type(exc).__name__
            rep.error_message = message
            rep.aborted = not (res.finished and isinstance(exc, RuntimeError) and message.startswith(FINAL_PREFIX))
        rep.missing_keys = list(res.missing)
        rep.unexpected_keys = list(res.unexpected)
        self.missing = set(rep.missing_keys)
        self.ck_infos = res.sd_infos
        self.mismatched: set = set()
        if "size mismatch for " in message:
            candidates = list(slots) + list(self.ck_infos)
            self.mismatched = set(mismatched_keys(message, candidates))
            rep.mismatched_keys = list(dict.fromkeys(k for k in candidates if k in self.mismatched))
        self.used_sources: set[str] = set()
        self.loaded = 0
        self._after: dict = {}
        self._near = None
        self.tied: dict[int, list[str]] = {}
        for key, slot in slots.items():
            if isinstance(slot.orig, torch.Tensor):
                self.tied.setdefault(id(slot.orig), []).append(key)

    def near(self, key: str) -> str | None:
        """The unexpected key that most likely meant the missing ``key`` (indexed once, when first asked)."""
        if self._near is None:
            self._near = near_index(self.rep)
        return self._near(key)

    def after_state(self) -> dict:
        """The copy's state dict after the load (only asked for entries computed by a module's own code)."""
        if "sd" not in self._after:
            try:
                self._after["sd"] = self.res.standin.module.state_dict()
            except Exception:
                self._after["sd"] = {}
        return self._after["sd"]

    def sd_key_set(self) -> set:
        if "keys" not in self._after:
            self._after["keys"] = set(self.res.sd_keys)
        return self._after["keys"]

    def model_key(self, key: str, slot: Slot) -> KeyReport:
        kr = KeyReport(key=key, kind=slot.kind, status=MATCHED)
        orig = slot.orig
        if isinstance(orig, torch.Tensor) and torch.nn.parameter.is_lazy(orig):
            return self.lazy_key(kr, slot)
        if isinstance(orig, torch.Tensor):
            kr.shape_model = tuple(orig.shape)
            kr.dtype_model = dtype_name(orig.dtype)
        if key in self.ck_infos:
            kr.shape_checkpoint, kr.dtype_checkpoint = self.ck_infos[key]
        self_filled = computed = False
        if slot.kind == "extra_state":
            loaded_here, changed = self.extra_state(kr, slot)
        elif isinstance(orig, torch.Tensor) and self.res.standin.standin_of.get(id(orig)) is not None:
            loaded_here, changed, self_filled = self.tensor(kr, slot)
        elif slot.module is None:
            loaded_here, changed = computed = self.computed(kr)
        else:
            loaded_here, changed = False, False
        if changed is None:
            kr.certain = False
            changed = True
        kr.changed = bool(changed)
        self.set_status(kr, loaded_here, self_filled)
        if self_filled and kr.status == MATCHED:
            kr.explanation = ("Not in the checkpoint, and the checkpoint's _metadata gives this BatchNorm no version "
                              "(or version 1): BatchNorm fills the key in with the model's own value, so torch does "
                              "not report it missing; the value does not change.")
        else:
            kr.explanation = explain_key(kr, slot, self.rep, self.tied, self.message, self.near)
        if computed and computed[0]:
            kr.explanation = ("Not a parameter or buffer: the module's own _save_to_state_dict computes this entry "
                              "from its tensors, and its own _load_from_state_dict wrote into them"
                              + (" (their values change, so this entry does too)." if kr.changed else
                                 " (with identical values).") + ("" if kr.certain else
                                                                 " Whether the values differ could not be computed."))
        return kr

    def lazy_key(self, kr: KeyReport, slot: Slot) -> KeyReport:
        """A lazy module's uninitialized parameter: torch's lazy hook materializes it from the checkpoint."""
        key = kr.key
        s_now = _standin_slot_value(self.res.standin.by_name, slot)
        done = isinstance(s_now, torch.Tensor) and not torch.nn.parameter.is_lazy(s_now)
        kr.changed = done
        if key in self.ck_infos:
            kr.shape_checkpoint, kr.dtype_checkpoint = self.ck_infos[key]
        kr.status = MISSING if key in self.missing else (CHANGED if done else NOT_LOADED)
        kr.source_key = key if done else None
        if done:
            self.loaded += 1
            self.used_sources.add(key)
        kr.explanation = ("Uninitialized parameter of a lazy module: "
                          + ("the load materializes it with the checkpoint's shape and values." if done else
                             "it stays uninitialized."))
        return kr

    def extra_state(self, kr: KeyReport, slot: Slot) -> tuple[bool, bool | None]:
        """(loaded, changed) of a module's extra state: loaded if torch called its set_extra_state."""
        mod_path = slot.module or ""
        if mod_path not in self.res.extra_state_set:
            return False, False
        kr.source_key = kr.key
        self.used_sources.add(kr.key)
        try:
            root = self.res.standin.module
            now = (root.get_submodule(mod_path) if mod_path else root).get_extra_state()
            eq = _deep_equal(slot.orig, now) if self.compared else None
        except Exception:
            eq = None
        return True, (not eq) if eq is not None else None

    def tensor(self, kr: KeyReport, slot: Slot) -> tuple[bool, bool | None, bool]:
        """(loaded, changed, filled by the module itself) of a parameter or buffer of the model."""
        orig = slot.orig
        standin, rec = self.res.standin, self.res.recorder
        s_orig = standin.standin_of[id(orig)]
        s_now = _standin_slot_value(standin.by_name, slot)
        evs = rec.copies.get(id(s_orig), [])
        # torch.__future__ swap_module_params_on_conversion + assign: the slot keeps its object, whose contents
        # (and class) torch.utils.swap_tensors replaced by the checkpoint's tensor
        swapped_in = s_now is s_orig and not evs and not isinstance(s_now, StandInMixin) and \
            not torch.nn.parameter.is_lazy(orig)
        if s_now is not None and (s_now is not s_orig or swapped_in):
            return self.assigned(kr, orig, s_now) + (False,)
        loaded_here = self_filled = False
        changed: bool | None = False
        if evs:
            loaded_here = True
            changed, self_filled = self.copied(kr, orig, evs)
        if rec.inplace.get(id(s_orig)):
            changed = None if changed is not True else True
            self.rep.notes.append(f"{kr.key}: modified in place ({', '.join(rec.inplace[id(s_orig)])}) by code "
                                  "that runs during the load (a hook); its value after the load cannot be predicted")
        return loaded_here, changed, self_filled

    def assigned(self, kr: KeyReport, orig, s_now) -> tuple[bool, bool | None]:
        """assign=True (or a hook) put a new tensor in the slot."""
        kr.source_key = self.res.recorder.source_key(s_now) or kr.key
        self.used_sources.add(kr.source_key)
        kr.dtype_checkpoint = dtype_name(s_now.dtype)
        kr.shape_checkpoint = tuple(s_now.shape)
        if s_now.dtype != orig.dtype:
            kr.dtype_assigned = [dtype_name(orig.dtype), dtype_name(s_now.dtype)]
        if tuple(s_now.shape) != tuple(orig.shape) or s_now.dtype != orig.dtype:
            return True, True
        if s_now.is_meta and not orig.is_meta and (self.compared or self.ckpt.no_data(kr.source_key)):
            kr.no_data = True   # the checkpoint's meta tensor is installed: the model's values are gone
            return True, True
        if self.compared and not s_now.is_meta and not orig.is_meta:
            if is_running_stat(kr.key):
                kr.before, kr.after = summarize(orig), summarize(s_now)
            return True, not same_bits(orig.detach(), s_now.detach())
        return True, None

    def copied(self, kr: KeyReport, orig, evs: list) -> tuple[bool | None, bool]:
        """(changed, filled by the module itself) of a tensor torch copied into (the last copy wins)."""
        ev = evs[-1]
        kr.source_key = ev.src_key
        self.used_sources.update(e.src_key for e in evs if e.src_key)
        if ev.src_dtype != orig.dtype:
            kr.dtype_cast = [dtype_name(ev.src_dtype), dtype_name(orig.dtype)]
        if ev.src_key is not None and ev.src_key in self.ck_infos:
            kr.shape_checkpoint, kr.dtype_checkpoint = self.ck_infos[ev.src_key]
        else:
            kr.shape_checkpoint, kr.dtype_checkpoint = tuple(ev.src_shape), dtype_name(ev.src_dtype)
        if ev.is_self:
            changed = False
        elif self.compared:
            changed = ev.changed
        elif orig.is_meta and not self.rep.model_not_materialized:
            changed = False
        else:
            changed = None
        if is_running_stat(kr.key) and ev.after is not None:
            kr.before, kr.after = summarize(orig), ev.after
        if ev.is_self:  # BatchNorm without a version filled the key in with the model's own tensor
            kr.source_key = None
        return changed, ev.is_self

    def computed(self, kr: KeyReport) -> tuple[bool, bool | None]:
        """An entry the module's own _save_to_state_dict computes (not a parameter or buffer): it changes when the
        load writes into the module's own tensors, or when its own _load_from_state_dict sets what it is computed
        from (quantized modules pack their weights)."""
        key = kr.key
        written, got = _computed_slot(self.model, self.res.standin, self.res.recorder, key, self.compared)
        if not written and key not in self.missing and key in self.sd_key_set():
            eq = _deep_equal(self.slots[key].orig, self.after_state().get(key, _ABSENT))
            written, got = True, (not eq if eq is not None else None)
        if written:
            kr.source_key = key if key in self.ck_infos else None
            if kr.source_key:
                self.used_sources.add(key)
        return written, got

    def set_status(self, kr: KeyReport, loaded_here: bool, self_filled: bool) -> None:
        key = kr.key
        if key in self.mismatched:
            kr.status = SHAPE_MISMATCH
        elif key in self.missing:
            kr.status = MISSING
        elif self_filled:
            kr.status = MATCHED
        elif loaded_here:
            self.loaded += 1
            # a running statistic is overwritten only when its value changes (0 -> 0 is no news)
            if is_running_stat(key) and kr.kind == "buffer" and kr.changed:
                kr.running_stat = True
            kr.status = RUNNING_STAT if kr.running_stat else DTYPE_CAST if kr.dtype_cast else \
                CHANGED if kr.changed else MATCHED
        else:
            kr.status = NOT_LOADED
            kr.no_data = f'While copying the parameter named "{key}"' in self.message and self.ckpt.no_data(key)

    def registered_keys(self) -> None:
        """Parameters and buffers of modules that code of the load registered (set_extra_state adding a child
        module): torch walks into them in the same load."""
        rep, ck_infos = self.rep, self.ck_infos
        for key, kind in _new_keys(self.res.standin.module, self.slots):
            if key in rep.keys:
                continue
            info = ck_infos.get(key) if key in ck_infos else None
            kr = KeyReport(key=key, kind=kind, status=MISSING if key in self.missing else
                           SHAPE_MISMATCH if key in self.mismatched else CHANGED if info is not None else NOT_LOADED,
                           changed=True, shape_checkpoint=info[0] if info else None,
                           dtype_checkpoint=info[1] if info else None)
            if kr.status == CHANGED:
                kr.source_key = key
                self.used_sources.add(key)
                self.loaded += 1
            kr.explanation = ("Not in the model before the load: code that runs during the load (set_extra_state) "
                              "registers the module that holds it, and torch then "
                              + ("loads it from the checkpoint." if kr.status == CHANGED else
                                 "reports it missing." if kr.status == MISSING else "does not load it."))
            rep.keys[key] = kr

    def unexpected_keys(self, meta_sd) -> None:
        """The unexpected keys: their reports are made when asked for (see KeyTable); text and JSON write them in
        bulk."""
        rep = self.rep
        unex = list(rep.unexpected_keys)
        if not all_str(unex):
            unex = [k for k in unex if isinstance(k, str)]
        table = rep.keys
        if len(table) and not set(table).isdisjoint(unex):
            unex = [k for k in unex if k not in table]
        if len(set(unex)) != len(unex):
            unex = list(dict.fromkeys(unex))
        # kinds: "parameter" but for running-statistic and extra-state names (unless the checkpoint holds a Parameter)
        special = {}
        for key in list(compress(unex, map(str.endswith, unex, repeat(_SPECIAL_ENDINGS)))):
            kind = "extra_state" if key.endswith(EXTRA_STATE_SUFFIX) else \
                "buffer" if is_running_stat(key) else "parameter"
            v = meta_sd.get(key) if isinstance(meta_sd, Mapping) else None
            if isinstance(v, nn.Parameter):
                kind = "parameter"
            if kind != "parameter":
                special[key] = kind
        table.add_unexpected(unex, UnexpectedContext(self.model, self.message, self.ck_infos, special))

    def mismatched_only(self) -> None:
        """Size mismatches of keys that are no model key (a key a hook renamed onto a model tensor, or a
        checkpoint-only name)."""
        rep = self.rep
        for key in rep.mismatched_keys:
            if key not in rep.keys:
                info = self.ck_infos.get(key)
                rep.keys[key] = KeyReport(key=key, kind="parameter", status=SHAPE_MISMATCH,
                                          shape_checkpoint=info[0] if info else None,
                                          explanation=f"size mismatch for {key} (see the error message)")

    def finish(self) -> LoadReport:
        rep, res = self.rep, self.res
        # checkpoint keys neither used, nor reported, nor a model key (set operations: 10**6 keys in a blink)
        rest = set(res.sd_keys)
        rest.difference_update(rep.unexpected_keys)
        rest -= self.used_sources
        rest -= self.mismatched
        rest.difference_update(self.slots)
        if rest:
            rep.ignored_keys = [k for k in res.sd_keys if k in rest]
        made = list(made_items(rep.keys))
        rep.changed_keys = [k for k, r in made if r.changed and r.status != UNEXPECTED]
        rep.changed_buffers = [k for k in rep.changed_keys if rep.keys[k].kind == "buffer"]
        rep.running_stats = {k: {"before": r.before, "after": r.after} for k, r in made
                             if r.running_stat and r.before is not None}
        rep.explanation = explain_load(rep, self.loaded)
        if rep.ignored_keys:
            rep.notes.append(f"{len(rep.ignored_keys)} checkpoint key(s) are dropped without being reported by "
                             f"torch (e.g. under a submodule set to None, or consumed by a hook): "
                             + ", ".join(map(str, rep.ignored_keys[:8]))
                             + (" ..." if len(rep.ignored_keys) > 8 else ""))
        return rep


_SPECIAL_ENDINGS = (EXTRA_STATE_SUFFIX,) + tuple(RUNNING_STAT_NAMES)
_ABSENT = object()


def _new_keys(root: nn.Module, slots) -> list[tuple[str, str]]:
    """(key, kind) of the parameters and buffers the copy has after the load that the model's state dict did not."""
    out = []
    try:
        for name, mod in root.named_modules(remove_duplicate=False):
            prefix = name + "." if name else ""
            for reg, kind in ((mod._parameters, "parameter"), (mod._buffers, "buffer")):
                for n, t in reg.items():
                    key = prefix + n
                    if t is not None and key not in slots and n not in getattr(mod, "_non_persistent_buffers_set", ()):
                        out.append((key, kind))
    except Exception:
        return []
    return out


def _computed_slot(model: nn.Module, standin: "StandIn", rec: "Recorder", key: str, compared: bool):
    """For a state-dict entry computed by a module's ``_save_to_state_dict`` (``key`` names no parameter or buffer):
    ``(written, changed)``: did the load write into that module's own tensors, and with new values (True), the same
    values (False) or unknown ones (None)?"""
    mname = key.rpartition(".")[0]
    try:
        mod = model.get_submodule(mname) if mname else model
    except AttributeError:
        return False, False
    evs = []
    for t in chain(mod._parameters.values(), mod._buffers.values()):
        s = standin.standin_of.get(id(t)) if t is not None else None
        if s is not None:
            evs += rec.copies.get(id(s), [])
    if not evs:
        return False, False
    if all(e.is_self for e in evs):
        return True, False
    if not compared or any(e.changed is None for e in evs if not e.is_self):
        return True, (True if any(e.changed for e in evs) else None)
    return True, any(e.changed for e in evs)


def _standin_slot_value(modules: dict, slot: Slot):
    if slot.module is None or slot.name is None:
        return None
    mod = modules.get(slot.module)
    if mod is None:
        return None
    if slot.name in mod._parameters:
        return mod._parameters[slot.name]
    return mod._buffers.get(slot.name)


def _deep_equal(a, b) -> bool | None:
    """Equality of extra-state values; None when it cannot be decided."""
    try:
        if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
            if not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)):
                return False
            if a.is_meta or b.is_meta:
                return None
            return same_bits(a, b)
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            if list(a.keys()) != list(b.keys()):
                return False
            res = [_deep_equal(a[k], b[k]) for k in a]
            return None if None in res and False not in res else all(r is True for r in res)
        if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
            if type(a) is not type(b) or len(a) != len(b):
                return False
            res = [_deep_equal(x, y) for x, y in zip(a, b)]
            return None if None in res and False not in res else all(r is True for r in res)
        return bool(a == b) and type(a) is type(b)
    except Exception:
        return None


