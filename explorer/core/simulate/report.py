"""The answer of a simulated load: :class:`LoadReport`, one :class:`KeyReport` per key in a :class:`KeyTable`
(whose unexpected keys' reports are made when asked for), and its JSON."""
from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from itertools import chain
from typing import TYPE_CHECKING, Any

from ..gc_pause import gc_paused
from ..load.passes import all_str
from ..records import MISSING, UNEXPECTED

if TYPE_CHECKING:
    from .explain import UnexpectedContext


@dataclass
class KeyReport:
    key: str
    kind: str                                   # "parameter" | "buffer" | "extra_state"
    status: str                                 # one of the status constants of records.py
    changed: bool = False                       # value, dtype or shape after the load differs from before
    dtype_cast: list[str] | None = None         # [from, to] when copy_ converts
    dtype_assigned: list[str] | None = None     # [model's, checkpoint's] when the load puts a tensor of another
                                                # dtype in the model (assign=True, or a module's own load code)
    running_stat: bool = False                  # a norm running statistic the checkpoint overwrites
    shape_model: tuple[int, ...] | None = None
    shape_checkpoint: tuple[int, ...] | None = None
    dtype_model: str | None = None
    dtype_checkpoint: str | None = None
    source_key: str | None = None               # the checkpoint key the value comes from (after hooks' renames)
    explanation: str = ""
    certain: bool = True                        # False when ``changed`` could not be computed (assumed True)
    before: dict | None = None                  # running statistics: summary before and after
    after: dict | None = None
    no_data: bool = False                       # the checkpoint's tensor has no data (saved from the meta device)

    def to_json(self) -> dict:
        out = {"key": self.key, "kind": self.kind, "status": self.status, "changed": bool(self.changed),
               "dtype_cast": list(self.dtype_cast) if self.dtype_cast else None,
               "running_stat": bool(self.running_stat)}
        if not self.certain:      # "changed" assumed: the values could not be compared (a model not materialized)
            out["values_compared"] = False
        if self.dtype_assigned:   # no cast: the model's tensor takes the checkpoint's dtype
            out["dtype_assigned"] = list(self.dtype_assigned)
        return out


class KeyTable(Mapping):
    """``LoadReport.keys``: key -> :class:`KeyReport`, in report order. The reports of unexpected checkpoint keys are
    made the first time they are asked for (10**6 unexpected keys would otherwise cost seconds and a gigabyte for
    objects that a text or JSON answer writes in bulk); they are the same objects either way.

    Kept as three parts in order: ``_head`` (reports made at once), ``_block`` (the unexpected keys, reports made
    when asked for, in ``_made``) and ``_tail`` (reports added afterwards)."""

    def __init__(self, items=()):
        self._head: dict = dict(items)
        self._block: list = []
        self._index: dict | None = None   # key -> None, for the block (built when first needed)
        self._made: dict = {}
        self._tail: dict = {}
        self._context: "UnexpectedContext | None" = None

    def _in_block(self, key) -> bool:
        if not self._block:
            return False
        if self._index is None:
            self._index = dict.fromkeys(self._block)
        return key in self._index

    def __getitem__(self, key) -> KeyReport:
        r = self._head.get(key)
        if r is not None or key in self._head:
            return r
        r = self._made.get(key)
        if r is not None:
            return r
        if self._in_block(key):
            r = self._made[key] = self._context.report(key)
            return r
        return self._tail[key]

    def __setitem__(self, key, value: KeyReport) -> None:
        if key in self._head:
            self._head[key] = value
        elif self._in_block(key):
            self._made[key] = value
        elif self._block or self._tail:
            self._tail[key] = value
        else:
            self._head[key] = value

    def __delitem__(self, key) -> None:
        if key in self._head:
            del self._head[key]
        elif self._in_block(key):
            self._block.remove(key)
            del self._index[key]   # type: ignore[index]
            self._made.pop(key, None)
        else:
            del self._tail[key]

    def __contains__(self, key) -> bool:
        try:
            return key in self._head or key in self._tail or self._in_block(key)
        except TypeError:
            return False

    def __iter__(self):
        return chain(self._head, self._block, self._tail)

    def __len__(self) -> int:
        return len(self._head) + len(self._block) + len(self._tail)

    def __repr__(self) -> str:
        return f"<KeyTable of {len(self)} keys>"

    def add_unexpected(self, keys: list, ctx: "UnexpectedContext") -> None:
        """``keys``: unique, none of them in the table yet."""
        self._context = ctx
        self._block = keys
        self._index = None

    @property
    def context(self) -> "UnexpectedContext | None":
        """What the reports of the unexpected keys are made from (their kinds and explanations, in bulk)."""
        return self._context

    def made_items(self):
        """(key, report) of every report made so far: all but unexpected keys not asked for yet (whose report would
        be ``status=UNEXPECTED``, ``changed=False``, no source, no dtype cast)."""
        return chain(self._head.items(), self._made.items(), self._tail.items())

    def runs(self):
        """The table in order as runs: ``(True, [key, ...])`` for unexpected keys whose report is not made,
        ``(False, [(key, report), ...])`` for the others."""
        if self._head:
            yield False, list(self._head.items())
        if self._block:
            made = self._made
            if not made:
                yield True, self._block
            else:
                run: list = []
                lazy = True
                for k in self._block:
                    r = made.get(k)
                    if run and (r is None) != lazy:
                        yield lazy, run
                        run = []
                    lazy = r is None
                    run.append(k if lazy else (k, r))
                if run:
                    yield lazy, run
        if self._tail:
            yield False, list(self._tail.items())


