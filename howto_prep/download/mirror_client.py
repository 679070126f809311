"""Fetch `<mirror>/<id>.<ext>` with HTTP Basic auth into a resumable partial file.

The partial file survives failures and runs, and the next request asks only for the missing bytes
(`Range: bytes=N-`, answered by 206); a file is complete only when its length equals what the server
announced.
"""

from __future__ import annotations

import http.client
import os
import socket
import urllib.error
import urllib.request
from pathlib import Path

from howto_prep.download.credentials import Credentials
from howto_prep.download.fetch_error import FetchError
from howto_prep.errors import FailureKind, is_disk_full

DEFAULT_EXTENSIONS = ("mp4", "webm", "mkv")
CHUNK = 256 * 1024
HTML_PREFIXES = (b"<!doctype html", b"<html", b"<?xml", b"<head")


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Never follow a redirect: it could carry the Authorization header to another host."""

    def redirect_request(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        return None


_OPENER = urllib.request.build_opener(_NoRedirect)


def partial_path(partial_dir: Path, video_id: str, ext: str) -> Path:
    return partial_dir / f"{video_id}.{ext}.part"


def fetch_from_mirror(video_id: str, base_url: str, credentials: Credentials | None, partial_dir: Path,
                      timeout_s: float, extensions: tuple[str, ...] = DEFAULT_EXTENSIONS) -> Path:
    """Download the video into `partial_dir` and return the complete partial file (not yet validated as media).

    Extensions are tried in order (an existing partial file's first); 404 on all of them is not_found.
    """
    partial_dir.mkdir(parents=True, exist_ok=True)
    started = [ext for ext in extensions if partial_path(partial_dir, video_id, ext).exists()]
    order = started + [ext for ext in extensions if ext not in started]
    first_404 = None
    for ext in order:
        url = f"{base_url.rstrip('/')}/{video_id}.{ext}"
        try:
            return _download(url, partial_path(partial_dir, video_id, ext), credentials, timeout_s)
        except _NotFound as err:
            first_404 = first_404 or str(err)
    raise FetchError(FailureKind.NOT_FOUND, first_404 or f"{video_id} not on the mirror")


class _NotFound(Exception):
    pass


def _download(url: str, part: Path, credentials: Credentials | None, timeout_s: float) -> Path:
    offset = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": "howto-prep"}
    if credentials is not None:
        headers["Authorization"] = credentials.authorization_header()
    if offset:
        headers["Range"] = f"bytes={offset}-"
    try:
        response = _OPENER.open(urllib.request.Request(url, headers=headers), timeout=timeout_s)
    except urllib.error.HTTPError as err:
        err.close()
        if err.code == 416 and offset:  # our partial file is stale (e.g. the file changed): start over
            part.unlink()
            return _download(url, part, credentials, timeout_s)
        raise _http_error(err, url) from None
    except (TimeoutError, socket.timeout) as err:
        raise FetchError(FailureKind.NETWORK_TIMEOUT, f"{url}: timed out connecting ({err})") from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as err:
        raise FetchError(FailureKind.NETWORK, f"{url}: {getattr(err, 'reason', err)}") from None
    with response:
        expected, append = _expected_length(response, offset, url)
        if expected is not None and not append:
            offset = 0
        _reject_html(response, url, part)
        written = _stream(response, part, append, url)
    total = offset + written if append else written
    if expected is not None and total != expected:
        raise FetchError(FailureKind.NETWORK, f"{url}: received {total} of {expected} announced bytes")
    if total == 0:
        part.unlink(missing_ok=True)
        raise FetchError(FailureKind.BAD_MEDIA, f"{url}: empty body")
    return part


def _http_error(err: urllib.error.HTTPError, url: str) -> FetchError | _NotFound:
    text = f"{url}: HTTP Error {err.code}: {err.reason}"
    if err.code in (404, 410):
        return _NotFound(text)
    if err.code in (401, 403):
        return FetchError(FailureKind.AUTH, text)
    if err.code >= 500 or err.code in (408, 429):
        return FetchError(FailureKind.NETWORK, text, transient=True)
    return FetchError(FailureKind.NETWORK, text, transient=False)


def _expected_length(response: http.client.HTTPResponse, offset: int, url: str) -> tuple[int | None, bool]:
    """(total file length, whether to append to the partial file) from the status and headers."""
    length = response.headers.get("Content-Length")
    announced = int(length) if length and length.isdigit() else None
    if response.status == 206:
        content_range = response.headers.get("Content-Range", "")
        try:
            span, total = content_range.removeprefix("bytes ").split("/")
            first = int(span.split("-")[0])
        except ValueError:
            raise FetchError(FailureKind.NETWORK,
                             f"{url}: 206 without a valid Content-Range ({content_range!r})") from None
        if first != offset:
            raise FetchError(FailureKind.NETWORK, f"{url}: asked for bytes from {offset}, got a range from {first}")
        return (int(total) if total.isdigit() else None), True
    if response.status != 200:
        raise FetchError(FailureKind.NETWORK, f"{url}: unexpected HTTP status {response.status}", transient=False)
    return announced, False  # the server ignored Range (or none was sent): the body is the whole file


def _reject_html(response: http.client.HTTPResponse, url: str, part: Path) -> None:
    content_type = (response.headers.get("Content-Type") or "").lower()
    head = response.peek(64)[:64].lstrip().lower() if hasattr(response, "peek") else b""
    if content_type.startswith("text/html") or head.startswith(HTML_PREFIXES):
        part.unlink(missing_ok=True)
        raise FetchError(FailureKind.BAD_MEDIA,
                         f"{url}: the server sent an HTML page ({content_type or 'no Content-Type'}), not a video")


def _stream(response: http.client.HTTPResponse, part: Path, append: bool, url: str) -> int:
    """Copy the body to `part` (appending on 206); bytes already written stay there for a resume."""
    written = 0
    with part.open("ab" if append else "wb") as sink:
        try:
            while True:
                block = response.read1(CHUNK) if hasattr(response, "read1") else response.read(CHUNK)
                if not block:
                    break
                try:
                    sink.write(block)
                except OSError as err:
                    if is_disk_full(err):
                        raise FetchError(FailureKind.DISK_FULL, f"writing {part.name}: {err}") from None
                    raise
                written += len(block)
        except (TimeoutError, socket.timeout):
            raise FetchError(FailureKind.NETWORK_TIMEOUT,
                             f"{url}: no data for too long after {written} bytes") from None
        except (http.client.IncompleteRead, ConnectionError, OSError, http.client.HTTPException) as err:
            raise FetchError(FailureKind.NETWORK, f"{url}: connection broke after {written} bytes ({err!r})") from None
        finally:
            try:
                sink.flush()
                os.fsync(sink.fileno())
            except OSError as err:
                if is_disk_full(err):
                    raise FetchError(FailureKind.DISK_FULL, f"writing {part.name}: {err}") from None
                raise
    return written
