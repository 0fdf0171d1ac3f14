"""Where the bytes come from: a size and a version (ETag/revision) for a URL, and its bytes ``[start, end)``.

``http(s)://`` and ``hf://`` are read with the standard library's HTTP client, one Range request per read: it sees
the status, the headers and the byte count, so a server that ignores Range is stopped before it sends a whole
file, and a short body is noticed (fsspec's HTTP filesystem reads the whole body in both cases). ``hf://`` resolves
``{HF_ENDPOINT}/{repo}/resolve/{rev}/{path}`` once, then reads at the commit it names, with the user's token.
``s3://`` and ``gs://`` go through fsspec (s3fs, gcsfs), which knows their credentials.

Backends raise the errors of :mod:`.errors`, or :class:`TransientError` for what a retry may cure.
"""
from __future__ import annotations

import http.client
import os
import socket
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Callable
from urllib.parse import urljoin, urlsplit

from ...errors import (Cancelled, MissingExtraError, RangeNotSupportedError, RemoteAccessError, RemoteChangedError,
                       RemoteListingError, RemoteNotFoundError)
from .urls import parse_hf, scheme_of

TIMEOUT = 30.0       # seconds without a byte before a request counts as timed out
USER_AGENT = "state-dict-explorer"


class TransientError(Exception):
    """A failure a retry may cure: a timeout, a refused or dropped connection, a 5xx, a short body."""


class TruncatedBody(TransientError):
    """Fewer bytes arrived than were asked for."""


@dataclass(frozen=True)
class RemoteInfo:
    size: int
    version: str | None   # ETag / Last-Modified / generation; None when the server names no version


def _credentials_hint(url: str) -> str:
    scheme = scheme_of(url)
    if scheme == "hf":
        return "set HF_TOKEN (or run `hf auth login`) with a token that can read this repository"
    if scheme == "s3":
        return "set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or AWS_PROFILE with read access to the bucket"
    if scheme == "gs":
        return "set GOOGLE_APPLICATION_CREDENTIALS (or run `gcloud auth application-default login`)"
    return "the server wants credentials this tool does not send; download the file, or use a signed URL"


def _same_etag(a: str, b: str) -> bool:
    def norm(e: str) -> str:
        return e.strip().removeprefix("W/").strip('"')
    return norm(a) == norm(b)


