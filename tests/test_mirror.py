"""The loopback mirror: Basic auth, Range requests and each injected fault, seen by a plain HTTP client."""

from __future__ import annotations

import base64
import http.client
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from howto_prep.synthetic.mp4 import write_mp4
from howto_prep.synthetic.mirror_server import LoopbackMirror, parse_fault

USER, PASSWORD = "mirror-user", "s3cret-word"


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("mirror")
    nested = folder / "a" / "b"
    nested.mkdir(parents=True)
    frames = [np.full((120, 160, 3), 20 * index, np.uint8) for index in range(12)]
    write_mp4(nested / "vid001.mp4", frames, 12, np.zeros(16000, np.float32), sample_rate=16000)
    write_mp4(folder / "vid002.webm.mp4", frames, 12)  # a dotted name: only whole names are served
    return folder


def get(url: str, auth: tuple[str, str] | None = (USER, PASSWORD), headers: dict | None = None,
        timeout: float = 5.0) -> tuple[int, dict, bytes]:
    request = urllib.request.Request(url, headers=dict(headers or {}))
    if auth:
        token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


def test_basic_auth_and_recursive_lookup(root: Path) -> None:
    data = (root / "a" / "b" / "vid001.mp4").read_bytes()
    with LoopbackMirror(root, (USER, PASSWORD)) as mirror:
        assert mirror.url.startswith("http://127.0.0.1:")
        status, headers, body = get(f"{mirror.url}/vid001.mp4")
        assert (status, body) == (200, data)
        assert headers["Content-Length"] == str(len(data)) and headers["Accept-Ranges"] == "bytes"
        assert headers["Content-Type"] == "video/mp4"
        status, headers, _ = get(f"{mirror.url}/vid001.mp4", auth=None)
        assert status == 401 and headers["WWW-Authenticate"].startswith("Basic")
        assert get(f"{mirror.url}/vid001.mp4", auth=(USER, "wrong"))[0] == 401
        assert get(f"{mirror.url}/missing.mp4")[0] == 404
        assert get(f"{mirror.url}/vid001.webm")[0] == 404
        assert get(f"{mirror.url}/../vid001.mp4")[0] == 404
        assert mirror.requests["vid001"] == 4 and mirror.requests["missing"] == 1


def test_range_requests(root: Path) -> None:
    data = (root / "a" / "b" / "vid001.mp4").read_bytes()
    size = len(data)
    with LoopbackMirror(root, (USER, PASSWORD)) as mirror:
        url = f"{mirror.url}/vid001.mp4"
        status, headers, body = get(url, headers={"Range": "bytes=100-"})
        assert (status, body) == (206, data[100:])
        assert headers["Content-Range"] == f"bytes 100-{size - 1}/{size}"
        assert get(url, headers={"Range": "bytes=10-19"})[2] == data[10:20]
        assert get(url, headers={"Range": "bytes=-7"})[2] == data[-7:]
        status, headers, _ = get(url, headers={"Range": f"bytes={size}-"})
        assert status == 416 and headers["Content-Range"] == f"bytes */{size}"
        assert mirror.ranged_requests["vid001"] == 4


def test_fault_injection(root: Path) -> None:
    data = (root / "a" / "b" / "vid001.mp4").read_bytes()
    faults = {"vid001": "transient:2"}
    with LoopbackMirror(root, (USER, PASSWORD), faults) as mirror:
        url = f"{mirror.url}/vid001.mp4"
        assert [get(url)[0] for _ in range(4)] == [500, 500, 200, 200]
    for kind, status in (("not_found", 404), ("auth", 401)):
        with LoopbackMirror(root, (USER, PASSWORD), {"vid001": kind}) as mirror:
            assert get(f"{mirror.url}/vid001.mp4")[0] == status
            assert get(f"{mirror.url}/vid001.mp4")[0] == status  # every time, unlike transient
    with LoopbackMirror(root, (USER, PASSWORD), {"vid001": "html"}) as mirror:
        status, headers, body = get(f"{mirror.url}/vid001.mp4")
        assert status == 200 and headers["Content-Type"].startswith("text/html") and body.startswith(b"<!DOCTYPE")
    with LoopbackMirror(root, (USER, PASSWORD), {"vid001": "truncated:1"}) as mirror:
        with pytest.raises(http.client.IncompleteRead) as caught:
            get(f"{mirror.url}/vid001.mp4")
        assert len(caught.value.partial) == len(data) // 2 and caught.value.expected == len(data) - len(data) // 2
        assert get(f"{mirror.url}/vid001.mp4")[2] == data  # the count is used up


def test_stall_hangs_until_the_client_times_out_and_the_thread_ends_by_itself(root: Path) -> None:
    before = threading.active_count()
    with LoopbackMirror(root, (USER, PASSWORD), {"vid001": "stall"}, stall_seconds=1.0) as mirror:
        request = urllib.request.Request(f"{mirror.url}/vid001.mp4",
                                         headers={"Authorization": "Basic " + base64.b64encode(
                                             f"{USER}:{PASSWORD}".encode()).decode()})
        started = time.monotonic()
        with urllib.request.urlopen(request, timeout=0.3) as response:
            assert response.status == 200
            first = response.read1(1 << 20)
            assert 0 < len(first) < int(response.headers["Content-Length"])
            with pytest.raises(TimeoutError):
                response.read()
        assert time.monotonic() - started < 1.0
        deadline = time.monotonic() + 5
        while threading.active_count() > before + 1 and time.monotonic() < deadline:  # +1: the server loop
            time.sleep(0.05)
        assert threading.active_count() <= before + 1


def test_parse_fault_counts() -> None:
    assert parse_fault("transient").times == 2 and parse_fault("transient:5").times == 5
    assert parse_fault("stall").times is None and parse_fault("truncated:1").times == 1
    with pytest.raises(Exception, match="unknown fault"):
        parse_fault("explode")


def test_command_line_prints_url_and_serves_until_stopped(root: Path, tmp_path: Path) -> None:
    credentials = tmp_path / "credentials.txt"
    credentials.write_text(f"{USER}:{PASSWORD}\n")
    credentials.chmod(0o600)
    process = subprocess.Popen(
        [sys.executable, "-m", "howto_prep.cli", "mirror", "--root", str(root), "--credentials", str(credentials),
         "--fault", "vid001=not_found"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        url = process.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:")
        assert get(f"{url}/vid001.mp4")[0] == 404
        assert get(f"{url}/vid002.webm.mp4", auth=None)[0] == 401
        assert get(f"{url}/vid002.webm.mp4")[0] == 200
    finally:
        process.send_signal(signal.SIGTERM)
        stdout, stderr = process.communicate(timeout=10)
    assert process.returncode == 0 and PASSWORD not in stdout + stderr
    assert '"GET /vid001.mp4 HTTP/1.1" 404' in stderr  # an access log, without the Authorization header


def test_command_line_bad_fault_is_one_line() -> None:
    result = subprocess.run([sys.executable, "-m", "howto_prep.cli", "mirror", "--root", ".", "--fault", "x"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and result.stderr.strip() == "howto-prep: error: --fault takes ID=KIND, got 'x'"
