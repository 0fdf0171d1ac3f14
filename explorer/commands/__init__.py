"""One module per command: ``add_arguments(parser)`` and ``run(args) -> int`` (see ``explorer.cli``)."""
from __future__ import annotations

import json
import sys


def print_json(obj) -> None:
    """The ``--json`` answer: one object on one line (``json.dumps`` uses the C encoder, ``json.dump(fp)`` does not,
    which matters for 10**6 entries)."""
    sys.stdout.write(json.dumps(obj))
    sys.stdout.write("\n")
