"""HowTo100M_v1.csv and id lists -> catalog entries (deduplicated, validated).

A bad input file is the user's to fix, so every problem is one `UserError` sentence that names the file
and line; nothing here touches the network.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from itertools import islice
from typing import Iterable, Iterator
from urllib.parse import parse_qs, urlsplit

import numpy as np

from howto_prep.errors import UserError
from howto_prep.schema import HOWTO100M_CSV_COLUMNS

VIDEO_ID_PATTERN = re.compile(r"^[A-Za-z0-9_-]+$")
YOUTUBE_HOSTS = {"youtube.com", "www.youtube.com", "m.youtube.com", "music.youtube.com"}
YOUTUBE_WATCH = "https://www.youtube.com/watch?v={}"
LINE_BLOCK = 1 << 20  # characters read at a time
LINE_BREAKS = frozenset("\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029")  # where str.splitlines() breaks


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


class Catalog:
    """Deduplicated catalog entries in input order, held compactly.

    The ids are one fixed-width bytes array (HowTo100M's 1.22 M ids: ~13 MB, where CatalogEntry objects
    and a set of strings take ~300 MB), the few URLs of an id list a dict by position. Entries are made
    on demand (`entry`, `entries`), and `positions` finds ids by binary search.
    """

    CHUNK = 1 << 14  # ids gathered as str before they are packed

    def __init__(self, ids: np.ndarray, urls: dict[int, str] | None = None) -> None:
        self.ids = ids  # dtype S<width>, unique, input order
        self.urls = urls or {}  # position -> the URL of a non-YouTube entry
        self._sorted: tuple[np.ndarray, np.ndarray] | None = None

    @classmethod
    def from_ids(cls, video_ids: Iterable[str], urls: dict[int, str] | None = None) -> "Catalog":
        """Ids in input order, duplicates allowed (the first one is kept, with its URL in `urls`, which
        is keyed by input position)."""
        iterator = iter(video_ids)
        chunks = []
        while batch := list(islice(iterator, cls.CHUNK)):
            chunks.append(_pack(batch))
        urls = {} if urls is None else urls  # (from_pairs fills its dict while the loop above reads the ids)
        if not chunks:
            return cls(np.empty(0, "S1"))
        ids = np.concatenate(chunks) if len(chunks) > 1 else chunks[0]
        del chunks
        _, first = np.unique(ids, return_index=True)  # the first occurrence of each id
        if len(first) == len(ids):
            return cls(ids, urls)
        keep = np.sort(first)
        if urls:
            position = np.full(len(ids), -1, np.int64)
            position[keep] = np.arange(len(keep))
            urls = {int(position[index]): url for index, url in urls.items() if position[index] >= 0}
        return cls(ids[keep], urls)

    @classmethod
    def from_pairs(cls, pairs: Iterable[tuple[str, str | None]]) -> "Catalog":
        """(video_id, url or None) pairs, in input order, duplicates allowed (the first one is kept)."""
        urls: dict[int, str] = {}

        def ids() -> Iterator[str]:
            for index, (video_id, url) in enumerate(pairs):
                if url is not None:
                    urls[index] = url
                yield video_id

        return cls.from_ids(ids(), urls)  # `urls` fills up as the ids are read, before from_ids dedupes

    @classmethod
    def from_entries(cls, entries: Iterable[CatalogEntry]) -> "Catalog":
        return cls.from_pairs((entry.video_id, entry.url) for entry in entries)

    def __len__(self) -> int:
        return len(self.ids)

    def video_id(self, position: int) -> str:
        return self.ids[position].decode("utf-8")

    def entry(self, position: int) -> CatalogEntry:
        return CatalogEntry(self.video_id(position), self.urls.get(int(position)))

    def entries(self, positions: Iterable[int] | None = None) -> Iterator[CatalogEntry]:
        """The entries at `positions` (default: all), made one at a time."""
        for position in range(len(self)) if positions is None else positions:
            yield self.entry(int(position))

    def __iter__(self) -> Iterator[CatalogEntry]:
        return self.entries()

    def to_list(self) -> list[CatalogEntry]:
        return list(self.entries())

    def head(self, count: int) -> "Catalog":
        """The first `count` entries (--limit)."""
        return Catalog(self.ids[:count], {index: url for index, url in self.urls.items() if index < count})

    def positions(self, video_ids: np.ndarray) -> np.ndarray:
        """int64 position of each id (a bytes array) in the catalog, -1 where it is not in it."""
        if self._sorted is None:
            order = np.argsort(self.ids, kind="stable")
            self._sorted = (self.ids[order], order)
        sorted_ids, order = self._sorted
        video_ids = np.asarray(video_ids)
        if not len(sorted_ids) or not len(video_ids):
            return np.full(len(video_ids), -1, np.int64)
        slot = np.minimum(np.searchsorted(sorted_ids, video_ids), len(sorted_ids) - 1)
        return np.where(sorted_ids[slot] == video_ids, order[slot], -1).astype(np.int64)


def _pack(video_ids: list[str]) -> np.ndarray:
    """Valid ids are ASCII (letters, digits, '-', '_'): one byte per character, no NUL."""
    return np.array(video_ids, dtype="S")


def iter_id_list(path: Path) -> Iterator[tuple[str, str | None]]:
    """(video_id, url or None) of each entry of an id list, streamed; UserError names a bad line."""
    for number, raw in enumerate(_lines(path), start=1):
        entry = raw.strip()
        if not entry or entry.startswith("#"):
            continue
        try:
            record = parse_id_line(entry)
        except ValueError as err:
            raise UserError(f"{path} line {number}: bad entry {entry!r} ({err})") from None
        yield record.video_id, record.url


def read_id_list(path: Path) -> list[CatalogEntry]:
    """One id or URL per line; blank lines and lines starting with '#' are skipped; duplicates are dropped."""
    records = [CatalogEntry(video_id, url) for video_id, url in iter_id_list(path)]
    if not records:
        raise UserError(f"{path} holds no video ids")
    return dedupe(records)


def iter_howto_csv(path: Path) -> Iterator[str]:
    """The video ids of HowTo100M_v1.csv (video_id,category_1,category_2,rank,task_id), streamed, with
    the same checks (and one-sentence UserErrors) as `read_howto_csv`; duplicates not dropped."""
    reader = csv.reader(_lines(path))
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
    for number, row in enumerate(reader, start=2):
        if not row or not any(cell.strip() for cell in row):
            continue
        if len(row) != len(columns):
            raise UserError(f"{path} line {number}: expected {len(columns)} fields, found {len(row)}")
        video_id = row[id_index].strip()
        if not is_valid_video_id(video_id):
            raise UserError(f"{path} line {number}: bad video id {video_id!r}")
        yield video_id


def read_howto_csv(path: Path) -> list[CatalogEntry]:
    """HowTo100M_v1.csv (video_id,category_1,category_2,rank,task_id) -> records, duplicates dropped."""
    records = [CatalogEntry(video_id) for video_id in iter_howto_csv(path)]
    if not records:
        raise UserError(f"{path} holds no video ids")
    return dedupe(records)


def load_records(csv_path: Path | None, ids_path: Path | None) -> list[CatalogEntry]:
    """Records from exactly one of --csv / --ids."""
    if (csv_path is None) == (ids_path is None):
        raise UserError("give exactly one of --csv FILE or --ids FILE")
    return read_howto_csv(csv_path) if csv_path is not None else read_id_list(ids_path)


def load_catalog(csv_path: Path | None, ids_path: Path | None) -> Catalog:
    """What `load_records` returns, as a compact Catalog: the file is streamed, never held whole."""
    if (csv_path is None) == (ids_path is None):
        raise UserError("give exactly one of --csv FILE or --ids FILE")
    if csv_path is not None:
        catalog = Catalog.from_ids(iter_howto_csv(csv_path))
    else:
        catalog = Catalog.from_pairs(iter_id_list(ids_path))
    if not len(catalog):
        raise UserError(f"{csv_path if csv_path is not None else ids_path} holds no video ids")
    return catalog


def _lines(path: Path) -> Iterator[str]:
    """The file's lines as `str.splitlines()` of its whole text gives them (same breaks, no line ends),
    read a block at a time; a missing or non-UTF-8 file is a UserError."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path} does not exist or is not a file")
    try:
        # Universal newlines: '\r\n' and '\r' arrive as '\n' (a '\r\n' across two blocks included).
        with open(path, encoding="utf-8-sig") as handle:
            carry = ""
            while block := handle.read(LINE_BLOCK):
                lines = (carry + block).splitlines()
                carry = lines.pop() if lines and block[-1] not in LINE_BREAKS else ""
                yield from lines
            if carry:
                yield carry
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"cannot read {path} as UTF-8 text ({err.__class__.__name__})") from None
