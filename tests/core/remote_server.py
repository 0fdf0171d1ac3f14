"""A small threaded HTTP server on 127.0.0.1 for the remote tests and benchmark: files from a dict, Range requests,
ETags, a latency per request, and failure modes (no Range, a status per path, a truncated body, dying mid-read).
It also answers the Hugging Face Hub's routes the explorer uses: ``/{repo}/resolve/{rev}/{path}`` (a HEAD answers
with ``X-Repo-Commit``; ``lfs`` files redirect to a ``/cdn/`` URL with ``X-Linked-Etag``/``X-Linked-Size`` on another
host name, as the Hub does) and ``/api/models/{repo}/tree/{rev}/{path}``.
"""
from __future__ import annotations

import email.utils
import hashlib
import json
import os
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit


class Served:
    """What the server serves and how; tests change these attributes between requests."""

    def __init__(self):
        self.files: dict[str, bytes] = {}      # "/path" -> bytes
        self.disk: dict[str, str] = {}         # "/path" -> a local file served from disk (large, sparse files)
        self.latency = 0.0                     # seconds slept before each answer
        self.ranges = True                     # False: answer a Range request with 200 and the whole file
        self.head = True                       # False: answer HEAD with 405 (some object stores and CDNs)
        self.status: dict[str, int] = {}       # "/path" -> status to answer instead
        self.truncate: dict[str, int] = {}     # "/path" -> send only this many body bytes, then close
        self.fail_times: dict[str, int] = {}   # "/path" -> close the connection on the next N GETs without a byte
        self.die_after: int | None = None      # the server dies (stops listening, drops the request) at the GET
        #                                        after this many ranged GETs: a server that goes away mid-read
        self.gets = 0                          # ranged GETs answered
        self.commit = "0123456789abcdef0123456789abcdef01234567"
        self.lfs: set[str] = set()             # Hub paths served through a redirect to /cdn/
        self.requests: list[tuple[str, str, str | None]] = []   # (method, path, Range)
        self.auth: list[str | None] = []       # Authorization of each request
        self.sent = 0                          # body bytes sent
        self.etags = True                      # False: no ETag, a Last-Modified that changes with the content
        self.fixed_date = False                # True (with etags False): a Last-Modified that never moves (a file
        #                                        replaced within the same second: the header's resolution)
        self.lock = threading.Lock()

    def etag(self, path: str) -> str:
        if path in self.disk:
            st = os.stat(self.disk[path])
            return f'"{st.st_size:x}-{st.st_mtime_ns:x}"'
        return '"' + hashlib.sha256(self.files[path]).hexdigest()[:16] + '"'

    def size(self, path: str) -> int | None:
        if path in self.disk:
            return os.path.getsize(self.disk[path])
        return len(self.files[path]) if path in self.files else None

    def slice(self, path: str, start: int, end: int) -> bytes:
        if path in self.disk:
            with open(self.disk[path], "rb") as f:
                f.seek(start)
                return f.read(end - start)
        return self.files[path][start:end]


_RESOLVE = re.compile(r"^/(?:(datasets|spaces)/)?([^/]+/[^/]+)/resolve/([^/]+)/(.+)$")
_TREE = re.compile(r"^/api/(models|datasets|spaces)/([^/]+/[^/]+)/tree/([^/]+)(?:/(.+))?$")


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    served: Served

    def log_message(self, *args):
        pass

    def do_HEAD(self):
        if not self.served.head:
            with self.served.lock:
                self.served.requests.append(("HEAD", self.path, None))
            return self._empty(405)
        self._answer(head=True)

    def do_GET(self):
        s = self.served
        if self.headers.get("Range"):
            with s.lock:
                s.gets += 1
                dead = s.die_after is not None and s.gets > s.die_after
            if dead:
                self.close_connection = True
                self.server.socket.close()   # no new connection is accepted: "connection refused" from now on
                threading.Thread(target=self.server.shutdown, daemon=True).start()
                return
        self._answer(head=False)

    def _answer(self, head: bool):
        s = self.served
        path = unquote(urlsplit(self.path).path)
        with s.lock:
            s.requests.append((self.command, path, self.headers.get("Range")))
            s.auth.append(self.headers.get("Authorization"))
        if s.latency:
            time.sleep(s.latency)
        if path in s.status:
            return self._empty(s.status[path])
        m = _TREE.match(path)
        if m:
            return self._tree(m.group(2), m.group(4) or "")
        m = _RESOLVE.match(path)
        extra = {}
        if m:
            repo, file = m.group(2), m.group(4)
            path = f"/{repo}/{file}"
            extra["X-Repo-Commit"] = s.commit
            if s.size(path) is not None and path in s.lfs:
                cdn = f"http://localhost:{self.server.server_address[1]}/cdn{path}"
                return self._empty(302, {**extra, "Location": cdn, "X-Linked-Etag": s.etag(path),
                                         "X-Linked-Size": str(s.size(path))})
        elif path.startswith("/cdn/"):
            path = path[4:]
        size = s.size(path)
        if size is None:
            return self._empty(404)
        self._send_file(path, size, head, extra)

    def _send_file(self, path: str, size: int, head: bool, extra: dict):
        s = self.served
        start, end, status = 0, size, 200
        rng = self.headers.get("Range")
        if rng and s.ranges and not head:
            a, _, b = rng.removeprefix("bytes=").partition("-")
            start, end, status = int(a), min(size, int(b) + 1), 206
            if start >= size:
                return self._empty(416)
        body = b"" if head else s.slice(path, start, end)
        self.send_response(status)
        self.send_header("Content-Length", str(end - start))
        if s.etags:
            self.send_header("ETag", s.etag(path))
        else:   # a date that changes with the content (as a file's modification time does)
            stamp = 1.6e9 if s.fixed_date else 1.6e9 + int(s.etag(path)[1:7], 16)
            self.send_header("Last-Modified", email.utils.formatdate(stamp, usegmt=True))
        if s.ranges:
            self.send_header("Accept-Ranges", "bytes")
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end - 1}/{size}")
        for k, v in extra.items():
            self.send_header(k, v)
        self.end_headers()
        if head:
            return
        with s.lock:
            fail = s.fail_times.get(path, 0)
            if fail:
                s.fail_times[path] = fail - 1
            cut = s.truncate.get(path)
        if fail:
            self.close_connection = True
            return
        if cut is not None:
            body = body[:cut]
            self.close_connection = True
        with s.lock:   # counted before the client can see it, so a test reading ``sent`` after a read is exact
            s.sent += len(body)
        try:
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            return

    def _tree(self, repo: str, folder: str):
        prefix = f"/{repo}/" + (folder.strip("/") + "/" if folder else "")
        entries = [{"type": "file", "path": p[len(f"/{repo}/"):], "size": len(d), "oid": "0" * 40}
                   for p, d in sorted(self.served.files.items())
                   if p.startswith(prefix) and "/" not in p[len(prefix):]]
        body = json.dumps(entries).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _empty(self, status: int, headers: dict | None = None):
        self.send_response(status)
        self.send_header("Content-Length", "0")
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()


class Server:
    """``with Server() as srv: srv.url("/x")``; ``srv.served`` holds the files and the modes."""

    def __init__(self):
        self.served = Served()
        handler = type("BoundHandler", (Handler,), {"served": self.served})
        server_class = type("Server", (ThreadingHTTPServer,), {"request_queue_size": 128})  # 28 shards at once
        self.httpd = server_class(("127.0.0.1", 0), handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def url(self, path: str) -> str:
        return self.base + path

    def __enter__(self) -> "Server":
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()