def made_items(keys):
    return keys.made_items() if isinstance(keys, KeyTable) else keys.items()


@dataclass
class LoadReport:
    model: str = ""
    checkpoint: str = ""
    entry: list[str] = field(default_factory=list)
    strict: bool = True
    assign: bool = False
    raises: bool = False
    error_type: str | None = None
    error_message: str | None = None
    missing_keys: list[str] = field(default_factory=list)
    unexpected_keys: list[str] = field(default_factory=list)
    keys: "KeyTable" = field(default_factory=KeyTable)                # key -> KeyReport, in order
    changed_keys: list[str] = field(default_factory=list)
    changed_buffers: list[str] = field(default_factory=list)
    running_stats: dict[str, dict] = field(default_factory=dict)   # key -> {"before": {...}, "after": {...}}
    suggestions: list = field(default_factory=list)                # remap.Suggestion
    explanation: str = ""                                          # the whole load, in a few sentences
    notes: list[str] = field(default_factory=list)                 # other things worth knowing
    aborted: bool = False              # an exception stopped the load part way (hook, set_extra_state, ...)
    values_compared: bool = False
    ignored_keys: list[str] = field(default_factory=list)          # checkpoint keys torch drops without a word
    mismatched_keys: list[str] = field(default_factory=list)       # size mismatches (torch raises on them)
    model_not_materialized: str = ""   # why the model side has no values (on the meta device); "" when it has

    @property
    def loaded_keys(self) -> list[str]:
        return [k for k, r in made_items(self.keys) if r.source_key is not None
                and r.status not in (MISSING, UNEXPECTED)]

    def _fields(self, keys) -> list[tuple[str, Any]]:
        """The fields of the JSON object, in order, with ``keys`` as the value of "keys"."""
        return [("model", self.model), ("checkpoint", self.checkpoint), ("entry", list(self.entry)),
                ("strict", bool(self.strict)), ("assign", bool(self.assign)), ("raises", bool(self.raises)),
                ("error_type", self.error_type), ("error_message", self.error_message),
                ("missing_keys", list(self.missing_keys)), ("unexpected_keys", list(self.unexpected_keys)),
                ("keys", keys), ("changed_keys", list(self.changed_keys)),
                ("changed_buffers", list(self.changed_buffers)),
                ("suggestions", [s.to_json() for s in self.suggestions]),
                ("warnings", list(self.notes))] + (   # what the text prints as "note: ..."
                [("model_not_materialized", self.model_not_materialized)] if self.model_not_materialized else [])

    def to_json(self) -> dict:
        keys = self.keys
        dicts: list[dict] = []
        for lazy, run in key_runs(keys):
            if lazy:
                dicts += map(_unexpected_dict, run, keys.context.kinds(run))
            else:
                dicts += [r.to_json() for _, r in run]
        return dict(self._fields(dicts))

    def dumps(self) -> str:
        """``json.dumps(self.to_json())``, byte for byte (as ``json.dumps`` writes an object: ``{"name": value, ...}``
        with ", " and ": "), without a dict per key: the unexpected keys whose report is not made yet are written
        from one template (see :func:`_unexpected_json`)."""
        with gc_paused():   # millions of short-lived strings: with 10**6 tensors alive, a full GC pass costs more
            return "{" + ", ".join(_JSON_STR(name) + ": " + (self._keys_text() if name == "keys" else json.dumps(value))
                                   for name, value in self._fields(None)) + "}"

    def _keys_text(self) -> str:
        keys = self.keys
        parts = [_unexpected_json(run, keys.context.kinds(run)) if lazy else
                 json.dumps([r.to_json() for _, r in run])[1:-1] for lazy, run in key_runs(keys)]
        return "[" + ", ".join(p for p in parts if p) + "]"


def key_runs(keys: Mapping):
    """``keys.runs()`` of a :class:`KeyTable`; a plain mapping of reports as one run of made reports."""
    if isinstance(keys, KeyTable):
        return keys.runs()
    return [(False, list(keys.items()))] if keys else []


_JSON_STR = json.encoder.encode_basestring_ascii  # what json.dumps uses for str with its defaults (C when available)
# the JSON of an unexpected key's report not made yet: KeyReport.to_json itself, with the key and kind put in
_UNEXPECTED_JSON = KeyReport(key="", kind="", status=UNEXPECTED).to_json()


def _unexpected_dict(key, kind: str) -> dict:
    return dict(_UNEXPECTED_JSON, key=key, kind=kind)


def _unexpected_json(keys: list, kinds: list) -> str:
    """The JSON of the reports of these unexpected keys, joined by ", " (as ``json.dumps`` writes a list's items)."""
    if keys and all_str(keys) and set(kinds) == {"parameter"}:   # one text around each key
        marker = "\x00key\x00"
        pre, post = json.dumps(_unexpected_dict(marker, "parameter")).split(_JSON_STR(marker))
        return pre + (post + ", " + pre).join(map(_JSON_STR, keys)) + post
    return ", ".join(map(json.dumps, map(_unexpected_dict, keys, kinds)))
