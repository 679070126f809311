"""One video, end to end, inside a Ray task: fetch (with retries), validate, rename to the final name.

The task never writes the manifest; it returns a `FetchResult` and the driver records it. Partial data
lives in `<out>/.partial/`, so a kill at any moment leaves nothing under a final name but whole,
validated files. With an object-store output (`store_url`), `out` is the local work folder and a placed
video is uploaded, then deleted there (download.upload).
"""

from __future__ import annotations

import fcntl
import os
import shutil
import sys
import time
import zlib
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Iterator

from howto_prep.download.catalog import CatalogEntry
from howto_prep.download.credentials import CredentialSource, Credentials, redact
from howto_prep.download.fetch_error import FetchError
from howto_prep.download.mirror_client import DEFAULT_EXTENSIONS, fetch_from_mirror, partial_path
from howto_prep.download.youtube import fetch_with_ytdlp, work_dir
from howto_prep.errors import FailureKind

PARTIAL_DIR = ".partial"
MIRROR, YOUTUBE, URL = "mirror", "youtube", "url"
LOCK_BUCKETS = 4096


@dataclass(frozen=True)
class FetchSettings:
    """Network patience: socket timeout, attempts per source, and the first backoff delay (doubled each time)."""

    timeout_s: float = 30.0
    attempts: int = 4
    backoff_s: float = 2.0
    lock_wait_s: float = 300.0  # how long to wait for a leftover worker of a killed run to finish a video
    extensions: tuple[str, ...] = DEFAULT_EXTENSIONS


@dataclass(frozen=True)
class FetchJob:
    """Everything a worker needs for one video; it carries no secret (only where to read credentials)."""

    record: CatalogEntry
    out: str
    sources: tuple[str, ...]
    mirror_url: str | None
    credential_source: CredentialSource | None
    cookies: str | None
    settings: FetchSettings = field(default_factory=FetchSettings)
    store_url: str | None = None  # s3://... : `out` is the work folder; the video is uploaded, then deleted


@dataclass(frozen=True)
class FetchResult:
    video_id: str
    ok: bool
    source: str | None
    path: str | None = None  # relative to the download folder
    bytes: int | None = None
    duration: float | None = None
    failure_kind: FailureKind | None = None
    error: str | None = None
    attempts: int = 0
    mirror_auth_rejected: bool = False  # the driver stops the run when the mirror rejects everyone
    node_ip: str | None = None  # the Ray node the task ran on (None: not in a Ray process)
    node_id: str | None = None
    store_fault: str | None = None  # the object store failed: the run stops, the video stays pending


def final_path(out: Path, video_id: str, ext: str) -> Path:
    """`<out>/<first two characters of id>/<id>.<ext>`."""
    return out / video_id[:2] / f"{video_id}.{ext}"


def existing_final(out: Path, video_id: str) -> Path | None:
    folder = out / video_id[:2]
    matches = sorted(folder.glob(f"{video_id}.*")) if folder.is_dir() else []
    return matches[0] if matches else None


def probe_video(path: Path) -> float:
    """Open with decord, decode the first frame, return the duration in seconds; FetchError(bad_media) if not a video."""
    from howto_prep.decode import import_decord  # the one safe import order (decord after torch)

    decord = import_decord()
    try:
        reader = decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=1)
        frames = len(reader)
        fps = reader.get_avg_fps()
        if frames <= 0 or not fps or fps <= 0:
            raise ValueError(f"{frames} frames at {fps} fps")
        reader[0]
    except Exception as err:  # decord raises DECORDError, RuntimeError, ValueError ...
        raise FetchError(FailureKind.BAD_MEDIA, f"decord cannot read {path.name}: {err}".strip()) from None
    return frames / fps


@contextmanager
def video_lock(out: Path, video_id: str, wait_s: float) -> Iterator[None]:
    """Hold an exclusive lock for `video_id` across processes and nodes sharing `out`.

    After a kill -9 of the driver, its Ray workers may still be finishing their videos for a while; the
    rerun's task for the same video waits here instead of writing the same partial file. Locks live in a
    fixed set of files (ids hashed into buckets), so their number stays bounded.
    """
    folder = out / PARTIAL_DIR / "locks"
    folder.mkdir(parents=True, exist_ok=True)
    bucket = zlib.crc32(video_id.encode()) % LOCK_BUCKETS
    with open(folder / f"{bucket:04x}.lock", "a+b") as handle:
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise FetchError(FailureKind.NETWORK,
                                     f"{video_id} stayed locked by another process for {wait_s:.0f} s") from None
                time.sleep(0.1)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def job_credentials(job: FetchJob) -> Credentials | None:
    """The credentials, read by this worker from the job's source (cached per process)."""
    return job.credential_source.load() if job.credential_source is not None else None


def fetch_video(job: FetchJob) -> FetchResult:
    """Fetch, validate and place one video (and, with a store, upload it: download.upload); never
    raises for a video-level problem. The result names the Ray node it ran on (for the run's per-node
    summary)."""
    try:
        with video_lock(Path(job.out), job.record.video_id, job.settings.lock_wait_s):
            result = _fetch_video_locked(job)
            if job.store_url and result.ok:
                from howto_prep.download.upload import publish_video

                result = publish_video(job.store_url, Path(job.out), result)
    except FetchError as err:
        result = FetchResult(job.record.video_id, False, None, failure_kind=err.kind, error=str(err), attempts=0)
    node_ip, node_id = current_node()
    return replace(result, node_ip=node_ip, node_id=node_id) if node_ip or node_id else result


