"""What a remote path looks like: ``http(s)://``, ``hf://ORG/REPO[@REV]/PATH``, ``s3://BUCKET/KEY``, ``gs://...``."""
from __future__ import annotations

import posixpath
from dataclasses import dataclass
from urllib.parse import quote, unquote, urlsplit, urlunsplit

from ...errors import RemoteNotFoundError

SCHEMES = ("http", "https", "hf", "s3", "gs")
HF_KINDS = ("datasets", "spaces")   # hf://datasets/ORG/REPO/... ; a model repo has no prefix


def is_url(text: object) -> bool:
    """True for a path this package reads (``C:\\x`` or ``/x`` are local paths)."""
    if not isinstance(text, str) or "://" not in text:
        return False
    return text.split("://", 1)[0].lower() in SCHEMES


def scheme_of(url: str) -> str:
    return url.split("://", 1)[0].lower()


def join(url: str, relative: str) -> str:
    """The URL of ``relative`` (a shard name from an index) next to ``url`` (the index): ``a/b/x.json`` + ``y`` ->
    ``a/b/y``. Keeps the scheme, host, revision and query-less path; refuses to climb above the URL's folder."""
    rel = relative.replace("\\", "/")
    if is_url(rel) or rel.startswith("/"):
        raise ValueError(f"{relative!r} is not a name relative to {url}")
    scheme, rest = url.split("://", 1)
    head, _, path = rest.partition("/")
    if scheme.lower() in ("http", "https"):
        parts = urlsplit(url)
        folder = posixpath.dirname(parts.path)
        joined = posixpath.normpath(posixpath.join(folder, quote(rel)))
        if not (joined + "/").startswith(folder.rstrip("/") + "/"):
            raise ValueError(f"{relative!r} climbs above {url}")
        return urlunsplit((parts.scheme, parts.netloc, joined, "", ""))
    folder = posixpath.dirname(path)
    joined = posixpath.normpath(posixpath.join(folder, rel)) if folder else posixpath.normpath(rel)
    if joined.startswith("..") or (folder and not (joined + "/").startswith(folder + "/")):
        raise ValueError(f"{relative!r} climbs above {url}")
    return f"{scheme}://{head}/{joined}"


def display_name(url: str) -> str:
    """The last part of the URL's path (a title for a window or a pane)."""
    path = urlsplit(url).path if scheme_of(url) in ("http", "https") else url.split("://", 1)[1]
    return unquote(posixpath.basename(path.rstrip("/"))) or url


@dataclass(frozen=True)
class HfPath:
    """``hf://[datasets/|spaces/]ORG/REPO[@REV]/PATH`` taken apart (``REV`` may be URL-quoted: ``refs%2Fpr%2F1``)."""
    kind: str        # "models", "datasets" or "spaces"
    repo: str        # ORG/REPO
    revision: str    # "main" when not given
    path: str        # inside the repo; "" for the repo's root

    def route(self, revision: str | None = None) -> str:
        """``/{prefix}{repo}/resolve/{rev}/{path}``: the Hub's route for a file's bytes."""
        prefix = "" if self.kind == "models" else self.kind + "/"
        rev = quote(revision or self.revision, safe="")
        return f"/{prefix}{self.repo}/resolve/{rev}/{quote(self.path)}"


def parse_hf(url: str) -> HfPath:
    rest = url.split("://", 1)[1].strip("/")
    parts = rest.split("/")
    kind = "models"
    if parts and parts[0] in HF_KINDS:
        kind, parts = parts[0], parts[1:]
    if len(parts) < 2:
        raise RemoteNotFoundError(f"{url}: not a Hub path — write hf://ORG/REPO[@REVISION]/PATH/IN/REPO")
    org, repo_rev, path = parts[0], parts[1], "/".join(parts[2:])
    repo, _, rev = repo_rev.partition("@")
    return HfPath(kind, f"{org}/{repo}", unquote(rev) or "main", path)
