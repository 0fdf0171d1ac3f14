"""What a checkpoint holds besides tensors -- ``epoch``, ``global_step``, ``hyper_parameters``, an optimizer's
``param_groups`` (``lr``, ``betas``) -- and its optimizer state, for ``inspect``.

The values are the safe unpickler's: plain Python data and inert placeholders, never anything live. They are shown
through :func:`short_text`, which never calls ``repr``/``str``/``hash`` on a container: a pickle can share one
container many times (2**64 paths in 1 KB) or nest it deeply, so every text is made within a character budget.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from .checkpoint import OPTIMIZER_KEYS as _OPTIMIZER_KEYS
from .loaded import MAX_DEPTH, RecoveredModule, children
from .loaded import all_records as _all_records, items_of as _items
from .records import EntryPath
from .safe_pickle.inert import Inert
from .safe_pickle.records import TensorRecord

VALUE_TEXT = 100          # characters of a value's text (then "…")
MAX_VALUES = 10_000       # values collected from one file (a file of 10**6 plain numbers lists the first ones)
JSON_STR = 1_000          # a string longer than this is given as text only in --json


class _Full(Exception):
    pass


def short_text(value: Any, limit: int = VALUE_TEXT) -> str:
    """A Python-like text of ``value`` of at most ``limit`` characters (cut with "…"), made without calling
    ``repr``/``str`` of any container or foreign object; control characters come out escaped (``repr`` of strings)."""
    parts: list[str] = []
    size = 0

    def put(text: str) -> None:
        nonlocal size
        parts.append(text)
        size += len(text)
        if size > limit:
            raise _Full

    def fmt(v: Any, depth: int) -> None:   # each call puts a character at least: depth <= limit
        t = type(v)
        if v is None or t is bool or t is float or t is complex:
            put(repr(v))
        elif t is int:
            put(repr(v) if v.bit_length() <= 256 else f"<int of {v.bit_length():,} bits>")
        elif isinstance(v, TensorRecord):
            shape = list(v.shape[:8]) if isinstance(v.shape, tuple) else "?"
            put(f"tensor {shape} {v.dtype}")
        elif isinstance(v, str):
            if t is not str:   # a torch dtype named in the pickle, kept as its name
                put(f"torch.{str.__str__(v)[:limit]}" if type(v).__name__ == "TorchDtype" else repr(str(v[:limit + 1])))
            else:
                put(repr(v[:limit + 1]))
        elif isinstance(v, (bytes, bytearray)):
            put(repr(bytes(v[:limit + 1])))
        elif isinstance(v, (list, tuple, set, frozenset)):
            if isinstance(v, (set, frozenset)) and not v:
                put(f"{type(v).__name__}()")
                return
            opening, closing = "[]" if isinstance(v, list) else "()" if isinstance(v, tuple) else "{}"
            put(opening)
            for i, item in enumerate(v):
                if i:
                    put(", ")
                fmt(item, depth + 1)
            put("," + closing if type(v) is tuple and len(v) == 1 else closing)
        elif isinstance(v, dict):
            put("{")
            for i, (k, item) in enumerate(_items(v)):
                if i:
                    put(", ")
                fmt(k, depth + 1)
                put(": ")
                fmt(item, depth + 1)
            put("}")
        elif isinstance(v, Inert):
            put(f"<{v.global_name} (not loaded)>")
        elif isinstance(v, type):
            put(f"<class {getattr(v, '_global', None) or v.__qualname__}>")
        else:
            put(f"<{type(v).__name__}>")

    try:
        fmt(value, 0)
    except _Full:
        return "".join(parts)[:limit] + "…"
    return "".join(parts)


def json_value(value: Any):
    """``value`` itself when JSON carries it exactly (a plain scalar, a short string, a short list/tuple of those);
    else ``...`` (Ellipsis: the caller gives the text only)."""
    t = type(value)
    if value is None or t is bool or t is str and len(value) <= JSON_STR:
        return value
    if t is int:
        return value if value.bit_length() <= 64 else ...
    if t is float:
        return value if math.isfinite(value) else ...
    if t in (list, tuple) and len(value) <= 100:
        items = [json_value(v) for v in value if type(v) not in (list, tuple)]
        return items if len(items) == len(value) and ... not in items else ...
    return ...


@dataclass(frozen=True)
class Value:
    """One non-tensor value of a checkpoint: where it is, its type and its text (truncated)."""
    path: EntryPath
    type: str
    text: str
    value: Any = ...    # the value itself when JSON carries it exactly (see json_value), else ...

    def to_json(self) -> dict:
        out = {"path": list(self.path), "type": self.type, "text": self.text}
        if self.value is not ...:
            out["value"] = self.value
        return out


def _type_name(v: Any) -> str:
    if isinstance(v, Inert):
        return v.global_name
    if isinstance(v, str) and type(v).__name__ == "TorchDtype":
        return "torch.dtype"
    return type(v).__name__


_SCALARS = (str, bytes, bytearray, int, float, complex, bool, type(None))


def _is_leaf(v: Any) -> bool:
    """Shown as one value: anything but a mapping or a sequence that holds tensors or other containers."""
    if isinstance(v, (dict, Inert)):
        return False
    if isinstance(v, (list, tuple)):
        return not v or all(issubclass(t, _SCALARS) for t in set(map(type, v)))
    return True


def _children(obj: Any):
    """:func:`~explorer.core.checkpoint.children`, with C iterators where it can (no Python frame per tensor of a
    large mapping or list)."""
    if isinstance(obj, dict) and all(t is str for t in set(map(type, obj))):
        return iter(_items(obj))
    if isinstance(obj, (list, tuple)):
        return zip(map(str, range(len(obj))), obj)
    return children(obj)


def non_tensor_values(side, limit: int = MAX_VALUES) -> tuple[list[Value], bool]:
    """Every value of the file that is not a tensor, in file order, as :class:`Value` (at most ``limit``; the flag
    says some were left out). State dicts (mappings of tensors only) and pickled modules are skipped whole; a
    container shared by several places is listed where it is first seen, as the tensor listing does."""
    if getattr(side, "kind", None) != "checkpoint":
        return [], False
    if getattr(side, "_table", None) is not None and getattr(side, "_root", None) is None:
        return [], False   # a flat table (safetensors) holds tensors only: its root need not be made
    root = side.root
    out: list[Value] = []
    if isinstance(root, TensorRecord):
        return out, False
    if _is_leaf(root):
        return [Value((), _type_name(root), short_text(root), json_value(root))], False
    if isinstance(root, dict) and root and _all_records(dict.values(root)):
        return out, False   # a state dict: nothing else
    seen = {id(root)}
    stack = [((), _children(root))]
    while stack:
        path, it = stack[-1]
        for key, value in it:
            if isinstance(value, TensorRecord):
                continue
            here = path + (key,)
            if _is_leaf(value):
                if len(out) >= limit:
                    return out, True
                out.append(Value(here, _type_name(value), short_text(value), json_value(value)))
                continue
            if id(value) in seen or isinstance(value, RecoveredModule):
                continue
            seen.add(id(value))
            if isinstance(value, dict) and value and _all_records(dict.values(value)):
                continue   # a state dict (or one parameter's optimizer state)
            if isinstance(value, Inert) or (isinstance(value, dict) and not value):
                if len(out) >= limit:
                    return out, True
                out.append(Value(here, _type_name(value), short_text(value), json_value(value)))
            if len(stack) < MAX_DEPTH and not (isinstance(value, dict) and not value):
                stack.append((here, _children(value)))
                break
        else:
            stack.pop()
    return out, False


@dataclass(frozen=True)
class OptimizerState:
    """An optimizer's per-parameter state (``optimizer/state/0``, ``/1``, …): one group, not N state dicts."""
    path: EntryPath          # the mapping of parameter index -> slots (``("optimizer", "state")``)
    parameters: int
    tensors: int
    slots: tuple[str, ...]   # slot names in first-seen order (exp_avg, exp_avg_sq, step…)
    members: tuple[EntryPath, ...]

    def to_json(self) -> dict:
        return {"path": list(self.path), "parameters": self.parameters, "tensors": self.tensors,
                "slots": list(self.slots)}