def current_node() -> tuple[str | None, str | None]:
    """(IP address, node id) of the Ray node this process belongs to; (None, None) outside Ray (Ray is
    not imported for the asking: a download with --workers 0 never loads it)."""
    ray = sys.modules.get("ray")
    if ray is None:
        return None, None
    try:
        if not ray.is_initialized():
            return None, None
        return ray.util.get_node_ip_address(), ray.get_runtime_context().get_node_id()
    except Exception:  # a half-shut-down worker: the node is unknown, the result still counts
        return None, None


def _fetch_video_locked(job: FetchJob) -> FetchResult:
    out = Path(job.out)
    video_id = job.record.video_id
    adopted = _adopt_existing(out, video_id)
    if adopted is not None:
        return adopted
    errors: list[str] = []
    attempts = 0
    auth_rejected = False
    last: FetchError | None = None
    source = None
    for source in job.sources:
        try:
            temp, tries = _fetch_with_retries(job, source)
            attempts += tries
            return _place(out, video_id, temp, source, attempts, auth_rejected)
        except _Exhausted as exhausted:
            attempts += exhausted.tries
            last = exhausted.error
            errors.append(f"{source}: {last}")
            auth_rejected |= source == MIRROR and last.kind == FailureKind.AUTH
        except FetchError as err:  # validation of a complete file failed (its tries are already counted)
            last = err
            errors.append(f"{source}: {err}")
    assert last is not None
    return FetchResult(video_id, False, source, failure_kind=last.kind,
                       error=redact("; ".join(errors), job_credentials(job)), attempts=attempts,
                       mirror_auth_rejected=auth_rejected)


class _Exhausted(Exception):
    def __init__(self, error: FetchError, tries: int) -> None:
        self.error, self.tries = error, tries


def _fetch_with_retries(job: FetchJob, source: str) -> tuple[Path, int]:
    """Retry transient failures with exponential backoff; a permanent one ends the source at once."""
    settings = job.settings
    for attempt in range(1, max(1, settings.attempts) + 1):
        try:
            return _fetch_once(job, source), attempt
        except FetchError as err:
            if not err.transient or attempt >= settings.attempts:
                if not err.transient:
                    _discard_partials(Path(job.out), job.record.video_id, source, settings)
                raise _Exhausted(err, attempt) from None
            time.sleep(settings.backoff_s * 2 ** (attempt - 1))
    raise AssertionError("unreachable")


def _fetch_once(job: FetchJob, source: str) -> Path:
    partial_dir = Path(job.out) / PARTIAL_DIR
    record = job.record
    if source == MIRROR:
        if not job.mirror_url:
            raise FetchError(FailureKind.NOT_FOUND, "no --mirror-url given", transient=False)
        return fetch_from_mirror(record.video_id, job.mirror_url, job_credentials(job), partial_dir,
                                 job.settings.timeout_s, job.settings.extensions)
    url = record.url if source == URL else record.youtube_url
    cookies = Path(job.cookies) if job.cookies else None
    return fetch_with_ytdlp(record.video_id, url or record.youtube_url, partial_dir, cookies, job.settings.timeout_s)


def _place(out: Path, video_id: str, temp: Path, source: str, attempts: int, auth_rejected: bool) -> FetchResult:
    """Validate the complete temporary file, then rename it to its final name (atomic on one filesystem)."""
    try:
        duration = probe_video(temp)
    except FetchError:
        temp.unlink(missing_ok=True)
        raise
    ext = temp.name.removesuffix(".part").rsplit(".", 1)[-1]
    target = final_path(out, video_id, ext)
    target.parent.mkdir(parents=True, exist_ok=True)
    size = temp.stat().st_size
    os.replace(temp, target)
    if source != MIRROR:
        shutil.rmtree(work_dir(out / PARTIAL_DIR, video_id), ignore_errors=True)
    return FetchResult(video_id, True, source, str(target.relative_to(out)), size, duration,
                       attempts=attempts, mirror_auth_rejected=auth_rejected)


def _adopt_existing(out: Path, video_id: str) -> FetchResult | None:
    """A file already under its final name (renamed just before a kill) is validated and kept, not refetched."""
    existing = existing_final(out, video_id)
    if existing is None:
        return None
    try:
        duration = probe_video(existing)
    except FetchError:
        existing.unlink()
        return None
    return FetchResult(video_id, True, None, str(existing.relative_to(out)), existing.stat().st_size, duration)


def _discard_partials(out: Path, video_id: str, source: str, settings: FetchSettings) -> None:
    partial_dir = out / PARTIAL_DIR
    if source == MIRROR:
        for ext in settings.extensions:
            partial_path(partial_dir, video_id, ext).unlink(missing_ok=True)
    else:
        shutil.rmtree(work_dir(partial_dir, video_id), ignore_errors=True)
