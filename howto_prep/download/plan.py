"""A validated `howto-prep download` invocation, built once from the command line."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from howto_prep.download.catalog import CatalogEntry
from howto_prep.download.credentials import CredentialSource, Credentials, credential_source, load_credentials
from howto_prep.download.task import MIRROR, URL, YOUTUBE, FetchSettings
from howto_prep.errors import UserError


@dataclass(frozen=True)
class DownloadPlan:
    """What to fetch from where, and how patiently: built once from the options, then only read."""

    out: Path
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


def check_mirror_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UserError(f"--mirror-url must be an http(s) URL, got {url!r}")
    if parts.username or parts.password:
        raise UserError("--mirror-url must not hold credentials; use --credentials FILE or HOWTO100M_USER/PASSWORD")
    return url.rstrip("/")


def plan_from_args(args: argparse.Namespace) -> DownloadPlan:
    mirror_url = check_mirror_url(args.mirror_url) if args.mirror_url else None
    if args.source == "mirror" and not mirror_url:
        raise UserError("--source mirror needs --mirror-url URL")
    credentials = load_credentials(args.credentials) if args.source != "youtube" else None
    source = credential_source(args.credentials) if credentials is not None else None
    cookies = args.cookies
    if cookies is not None and not cookies.is_file():
        raise UserError(f"cookies file {cookies} does not exist")
    return DownloadPlan(out=args.out.resolve(), source=args.source, mirror_url=mirror_url,
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
