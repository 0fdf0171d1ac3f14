"""Hostile and broken input (issue 7): a corpus generated at test time, a harness that runs every reader and command
over it in sandboxed subprocesses, a fuzz target, and a no-writes check. See ``tests/hostile/harness.py``."""
