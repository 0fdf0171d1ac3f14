"""``simulate_load``: the passes run in order (structural, then values where asked), the report built from the last
one, the notes about what the prediction cannot see, and the remap suggestions."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Callable

import torch.nn as nn


from ...errors import Cancelled
from ..gc_pause import gc_paused
from ..load.index import ModelIndex, is_running_stat, snapshot
from ..load.inputs import CheckpointInput, as_side, model_of, object_of_class, with_copies
from ..load.passes import (Infos, PassResult, compare_from_structural, meta_copy_trouble, meta_trouble,
                           run_pass)
from ..remap.suggest import suggest_remaps
from ..side import CHECKPOINT
from .build import build_report
from .report import LoadReport


def simulate_load(model_side, checkpoint_side, *, entry=None, strict: bool = True, assign: bool = False,
                  compare_values: bool = True, progress: Callable[[int, int], Any] | None = None,
                  should_stop: Callable[[], bool] | None = None, suggest: bool = True) -> LoadReport:
    """What ``model.load_state_dict(<checkpoint at entry>, strict=strict, assign=assign)`` would do.

    ``model_side``: an ``nn.Module`` or a model side; ``checkpoint_side``: a side (checkpoint or model), or a plain
    mapping or module (wrapped into one). ``progress(done, total)`` is called during the value comparison;
    ``should_stop()`` returning True cancels (raises :class:`explorer.errors.Cancelled`). The model and the checkpoint
    are never modified.
    """
    # thousands of small objects (deepcopy, meta tensors): with torch imported, GC passes dominate
    with gc_paused():
        model, model_label = model_of(model_side)
        not_materialized = _not_materialized(model_side)
        if not_materialized:   # a model on the meta device has no values to compare: keys, shapes and the raise only
            compare_values = False
        side = as_side(checkpoint_side)
        ckpt = CheckpointInput(side, entry)
        index = ModelIndex(model)
        before = snapshot(index)
        if should_stop is not None and should_stop():
            raise Cancelled("simulation cancelled")
        # keys no code of the model can read (10**6 unexpected ones) share their meta tensors: torch only matches them
        meta_sd = ckpt.meta(index.read_keys())
        structural = run_pass(model, meta_sd, strict=strict, assign=assign, compare=False, index=index,
                              no_data=ckpt.no_data)
        final, values = _passes(model, ckpt, index, structural, strict=strict, assign=assign,
                                compare_values=compare_values, progress=progress, should_stop=should_stop)
        changed_model = before != snapshot(index)
        report = build_report(model, model_label, ckpt, index.slots, final, meta_sd, strict=strict, assign=assign,
                              compared=values is not None and compare_values, not_materialized=not_materialized)
        _add_notes(report, final, ckpt, side, changed_model=changed_model)
        if suggest and (report.missing_keys or report.unexpected_keys or report.mismatched_keys):
            try:
                # the meta checkpoint of the structural pass (torch copies it; built once: 10**6 tensors take seconds)
                shapes = structural.sd_infos.shapes() if isinstance(structural.sd_infos, Infos) else None
                report.suggestions = suggest_remaps(model, side, entry=entry, report=report, strict=strict,
                                                    assign=assign, index=index, meta_sd=meta_sd, ck_shapes=shapes)
            except Cancelled:
                raise
            except Exception as e:  # suggestions are a help, never a reason to lose the report
                report.notes.append(f"remap suggestions failed: {type(e).__name__}: {e}")
        return report


def _not_materialized(model_side) -> str:
    """"" when the model's values are real, else the side's one line saying they are not (a model built on the meta
    device because it is over the memory budget: its meta tensors stand for real ones) and that values are not
    compared. A model handed as an ``nn.Module`` is what it is: a meta model's values stay meta when loaded into."""
    said = "" if isinstance(model_side, nn.Module) else getattr(model_side, "not_materialized", "")
    return f"{said}; values are not compared" if said else ""


