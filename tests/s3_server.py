"""A real S3 API for tests: moto's server in-process on 127.0.0.1, behind a fault-injecting proxy.

`s3` (a pytest fixture: import it into a test module) gives each test a fresh bucket on a moto
server (`moto.server.ThreadedMotoServer`, one per module, on a free port), and sets for that test
only the standard variables a real run reads: dummy AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY
(`DUMMY_SECRET`, so tests can scan output for it), AWS_DEFAULT_REGION and AWS_ENDPOINT_URL. The
endpoint is a small HTTP proxy in front of moto (`FaultProxy`): it passes requests through unchanged
until a test asks it to fail some on purpose (503 SlowDown, 500, 403, a connection dropped halfway
through the request body, a body cut short), and it records every request it saw. moto itself is
never mocked; nothing leaves 127.0.0.1 (instance-metadata lookups are turned off).
"""

from __future__ import annotations

import contextlib
import http.client
import logging
import socket
import struct
import threading
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Iterator

import pytest

DUMMY_KEY_ID = "AKIATESTDUMMYKEY0001"
DUMMY_SECRET = "dummySecret/NeverPrintMe+0123456789abcdefgh"
REGION = "us-east-1"

FAULT_BODIES = {
    "503": (503, "SlowDown", "Please reduce your request rate."),
    "500": (500, "InternalError", "We encountered an internal error. Please try again."),
    "403": (403, "AccessDenied", "Access Denied"),
}
HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "expect", "te", "upgrade"}


@dataclass
class Fault:
    """Fail the next `times` requests whose method is `method` (None: any) and whose path holds
    `path_contains`: kind "503" / "500" / "403" (an S3 error response), "drop" (read half the body,
    pass that half to moto, then cut both connections without answering), "truncate" (pass half the
    body to moto with a Content-Length that matches it, so moto stores a torn object)."""

    kind: str
    times: int
    method: str | None = None
    path_contains: str = ""


@dataclass
class Seen:
    method: str
    path: str
    outcome: str  # the HTTP status passed back, or the fault injected


class FaultProxy:
    """A reverse proxy on 127.0.0.1 in front of moto that can fail requests on purpose."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.faults: list[Fault] = []
        self.seen: list[Seen] = []
        self._lock = threading.Lock()
        proxy = self

        class Handler(_ProxyHandler):
            owner = proxy

        self._server = _QuietServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.02},
                                        daemon=True, name="s3-fault-proxy")

    @property
    def endpoint(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> "FaultProxy":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def fail(self, kind: str, times: int = 1, method: str | None = None, path_contains: str = "") -> None:
        with self._lock:
            self.faults.append(Fault(kind, times, method, path_contains))

    def clear(self) -> None:
        with self._lock:
            self.faults.clear()

    def take_fault(self, method: str, path: str) -> str | None:
        with self._lock:
            for fault in self.faults:
                if fault.times > 0 and fault.method in (None, method) and fault.path_contains in path:
                    fault.times -= 1
                    return fault.kind
        return None

    def record(self, method: str, path: str, outcome: str) -> None:
        with self._lock:
            self.seen.append(Seen(method, path, outcome))

    def count(self, method: str | None = None, outcome: str | None = None) -> int:
        with self._lock:
            return sum(1 for s in self.seen if method in (None, s.method) and outcome in (None, s.outcome))


class _QuietServer(ThreadingHTTPServer):
    """A client that hangs up before the answer (a reader done early, a retry) is not a test failure:
    socketserver would print its traceback on stderr, where tests look for the toolkit's own."""

    def handle_error(self, request: object, client_address: object) -> None:
        import sys

        if not isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):
            super().handle_error(request, client_address)


