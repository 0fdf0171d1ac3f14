"""One module per command: ``add_arguments(parser)`` and ``run(args) -> int`` (see ``explorer.cli``)."""
from __future__ import annotations

import json
import sys


def print_json(obj) -> None:
    """The ``--json`` answer: one object on one line (``json.dumps`` uses the C encoder, ``json.dump(fp)`` does not,
    which matters for 10**6 entries)."""
    sys.stdout.write(json.dumps(obj))
    sys.stdout.write("\n")


def human_bytes(n: int | None) -> str:
    """``1536`` -> ``"1.5 KiB"`` (binary units up to TiB); ``None`` -> ``""``."""
    if n is None:
        return ""
    f = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if f < 1024 or unit == "TiB":
            return f"{int(f)} B" if unit == "B" else f"{f:.1f} {unit}"
        f /= 1024
    return str(n)
