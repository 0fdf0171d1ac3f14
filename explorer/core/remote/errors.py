"""Errors of reading a checkpoint over the network: each one line naming the URL and what to do.

Not ``OSError`` subclasses (except not-found, which is an :class:`InputNotFoundError` like a missing local path):
code that turns an ``OSError`` from a local read into "the file is corrupt" must not swallow a network answer.
"""
from __future__ import annotations

from ...errors import ExplorerError, InputNotFoundError


class RemoteError(ExplorerError):
    """A remote checkpoint could not be read."""


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
