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


class ParseTimeout(ExplorerError):
    """Reading a file did not finish in time; it was stopped."""


class FileChangedError(ExplorerError):
    """A local file changed on disk after it was opened (what was shown of it is no longer what it holds)."""


class ReaderDied(ExplorerError):
    """The process reading a file died (memory exhausted, a crash in a native reader)."""


class DemoActionError(ExplorerError, ValueError):
    """A demo action that cannot run in the session's current state (e.g. acting on a right side that is not there)."""


class UnsupportedDtypeError(ExplorerError, TypeError):
    """Statistics cannot be computed for this dtype (quantized, packed 4-bit, meta tensors...)."""


class RemapError(ExplorerError, ValueError):
    """A remap cannot be applied or exported."""


class SimulationError(ExplorerError, RuntimeError):
    """The simulation itself could not run (e.g. the model cannot be copied)."""


class NoDataError(ExplorerError, ValueError):
    """The tensor was saved from the meta device: the file holds its shape and dtype, no values."""


class RemoteError(ExplorerError):
    """A checkpoint at a URL could not be read. Not an ``OSError`` (except not-found and access-denied, which are
    caught as such): code that turns an ``OSError`` from a local read into "the file is corrupt" must not swallow a
    network answer. Each message names the URL and what to do."""


class MissingExtraError(RemoteError, ImportError):
    """The optional packages for a kind of URL are not installed."""


class RemoteAccessError(RemoteError, PermissionError):
    """401/403: the server wants credentials, or refuses the ones given."""


class RemoteNotFoundError(RemoteError, InputNotFoundError):
    """404: nothing at the URL as given."""


class RangeNotSupportedError(RemoteError):
    """The server answers a range request with the whole file."""


class RemoteUnavailableError(RemoteError, ConnectionError):
    """Timeouts, refused or dropped connections, server errors: still failing after a few retries."""


class RemoteTruncatedError(RemoteError):
    """The server sent fewer bytes than asked (after retries); those bytes are never recorded as present."""


class RemoteChangedError(RemoteError):
    """The file changed on the server (a new ETag) while it was being read."""


class RemoteListingError(RemoteError):
    """A folder URL cannot be listed (plain HTTP has no listing): name the file."""


# ---- quoting what a file holds in a message -------------------------------------------------------------------------
SHORT_TEXT = 120     # characters of a key, name or path from a file that a message quotes
_RENDER_NODES = 40   # items of a nested value rendered before "..."


def shorten(value: object, limit: int = SHORT_TEXT) -> str:
    """``repr(value)`` for a message, bounded and printable: a key, name or path from a file may be 8 KB long, hold
    lone surrogates or control characters, or be a tuple that shares itself 2**64 times (printing it in full never
    ends). Long text is cut in the middle with its length said; nested values render at most a few dozen items;
    the result is plain printable text (``repr`` escapes, surrogates and controls included)."""
    try:
        text = _render(value, [_RENDER_NODES])
    except Exception:  # noqa: BLE001 - a hostile object's own repr may fail: say what it is
        text = f"<{type(value).__name__}>"
    if len(text) > limit:
        keep = max(8, limit - 30)
        text = f"{text[:keep * 2 // 3]}...{text[-(keep // 3):]} ({_length_note(value, text)})"
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _length_note(value: object, text: str) -> str:
    if isinstance(value, (str, bytes)):
        return f"{len(value):,} characters" if isinstance(value, str) else f"{len(value):,} bytes"
    return "cut"


def _render(value: object, budget: list) -> str:
    budget[0] -= 1
    if budget[0] < 0:
        return "..."
    t = type(value)
    if t is str:
        return repr(value if len(value) <= 4 * SHORT_TEXT else value[:2 * SHORT_TEXT] + value[-SHORT_TEXT:])
    if t is bytes:
        return repr(value if len(value) <= 4 * SHORT_TEXT else value[:2 * SHORT_TEXT] + value[-SHORT_TEXT:])
    if t is int:
        return repr(value) if value.bit_length() <= 256 else f"<int of {value.bit_length():,} bits>"
    if t in (float, bool, complex) or value is None:
        return repr(value)
    if isinstance(value, (tuple, list, set, frozenset)):
        open_, close = {tuple: "()", list: "[]"}.get(t, "{}")
        parts = []
        for item in value:
            if budget[0] <= 0:
                parts.append("...")
                break
            parts.append(_render(item, budget))
        if t is tuple and len(parts) == 1 and parts[0] != "...":
            parts[0] += ","
        return open_ + ", ".join(parts) + close
    if isinstance(value, dict):
        parts = []
        for k, v in value.items():
            if budget[0] <= 0:
                parts.append("...")
                break
            parts.append(f"{_render(k, budget)}: {_render(v, budget)}")
        return "{" + ", ".join(parts) + "}"
    if t.__repr__ is object.__repr__:
        return f"<{t.__name__}>"
    text = repr(value)  # our own records and placeholders: short, fixed-form reprs
    return text if len(text) <= 4 * SHORT_TEXT else text[:4 * SHORT_TEXT] + "..."