class _ProxyHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    owner: FaultProxy

    def log_message(self, *args: object) -> None:  # quiet
        pass

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _forward_headers(self, length: int | None) -> dict[str, str]:
        headers = {name: value for name, value in self.headers.items() if name.lower() not in HOP_BY_HOP}
        if length is not None:
            headers = {name: value for name, value in headers.items() if name.lower() != "content-length"}
            headers["Content-Length"] = str(length)
        return headers

    def _error(self, kind: str) -> None:
        status, code, message = FAULT_BODIES[kind]
        body = (f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code><Message>{message}</Message>'
                f"<RequestId>fault-proxy</RequestId></Error>").encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _drop(self) -> None:
        """Half the body goes to moto, then both connections are cut (the client gets no answer)."""
        declared = int(self.headers.get("Content-Length") or 0)
        partial = self.rfile.read(declared // 2) if declared else b""
        with socket.create_connection(self.owner.upstream, timeout=5) as upstream:
            head = f"{self.command} {self.path} HTTP/1.1\r\n" + "".join(
                f"{name}: {value}\r\n" for name, value in self._forward_headers(None).items()) + "\r\n"
            upstream.sendall(head.encode("latin-1") + partial)
            upstream.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.close_connection = True

    def _relay(self, body: bytes, kind: str | None) -> str:
        if kind == "truncate":
            body = body[: len(body) // 2]
        upstream = http.client.HTTPConnection(*self.owner.upstream, timeout=60)
        try:
            upstream.request(self.command, self.path, body=body if body or self.command in ("PUT", "POST") else None,
                             headers=self._forward_headers(len(body)))
            response = upstream.getresponse()
            data = response.read()
            self.send_response(response.status)
            for name, value in response.getheaders():
                if name.lower() not in HOP_BY_HOP and name.lower() != "content-length":
                    self.send_header(name, value)
            length = response.getheader("Content-Length") if self.command == "HEAD" else str(len(data))
            self.send_header("Content-Length", length or "0")
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)
            return str(response.status)
        finally:
            upstream.close()

    def _handle(self) -> None:
        kind = self.owner.take_fault(self.command, self.path)
        if kind == "drop":
            self.owner.record(self.command, self.path, "drop")
            self._drop()
            return
        body = self._read_body()
        if kind in FAULT_BODIES:
            self.owner.record(self.command, self.path, kind)
            self._error(kind)
            return
        self.owner.record(self.command, self.path, self._relay(body, kind))

    do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _handle


@dataclass
class S3Server:
    """What a test gets: the bucket, the proxy (its faults and its record) and moto's own address."""

    bucket: str
    proxy: FaultProxy
    moto: tuple[str, int]
    made: list[str] = field(default_factory=list)

    def url(self, prefix: str = "set") -> str:
        return f"s3://{self.bucket}/{prefix}"

    def client(self):  # type: ignore[no-untyped-def]
        """A boto3 client straight to moto (no proxy, no faults), for checks behind the toolkit's back."""
        import boto3

        return boto3.client("s3", endpoint_url=f"http://{self.moto[0]}:{self.moto[1]}", region_name=REGION,
                            aws_access_key_id=DUMMY_KEY_ID, aws_secret_access_key=DUMMY_SECRET)

    def objects(self, prefix: str) -> dict[str, bytes]:
        """Every object below `prefix` (key relative to it -> bytes), read straight from moto."""
        client = self.client()
        listing = client.list_objects_v2(Bucket=self.bucket, Prefix=f"{prefix}/").get("Contents", [])
        return {item["Key"][len(prefix) + 1:]: client.get_object(Bucket=self.bucket, Key=item["Key"])["Body"].read()
                for item in listing}

    def _requests_below(self, prefix: str, methods: tuple[str, ...]) -> list[tuple[str, str]]:
        marker = f"/{self.bucket}/{prefix}/"
        return [(seen.method, seen.path.split(marker, 1)[1].split("?")[0]) for seen in self.proxy.seen
                if seen.method in methods and marker in seen.path]

    def writes(self, prefix: str, leave_out: str | None = None) -> list[tuple[str, str]]:
        """(method, key) of every PUT and DELETE the store saw below `prefix`, in order (keys starting
        with `leave_out` left out)."""
        return [(method, key) for method, key in self._requests_below(prefix, ("PUT", "DELETE"))
                if not (leave_out and key.startswith(leave_out))]

    def reads(self, prefix: str) -> list[str]:
        """Keys below `prefix` whose bytes were fetched (GET of an object, not a listing)."""
        return [key for _, key in self._requests_below(prefix, ("GET",))]

    def pending_uploads(self) -> list[str]:
        """Keys of multipart uploads begun and neither completed nor aborted (storage that would leak)."""
        return [u["Key"] for u in self.client().list_multipart_uploads(Bucket=self.bucket).get("Uploads", [])]


def isolate_aws_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, endpoint: str) -> None:
    """Only dummy credentials and the test's endpoint: no profile, config file or instance metadata."""
    for name in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN",
                 "AWS_ENDPOINT_URL_S3", "AWS_ROLE_ARN", "AWS_WEB_IDENTITY_TOKEN_FILE",
                 "AWS_CONTAINER_CREDENTIALS_FULL_URI", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "AWS_MAX_ATTEMPTS",
                 "AWS_RETRY_MODE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", DUMMY_KEY_ID)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", DUMMY_SECRET)
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


def start_moto() -> object:
    """moto's S3 server in this process on a free 127.0.0.1 port (call .stop() on what it returns)."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.CRITICAL)  # moto's access log and dropped-request tracebacks
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    return server


@pytest.fixture(scope="module")
def moto_server() -> Iterator[tuple[str, int]]:
    server = start_moto()
    try:
        yield server.get_host_and_port()
    finally:
        server.stop()


def _clear_fsspec_instances() -> None:
    """fsspec caches filesystems by arguments, not by environment: a cached one would keep an old endpoint."""
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()


@contextlib.contextmanager
def serving_bucket(moto_server: tuple[str, int], patch: pytest.MonkeyPatch, base: Path) -> Iterator[S3Server]:
    """A fresh bucket behind a new fault proxy, the AWS environment set through `patch` meanwhile."""
    proxy = FaultProxy(moto_server).start()
    isolate_aws_environment(patch, base, proxy.endpoint)
    server = S3Server(f"test-{uuid.uuid4().hex[:12]}", proxy, moto_server)
    server.client().create_bucket(Bucket=server.bucket)
    _clear_fsspec_instances()
    try:
        yield server
    finally:
        _clear_fsspec_instances()
        proxy.stop()


@pytest.fixture
def s3(moto_server: tuple[str, int], monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[S3Server]:
    with serving_bucket(moto_server, monkeypatch, tmp_path) as server:
        yield server
