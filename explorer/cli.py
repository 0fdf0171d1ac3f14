"""The command line: ``python main.py inspect|simulate|diff|stats|demo|series ... [--json]``; no arguments opens the window.

Each subcommand lives in ``explorer/commands/<name>.py`` with ``add_arguments(parser)`` and ``run(args) -> int``.
Exit codes: 0 success, 1 a negative answer (e.g. the load would raise), 2 bad input -- one line, never a traceback.
Text output passes through :class:`EscapedText`: a key, a global name or a file name cannot send a control sequence
to the terminal (``--json`` output is escaped by the JSON encoder).
"""
from __future__ import annotations

import argparse
import ast
import difflib
import importlib
import importlib.util
import os
import re
import sys
import tokenize

from .core.gc_pause import gc_paused
from .errors import ExplorerError

COMMANDS = {
    "inspect": "explorer.commands.inspect",
    "simulate": "explorer.commands.simulate",
    "stats": "explorer.commands.stats",
    "diff": "explorer.commands.diff",
    "demo": "explorer.commands.demo",
    "series": "explorer.commands.series",
}

# what text output must not pass raw: C0 controls but TAB and LF, DEL, C1 controls, lone surrogates
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\ud800-\udfff]")
_ASCII_SHOWN = bytes([9, 10, *range(32, 127)])   # ASCII that is written as it is
_NAMED = {"\r": "\\r", "\b": "\\b", "\f": "\\f", "\v": "\\v", "\a": "\\a", "\0": "\\0"}


def _escape_one(m: re.Match) -> str:
    c = m.group()
    named = _NAMED.get(c)
    if named is not None:
        return named
    o = ord(c)
    return "\\x%02x" % o if o < 0x100 else "\\u%04x" % o


def escape_controls(text: str) -> str:
    """``text`` with every control character that a terminal would act on written as an escape (``\\x1b``, ``\\r``,
    ``\\x9b``, ``\\udc80``); TAB and LF are kept. ASCII text without one (nearly all output) is checked at C speed
    and returned as it is."""
    if text.isascii():   # O(1); then one C pass deleting the shown bytes: anything left is a control
        if not text.encode("ascii").translate(None, _ASCII_SHOWN):
            return text
    elif _CONTROL.search(text) is None:
        return text
    return _CONTROL.sub(_escape_one, text)


class EscapedText:
    """A text stream whose every ``write`` goes through :func:`escape_controls` (the output layer of the command line:
    every line a command prints passes here, however it was made)."""

    def __init__(self, raw):
        self._raw = raw

    def write(self, text: str) -> int:
        return self._raw.write(escape_controls(text))

    def writelines(self, lines) -> None:
        for line in lines:
            self.write(line)

    def __getattr__(self, name):   # flush, fileno, isatty, encoding, buffer... of the real stream
        return getattr(self._raw, name)


class _ReaderGone:
    """stdout that outlives its reader: once the pipe is closed (``... | head -1``) the rest of the output is dropped
    instead of raised, so the command runs to its end and exits with its own answer -- a ``simulate`` whose load
    would raise still exits 1, a ``diff`` that found differences 1; not 0 for output cut short."""

    def __init__(self, raw):
        self._raw = raw

    def write(self, text: str) -> int:
        try:
            return self._raw.write(text)
        except BrokenPipeError:
            self._drop()
            return len(text)

    def writelines(self, lines) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        try:
            self._raw.flush()
        except BrokenPipeError:
            self._drop()

    def _drop(self) -> None:
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:   # what is buffered and all that follows goes nowhere, without an error
            os.dup2(devnull, self._raw.fileno())
        finally:
            os.close(devnull)

    def __getattr__(self, name):   # fileno, isatty, encoding, buffer... of the real stream
        return getattr(self._raw, name)


class _Streams:
    """Within ``with``: ``sys.stderr`` (always) and ``sys.stdout`` (text mode) escaped, and both streams' encoders
    told to write what they cannot encode as ``\\u`` escapes rather than raise mid-output."""

    def __init__(self, text_stdout: bool):
        self.text_stdout = text_stdout

    def __enter__(self):
        self.saved = sys.stdout, sys.stderr
        self.errors = []
        for stream in self.saved:
            try:
                self.errors.append((stream, stream.errors))
                stream.reconfigure(errors="backslashreplace")
            except (AttributeError, ValueError, TypeError, OSError):
                pass
        sys.stderr = EscapedText(_ReaderGone(sys.stderr))   # an error said to a closed stderr keeps its exit 2
        sys.stdout = _ReaderGone(sys.stdout)
        if self.text_stdout:
            sys.stdout = EscapedText(sys.stdout)
        return self

    def __exit__(self, *exc):
        sys.stdout, sys.stderr = self.saved
        for stream, errors in self.errors:
            try:
                stream.reconfigure(errors=errors)
            except (AttributeError, ValueError, TypeError, OSError):
                pass
        return False


