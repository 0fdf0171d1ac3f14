"""A checkpoint standing in for a model: ``simulate`` of two checkpoints (no model opened on the left).

Plain Python (no Qt), run in a worker. The left checkpoint's state dict becomes a tree of plain ``nn.Module``s whose
tensors are the left checkpoint's (read lazily by the core's reader: memory maps where the format allows), so torch's
own ``load_state_dict`` matching, shape checks and value comparison run on it. What cannot be known from a state dict
is said, never guessed: the module classes (so class-specific loading rules -- BatchNorm's version handling, custom
``_load_from_state_dict``, load hooks -- are not applied) and which tensors were parameters (a ``Parameter`` saved as
such stays one; every other tensor is registered as a buffer, which loads the same way).
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

CAVEAT = ("The left side is a checkpoint, not a model: this simulates loading the right checkpoint into a model "
          "whose state dict is the left one. Its module classes are unknown, so class-specific rules (BatchNorm "
          "versions, a module's own _load_from_state_dict, load hooks) are not applied, and torch's message names "
          "\u2018Module\u2019 where your model's class would be. Open the real model on the left (File \u2192 Open "
          "model\u2026) for an exact prediction.")


@dataclass
class CheckpointModel:
    """What ``explorer.core.simulate.simulate_load`` takes as a model side (``model`` and ``label``)."""

    model: object
    label: str
    skipped: list[str] = field(default_factory=list)   # keys that cannot be a module attribute (listed, not hidden)


def checkpoint_as_model(side, entry, label: str, *, should_stop=None) -> CheckpointModel:
    """The state dict at ``entry`` of checkpoint ``side`` as a plain module tree."""
    import torch
    import torch.nn as nn

    from explorer.errors import Cancelled
    sd = side.load_object(entry, device="cpu")
    if not isinstance(sd, Mapping):
        from explorer.errors import ExplorerError
        raise ExplorerError(f"{label}: the chosen entry is a {type(sd).__name__}, not a state dict; pick a state "
                            "dict in the left pane's list, or open a model on the left")
    root = nn.Module()
    skipped: list[str] = []
    for n, (key, value) in enumerate(sd.items()):
        if n % 4096 == 0 and should_stop is not None and should_stop():
            raise Cancelled("building a model from the left checkpoint: cancelled")
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            skipped.append(str(key))
            continue
        parts = key.split(".")
        try:
            m = root
            for p in parts[:-1]:
                child = m._modules.get(p)
                if child is None:
                    child = nn.Module()
                    m.add_module(p, child)
                m = child
            if isinstance(value, nn.Parameter):
                m.register_parameter(parts[-1], value)
            else:
                m.register_buffer(parts[-1], value)
        except (KeyError, TypeError, AttributeError):
            # "a" and "a.b" both tensors, an empty name part, a name torch refuses as an attribute
            skipped.append(key)
    return CheckpointModel(root, label, skipped)
