"""Every error the explorer raises on purpose.

Each subclasses a built-in so callers can catch it naturally, and each message names the file, what is wrong and
what to try. The command line prints ``str(err)`` on one line and exits 2; the window shows it inline.
"""
from __future__ import annotations


class ExplorerError(Exception):
    """Base of the errors we expect and can explain."""


class UnsupportedFormatError(ExplorerError, ValueError):
    """No reader recognises the input."""


class CorruptFileError(ExplorerError, ValueError):
    """The input claims a known format but its content is broken."""


class InputNotFoundError(ExplorerError, FileNotFoundError):
    """The path does not exist."""


class UnsafePathError(ExplorerError, ValueError):
    """An index names a file outside its own folder."""


class ModelSpecError(ExplorerError, ValueError):
    """A ``MODULE:CALLABLE`` model spec could not be resolved into an ``nn.Module``."""


class KeyNotFoundError(ExplorerError, KeyError):
    """A key or entry path is not in the side."""

    def __str__(self) -> str:  # KeyError quotes its message; we want the plain sentence
        return str(self.args[0]) if self.args else ""


class Cancelled(ExplorerError):
    """Long work was cancelled through ``should_stop``."""