class _KeepAuthOnSameHost(urllib.request.HTTPRedirectHandler):
    """Follow redirects; send the token again only to the same host (never to a CDN a Hub redirects to)."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        new = super().redirect_request(req, fp, code, msg, headers, newurl)
        auth = req.unredirected_hdrs.get("Authorization")
        if new is not None and auth and urlsplit(newurl).netloc == urlsplit(req.full_url).netloc:
            new.add_unredirected_header("Authorization", auth)
        return new


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None


_FOLLOW = urllib.request.build_opener(_KeepAuthOnSameHost)
_STAY = urllib.request.build_opener(_NoRedirect)


class HttpBackend:
    """A plain ``http(s)://`` URL."""

    def __init__(self, url: str, token: str | None = None):
        self.url = url           # as the user gave it: every message names it
        self.data_url = url      # what reads fetch
        self.token = token
        self.version: str | None = None
        self.size = 0
        self._final: str | None = None      # where data_url last redirected (a signed CDN URL): asked directly
        self._stat_url: str | None = None   # the URL whose ETag stat() read: a read from it must carry the same

    def _request(self, url: str, method: str = "GET", headers: dict | None = None) -> urllib.request.Request:
        req = urllib.request.Request(url, method=method, headers={"User-Agent": USER_AGENT, **(headers or {})})
        if self.token and urlsplit(url).netloc == urlsplit(self.data_url).netloc:   # never to another host
            req.add_unredirected_header("Authorization", f"Bearer {self.token}")
        return req

    def _open(self, req: urllib.request.Request, opener=_FOLLOW):
        """The response, or a mapped error (an HTTP error status is returned when ``opener`` stays put on 3xx)."""
        try:
            return opener.open(req, timeout=TIMEOUT)
        except urllib.error.HTTPError as e:
            if 300 <= e.code < 400 and opener is _STAY:
                return e
            e.close()
            self._raise_for(e.code)
        except (TimeoutError, socket.timeout) as e:
            raise TransientError(f"no answer within {TIMEOUT:g} s") from e
        except urllib.error.URLError as e:
            raise TransientError(f"cannot connect ({getattr(e, 'reason', e)})") from e
        except (http.client.HTTPException, ConnectionError, OSError) as e:
            raise TransientError(f"the connection failed ({e or type(e).__name__})") from e

    def _raise_for(self, code: int):
        if code in (401, 403):
            raise RemoteAccessError(f"{self.url}: access denied (HTTP {code}) — {_credentials_hint(self.url)}")
        if code in (404, 410):
            raise RemoteNotFoundError(f"{self.url}: not found (HTTP {code}) — check the URL as given")
        if code == 416:
            raise RemoteChangedError(f"{self.url}: the server's file is shorter than when it was opened — "
                                     "it changed while being read; open it again")
        if code in (405, 408, 429) or code >= 500:   # 405/501: a HEAD refused; stat() asks with a GET
            raise TransientError(f"the server answered HTTP {code}")
        raise RemoteNotFoundError(f"{self.url}: the server answered HTTP {code} — check the URL as given")

    def stat(self) -> RemoteInfo:
        try:
            resp = self._open(self._request(self.data_url, "HEAD"))
        except TransientError:
            resp = None
        if resp is None or resp.headers.get("Content-Length") is None:  # no HEAD: ask for one byte instead
            resp = self._open(self._request(self.data_url, headers={"Range": "bytes=0-0"}))
            total = resp.headers.get("Content-Range", "").rpartition("/")[2]
            size = int(total) if total.isdigit() else int(resp.headers.get("Content-Length") or 0)
        else:
            size = int(resp.headers["Content-Length"])
        with resp:
            etag = resp.headers.get("ETag")
            modified = resp.headers.get("Last-Modified")
            self._stat_url = resp.geturl()
        self.size = size
        self.version = etag or (f"modified {modified}" if modified else None)
        return RemoteInfo(size, self.version)

    def read(self, start: int, end: int) -> bytes:
        """Exactly the bytes ``[start, end)``."""
        rng = {"Range": f"bytes={start}-{end - 1}"}
        target = self._final or self.data_url
        try:
            resp = self._open(self._request(target, headers=rng))
        except (RemoteAccessError, RemoteNotFoundError):
            if target == self.data_url:
                raise
            self._final = None   # a signed redirect expired: ask the original URL again
            resp = self._open(self._request(self.data_url, headers=rng))
        if resp.geturl() != self.data_url:
            self._final = resp.geturl()
        with resp:
            if resp.status == 200 and not (start == 0 and end == self.size):
                e = RangeNotSupportedError(
                    f"{self.url}: the server does not support range requests (it sends the whole "
                    f"{self.size:,}-byte file for any part) — run again with --download to fetch it whole once, or "
                    "download the file and open the local copy")
                e.size = self.size      # what the window's offer to download says
                raise e
            self._check_unchanged(resp)
            if resp.status == 206:
                first = resp.headers.get("Content-Range", "").removeprefix("bytes ").partition("-")[0]
                if first.isdigit() and int(first) != start:
                    raise RangeNotSupportedError(f"{self.url}: the server answered a different range than asked "
                                                 f"({resp.headers.get('Content-Range')}) — download the file")
            return _read_exactly(resp, end - start)

    def _check_unchanged(self, resp) -> None:
        """A ranged answer is of the file :meth:`stat` saw: the same ETag, or (a server that sends none) the same
        Last-Modified, and the same size -- else its bytes would be mixed with the old file's, read before."""
        same_url = resp.geturl() == self._stat_url
        version = self.version or ""
        etag = resp.headers.get("ETag")
        if etag and same_url and version.startswith(('"', "W/")) and not _same_etag(etag, version):
            raise RemoteChangedError(f"{self.url}: the file changed on the server while it was being read "
                                     "(a new ETag) — open it again")
        modified = resp.headers.get("Last-Modified")
        if not etag and modified and same_url and version.startswith("modified ") \
                and version != f"modified {modified}":
            raise RemoteChangedError(f"{self.url}: the file changed on the server while it was being read "
                                     f"(modified {modified}) — open it again")
        total = resp.headers.get("Content-Range", "").rpartition("/")[2]
        if resp.status == 206 and total.isdigit() and self._stat_url is not None and int(total) != self.size:
            raise RemoteChangedError(f"{self.url}: the file changed on the server while it was being read (now "
                                     f"{int(total):,} bytes, not {self.size:,}) — open it again")

    def read_whole(self, write: Callable[[int, bytes], None], should_stop: Callable[[], bool] | None) -> None:
        """The whole file in one request without a Range (for a server that has none), piece by piece to
        ``write(offset, piece)``; cancellable between pieces."""
        resp = self._open(self._request(self._final or self.data_url))
        got = 0
        with resp:
            while got < self.size:
                if should_stop is not None and should_stop():
                    raise Cancelled(f"{self.url}: the download was cancelled")
                try:
                    piece = resp.read(min(1 << 20, self.size - got))
                except (http.client.IncompleteRead, ConnectionError, TimeoutError, OSError) as e:
                    raise TruncatedBody(f"the connection dropped after {got:,} of {self.size:,} bytes") from e
                if not piece:
                    raise TruncatedBody(f"the server sent {got:,} of {self.size:,} bytes")
                write(got, piece)
                got += len(piece)

    def list_folder(self) -> list[str]:
        raise RemoteListingError(f"{self.url}: a plain HTTP(S) folder cannot be listed — name the checkpoint file "
                                 "or its index (e.g. model.safetensors.index.json)")


