"""Model specs as text, read without importing torch: ``MODULE:CALLABLE``, ``file.py:CALLABLE``, ``demo:NAME``,
``file.py:build(hidden=32)`` and ``hf:DIR_OR_CONFIG_JSON[:CLASS]``. Telling a spec from a path happens before any file
is opened (``open_side``), so listing a file never pays for torch; building the model is
:mod:`explorer.core.model_source`'s."""
from __future__ import annotations

import ast
import os
import re

from ..errors import ModelSpecError

HF_PREFIX = "hf:"


def is_hf_spec(text: str) -> bool:
    return text.startswith(HF_PREFIX)


_CALLABLE_PART = re.compile(r"[A-Za-z_]\w*(?:\(.*)?\Z", re.S)   # NAME or NAME(... (checked by parse_spec)
_LITERALS = "numbers, strings, bytes, True/False/None, and tuples, lists, dicts and sets of them"


def quoted(spec: str, limit: int = 120) -> str:
    """A spec quoted for a message, cut when long."""
    return repr(spec) if len(spec) <= limit else repr(spec[:limit]) + f"… ({len(spec):,} characters)"


def split_spec(text: str) -> tuple[str, str] | None:
    """``(MODULE_OR_FILE, CALLABLE_PART)`` at the first ':' after which comes ``NAME`` or ``NAME(...)`` (a path may hold
    ':' before it, an argument after it: ``C:\\m\\f.py:build(d={'a': 1})``); None when there is none."""
    at = text.find(":")
    while at != -1:
        left, right = text[:at], text[at + 1:]
        if left and _CALLABLE_PART.match(right) and not (len(left) == 1 and left.isalpha()):
            return left, right
        at = text.find(":", at + 1)
    return None


def is_model_hf_spec(text: str) -> bool:
    """``hf:DIR_OR_CONFIG_JSON[:CLASS]`` (a model transformers builds) — not ``hf://`` (a file on the Hub)."""
    return is_hf_spec(text) and not text.startswith(HF_PREFIX + "//")


def looks_like_model_spec(text: str) -> bool:
    """``pkg.mod:make`` / ``file.py:make`` / ``demo:Name`` / ``file.py:build(hidden=32)`` / ``hf:DIR`` — not a path
    that exists."""
    if os.path.exists(text) or ":" not in text:
        return False
    return is_model_hf_spec(text) or split_spec(text) is not None


def parse_spec(spec: str) -> tuple[str, str, tuple, dict, bool]:
    """``(module or file, callable name, args, kwargs, called)`` of a spec. The arguments of ``NAME(...)`` must be
    literals: each is read by ``ast.literal_eval`` from its own node of the parsed call; nothing is evaluated, looked
    up or imported for them. ``called``: the spec spells the call (``build()``), else the factory is called with no
    arguments if it is not a module already."""
    split = split_spec(spec)
    if split is None:
        raise ModelSpecError(f"{quoted(spec)}: a model spec is MODULE:CALLABLE, path/to/file.py:CALLABLE or demo:NAME, "
                             "optionally with literal arguments: file.py:build(hidden=32)")
    left, right = split
    if "(" not in right:
        return left, right, (), {}, False
    try:
        tree = ast.parse(right, mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError) as e:
        raise ModelSpecError(f"{quoted(spec)}: the call is not valid Python ({type(e).__name__}: "
                             f"{getattr(e, 'msg', None) or e}); write NAME(arg, key=value) with literal values") from None
    call = tree.body
    if not isinstance(call, ast.Call) or not isinstance(call.func, ast.Name):
        raise ModelSpecError(f"{quoted(spec)}: after ':' comes NAME or NAME(arguments), e.g. build(hidden=32)")

    def literal(node, prefix: str = ""):
        if isinstance(node, ast.Starred):
            raise ModelSpecError(f"{quoted(spec)}: *{ast.unparse(node.value)} is not allowed; write the arguments out")
        try:
            return ast.literal_eval(node)
        except (ValueError, TypeError, SyntaxError, RecursionError, MemoryError):
            text = prefix + (ast.get_source_segment(right, node) or ast.unparse(node))
            raise ModelSpecError(f"{quoted(spec)}: {text[:80]!r} is not a literal; a model spec takes literal "
                                 f"arguments only ({_LITERALS}) — nothing in it is evaluated") from None
    args = tuple(map(literal, call.args))
    kwargs = {}
    for kw in call.keywords:
        if kw.arg is None:
            raise ModelSpecError(f"{quoted(spec)}: **{ast.unparse(kw.value)} is not allowed; write key=value arguments")
        if kw.arg in kwargs:
            raise ModelSpecError(f"{quoted(spec)}: {kw.arg}= is given twice")
        kwargs[kw.arg] = literal(kw.value, f"{kw.arg}=")
    return left, call.func.id, args, kwargs, True
