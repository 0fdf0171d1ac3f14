"""State-Dict Explorer: ``python main.py`` opens the window; ``python main.py inspect|simulate|diff|stats ...`` answers
on the command line."""
from explorer.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