def _read_exactly(resp, n: int) -> bytes:
    chunks, got = [], 0
    try:
        while got < n:
            chunk = resp.read(min(n - got, 1 << 20))
            if not chunk:
                break
            chunks.append(chunk)
            got += len(chunk)
    except (http.client.IncompleteRead, ConnectionError, TimeoutError, OSError) as e:
        raise TruncatedBody(f"the connection dropped after {got:,} of {n:,} bytes") from e
    if got < n:
        raise TruncatedBody(f"the server sent {got:,} of {n:,} bytes")
    return b"".join(chunks)


def _hf():
    try:
        import huggingface_hub
    except ImportError:
        raise MissingExtraError('hf:// paths need huggingface_hub: pip install -e ".[remote]"') from None
    return huggingface_hub


def hf_endpoint() -> str:
    """``HF_ENDPOINT`` as set now (the library reads it once, at import), else the library's default."""
    return (os.environ.get("HF_ENDPOINT") or _hf().constants.ENDPOINT).rstrip("/")


class HfBackend(HttpBackend):
    """``hf://ORG/REPO[@REV]/PATH``: resolved once, then read at the commit the Hub named (a branch that moves
    while we read cannot mix two versions)."""

    def __init__(self, url: str):
        self.hf = parse_hf(url)
        super().__init__(url, token=_hf().get_token())
        self.endpoint = hf_endpoint()
        self.data_url = self.endpoint + self.hf.route()

    def stat(self) -> RemoteInfo:
        target = self.data_url
        for _ in range(5):   # relative redirects (a renamed repo) stay on the Hub; an absolute one is the CDN
            resp = self._open(self._request(target, "HEAD"), opener=_STAY)
            with resp:
                headers, status = resp.headers, resp.status if hasattr(resp, "status") else resp.code
            location = headers.get("Location")
            if 300 <= status < 400 and location and not urlsplit(location).netloc:
                target = urljoin(target, location)
                continue
            break
        size = headers.get("X-Linked-Size") or headers.get("Content-Length")
        if size is None:
            raise TransientError("the Hub's answer names no size")
        commit = headers.get("X-Repo-Commit")
        if commit:
            self.data_url = self.endpoint + self.hf.route(commit)
        self.size = int(size)
        etag = headers.get("X-Linked-Etag") or headers.get("ETag")
        self.version = etag or (f"commit {commit}" if commit else None)
        return RemoteInfo(self.size, self.version)

    def list_folder(self) -> list[str]:
        api = _hf().HfApi(endpoint=self.endpoint, token=self.token)
        kind = {"models": "model", "datasets": "dataset", "spaces": "space"}[self.hf.kind]
        try:
            entries = api.list_repo_tree(self.hf.repo, path_in_repo=self.hf.path or None,
                                         revision=self.hf.revision, repo_type=kind)
            files = [e.path for e in entries if isinstance(e, _hf().hf_api.RepoFile)]
        except Exception as e:
            code = getattr(getattr(e, "response", None), "status_code", None)
            if code is not None:
                self._raise_for(code)
            raise TransientError(f"listing failed ({e})") from e
        head = self.url.split("://", 1)[1].strip("/").split("/")
        root = "/".join(head[:3] if self.hf.kind != "models" else head[:2])
        return sorted(f"hf://{root}/{p}" for p in files)


