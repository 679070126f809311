"""A validated `howto-prep download` invocation, built once from the command line.

With `--out s3://bucket/prefix` (or gs://), `out` is the local work folder (manifest, partial files,
videos waiting for their upload; see download.to_store) and `store_url` the output.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from howto_prep.download.catalog import CatalogEntry
from howto_prep.download.credentials import CredentialSource, Credentials, credential_source, load_credentials
from howto_prep.cli_support import is_store_url
from howto_prep.download.task import MIRROR, URL, YOUTUBE, FetchSettings
from howto_prep.errors import UserError
from howto_prep.local_copies import default_work_folder

@dataclass(frozen=True)
class DownloadPlan:
    """What to fetch from where, and how patiently: built once from the options, then only read."""

    out: Path  # the download folder; with store_url, the local work folder
    source: str = "auto"  # mirror | youtube | auto
    mirror_url: str | None = None
    credentials: Credentials | None = None  # the driver's copy: validation and redaction only
    credential_source: CredentialSource | None = None  # what workers get: where to read them
    cookies: Path | None = None
    workers: int = 4  # tasks in flight; 0 runs in this process without Ray
    address: str | None = None
    retry_failed: bool = False
    settings: FetchSettings = field(default_factory=FetchSettings)
    show_progress: bool = True
    store_url: str | None = None  # s3://bucket/prefix: where the videos go (download.to_store)


def check_mirror_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UserError(f"--mirror-url must be an http(s) URL, got {url!r}")
    if parts.username or parts.password:
        raise UserError("--mirror-url must not hold credentials; use --credentials FILE or HOWTO100M_USER/PASSWORD")
    return url.rstrip("/")


def output_folders(out: Path | str, work: Path | None) -> tuple[Path, str | None]:
    """(the local folder the run writes, absolute; the store URL or None)."""
    if is_store_url(out):
        return Path(work if work is not None else default_work_folder(str(out))).absolute(), str(out).rstrip("/")
    if work is not None:
        raise UserError("--work is for an --out URL (s3://, gs://): the local state of a download to object storage")
    return Path(out).resolve(), None


def plan_from_args(args: argparse.Namespace) -> DownloadPlan:
    out, store_url = output_folders(args.out, getattr(args, "work", None))
    mirror_url = check_mirror_url(args.mirror_url) if args.mirror_url else None
    if args.source == "mirror" and not mirror_url:
        raise UserError("--source mirror needs --mirror-url URL")
    credentials = load_credentials(args.credentials) if args.source != "youtube" else None
    source = credential_source(args.credentials) if credentials is not None else None
    cookies = args.cookies
    if cookies is not None and not cookies.is_file():
        raise UserError(f"cookies file {cookies} does not exist")
    return DownloadPlan(out=out, store_url=store_url, source=args.source, mirror_url=mirror_url,
                        credentials=credentials, credential_source=source, cookies=cookies.resolve() if cookies else None,
                        workers=args.workers, address=args.address, retry_failed=args.retry_failed)


def sources_for(entry: CatalogEntry, plan: DownloadPlan) -> tuple[str, ...]:
    """Where to look for one video, in order."""
    if entry.url is not None:
        return (URL,)
    if plan.source == "mirror":
        return (MIRROR,)
    if plan.source == "youtube" or not plan.mirror_url:
        return (YOUTUBE,)
    return (MIRROR, YOUTUBE)