def optimizer_states(side) -> tuple[list[OptimizerState], list]:
    """(the optimizer state groups, the state dict candidates that are not part of one), both in the side's order.
    A candidate is a parameter's optimizer state when its name is a parameter index and at least half its keys are
    optimizer slot names (what ranks it low among the state dicts)."""
    refs = list(getattr(side, "state_dicts", ()) or ())
    if getattr(side, "kind", None) != "checkpoint":
        return [], refs
    groups: dict[EntryPath, dict] = {}
    others = []
    for ref in refs:
        path = tuple(ref.path)
        keys = None
        if len(path) >= 2 and path[-1].isdigit():
            try:
                mapping = side.get(path)
            except Exception:   # noqa: BLE001 - a listing never fails on this: the ref stays a state dict
                mapping = None
            if isinstance(mapping, dict):
                keys = [str(k) for k in mapping]
        if keys and sum(map(_OPTIMIZER_KEYS.__contains__, keys)) * 2 >= len(keys):
            g = groups.setdefault(path[:-1], {"members": [], "tensors": 0, "slots": {}})
            g["members"].append(path)
            g["tensors"] += ref.tensors
            g["slots"].update(dict.fromkeys(keys))
        else:
            others.append(ref)
    return [OptimizerState(p, len(g["members"]), g["tensors"], tuple(g["slots"]), tuple(g["members"]))
            for p, g in groups.items()], others
