"""State-Dict Explorer: ``python main.py`` opens the window; ``python main.py inspect|simulate|diff|stats ...`` answers
on the command line."""
import os
import sys

from explorer.cli import COMMANDS, main

if __name__ == "__main__":
    code = main()
    if sys.argv[1:2] and sys.argv[1] in COMMANDS:
        # A command's answer is written: skip freeing what it built object by object (10**6 entries of a big file
        # take seconds to tear down). Nothing of ours waits for exit: outputs are written and renamed already.
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        except (BrokenPipeError, OSError):
            pass
        os._exit(code)
    raise SystemExit(code)
