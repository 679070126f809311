"""HowTo100M_v1.csv and id lists -> catalog entries (deduplicated, validated).

A bad input file is the user's to fix, so every problem is one `UserError` sentence that names the file
and line; nothing here touches the network.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Iterable
from urllib.parse import parse_qs, urlsplit

from howto_prep.errors import UserError
from howto_prep.schema import HOWTO100M_CSV_COLUMNS

VIDEO_ID_PATTERN = re.compile(r"^[A-Za-z0-9_-]+$")
YOUTUBE_HOSTS = {"youtube.com", "www.youtube.com", "m.youtube.com", "music.youtube.com"}
YOUTUBE_WATCH = "https://www.youtube.com/watch?v={}"


@dataclass(frozen=True)
class CatalogEntry:
    """One video to fetch: its id and, when the list gave a non-YouTube URL, that URL."""

    video_id: str
    url: str | None = None

    @property
    def youtube_url(self) -> str:
        return YOUTUBE_WATCH.format(self.video_id)


def is_valid_video_id(video_id: str) -> bool:
    """YouTube-style ids: letters, digits, '-' and '_' (never a dot, so `<id>.<ext>` is unambiguous)."""
    return bool(VIDEO_ID_PATTERN.match(video_id))


def video_id_from_url(url: str) -> str:
    """The v= id of a YouTube URL, the id of a youtu.be or /shorts/ URL, else the file stem of the path."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("not an http(s) URL")
    host = parts.hostname.lower()
    path = PurePosixPath(parts.path)
    if host in YOUTUBE_HOSTS:
        if parts.path == "/watch":
            candidates = parse_qs(parts.query).get("v", [])
            candidate = candidates[0] if candidates else ""
        elif len(path.parts) >= 3 and path.parts[1] in ("shorts", "embed", "live"):
            candidate = path.parts[2]
        else:
            candidate = ""
    elif host == "youtu.be":
        candidate = path.parts[1] if len(path.parts) >= 2 else ""
    else:
        candidate = path.name.split(".", 1)[0]
    if not is_valid_video_id(candidate):
        raise ValueError("no video id in it")
    return candidate


def parse_id_line(text: str) -> CatalogEntry:
    """One line of an id list (a bare id or a URL) -> CatalogEntry; raises ValueError with the reason."""
    if "://" in text:
        video_id = video_id_from_url(text)
        host = (urlsplit(text).hostname or "").lower()
        is_youtube = host in YOUTUBE_HOSTS or host == "youtu.be"
        return CatalogEntry(video_id, None if is_youtube else text)
    if not is_valid_video_id(text):
        raise ValueError("not a video id (letters, digits, '-' and '_' only) nor a URL")
    return CatalogEntry(text)


def dedupe(records: Iterable[CatalogEntry]) -> list[CatalogEntry]:
    """Keep the first record of each video id, in input order."""
    seen: set[str] = set()
    unique = []
    for record in records:
        if record.video_id not in seen:
            seen.add(record.video_id)
            unique.append(record)
    return unique


def read_id_list(path: Path) -> list[CatalogEntry]:
    """One id or URL per line; blank lines and lines starting with '#' are skipped; duplicates are dropped."""
    lines = _read_text(path).splitlines()
    records = []
    for number, raw in enumerate(lines, start=1):
        entry = raw.strip()
        if not entry or entry.startswith("#"):
            continue
        try:
            records.append(parse_id_line(entry))
        except ValueError as err:
            raise UserError(f"{path} line {number}: bad entry {entry!r} ({err})") from None
    if not records:
        raise UserError(f"{path} holds no video ids")
    return dedupe(records)


def read_howto_csv(path: Path) -> list[CatalogEntry]:
    """HowTo100M_v1.csv (video_id,category_1,category_2,rank,task_id) -> records, duplicates dropped."""
    text = _read_text(path)
    reader = csv.reader(text.splitlines())
    header = next(reader, None)
    if not header or not any(cell.strip() for cell in header):
        raise UserError(f"{path} is empty; expected a header {','.join(HOWTO100M_CSV_COLUMNS)}")
    columns = [cell.strip() for cell in header]
    unknown = [column for column in columns if column not in HOWTO100M_CSV_COLUMNS]
    if unknown:
        raise UserError(f"{path} has unknown column(s) {','.join(unknown)}; "
                        f"expected {','.join(HOWTO100M_CSV_COLUMNS)}")
    if "video_id" not in columns:
        raise UserError(f"{path} has no video_id column")
    id_index = columns.index("video_id")
    records = []
    for number, row in enumerate(reader, start=2):
        if not row or not any(cell.strip() for cell in row):
            continue
        if len(row) != len(columns):
            raise UserError(f"{path} line {number}: expected {len(columns)} fields, found {len(row)}")
        video_id = row[id_index].strip()
        if not is_valid_video_id(video_id):
            raise UserError(f"{path} line {number}: bad video id {video_id!r}")
        records.append(CatalogEntry(video_id))
    if not records:
        raise UserError(f"{path} holds no video ids")
    return dedupe(records)


def load_records(csv_path: Path | None, ids_path: Path | None) -> list[CatalogEntry]:
    """Records from exactly one of --csv / --ids."""
    if (csv_path is None) == (ids_path is None):
        raise UserError("give exactly one of --csv FILE or --ids FILE")
    return read_howto_csv(csv_path) if csv_path is not None else read_id_list(ids_path)


def _read_text(path: Path) -> str:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path} does not exist or is not a file")
    try:
        return path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"cannot read {path} as UTF-8 text ({err.__class__.__name__})") from None
