"""The explorer's core: reading checkpoints, model sides, trees, load simulation, diff and statistics.

Never imports Qt: everything here runs and is tested without a display. Names are imported lazily, so that
``import explorer.core.tree`` does not pay for ``import torch`` (about a second) before it is needed.
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    "Checkpoint": "checkpoint", "open_checkpoint": "loaders", "ModelSide": "model_source",
    "resolve_spec": "model_source", "TensorInfo": "records", "StateDictRef": "records", "Location": "records",
    "open_side": "side", "Side": "side", "Tree": "tree", "Node": "tree", "build_tree": "tree",
    "simulate_load": "simulate.run", "LoadReport": "simulate.report", "apply_remap": "remap.export",
    "tensor_stats": "stats", "tensor_stats_steps": "stats", "histogram": "stats", "health_scan": "health",
    "TensorStats": "stats_records",
    "diff_sides": "diff", "DiffReport": "diff",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'explorer.core' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value
