"""The command line: ``python main.py inspect|simulate|diff|stats|demo ... [--json]``; no arguments opens the window.

Each subcommand lives in ``explorer/commands/<name>.py`` with ``add_arguments(parser)`` and ``run(args) -> int``.
Exit codes: 0 success, 1 a negative answer (e.g. the load would raise), 2 bad input -- one line, never a traceback.
"""
from __future__ import annotations

import argparse
import gc
import importlib
import sys

from .errors import ExplorerError

COMMANDS = {
    "inspect": "explorer.commands.inspect",
    "simulate": "explorer.commands.simulate",
    "stats": "explorer.commands.stats",
    "diff": "explorer.commands.diff",
    "demo": "explorer.commands.demo",
}


def _available():
    for name, module in COMMANDS.items():
        try:
            yield name, importlib.import_module(module)
        except ModuleNotFoundError as e:
            if e.name != module:  # the command exists but something it needs does not: that is a real error
                raise


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python main.py", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module in _available():
        doc = (module.__doc__ or "").strip().splitlines()
        p = sub.add_parser(name, help=doc[0] if doc else name, description=module.__doc__)
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in COMMANDS and argv[0] not in ("-h", "--help"):
        from .app_entry import run_app  # the window; imports Qt only here
        return run_app(argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    # A command is one short run that builds many small objects (10**6 entries for a big file) and few cycles: the
    # cyclic GC would re-scan everything torch and the file's structure allocated, again and again (PERFORMANCE.md).
    gc.disable()
    try:
        return int(args._run(args) or 0)
    except ExplorerError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
    except Exception as e:  # a bug of ours: still one line, and how to report it
        print(f"error: internal error {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''} "
              "(please report this with the file's format)", file=sys.stderr)
        return 2
    finally:
        gc.enable()
