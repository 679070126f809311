"""Fetch a YouTube id or any URL with yt-dlp's Python API into a per-video working folder.

yt-dlp keeps its own `.part` file there, so an interrupted download resumes on the next attempt; the
caller validates the result and renames it to its final name.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from howto_prep.download.fetch_error import FetchError
from howto_prep.errors import FailureKind

# One small mp4 with audio (about 360p) when there is one; the whole file, never separate streams to merge.
FORMAT = "best[ext=mp4][height<=360]/best[height<=360]/best"

# (pattern, kind), first match wins; matched against yt-dlp's error text.
ERROR_KINDS: tuple[tuple[re.Pattern[str], FailureKind], ...] = tuple(
    (re.compile(pattern, re.IGNORECASE), kind) for pattern, kind in (
        (r"No space left on device|Disk quota exceeded|Read-only file system", FailureKind.DISK_FULL),
        (r"not a bot", FailureKind.BOT),
        (r"sign in to confirm|login required|members[- ]only|HTTP Error 40[13]", FailureKind.AUTH),
        (r"private video|video unavailable|has been removed|removed by|terminated|copyright|"
         r"not available|blocked|geo.?restrict|no longer available|premieres in", FailureKind.UNAVAILABLE),
        (r"HTTP Error 40[4]|HTTP Error 410|Unsupported URL|does not exist", FailureKind.NOT_FOUND),
        (r"timed out|timeout", FailureKind.NETWORK_TIMEOUT),
        (r"HTTP Error 5\d\d|HTTP Error 429|connection (reset|refused|aborted)|Errno|urlopen error|"
         r"IncompleteRead|Unable to download|Temporary failure|Name or service|network|"
         r"giving up after|Got error", FailureKind.NETWORK),
    )
)


def classify_ytdlp_error(text: str) -> FailureKind:
    """yt-dlp's error text -> a failure kind (anything unrecognised is ERROR: the text says more)."""
    for pattern, kind in ERROR_KINDS:
        if pattern.search(text):
            return kind
    return FailureKind.ERROR


class _CollectingLogger:
    """yt-dlp logger that stays silent and remembers the errors (their text goes to the manifest)."""

    def __init__(self) -> None:
        self.errors: list[str] = []

    def debug(self, message: str) -> None:
        pass

    def info(self, message: str) -> None:
        pass

    def warning(self, message: str) -> None:
        pass

    def error(self, message: str) -> None:
        self.errors.append(message)


def work_dir(partial_dir: Path, video_id: str) -> Path:
    return partial_dir / f"ytdlp-{video_id}"


def fetch_with_ytdlp(video_id: str, url: str, partial_dir: Path, cookies: Path | None, timeout_s: float) -> Path:
    """Download `url` into `partial_dir/ytdlp-<id>/<id>.<ext>` and return that file."""
    import yt_dlp

    folder = work_dir(partial_dir, video_id)
    folder.mkdir(parents=True, exist_ok=True)
    for leftover in folder.iterdir():  # a finished file from a killed run is re-validated below, not trusted
        if leftover.is_dir():
            shutil.rmtree(leftover)
    logger = _CollectingLogger()
    options = {
        "format": FORMAT,
        "outtmpl": str(folder / f"{video_id}.%(ext)s"),
        "paths": {"home": str(folder), "temp": str(folder)},
        "noplaylist": True,
        "quiet": True,
        "no_warnings": True,
        "noprogress": True,
        "logger": logger,
        "continuedl": True,
        "overwrites": False,
        "socket_timeout": timeout_s,
        "retries": 1,
        "fragment_retries": 1,
        "cachedir": False,
        "color": {"stderr": "never", "stdout": "never"},
    }
    if cookies is not None:
        options["cookiefile"] = str(cookies)
    try:
        with yt_dlp.YoutubeDL(options) as ydl:
            info = ydl.extract_info(url, download=True)
    except yt_dlp.utils.DownloadError as err:
        text = _clean(str(err)) or "; ".join(logger.errors)
        raise FetchError(classify_ytdlp_error(text), text) from None
    except Exception as err:  # yt-dlp raises many types; the text is what matters
        text = _clean(f"{err.__class__.__name__}: {err}")
        raise FetchError(classify_ytdlp_error(text), text) from None
    return _downloaded_file(info, folder, video_id)


def _downloaded_file(info: dict | None, folder: Path, video_id: str) -> Path:
    for item in (info or {}).get("requested_downloads") or []:
        candidate = Path(item.get("filepath") or "")
        if candidate.is_file():
            return candidate
    finished = [path for path in folder.glob(f"{video_id}.*") if not path.name.endswith((".part", ".ytdl"))]
    if len(finished) == 1:
        return finished[0]
    raise FetchError(FailureKind.ERROR, f"yt-dlp reported success but left no single file in {folder.name}")


def _clean(text: str) -> str:
    return re.sub(r"\x1b\[[0-9;]*m", "", text).removeprefix("ERROR: ").strip()
