"""A real Google Cloud Storage JSON API for tests: gcp-storage-emulator in-process on 127.0.0.1,
behind the same fault-injecting, request-recording proxy as the S3 tests (tests/s3_server.py).

`gcs` (a pytest fixture: import it into a test module) gives each test a fresh bucket and sets,
for that test only, what a real run reads: STORAGE_EMULATOR_HOST (gcsfs's standard variable for
an emulator: requests go there, without credentials) and no Google credentials or metadata server.

What the emulator does not do (checked against its source, 2026.7.19): it ignores the
`ifGenerationMatch=0` precondition of a create. The tests therefore check that our lock's create
carries it (the proxy records every request), and that a second run is refused by the look the
toolkit takes before its create; the precondition itself is enforced only by real GCS.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator
from urllib.parse import unquote

import pytest

from ray_cluster import free_port
from s3_server import FaultProxy


@dataclass
class GcsServer:
    """What a test gets: the bucket and the proxy in front of the emulator (its faults and record)."""

    bucket: str
    proxy: FaultProxy
    emulator: tuple[str, int]

    def url(self, prefix: str = "set") -> str:
        return f"gs://{self.bucket}/{prefix}"

    def requests_with(self, text: str) -> list[str]:
        """The recorded request lines (method, decoded path) that contain `text`."""
        lines = [f"{seen.method} {unquote(seen.path)}" for seen in self.proxy.seen]
        return [line for line in lines if text in line]


@pytest.fixture(scope="module")
def gcs_emulator() -> Iterator[tuple[str, int]]:
    from gcp_storage_emulator.server import create_server

    logging.getLogger("gcp_storage_emulator").setLevel(logging.CRITICAL)
    port = free_port()
    server = create_server("127.0.0.1", port, in_memory=True)
    server.start()
    try:
        yield ("127.0.0.1", port)
    finally:
        server.stop()


def isolate_gcs_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, endpoint: str) -> None:
    """The emulator's endpoint only: no service-account file, gcloud login or VM metadata server."""
    for name in ("GOOGLE_APPLICATION_CREDENTIALS", "GOOGLE_CLOUD_PROJECT", "GCLOUD_PROJECT",
                 "GOOGLE_API_USE_MTLS_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", endpoint)
    monkeypatch.setenv("CLOUDSDK_CONFIG", str(tmp_path / "no-gcloud-config"))
    monkeypatch.setenv("NO_GCE_CHECK", "true")
    monkeypatch.setenv("GCE_METADATA_HOST", "127.0.0.1:9")  # google-auth's metadata probe fails at once
    monkeypatch.setenv("GCE_METADATA_IP", "127.0.0.1:9")


@pytest.fixture
def gcs(gcs_emulator: tuple[str, int], monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[GcsServer]:
    from gcsfs.core import GCSFileSystem

    proxy = FaultProxy(gcs_emulator).start()
    isolate_gcs_environment(monkeypatch, tmp_path, proxy.endpoint)
    server = GcsServer(f"test-{uuid.uuid4().hex[:12]}", proxy, gcs_emulator)
    direct = GCSFileSystem(skip_instance_cache=True, endpoint_url=f"http://{gcs_emulator[0]}:{gcs_emulator[1]}",
                           token="anon")
    direct.mkdir(server.bucket)
    try:
        yield server
    finally:
        proxy.stop()