_MODULES = {"s3": ("s3fs", "s3"), "gs": ("gcsfs", "gcs")}


class FsspecBackend:
    """``s3://`` and ``gs://`` through fsspec's filesystems, which find the user's credentials."""

    def __init__(self, url: str):
        self.url = url
        scheme = scheme_of(url)
        module, extra = _MODULES[scheme]
        try:
            import fsspec
            __import__(module)
        except ImportError:
            raise MissingExtraError(f'{scheme}:// paths need {module}: pip install -e ".[{extra}]"') from None
        self.fs = fsspec.filesystem(scheme)
        self.path = url.split("://", 1)[1]
        self.size = 0

    def _call(self, fn, *args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except FileNotFoundError:
            raise RemoteNotFoundError(f"{self.url}: not found — check the bucket and key as given") from None
        except PermissionError:
            raise RemoteAccessError(f"{self.url}: access denied — {_credentials_hint(self.url)}") from None
        except (TimeoutError, ConnectionError, OSError) as e:
            raise TransientError(f"{type(e).__name__}: {e}") from e
        except Exception as e:
            if "credential" in type(e).__name__.lower() or "credential" in str(e).lower():
                raise RemoteAccessError(f"{self.url}: no credentials — {_credentials_hint(self.url)}") from None
            raise TransientError(f"{type(e).__name__}: {e}") from e

    def stat(self) -> RemoteInfo:
        self.fs.invalidate_cache(self.path)
        info = self._call(self.fs.info, self.path)
        if info.get("type") == "directory":
            raise RemoteNotFoundError(f"{self.url}: is a folder — name the checkpoint file or its index")
        self.size = int(info["size"])
        version = next((str(info[k]) for k in ("ETag", "etag", "generation", "md5Hash", "LastModified")
                        if info.get(k)), None)
        return RemoteInfo(self.size, version)

    def read(self, start: int, end: int) -> bytes:
        data = self._call(self.fs.cat_file, self.path, start=start, end=end)   # by name: s3fs's third is a version
        if len(data) < end - start:
            raise TruncatedBody(f"the server sent {len(data):,} of {end - start:,} bytes")
        return bytes(data[:end - start])

    def read_whole(self, write: Callable[[int, bytes], None], should_stop: Callable[[], bool] | None) -> None:
        for start in range(0, self.size, 8 << 20):
            if should_stop is not None and should_stop():
                raise Cancelled(f"{self.url}: the download was cancelled")
            write(start, self.read(start, min(self.size, start + (8 << 20))))

    def list_folder(self) -> list[str]:
        entries = self._call(self.fs.ls, self.path.rstrip("/"), detail=True)
        scheme = scheme_of(self.url)
        return sorted(f"{scheme}://{e['name']}" for e in entries if e.get("type") == "file")


def backend_for(url: str):
    scheme = scheme_of(url)
    if scheme == "hf":
        return HfBackend(url)
    if scheme in _MODULES:
        return FsspecBackend(url)
    return HttpBackend(url)
