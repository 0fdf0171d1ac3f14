"""Start the window (kept apart from cli.py so the command line never imports Qt)."""
from __future__ import annotations


def run_app(argv: list[str]) -> int:
    try:
        from .qt.app import main as qt_main
    except ImportError as e:
        import sys
        print(f"error: the window needs PySide6 and pyqtgraph ({e}); install with: pip install -e .", file=sys.stderr)
        return 2
    return qt_main(argv)
