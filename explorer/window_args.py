"""The window's command-line options, Qt-free: ``explorer.qt.app`` parses with this parser and ``python main.py --help``
shows it beside the commands (the command line never imports Qt)."""
from __future__ import annotations

import argparse


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python main.py", description="State-Dict Explorer: the window. "
                                "(Command-line tools: python main.py inspect|simulate|diff|stats --help)")
    p.add_argument("left", nargs="?", help="checkpoint file, folder or URL (http(s)://, hf://ORG/REPO[@REV]/PATH, "
                   "s3://, gs://), or model spec, for the left pane")
    p.add_argument("right", nargs="?", help="checkpoint file, folder or URL for the right pane")
    p.add_argument("--model", metavar="SPEC", help="model for the left pane: MODULE:CALLABLE, file.py:CALLABLE or "
                   "demo:NAME (the positional paths then fill the right pane)")
    p.add_argument("--simulate", action="store_true", help="simulate load_state_dict(right) into the left model")
    p.add_argument("--series", metavar="DIR", nargs="+", help="a training run: a folder of checkpoints (or several "
                   "checkpoint files/folders of one run) shown as a series: findings, heat map, trajectories")
    p.add_argument("--select", metavar="KEY", help="select this key once loaded (detail pane)")
    p.add_argument("--filter", metavar="TEXT", help="start with this key filter")
    p.add_argument("--screenshot", metavar="OUT.png", help="render the window to a PNG once everything has loaded, "
                   "then exit (works offscreen)")
    p.add_argument("--size", default="1400x860", help="window size for --screenshot (default 1400x860)")
    p.add_argument("--settings", metavar="FILE.ini", help=argparse.SUPPRESS)
    return p
