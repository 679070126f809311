"""Object storage (s3://, gs://, any fsspec URL) as a place for shard sets, with the disk's guarantees.

Why a layer of our own over fsspec: the toolkit needs a handful of operations with one fault policy,
not a filesystem. `Store` gives them (put_file, put_bytes, get_bytes, exists, list, size, modified,
delete, create_exclusive, check_access, abort_unfinished_uploads, open_read) and decides, in one
place, what a store's error means:

- throttling (503 SlowDown), 5xx, timeouts and dropped connections are retried with exponential
  backoff and jitter (`Retry`); botocore also retries each single request (standard mode, so one
  failed part of a multipart upload does not restart the whole file). After the last try the
  operation raises SystemFault (exit 5): one line naming the URL and the error's class/code;
- a refusal (403, bad or expired credentials, no credentials) or a missing bucket raises SystemFault
  at once: retrying cannot fix it;
- a missing object is FileNotFoundError (the caller's business, never a fault).

No fault is ever a video's failure. Credentials come only the standard way (AWS_* variables,
~/.aws/config and credentials, instance roles; `AWS_ENDPOINT_URL` / `AWS_ENDPOINT_URL_S3` for an
S3-compatible store, read by botocore itself); a URL that carries credentials (`s3://KEY:SECRET@b`)
is refused without echoing it, and error text is stripped of the secret key, session token and
presigned-URL signatures before it reaches a message or a log.

What makes a shard set on a store as safe as on disk: an object appears whole or not at all (S3
PUT and CompleteMultipartUpload are atomic; a dropped upload leaves nothing, s3fs aborts the
multipart upload; `put_file` checks the stored size afterwards), so the writer uploads the tar to
its final key, then its per-shard JSON: a shard exists only when its JSON does, as on disk.

One writer per output URL: `StoreLock`, an object created with a conditional write
(`create_exclusive`: S3 `If-None-Match: *`, GCS `if_generation_match=0`, a hard link on local
disk). There is no kernel to release it when its holder dies, so the rule is a lease:

    The holder rewrites the lock object every `heartbeat_s` seconds (N, default 30) from a daemon
    thread. A lock whose object was last written more than `stale_after_s` seconds ago (M, default
    10 x N; the larger of the taker's M and the holder's recorded M counts) is stale: its holder
    is dead or frozen. The age is the younger of two readings, by the store's clock (the object's
    LastModified) and by the holder's (the heartbeat time it wrote), so neither a holder's slow clock
    nor LastModified's whole seconds make a live lock look stale. A new run takes a stale lock over with a
    warning line: it first creates the claim object LOCK.takeover-<holder token> exclusively (so of
    several takers exactly one goes on), re-reads the lock (still the stale holder's token?),
    deletes it and creates its own exclusively; the claim is then deleted (a claim older than M is
    a taker that died midway, and is deleted by the next one). A fresh lock refuses
    the new run with OutputLocked (exit 4), one line naming the holder. A holder that finds its lock
    gone or rewritten by another run (or could not refresh it for M seconds) has lost it: it logs
    one line and `ensure_held()` raises SystemFault, so the writer stops before committing a shard.

    One exception to waiting M: a lock whose holder ran on this very machine (same hostname and boot
    id) in a process that is gone (no such pid, or a pid started at another time than the one the
    lock records) is stale at once: a run killed with kill -9 (or by the OOM killer) is rerun on the
    same machine without waiting out the lease.

The taker's clock must agree with the store's and the holder's to well within M (NTP does), and M
must be well above N and the store's worst latency. A lease is not a fence: a holder frozen for M
seconds (a stopped VM) that wakes up may write once more before its heartbeat finds the lock gone;
`ensure_held()` before each shard's JSON keeps that to the shard in flight.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import random
import re
import shutil
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar
from urllib.parse import urlsplit

from howto_prep.errors import OutputLocked, SystemFault, UserError

logger = logging.getLogger(__name__)

T = TypeVar("T")

URL_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
LOCK_NAME = ".howto-prep.lock"
S3_PROTOCOLS = ("s3", "s3a")
GCS_PROTOCOLS = ("gs", "gcs")
LOCAL_PROTOCOLS = ("file", "local")

# S3 error codes that say "retrying will not help" (credentials, permissions, clock skew).
REFUSED_CODES = frozenset({
    "AccessDenied", "AccountProblem", "AllAccessDisabled", "InvalidAccessKeyId", "SignatureDoesNotMatch",
    "ExpiredToken", "InvalidToken", "TokenRefreshRequired", "RequestTimeTooSkewed", "InvalidSecurity",
    "NotSignedUp", "InvalidPayer", "403", "401", "Forbidden", "Unauthorized",
})
NO_BUCKET_CODES = frozenset({"NoSuchBucket"})
MISSING_CODES = frozenset({"NoSuchKey", "404", "NotFound", "NoSuchUpload"})
EXISTS_CODES = frozenset({"PreconditionFailed", "412"})
TRANSIENT_CODES = frozenset({
    "SlowDown", "Throttling", "ThrottlingException", "RequestLimitExceeded", "TooManyRequests", "429",
    "RequestTimeout", "RequestTimeoutException", "InternalError", "ServiceUnavailable", "503", "500",
    "502", "504", "BandwidthLimitExceeded", "XAmzContentSHA256Mismatch", "IncompleteBody",
    "BadDigest", "ConditionalRequestConflict", "OperationAborted", "409",  # S3: "a conflicting operation ... try again"
})


def is_url(text: str | os.PathLike) -> bool:
    """True for `scheme://...` (s3://, gs://, file://, http://); a plain path (even `C:\\x`) is not."""
    return bool(URL_SCHEME.match(str(text)))


# ---------------------------------------------------------------------------------------------
# Retries and what a store's error means


@dataclass(frozen=True)
class Retry:
    """How often and how patiently a store operation is tried: `tries` in all, the k-th wait
    min(max_delay, first_delay * 2**k) scaled by a random factor in [0.5, 1) (jitter, so many
    workers throttled together do not come back together)."""

    tries: int = 6
    first_delay: float = 1.0
    max_delay: float = 30.0

    def delays(self) -> Iterator[float]:
        for k in range(max(0, self.tries - 1)):
            yield min(self.max_delay, self.first_delay * 2 ** k) * random.uniform(0.5, 1.0)


class Verdict:
    """What an error of the store means (see `classify`)."""

    MISSING = "missing"  # no such object: FileNotFoundError to the caller
    EXISTS = "exists"  # a conditional write found the object there
    NO_BUCKET = "no_bucket"  # SystemFault at once
    REFUSED = "refused"  # 401/403, bad credentials, clock skew: SystemFault at once
    NO_CREDENTIALS = "no_credentials"  # SystemFault at once
    TRANSIENT = "transient"  # throttling, 5xx, timeouts, dropped connections: retried
    FATAL = "fatal"  # the store rejected the request for another reason: SystemFault at once
    OTHER = "other"  # not the store's error (a bug of ours): propagates unchanged


def _chain(err: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    while err is not None and err not in seen and len(seen) < 8:
        seen.append(err)
        err = err.__cause__ or err.__context__
    return seen


def _client_error_code(err: BaseException) -> tuple[str, int] | None:
    """(code, HTTP status) of a botocore ClientError, or of a gcsfs HttpError; None otherwise."""
    response = getattr(err, "response", None)
    if isinstance(response, dict) and "Error" in response:
        status = int(response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
        return str(response["Error"].get("Code") or status), status
    if type(err).__name__ == "HttpError" and isinstance(getattr(err, "code", None), int):  # gcsfs
        return str(err.code), int(err.code)
    if type(err) is OSError and str(err).startswith("Forbidden: "):  # gcsfs raises a bare OSError for 403
        return "Forbidden", 403
    return None


def _botocore_verdict(err: BaseException) -> str | None:
    try:
        from botocore import exceptions as bx
    except ImportError:
        return None
    if isinstance(err, (bx.NoCredentialsError, bx.PartialCredentialsError, bx.CredentialRetrievalError)):
        return Verdict.NO_CREDENTIALS
    if isinstance(err, (bx.ParamValidationError, bx.NoRegionError, bx.UnknownServiceError)):
        return Verdict.FATAL
    if isinstance(err, bx.BotoCoreError):  # connection, timeouts, truncated or unparsable responses
        return Verdict.TRANSIENT
    return None


def _transient_library_error(err: BaseException) -> bool:
    import asyncio

    if isinstance(err, (asyncio.TimeoutError, TimeoutError, ConnectionError)):
        return True
    with contextlib.suppress(ImportError):
        import aiohttp

        if isinstance(err, aiohttp.ClientError):
            return True
    with contextlib.suppress(ImportError):
        from fsspec.exceptions import FSTimeoutError

        if isinstance(err, FSTimeoutError):
            return True
    return False


def classify(err: BaseException) -> str:
    """The Verdict for an error raised by fsspec/s3fs/botocore (the translated error and its causes)."""
    chain = _chain(err)
    for link in chain:
        coded = _client_error_code(link)
        if coded is not None:
            code, status = coded
            if code in NO_BUCKET_CODES:
                return Verdict.NO_BUCKET
            if code in MISSING_CODES or status == 404:
                return Verdict.MISSING
            if code in EXISTS_CODES or status == 412:
                return Verdict.EXISTS
            if code in REFUSED_CODES or status in (401, 403):
                return Verdict.REFUSED
            if code in TRANSIENT_CODES or status >= 500 or status in (409, 429):
                return Verdict.TRANSIENT
            return Verdict.FATAL
        verdict = _botocore_verdict(link)
        if verdict is not None:
            return verdict
        if _transient_library_error(link):
            return Verdict.TRANSIENT
    if isinstance(err, FileNotFoundError):
        return Verdict.MISSING
    if isinstance(err, FileExistsError):
        return Verdict.EXISTS
    if isinstance(err, PermissionError):
        return Verdict.REFUSED
    if isinstance(err, OSError):
        return Verdict.TRANSIENT
    return Verdict.OTHER


SECRET_QUERY = re.compile(r"(?i)(X-Amz-(Signature|Credential|Security-Token)|Signature|AWSAccessKeyId|"
                          r"x-goog-signature|x-goog-credential)=[^&\s\"']+")
SECRET_VARIABLES = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN")


def redact(text: str) -> str:
    """`text` without the secret key, session token or presigned-URL signatures (one line)."""
    for name in SECRET_VARIABLES:
        value = os.environ.get(name)
        if value and len(value) >= 4:
            text = text.replace(value, "***")
    text = SECRET_QUERY.sub(lambda m: f"{m.group(1)}=***", text)
    return " ".join(text.split())


def describe_error(err: BaseException) -> str:
    """`SlowDown (HTTP 503)` for a store's coded error, else `ClassName: first words`: one short line."""
    for link in _chain(err):
        coded = _client_error_code(link)
        if coded is not None:
            code, status = coded
            return f"{code} (HTTP {status})" if status and str(status) != code else code
    text = redact(str(err))
    return f"{type(err).__name__}: {text[:160]}" if text else type(err).__name__


# ---------------------------------------------------------------------------------------------
# The store


def _protocol(url: str) -> str:
    return urlsplit(url).scheme.lower()


def make_filesystem(url: str, request_tries: int = 3, connect_timeout: float = 10.0,
                    read_timeout: float = 60.0) -> Any:
    """A fresh fsspec filesystem for `url` (never fsspec's shared instance: we tune its retries and
    turn its listing cache off, which would hide objects written by other runs)."""
    protocol = _protocol(url)
    try:
        if protocol in S3_PROTOCOLS:
            import s3fs

            # botocore reads AWS_ENDPOINT_URL(_S3), AWS_DEFAULT_REGION, the profile and credentials itself.
            fs = s3fs.S3FileSystem(
                skip_instance_cache=True, use_listings_cache=False,
                config_kwargs={"retries": {"total_max_attempts": max(1, request_tries), "mode": "standard"},
                               "connect_timeout": connect_timeout, "read_timeout": read_timeout})
            fs.retries = 1  # s3fs's own loop (0.1 s waits) would be a third layer: ours has the backoff
            return fs
        if protocol in GCS_PROTOCOLS:
            # gcsfs.core's filesystem, the JSON API: the package's default class also probes each bucket's
            # layout over gRPC (zonal buckets), which a store without that API (an emulator, a proxy)
            # answers only after a 60 s timeout. Credentials: google-auth's chain (GOOGLE_APPLICATION_
            # CREDENTIALS, gcloud's login, the VM's service account); STORAGE_EMULATOR_HOST for emulators.
            from gcsfs.core import GCSFileSystem

            # An emulator takes no credentials (google-cloud-storage's own client does the same): without
            # this, google-auth first probes for a VM metadata server, with backoff (~6 s per filesystem).
            token = "anon" if os.environ.get("STORAGE_EMULATOR_HOST") else None
            fs = GCSFileSystem(skip_instance_cache=True, use_listings_cache=False, token=token)
            fs.retries = max(1, request_tries)  # gcsfs's own loop (1, 2, 4 s waits) is the per-request layer
            return fs
        import fsspec

        if protocol in LOCAL_PROTOCOLS:
            return fsspec.filesystem("file", skip_instance_cache=True)
        return fsspec.filesystem(protocol, skip_instance_cache=True, use_listings_cache=False)
    except ImportError as err:
        backend = "gcsfs" if protocol in GCS_PROTOCOLS else (err.name or f"for {protocol}://")
        raise UserError(f"{protocol}:// needs the fsspec backend package {backend}, which is not installed "
                        "(this toolkit's lock installs s3fs for s3://)") from None
    except ValueError as err:
        raise UserError(f"{protocol}:// is not a storage protocol fsspec knows ({err})") from None


class Store:
    """A shard set's place on an object store: keys under one root URL, one fault policy.

    Keys are '/'-separated paths below the root (`shard-000003.tar`, `vocab/parts/x.npy`).
    Thread-safe: s3fs runs its requests on fsspec's own event-loop thread. After a fork (Ray,
    DataLoader workers) make a new Store in the child: an async filesystem does not survive fork.
    """

    def __init__(self, fs: Any, root: str, url: str, retry: Retry = Retry(), part_size: int | None = None,
                 request_tries: int = 3) -> None:
        self.fs = fs
        self.request_tries = request_tries
        self.root = root.rstrip("/")
        self.url = url.rstrip("/")
        self.retry = retry
        self.part_size = part_size  # multipart part size for put_file (None: s3fs's 50 MiB)
        self.protocol = _protocol(url)
        self.local = self.protocol in LOCAL_PROTOCOLS

    @classmethod
    def for_url(cls, url: str, retry: Retry = Retry(), request_tries: int = 3,
                part_size: int | None = None) -> "Store":
        """The store at `url` (`s3://bucket/prefix`, `gs://...`, `file:///abs/dir`, any fsspec URL).
        A URL with credentials in it is refused without being repeated."""
        if not is_url(url):
            raise UserError(f"{url} is not a URL (scheme://...)")
        parts = urlsplit(url)
        if "@" in url or ":" in parts.netloc:  # user:secret@ (a secret may hold '/', so anywhere)
            raise UserError(f"{parts.scheme}:// URL that may carry credentials ('@', or ':' in the bucket): give "
                            "them the standard way (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE, "
                            "~/.aws/credentials), never in a URL")
        if parts.query or parts.fragment:
            raise UserError(f"{parts.scheme}://{parts.netloc}{parts.path}: a store URL takes no ?query or #fragment")
        if not parts.netloc and parts.scheme.lower() not in LOCAL_PROTOCOLS:
            raise UserError(f"{url} names no bucket")
        fs = make_filesystem(url, request_tries=request_tries)
        root = fs._strip_protocol(url)
        if isinstance(root, list):
            root = root[0]
        return cls(fs, str(root), url, retry=retry, part_size=part_size, request_tries=request_tries)

    def __repr__(self) -> str:
        return f"Store({self.url!r})"

    def __getstate__(self) -> dict:
        """Pickled (a Ray task argument) as its URL and options only: never credentials, and the
        receiving process builds its own filesystem (an async one does not survive fork or pickling)."""
        return {"url": self.url, "retry": self.retry, "part_size": self.part_size, "request_tries": self.request_tries}

    def __setstate__(self, state: dict) -> None:
        other = Store.for_url(state["url"], retry=state["retry"], request_tries=state["request_tries"],
                              part_size=state["part_size"])
        self.__dict__.update(other.__dict__)

    # -- names

    def path(self, key: str) -> str:
        """The filesystem path (no protocol) of `key`."""
        key = key.lstrip("/")
        if not key or key.startswith("../") or "/../" in key or key == "..":
            raise ValueError(f"bad object key {key!r}")
        return f"{self.root}/{key}"

    def url_of(self, key: str) -> str:
        """The full URL of `key` (what messages, webdataset and index files name)."""
        return f"{self.url}/{key.lstrip('/')}"

    def key_of(self, path: str) -> str:
        path = self.fs._strip_protocol(path)
        return path[len(self.root) + 1:] if path.startswith(self.root + "/") else path

    # -- the retry loop

    def _call(self, what: str, key: str, operation: Callable[[], T]) -> T:
        """Run `operation` under the fault policy (module docstring); `what` names it in messages."""
        url = self.url_of(key) if key else self.url
        started = time.monotonic()
        delays = self.retry.delays()
        tries = 0
        while True:
            tries += 1
            try:
                return operation()
            except Exception as err:
                verdict = classify(err)
                if verdict == Verdict.OTHER:
                    raise
                if verdict == Verdict.EXISTS:
                    raise FileExistsError(errno.EEXIST, "object exists", url) from err
                if verdict == Verdict.MISSING:
                    raise FileNotFoundError(errno.ENOENT, "no such object", url) from err
                detail = describe_error(err)
                if verdict == Verdict.NO_BUCKET:
                    raise SystemFault(f"object store: the bucket of {url} does not exist ({what}: {detail}); "
                                      "create it or fix the URL") from err
                if verdict == Verdict.NO_CREDENTIALS:
                    raise SystemFault(f"object store: no credentials for {url} ({what}): set AWS_PROFILE or "
                                      "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, or use an instance role") from err
                if verdict == Verdict.REFUSED:
                    raise SystemFault(f"object store refused {what} {url}: {detail}: check the credentials "
                                      "(AWS_* variables, ~/.aws) and the bucket's permissions") from err
                if verdict == Verdict.FATAL:
                    raise SystemFault(f"object store rejected {what} {url}: {detail}") from err
                delay = next(delays, None)
                if delay is None:
                    raise SystemFault(
                        f"object store failing: {what} {url}: {detail} ({tries} tries over "
                        f"{time.monotonic() - started:.0f} s); finished output is kept; rerun the same "
                        "command to continue") from err
                logger.info("object store: %s %s: %s; try %d of %d in %.1f s", what, url, detail, tries + 1,
                            self.retry.tries, delay)
                time.sleep(delay)

    # -- operations

    def put_file(self, local_path: str | os.PathLike, key: str) -> None:
        """Upload a whole local file to `key`; it appears whole or not at all (multipart for big files
        is s3fs's business). The stored size is checked afterwards; a mismatch is retried."""
        local_path = Path(local_path)
        size = local_path.stat().st_size
        if self.local:
            self._call("upload", key, lambda: _local_copy(local_path, self.path(key)))
            return

        def upload() -> None:
            options = {"chunksize": self.part_size} if self.part_size and self.protocol in S3_PROTOCOLS else {}
            self.fs.put_file(str(local_path), self.path(key), **options)
            stored = self.fs.info(self.path(key))["size"]
            if stored != size:  # a store that took a torn body: never leave it there, even for a moment longer
                with contextlib.suppress(Exception):
                    self.fs.rm_file(self.path(key))
                raise OSError(errno.EIO, f"the store kept {stored} bytes of {size}")

        self._call("upload", key, upload)

    def put_bytes(self, key: str, data: bytes) -> None:
        """Write `data` as `key` (replacing it): whole or not at all."""
        if self.local:
            self._call("write", key, lambda: _local_write(self.path(key), data))
            return
        self._call("write", key, lambda: self.fs.pipe_file(self.path(key), data))

    def get_bytes(self, key: str) -> bytes:
        """The object's bytes; FileNotFoundError when there is none."""
        return self._call("read", key, lambda: self.fs.cat_file(self.path(key)))

    def get_file(self, key: str, local_path: str | os.PathLike) -> None:
        """Download `key` whole into `local_path` (retried; a short copy is a transient fault, tried again)."""
        local_path = Path(local_path)

        def download() -> None:
            self.fs.get_file(self.path(key), str(local_path))
            expected = self.fs.info(self.path(key))["size"]
            if local_path.stat().st_size != expected:
                raise OSError(errno.EIO, f"read {local_path.stat().st_size} bytes of {expected}")

        self._call("download", key, download)

    def _info(self, key: str) -> dict:
        return self._call("stat", key, lambda: self.fs.info(self.path(key)))

    def exists(self, key: str) -> bool:
        """Whether the object exists (a store fault is a SystemFault, never a quiet False)."""
        try:
            info = self._info(key)
        except FileNotFoundError:
            return False
        return info.get("type", "file") == "file"

    def size(self, key: str) -> int:
        return int(self._info(key)["size"])

    def modified(self, key: str) -> float:
        """When the object was last written, in epoch seconds by the store's clock."""
        seconds = modified_seconds(self._info(key))
        if seconds is None:
            raise SystemFault(f"object store: {self.url_of(key)} has no modification time")
        return seconds

    def list_info(self, prefix: str) -> dict[str, tuple[int, float | None]]:
        """key -> (size, last modified in epoch seconds or None) of every object below `prefix`
        (a folder such as `vocab`; "" for the whole root: small listings, `iter_objects` streams a big root)."""
        target = self.path(prefix) if prefix else self.root
        try:
            found = self._call("list", prefix, lambda: self.fs.find(target, detail=True))
        except FileNotFoundError:
            found = {}
        return {self.key_of(path): (int(info.get("size") or 0), modified_seconds(info))
                for path, info in found.items() if info.get("type", "file") == "file"}

    def list(self, prefix_glob: str = "*") -> list[str]:
        """Keys below the root matching `prefix_glob` (fsspec glob: `*.json`, `vocab/parts/*`), sorted."""
        pattern = self.path(prefix_glob)
        try:
            found = self._call("list", prefix_glob, lambda: self.fs.glob(pattern, detail=True))
        except FileNotFoundError:
            found = {}
        if not found:
            self.check_access()  # s3fs lists a missing bucket as empty: that is a fault, not "no shards"
        return sorted(self.key_of(path) for path, info in found.items() if info.get("type", "file") == "file")

    def iter_objects(self, page_size: int = 1000) -> Iterator[tuple[str, int]]:
        """(key below the root, size) of every object below the root. S3 is read a page at a time
        (ListObjectsV2, 1,000 keys a request, each page under the fault policy): 1.2 M objects are
        never one Python object each; GCS a page at a time too (the JSON API's objects.list); other
        stores are listed in one fsspec call."""
        if self.protocol in GCS_PROTOCOLS:
            yield from self._iter_gcs_objects(page_size)
            return
        if self.protocol not in S3_PROTOCOLS:
            try:
                found = self._call("list", "", lambda: self.fs.find(self.root, detail=True))
            except FileNotFoundError:
                found = {}
            for path, info in found.items():
                if info.get("type", "file") == "file":
                    yield self.key_of(path), int(info.get("size") or 0)
            return
        bucket, _, prefix = self.root.partition("/")
        prefix = f"{prefix}/" if prefix else ""
        token: str | None = None
        while True:
            request = {"Bucket": bucket, "Prefix": prefix, "MaxKeys": page_size}
            if token:
                request["ContinuationToken"] = token
            page = self._call("list", "", lambda: self.fs.call_s3("list_objects_v2", **request))
            for item in page.get("Contents", []):
                yield item["Key"][len(prefix):], int(item.get("Size", 0))
            token = page.get("NextContinuationToken")
            if not page.get("IsTruncated") or not token:
                return

    def _iter_gcs_objects(self, page_size: int) -> Iterator[tuple[str, int]]:
        bucket, _, prefix = self.root.partition("/")
        prefix = f"{prefix}/" if prefix else ""
        token: str | None = None
        while True:
            request = {"prefix": prefix, "maxResults": page_size, "fields": "items(name,size),nextPageToken"}
            if token:
                request["pageToken"] = token
            page = self._call("list", "", lambda: self.fs.call("GET", "b/{}/o", bucket, json_out=True, **request))
            for item in page.get("items", []):
                yield item["name"][len(prefix):], int(item.get("size", 0))
            token = page.get("nextPageToken")
            if not token:
                return

    def delete(self, key: str) -> None:
        """Delete `key`; a missing object is fine."""
        with contextlib.suppress(FileNotFoundError):
            self._call("delete", key, lambda: self.fs.rm_file(self.path(key)))

    def create_exclusive(self, key: str, data: bytes) -> bool:
        """Create `key` with `data` only if no object has that name (atomic on the store: S3
        `If-None-Match: *`, GCS generation 0, a hard link on disk); False when it already exists."""
        if self.local:
            operation = lambda: _local_create_exclusive(self.path(key), data)  # noqa: E731
        elif self.protocol in S3_PROTOCOLS or self.protocol in GCS_PROTOCOLS:
            # Look first, then create conditionally: on a store that enforces the condition the look is
            # only a cheap early answer; on one that ignores it (older S3-compatible servers, emulators)
            # it still refuses every run that comes after the lock was written, if not a true race.
            if self.exists(key):
                return False
            operation = lambda: self.fs.pipe_file(self.path(key), data, mode="create")  # noqa: E731
        else:
            raise UserError(f"{self.protocol}:// has no conditional write this toolkit knows; one writer per "
                            "output cannot be guaranteed there (use s3://, gs:// or a local path)")
        try:
            self._call("create", key, operation)
        except FileExistsError:
            return False
        return True

    def check_access(self) -> None:
        """List the root once: a missing bucket, refused credentials or an unreachable store stops a
        command before any work, as one SystemFault line."""
        if self.local:
            return
        if self.protocol in S3_PROTOCOLS:
            bucket, _, prefix = self.root.partition("/")
            self._call("list", "", lambda: self.fs.call_s3("list_objects_v2", Bucket=bucket, Prefix=prefix,
                                                            MaxKeys=1))
            return
        with contextlib.suppress(FileNotFoundError):  # an empty prefix is fine
            self._call("list", "", lambda: self.fs.ls(self.root, detail=False))

    def abort_unfinished_uploads(self) -> list[str]:
        """Abort the multipart uploads begun under the root and never completed (a killed run's: S3
        keeps and bills their parts, invisible to listings); return their keys. Call it where the
        disk writer clears its temporary files: holding the output lock, before any writer starts."""
        if self.protocol not in S3_PROTOCOLS:
            return []
        bucket, _, prefix = self.root.partition("/")
        prefix = f"{prefix}/" if prefix else ""
        aborted = []
        listing = self._call("list uploads", "", lambda: self.fs.call_s3("list_multipart_uploads", Bucket=bucket,
                                                                          Prefix=prefix))
        for upload in listing.get("Uploads", []):
            key, upload_id = upload["Key"], upload["UploadId"]
            self._call("abort upload", key[len(prefix):], lambda: self.fs.call_s3(
                "abort_multipart_upload", Bucket=bucket, Key=key, UploadId=upload_id))
            aborted.append(key[len(prefix):])
        return sorted(aborted)

    def open_read(self, key: str, block_size: int | None = None) -> Any:
        """A seekable binary file of `key` (s3fs reads ahead in `block_size` blocks)."""
        options = {"block_size": block_size} if block_size else {}
        return self._call("open", key, lambda: self.fs.open(self.path(key), "rb", **options))


def modified_seconds(info: dict) -> float | None:
    """An fsspec info dict's modification time (each backend names it differently), epoch seconds."""
    for name in ("LastModified", "mtime", "updated", "last_modified"):
        value = info.get(name)
        if isinstance(value, datetime):
            return value.timestamp()
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    return None


def _local_copy(source: Path, target: str) -> None:
    from howto_prep.files import atomic_path

    Path(target).parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(Path(target)) as temp:
        shutil.copyfile(source, temp)


def _local_write(target: str, data: bytes) -> None:
    from howto_prep.files import atomic_write_bytes

    Path(target).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(Path(target), data)


def _local_create_exclusive(target: str, data: bytes) -> None:
    """Write a temporary sibling, then hard-link it to `target`: link(2) fails if `target` exists,
    so the file appears whole and only once."""
    from howto_prep.files import remove_quietly, temp_sibling

    path = Path(target)
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = temp_sibling(path)
    try:
        temp.write_bytes(data)
        os.link(temp, path)
    finally:
        remove_quietly(temp)


# ---------------------------------------------------------------------------------------------
# One writer per output URL


def lock_holder(tool: str) -> dict:
    """Who holds a lock: tool, host, pid, start time (no command line: a bucket is read more widely
    than a local lock file); the boot id and the process's start tick let a rerun on the same machine
    see that the holder is gone."""
    return {"tool": tool, "host": socket.gethostname(), "pid": os.getpid(),
            "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "boot_id": _boot_id(), "pid_start": _process_start(os.getpid())}


def _boot_id() -> str | None:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None


def _process_start(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (/proc/PID/stat field 22); None if gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    try:
        return int(stat[stat.rindex(")") + 2:].split()[19])
    except (ValueError, IndexError):
        return None


def holder_gone(doc: dict | None) -> bool:
    """True when `doc` names a process of this machine's current boot that no longer runs."""
    if not doc or doc.get("host") != socket.gethostname() or doc.get("boot_id") is None:
        return False
    if doc.get("boot_id") != _boot_id() or not isinstance(doc.get("pid"), int):
        return False
    return _process_start(doc["pid"]) != doc.get("pid_start")


def describe_holder(doc: dict | None) -> str:
    try:
        return f"{doc['tool']} (pid {doc['pid']} on {doc['host']}, since {doc['since']})"
    except (KeyError, TypeError):
        return "another run"


class StoreLock:
    """One writer per output URL: a lease held by heartbeats (the rule: module docstring).

    `with StoreLock(store, holder_info=lock_holder("extract")):` or acquire()/release(). The
    writer calls `ensure_held()` before committing each shard (its JSON upload)."""

    def __init__(self, store: Store, key: str = LOCK_NAME, holder_info: dict | None = None, *,
                 heartbeat_s: float = 30.0, stale_after_s: float | None = None) -> None:
        self.store = store
        self.key = key
        self.holder = dict(holder_info or lock_holder("howto-prep"))
        self.heartbeat_s = float(heartbeat_s)
        self.stale_after_s = float(stale_after_s if stale_after_s is not None else 10 * heartbeat_s)
        self.token = uuid.uuid4().hex
        self.lost: str | None = None  # why the lock was lost, once it was
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_refresh = 0.0

    def _doc(self) -> bytes:
        now = time.time()
        return json.dumps({**self.holder, "token": self.token, "heartbeat": now,
                           "heartbeat_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now)),
                           "heartbeat_s": self.heartbeat_s, "stale_after_s": self.stale_after_s}).encode()

    def _read(self, key: str) -> tuple[dict | None, float] | None:
        """(document or None if unreadable, age in seconds by the store's clock); None when absent."""
        try:
            raw = self.store.get_bytes(key)
            modified = self.store.modified(key)
        except FileNotFoundError:
            return None
        try:
            doc = json.loads(raw)
            doc = doc if isinstance(doc, dict) else None
        except ValueError:
            doc = None
        now = time.time()
        age = now - modified
        beat = (doc or {}).get("heartbeat")
        if isinstance(beat, (int, float)):  # the younger of the two: a holder whose clock is behind, or
            age = min(age, now - float(beat))  # LastModified's whole seconds, never make a live lock stale
        return doc, max(0.0, age)

    def _stale_after(self, doc: dict | None) -> float:
        declared = doc.get("stale_after_s") if doc else None
        return max(self.stale_after_s, float(declared) if isinstance(declared, (int, float)) else 0.0)

    def acquire(self) -> "StoreLock":
        """Take the lock, or raise OutputLocked naming its holder; a stale lock is taken over."""
        where = self.store.url
        for _ in range(5):
            if self.store.create_exclusive(self.key, self._doc()):
                self._start()
                return self
            found = self._read(self.key)
            if found is None:
                continue  # released between our create and our read: try again
            doc, age = found
            if holder_gone(doc):
                logger.warning("%s: taking over the lock of %s: that process no longer runs on this machine",
                               where, describe_holder(doc))
                if self._take_over(doc):
                    self._start()
                    return self
                continue
            if age <= self._stale_after(doc):
                raise OutputLocked(f"{where} is in use by {describe_holder(doc)}, last heartbeat {age:.0f} s ago; "
                                   "one run per output (wait for it, or stop it: a rerun continues where it "
                                   "stopped)")
            logger.warning("%s: taking over the lock of %s: no heartbeat for %.0f s (more than %.0f s)", where,
                           describe_holder(doc), age, self._stale_after(doc))
            if self._take_over(doc):
                self._start()
                return self
        raise OutputLocked(f"{where}: other runs keep taking the output lock; one run per output")

    def _take_over(self, stale: dict | None) -> bool:
        """Replace the stale lock `stale` (module docstring); True when this run now holds it."""
        stale_token = (stale or {}).get("token") or "unknown"
        claim = f"{self.key}.takeover-{re.sub(r'[^A-Za-z0-9]', '', str(stale_token))[:64]}"
        if not self.store.create_exclusive(claim, self._doc()):
            found = self._read(claim)
            if found is None:
                return False  # that taker finished: look at the lock again
            claimer, age = found
            if age > self._stale_after(claimer):  # a taker that died while taking over
                self.store.delete(claim)
                return False
            raise OutputLocked(f"{self.store.url} is being taken over by {describe_holder(claimer)}; one run per "
                               "output")
        try:
            current = self._read(self.key)
            if current is not None:
                doc, _ = current
                if (doc or {}).get("token", "unknown") != stale_token:
                    raise OutputLocked(f"{self.store.url} is in use by {describe_holder(doc)}; one run per output")
                self.store.delete(self.key)
            if not self.store.create_exclusive(self.key, self._doc()):
                found = self._read(self.key)
                raise OutputLocked(f"{self.store.url} is in use by {describe_holder(found and found[0])}; "
                                   "one run per output")
            return True
        finally:
            self.store.delete(claim)

    def _start(self) -> None:
        self.lost = None
        self._last_refresh = time.monotonic()
        self._stop.clear()
        self._thread = threading.Thread(target=self._beat, name="store-lock-heartbeat", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        """Rewrite the lock every heartbeat_s; stop (lost) when another run replaced it or after
        stale_after_s without a successful refresh (another run may have taken it over by now)."""
        while not self._stop.wait(self.heartbeat_s):
            try:
                found = self._read(self.key)
                if found is None or (found[0] or {}).get("token") != self.token:
                    holder = describe_holder(found[0]) if found else "nobody (the lock object is gone)"
                    self._lose(f"the output lock of {self.store.url} is now held by {holder}")
                    return
                self.store.put_bytes(self.key, self._doc())
                self._last_refresh = time.monotonic()
            except Exception as fault:  # SystemFault after the store's retries, or anything unexpected
                silent = time.monotonic() - self._last_refresh
                if silent > self.stale_after_s:
                    self._lose(f"could not refresh the output lock of {self.store.url} for {silent:.0f} s ({fault})")
                    return
                logger.warning("could not refresh the output lock of %s (%s); trying again", self.store.url, fault)

    def _lose(self, why: str) -> None:
        self.lost = why
        logger.error("%s: this run must stop writing there", why)

    def ensure_held(self) -> None:
        """SystemFault when the lock was lost (call before committing a shard)."""
        if self.lost:
            raise SystemFault(f"{self.lost}; stopped before committing more output")
        if self._thread is None:
            raise SystemFault(f"the output lock of {self.store.url} is not held")

    def release(self) -> None:
        """Stop the heartbeat and delete the lock, if it is still ours."""
        thread, self._thread = self._thread, None
        if thread is None:
            return
        self._stop.set()
        thread.join(timeout=self.heartbeat_s + 60)
        if self.lost:
            return
        with contextlib.suppress(SystemFault):  # a fault here must not hide the one in flight
            found = self._read(self.key)
            if found is not None and (found[0] or {}).get("token") == self.token:
                self.store.delete(self.key)

    def __enter__(self) -> "StoreLock":
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


# ---------------------------------------------------------------------------------------------
# Reading shards with webdataset


READ_BLOCK_BYTES = 64 * 2 ** 20


def gopen_fsspec(url: str, mode: str = "rb", bufsize: int = 8192, **kw: Any) -> Any:
    """A webdataset gopen handler for any fsspec URL: a read-ahead stream of the whole object
    (webdataset 1.0.2 has no s3:// handler, and its gs:// one shells out to gsutil)."""
    import fsspec

    if mode != "rb":
        raise ValueError(f"{url}: object-store shards are read-only here (mode {mode})")
    if _protocol(url) in GCS_PROTOCOLS:  # gcsfs.core's class, not the default one (make_filesystem says why)
        fs, path = _reader_filesystem(url), url.partition("://")[2]
    else:
        fs, path = fsspec.core.url_to_fs(url)  # fsspec's shared filesystem for the URL (its default retries)
    return fs.open(path, "rb", block_size=READ_BLOCK_BYTES, cache_type="readahead")


_READERS: dict[tuple[int, str], Any] = {}


def _reader_filesystem(url: str) -> Any:
    """One filesystem per process and protocol for streaming shards (an async one does not survive fork)."""
    key = (os.getpid(), _protocol(url))
    if key not in _READERS:
        _READERS[key] = make_filesystem(url, request_tries=6)
    return _READERS[key]


def register_webdataset_schemes(protocols: tuple[str, ...] = S3_PROTOCOLS + GCS_PROTOCOLS) -> None:
    """Let webdataset (wds.WebDataset, url_opener, our reader's remote path) open these URLs through
    fsspec. Idempotent; call it in each process that reads (DataLoader workers that spawn import it anew)."""
    import importlib

    gopen = importlib.import_module("webdataset.gopen")  # the module (`webdataset.gopen` is also a function)
    for protocol in protocols:
        gopen.gopen_schemes[protocol] = gopen_fsspec
