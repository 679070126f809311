"""A loopback stand-in for the authors' HowTo100M mirror, with per-video fault injection.

Serves `<id>.<ext>` files found (recursively) under a folder on 127.0.0.1, behind HTTP Basic auth,
with Range requests, so the downloader, its tests, the benchmark and `make demo` run against the same
protocol as the real mirror, offline.
"""

from __future__ import annotations

import hmac
import mimetypes
import re
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Mapping

from howto_prep.download.credentials import Credentials
from howto_prep.errors import UserError

FAULT_KINDS = ("not_found", "auth", "transient", "truncated", "stall", "html")
RANGE_PATTERN = re.compile(r"^bytes=(\d*)-(\d*)$")
CHUNK = 64 * 1024


@dataclass(frozen=True)
class Fault:
    """`kind` for one id; `times` = how many requests it hits (None: every request)."""

    kind: str
    times: int | None = None


def parse_fault(text: str, default_transient: int = 2) -> Fault:
    """'transient', 'transient:3', 'truncated:1', ... -> Fault (transient defaults to `default_transient` times)."""
    kind, _, count = text.partition(":")
    if kind not in FAULT_KINDS:
        raise UserError(f"unknown fault {kind!r}; choose from {', '.join(FAULT_KINDS)}")
    if count and not count.isdigit():
        raise UserError(f"fault count must be a number: {text!r}")
    times = int(count) if count else (default_transient if kind == "transient" else None)
    return Fault(kind, times)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    mirror: "LoopbackMirror"


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.0"  # one request per connection: a truncated body is unambiguous

    def log_message(self, format: str, *args: object) -> None:  # the request line never holds secrets
        if self.server.mirror.verbose:
            sys.stderr.write(f"mirror: {self.address_string()} {format % args}\n")

    def do_HEAD(self) -> None:
        self._serve(send_body=False)

    def do_GET(self) -> None:
        self._serve(send_body=True)

    def _serve(self, send_body: bool) -> None:
        mirror = self.server.mirror
        name = self.path.split("?", 1)[0].lstrip("/")
        video_id = name.split(".", 1)[0]
        fault = mirror._count_request(video_id, ranged="Range" in self.headers)
        if not mirror._authorized(self.headers.get("Authorization")) or (fault and fault.kind == "auth"):
            self._send_error(HTTPStatus.UNAUTHORIZED, {"WWW-Authenticate": 'Basic realm="howto100m"'})
            return
        path = mirror._lookup(name)
        if path is None or (fault and fault.kind == "not_found"):
            self._send_error(HTTPStatus.NOT_FOUND)
            return
        if fault and fault.kind == "transient":
            self._send_error(HTTPStatus.INTERNAL_SERVER_ERROR)
            return
        if fault and fault.kind == "html":
            body = b"<!DOCTYPE html><html><body>Please log in</body></html>"
            self._send_headers(HTTPStatus.OK, len(body), "text/html; charset=utf-8")
            if send_body:
                self.wfile.write(body)
            return
        self._send_file(path, send_body, fault)

    def _send_error(self, status: HTTPStatus, headers: Mapping[str, str] | None = None) -> None:
        body = f"{status.value} {status.phrase}\n".encode()
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _send_headers(self, status: HTTPStatus, length: int, content_type: str,
                      extra: Mapping[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(length))
        self.send_header("Accept-Ranges", "bytes")
        for key, value in (extra or {}).items():
            self.send_header(key, value)
        self.end_headers()

    def _send_file(self, path: Path, send_body: bool, fault: Fault | None) -> None:
        mirror = self.server.mirror
        total = path.stat().st_size
        start, end = 0, total - 1
        status, extra = HTTPStatus.OK, {}
        range_header = self.headers.get("Range")
        if range_header:
            match = RANGE_PATTERN.match(range_header.strip())
            parsed = _parse_range(match, total) if match else None
            if parsed is None:
                self._send_error(HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE, {"Content-Range": f"bytes */{total}"})
                return
            start, end = parsed
            status, extra = HTTPStatus.PARTIAL_CONTENT, {"Content-Range": f"bytes {start}-{end}/{total}"}
        length = end - start + 1
        content_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        self._send_headers(status, length, content_type, extra)
        if not send_body:
            return
        limit = length
        if fault and fault.kind == "truncated":
            limit = length // 2
        elif fault and fault.kind == "stall":
            limit = min(length // 4, CHUNK)
        try:
            self._copy(path, start, limit, mirror.throttle_bytes_per_s)
            if fault and fault.kind == "stall":
                self.wfile.flush()
                mirror._stop.wait(mirror.stall_seconds)  # bounded: the thread always ends by itself
        except (BrokenPipeError, ConnectionResetError):
            pass
        self.close_connection = True

    def _copy(self, path: Path, start: int, count: int, throttle: float | None) -> None:
        with path.open("rb") as source:
            source.seek(start)
            remaining = count
            block_size = max(1, min(CHUNK, int(throttle / 20))) if throttle else CHUNK  # ~20 writes/s when throttled
            began = time.monotonic()
            sent = 0
            while remaining > 0 and not self.server.mirror._stop.is_set():
                block = source.read(min(block_size, remaining))
                if not block:
                    break
                self.wfile.write(block)
                remaining -= len(block)
                sent += len(block)
                if throttle:
                    ahead = sent / throttle - (time.monotonic() - began)
                    if ahead > 0:
                        time.sleep(ahead)


def _parse_range(match: re.Match[str], total: int) -> tuple[int, int] | None:
    """'bytes=N-', 'bytes=N-M' or 'bytes=-K' -> (first, last) byte, or None when unsatisfiable."""
    first, last = match.group(1), match.group(2)
    if not first and not last:
        return None
    if not first:  # suffix range: the last K bytes
        count = int(last)
        return (max(0, total - count), total - 1) if count > 0 and total > 0 else None
    start = int(first)
    end = min(int(last), total - 1) if last else total - 1
    if start >= total or end < start:
        return None
    return start, end


class LoopbackMirror:
    """Threaded HTTP server on 127.0.0.1 serving `<id>.<ext>` files under `root`; use as a context manager.

    `faults` maps a video id to a kind (see FAULT_KINDS), 'kind:N' or a Fault. `requests[id]` and
    `ranged_requests[id]` count what each id received, for tests.
    """

    def __init__(self, root: Path, credentials: tuple[str, str] | Credentials | None = None,
                 faults: Mapping[str, str | Fault] | None = None, transient_failures: int = 2,
                 stall_seconds: float = 10.0, throttle_bytes_per_s: float | None = None,
                 port: int = 0, verbose: bool = False) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise UserError(f"mirror root {self.root} is not a folder")
        if isinstance(credentials, tuple):
            credentials = Credentials(*credentials)
        self.credentials = credentials
        self.faults = {video_id: fault if isinstance(fault, Fault) else parse_fault(fault, transient_failures)
                       for video_id, fault in (faults or {}).items()}
        self.stall_seconds = stall_seconds
        self.throttle_bytes_per_s = throttle_bytes_per_s
        self.verbose = verbose
        self.requests: Counter[str] = Counter()
        self.ranged_requests: Counter[str] = Counter()
        self._port = port
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._files: dict[str, Path] = {}
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("the mirror is not running")
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> "LoopbackMirror":
        self._index()
        self._server = _Server(("127.0.0.1", self._port), _Handler)
        self._server.mirror = self
        self._thread = threading.Thread(target=self._server.serve_forever, name="loopback-mirror", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> "LoopbackMirror":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _index(self) -> None:
        files = {path.name: path for path in sorted(self.root.rglob("*")) if path.is_file()}
        with self._lock:
            self._files = files

    def _lookup(self, name: str) -> Path | None:
        if "/" in name or name.startswith("."):
            return None
        if name not in self._files:
            self._index()  # files added after start are served too
        return self._files.get(name)

    def _authorized(self, header: str | None) -> bool:
        if self.credentials is None:
            return True
        expected = self.credentials.authorization_header()
        return header is not None and hmac.compare_digest(header.encode(), expected.encode())

    def _count_request(self, video_id: str, ranged: bool) -> Fault | None:
        """Count the request and return the fault it triggers, if any."""
        with self._lock:
            self.requests[video_id] += 1
            if ranged:
                self.ranged_requests[video_id] += 1
            fault = self.faults.get(video_id)
            if fault is None:
                return None
            if fault.times is not None:
                if fault.times <= 0:
                    return None
                self.faults[video_id] = Fault(fault.kind, fault.times - 1)
            return fault
