"""The explorer's core: reading checkpoints, model sides, trees (and later simulation, diff, statistics).

Never imports Qt: everything here runs and is tested without a display.
"""
from .checkpoint import Checkpoint
from .loaders import open_checkpoint
from .model_source import ModelSide, resolve_spec
from .records import TensorInfo, StateDictRef, Location
from .sides import open_side
from .tree import Tree, Node, build_tree

__all__ = ["Checkpoint", "open_checkpoint", "ModelSide", "resolve_spec", "TensorInfo", "StateDictRef", "Location",
           "open_side", "Tree", "Node", "build_tree"]