def _available(imported):
    """(name, module or None, docstring) of every command there is. The commands named in ``imported`` are imported;
    the others are described by their module's docstring, read from its source without importing it: a command
    pays for its own imports only (``inspect`` of a file never imports torch, ``simulate`` does)."""
    for name, module in COMMANDS.items():
        if name in imported:
            try:
                mod = importlib.import_module(module)
            except ModuleNotFoundError as e:
                if e.name != module:  # the command exists but something it needs does not: that is a real error
                    raise
                continue
            yield name, mod, mod.__doc__
            continue
        spec = importlib.util.find_spec(module)
        if spec is None or not spec.origin:
            continue
        yield name, None, _docstring(spec.origin)


def _docstring(path: str) -> str | None:
    """A module's docstring, read from its source: its first token, when that is a string (``__doc__`` without
    importing or parsing the module)."""
    with open(path, encoding="utf-8") as f:
        for token in tokenize.generate_tokens(f.readline):
            if token.type not in (tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE):
                return ast.literal_eval(token.string) if token.type == tokenize.STRING else None
    return None


def build_parser(imported=tuple(COMMANDS)) -> argparse.ArgumentParser:
    """The command line's parser; only the commands in ``imported`` get their options (the one being run: its
    module is imported), the others are listed with their help."""
    from .window_args import build_parser as window_parser  # Qt-free
    window = window_parser().format_help().replace("usage: python main.py", "  python main.py", 1)
    parser = argparse.ArgumentParser(
        prog="python main.py", description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="without a command, the window:\n" + "\n".join("  " + line if line else line
                                                               for line in window.splitlines()))
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module, doc in _available(imported):
        first = " ".join((doc or "").strip().split("\n\n")[0].split())   # the first paragraph, joined
        p = sub.add_parser(name, help=first.split(" -- ")[0].rstrip(".") or name, description=doc)
        if module is not None:
            module.add_arguments(p)
            p.set_defaults(_run=module.run)
            if name != "demo":
                p.add_argument("--download", action="store_true",
                               help="a URL whose server does not support range requests is fetched whole, once "
                                    "(into the cache), instead of refused")
    return parser


_WORD = re.compile(r"[A-Za-z][A-Za-z0-9_-]*\Z")


def unknown_command(first: str) -> str | None:
    """The error for a first argument that is meant as a command but is none (a bare word that names no file or
    folder: paths and URLs have a '/', a '.' or a ':'), else None (the window opens it)."""
    if not _WORD.match(first) or os.path.exists(first):
        return None
    close = difflib.get_close_matches(first.lower(), list(COMMANDS), n=1, cutoff=0.6)
    if close:
        return f"unknown command {first!r} — did you mean {close[0]!r}? (python main.py --help lists the commands)"
    return (f"unknown command {first!r}, and no file or folder of that name; commands: {', '.join(COMMANDS)} "
            "(python main.py --help); give a checkpoint's path to open it in the window")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in COMMANDS and argv[0] not in ("-h", "--help"):
        with _Streams(text_stdout=True):
            problem = unknown_command(argv[0]) if argv else None
            if problem is not None:
                print(f"error: {problem}", file=sys.stderr)
                return 2
            from .app_entry import run_app  # the window; imports Qt only here
            return run_app(argv)
    try:
        parser = build_parser(argv[:1])   # the command's own module only (--help: none)
    except ModuleNotFoundError as e:   # torch, numpy or safetensors not installed: one line, not a traceback
        if (e.name or "explorer").split(".")[0] == "explorer":
            raise
        print(f"error: the command line needs {e.name!r}, which is not installed; see README.md, 'Set up and run' "
              "(pip install torch==2.13.0 && pip install -e .)", file=sys.stderr)
        return 2
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    if getattr(args, "download", False):
        from .core.remote.mirror import allow_whole_files
        allow_whole_files(True, note=lambda text: print(text, file=sys.stderr, flush=True))
        try:
            return _run(args)
        finally:
            allow_whole_files(False)
    return _run(args)


def _run(args) -> int:
    # A command is one short run that builds many small objects (10**6 entries for a big file) and few cycles: the
    # cyclic GC would re-scan everything torch and the file's structure allocated, again and again (PERFORMANCE.md).
    with gc_paused(), _Streams(text_stdout=not getattr(args, "json", False)):
        try:
            return int(args._run(args) or 0)
        except ExplorerError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print("error: interrupted", file=sys.stderr)
            return 130
        except BrokenPipeError:   # written past the guards (not through sys.stdout): the answer was not given
            return 128 + 13      # as a shell reports a command its SIGPIPE ended
        except Exception as e:  # a bug of ours: still one line, and how to report it
            print(f"error: internal error {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''} "
                  "(please report this with the file's format)", file=sys.stderr)
            return 2
