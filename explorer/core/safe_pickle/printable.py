"""Keys that print, and a ``_metadata`` torch could use: what is cleaned in a loaded pickle before anyone sees it.

A pickle's (or a JSON header's) string may hold lone surrogates, which no encoder accepts: such keys are spelled out
with ``\\udXXX`` escapes. A state dict's ``_metadata`` may hold anything: only entries of the form
``load_state_dict`` reads are kept.
"""
from __future__ import annotations

import re
from collections import OrderedDict

from ...errors import CorruptFileError, shorten
from ..gc_pause import slices
from .inert import Inert


def printable_key(key: str) -> str:
    """``key`` as it can be written to any UTF-8 output: lone surrogates (which a pickle's or a JSON header's string
    may hold, and no encoder accepts) become their ``\\udXXX`` escapes; every other key is returned as it is."""
    try:
        key.encode("utf-8")
        return key
    except UnicodeEncodeError:
        return key.encode("utf-8", "backslashreplace").decode("utf-8")


def unprintable(keys) -> bool:
    """Does any of these strings hold a lone surrogate? (An encode of ``SLICE`` of them at a time, at C speed: no
    Python frame per key, and no single C call over 10**6 keys holding the interpreter lock.)"""
    keys = keys if isinstance(keys, list) else list(keys)
    try:
        for a, b in slices(len(keys)):
            part = keys[a:b]
            try:
                text = "".join(part)
            except TypeError:  # keys that are not all str (a pickle's dict)
                text = "".join([k for k in part if type(k) is str])
            text.encode("utf-8")
        return False
    except UnicodeEncodeError:
        return True


def printable_keys(mapping: dict, label: str = "") -> dict:
    """``mapping`` with its str keys made printable (:func:`printable_key`), in place and in order; unchanged (and
    nothing copied) when every key prints. Two keys that become one are an error of the file."""
    if not unprintable(_dict_keys(mapping)):
        return mapping
    items = list(mapping.items())
    mapping.clear()
    for k, v in items:
        new = printable_key(k) if type(k) is str else k
        if new in mapping:
            raise CorruptFileError(f"{label}: keys {shorten(k)} and {shorten(new)} are the same once the first's "
                                   "lone surrogates are spelled out; the file is corrupt — re-save it")
        mapping[new] = v
    return mapping


def _dict_keys(mapping):
    return dict.keys(mapping) if isinstance(mapping, dict) else mapping.keys()


_SURROGATE_UTF8 = re.compile(rb"\xed[\xa0-\xbf]")


def holds_surrogates(buf, start: int, end: int) -> bool:
    """Does this pickle spell a lone surrogate (UTF-8 ``ED A0..BF ..``, as its BINUNICODE strings carry them)?"""
    return _SURROGATE_UTF8.search(buf, start, end) is not None


def _walk_containers(root, visit, limit: int = 1_000_000, depth: int = 64) -> None:
    """Call ``visit(obj)`` on every dict, list, tuple and placeholder state reachable from ``root`` (each once, at
    most ``limit``, at most ``depth`` levels deep); tensor records and other leaves are skipped at C speed."""
    seen: set = set()
    stack = [(root, 0)]
    while stack and len(seen) < limit:
        obj, d = stack.pop()
        if id(obj) in seen or d > depth:
            continue
        seen.add(id(obj))
        visit(obj)
        if isinstance(obj, dict):
            values = dict.values(obj) if type(obj) in (dict, OrderedDict) else obj.values()
        elif isinstance(obj, (list, tuple)):
            values = obj
        elif isinstance(obj, Inert):
            values = (obj._state, obj._dict_items, obj._items, obj._args)
        else:
            continue
        if any(issubclass(t, (dict, list, tuple, Inert)) for t in set(map(type, values))):
            stack.extend((v, d + 1) for v in values if isinstance(v, (dict, list, tuple, Inert)))


def make_keys_printable(root, label: str = "") -> None:
    """Every dict key of a loaded pickle that holds a lone surrogate, spelled out (see :func:`printable_key`)."""
    def visit(obj):
        if isinstance(obj, dict):
            printable_keys(obj, label)
    _walk_containers(root, visit)


_SIMPLE = (int, str, float, bool, type(None))


def clean_metadata(root) -> None:
    """A state dict's ``_metadata`` (module name -> {"version": 2, ...}) is what ``load_state_dict`` reads; a file may
    put anything there (a placeholder, dicts nested 10**5 deep). Keep only entries of that form (str -> a dict of
    plain values); drop an attribute that is not a mapping at all. Nothing else changes."""
    def visit(obj):
        meta = obj.__dict__.get("_metadata") if type(obj) is OrderedDict and obj.__dict__ else None
        if meta is None:
            return
        if not isinstance(meta, dict):
            del obj.__dict__["_metadata"]
            return
        good = all(type(k) is str and type(v) is dict and all(type(x) is str and type(y) in _SIMPLE
                                                              for x, y in v.items()) for k, v in meta.items())
        if not good:
            clean = OrderedDict()
            for k, v in meta.items():
                if type(k) is str and type(v) is dict:
                    clean[k] = {x: y for x, y in v.items() if type(x) is str and type(y) in _SIMPLE}
            obj.__dict__["_metadata"] = clean
    _walk_containers(root, visit, limit=100_000, depth=16)
