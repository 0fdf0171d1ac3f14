"""Remaps: when a checkpoint's keys do not line up with the model's, find the likely fix, preview it with
the structural simulation ("with this applied: 0 missing, 0 unexpected, 0 mismatched"), export a fixed checkpoint
atomically and give the equivalent Python snippet.

Kinds of fix: strip a prefix (``module.`` from DataParallel/DDP, ``_orig_mod.`` from torch.compile, ``model.`` from
Lightning, any other common prefix), add a prefix, replace one prefix by another (a backbone renamed), pick another
state dict nested in the file (``ema``, ``model``), and rename individual keys (one-edit typos, same suffix and shape,
same shape in the same order).

Modules: ``rules`` (Remap, Suggestion, finding candidates), ``suggest`` (``suggest_remaps``, previews, snippets),
``export`` (``apply_remap``). Below them only ``explorer.core.load``: remap never imports the simulation.
"""