def _passes(model, ckpt: CheckpointInput, index: ModelIndex, structural: PassResult, *, strict, assign,
            compare_values, progress, should_stop) -> tuple[PassResult, PassResult | None]:
    """(the pass the report is made from, the values pass or None) after the structural pass."""
    if compare_values and compare_from_structural(structural, ckpt, index, assign=assign, progress=progress,
                                                  should_stop=should_stop):
        return structural, structural
    if compare_values:
        total = sum(len(v) for v in structural.recorder.copies.values())
        stat_keys = [k for k in index.slots if is_running_stat(k)]
        real_sd = ckpt.real()
        if structural.edited and isinstance(real_sd, Mapping):
            # code of the load changes these checkpoint tensors in place: it gets copies, so the edit reaches what is
            # compared and never the memory map later reads of the file share
            real_sd = with_copies(real_sd, structural.edited)
        values = run_pass(model, real_sd, strict=strict, assign=assign, compare=True, progress=progress,
                          total=total, should_stop=should_stop, want_summary_keys=stat_keys, index=index,
                          record_of=ckpt.record_of)
        if progress is not None and values.recorder.done < total:
            progress(total, total)
        return values, values
    if meta_trouble(structural.exc) or meta_copy_trouble(structural.exc, ckpt):
        # a hook needed the checkpoint's values (meta tensors have none): ask torch again with the real ones
        values = run_pass(model, ckpt.real(), strict=strict, assign=assign, compare=False, index=index,
                          no_data=ckpt.no_data)
        return values, values
    return structural, None


def _add_notes(report: LoadReport, final: PassResult, ckpt: CheckpointInput, side, *, changed_model: bool) -> None:
    """What the prediction cannot see or had to assume, said in the report's notes."""
    notes = report.notes
    if final.edited:
        notes.append(
            f"code that runs during the load (a hook) changes {len(final.edited)} checkpoint tensor(s) in place before "
            "they are copied: " + ", ".join(map(str, final.edited[:8])) + (" ..." if len(final.edited) > 8 else "")
            + "; the values compared are the edited ones, as torch would copy them")
    if changed_model:
        notes.append("WARNING: code of the model (a hook holding a reference to the model itself) modified "
                     "the real model during the simulation; its tensors may have changed")
    for err in final.recorder.internal_errors:
        notes.append(f"internal: {err}")
    if ckpt.whole_module is not None and not ckpt.opaque:
        where = "torch.load(path)" + "".join(f"[{p!r}]" for p in ckpt.entry_path)
        notes.append(
            f"{where} is a whole pickled model ({ckpt.whole_module}), not a state dict: this report simulates "
            f"load_state_dict({where}.state_dict()), the state dict recovered from the file. Passing the object "
            f"itself, load_state_dict({where}), raises TypeError: Expected state_dict to be dict-like, got "
            f"{type(object_of_class(ckpt.whole_module))}. (--entry {'/'.join(ckpt.entry_path) or '/'} simulates "
            "that.)")
    subclassed = _subclass_keys(side, ckpt.entry_path)
    if subclassed:
        keys = ", ".join(f"{k} ({c})" for k, c in subclassed[:4]) + (" ..." if len(subclassed) > 4 else "")
        notes.append(
            f"WARNING: this prediction cannot be exact: {len(subclassed)} checkpoint tensor(s) are instances of a "
            f"tensor subclass the file names: {keys}. torch.load would rebuild them with that class, whose own code "
            "(__torch_function__, module_load) then runs during load_state_dict; the explorer never runs a file's "
            "code, so it simulated them as plain tensors.")
    refused = _weights_only_refuses(side)
    if refused:
        notes.append(
            "torch.load(path) with its default weights_only=True refuses this file before load_state_dict runs: it "
            f"names {', '.join(refused[:4])}{' ...' if len(refused) > 4 else ''}, which the weights-only unpickler "
            "does not allow. This report assumes the file is loaded with torch.load(path, weights_only=False) (only "
            "for a file you trust) or with those globals allowed through torch.serialization.add_safe_globals.")


def _subclass_keys(side, path) -> list[tuple[str, str]]:
    """(key, class) of the tensors at ``path`` of a checkpoint that the file pickled as a tensor subclass."""
    if side.kind != CHECKPOINT:
        return []
    refs = side.references
    if not refs or all(r.startswith(("torch.", "numpy.", "collections.")) for r in refs):
        return []
    try:
        obj = side.get(path)
    except Exception:
        return []
    if not isinstance(obj, Mapping):
        return []
    return [(k, v.subclass) for k, v in obj.items() if isinstance(getattr(v, "subclass", None), str)]


def _weights_only_refuses(side) -> list[str]:
    """The globals a checkpoint file names that ``torch.load(weights_only=True)`` does not allow (its own list and
    the ones added with ``torch.serialization.add_safe_globals``); empty when unknown."""
    refs = side.references if side.kind == CHECKPOINT else []
    if not refs:
        return []
    try:
        from torch import _weights_only_unpickler as wo
        allowed = set(wo._get_allowed_globals()) | set(wo._get_user_allowed_globals())
    except Exception:  # a torch without that table: say nothing rather than guess
        return []
    return [r for r in refs if r not in allowed]
