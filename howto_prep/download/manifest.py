"""`videos/manifest.sqlite`: the single record of what is downloaded, failed or still pending.

Only the driver process writes (Ray tasks return results), in WAL mode with one commit per video, so a
kill at any moment loses at most the video in flight and never corrupts the store.
"""

from __future__ import annotations

import contextlib
import sqlite3
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterable, Iterator

from howto_prep import schema
from howto_prep.errors import FailureKind, SystemFault, UserError, failure_kind

PENDING, DONE, FAILED = "pending", "done", "failed"

_CREATE = """
CREATE TABLE IF NOT EXISTS videos (
    video_id     TEXT PRIMARY KEY,
    status       TEXT NOT NULL CHECK (status IN ('pending', 'done', 'failed')),
    source       TEXT,
    path         TEXT,
    bytes        INTEGER,
    duration     REAL,
    failure_kind TEXT,
    error        TEXT,
    attempts     INTEGER NOT NULL DEFAULT 0,
    updated_at   TEXT NOT NULL
)
"""
COLUMNS = ("video_id", "status", "source", "path", "bytes", "duration", "failure_kind", "error",
           "attempts", "updated_at")


@dataclass(frozen=True)
class VideoRow:
    """One manifest row; `path` is relative to the download folder, `failure_kind` read through
    `failure_kind()` (so rows written with older spellings read as today's kinds)."""

    video_id: str
    status: str
    source: str | None
    path: str | None
    bytes: int | None
    duration: float | None
    failure_kind: FailureKind | None
    error: str | None
    attempts: int
    updated_at: str


def _row(values: tuple) -> VideoRow:
    row = VideoRow(*values)
    if row.failure_kind is None:
        return row
    return replace(row, failure_kind=failure_kind(row.failure_kind))


def is_storage_error(err: sqlite3.Error) -> bool:
    """SQLite's words for a filesystem that refuses the write (full, quota, read-only, I/O error)."""
    text = str(err).lower()
    return any(words in text for words in ("full", "disk i/o", "readonly", "read-only"))


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


class Manifest:
    """The SQLite store of one download folder."""

    def __init__(self, videos_dir: Path) -> None:
        self.path = Path(videos_dir) / schema.MANIFEST_FILE
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._db = sqlite3.connect(self.path, timeout=30.0)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute(_CREATE)
            self._db.commit()
        except sqlite3.DatabaseError as err:
            if is_storage_error(err):  # a full or read-only disk, not a broken manifest
                raise self._storage_fault(err) from None
            raise UserError(f"{self.path} is not a usable manifest ({err})") from None

    def _storage_fault(self, err: sqlite3.Error) -> SystemFault:
        return SystemFault(f"output filesystem error on {self.path}: {err} (the transaction was rolled back and "
                           "SQLite keeps the file whole; free space and rerun: nothing is lost)")

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> "Manifest":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def get(self, video_id: str) -> VideoRow | None:
        row = self._db.execute(f"SELECT {','.join(COLUMNS)} FROM videos WHERE video_id = ?", (video_id,)).fetchone()
        return _row(row) if row else None

    def rows(self) -> list[VideoRow]:
        cursor = self._db.execute(f"SELECT {','.join(COLUMNS)} FROM videos ORDER BY video_id")
        return [_row(row) for row in cursor]

    def states(self, batch: int = 1 << 14) -> Iterator[list[tuple[str, str, str | None]]]:
        """Every row's (video_id, status, path), `batch` rows at a time: the memory of a scan stays that
        of one batch, whatever the size of the manifest. Write nothing until the scan is finished."""
        cursor = self._db.execute("SELECT video_id, status, path FROM videos")
        try:
            while rows := cursor.fetchmany(batch):
                yield rows
        finally:
            cursor.close()

    @contextlib.contextmanager
    def _writing(self) -> Iterator[None]:
        """One transaction; a full or read-only disk is the system's fault: stop with one line, the
        transaction rolled back (SQLite keeps the file whole), nothing recorded against a video."""
        try:
            with self._db:
                yield
        except sqlite3.OperationalError as err:
            if is_storage_error(err):
                raise self._storage_fault(err) from None
            raise

    def add_pending(self, video_ids: Iterable[str], source: str) -> None:
        """Register videos not seen before as pending (existing rows are left alone), in one commit.
        `video_ids` is consumed as it is inserted (SQLite spills what it cannot cache to the WAL), so a
        generator of a million ids costs no more memory than ten."""
        now = _now()
        with self._writing():
            self._db.executemany(
                "INSERT OR IGNORE INTO videos (video_id, status, source, attempts, updated_at) VALUES (?, ?, ?, 0, ?)",
                ((video_id, PENDING, source, now) for video_id in video_ids),
            )

    def mark_done(self, video_id: str, source: str, path: str, size: int, duration: float, attempts: int) -> None:
        with self._writing():
            self._db.execute(
                "UPDATE videos SET status=?, source=?, path=?, bytes=?, duration=?, failure_kind=NULL, error=NULL,"
                " attempts=attempts+?, updated_at=? WHERE video_id=?",
                (DONE, source, path, size, duration, attempts, _now(), video_id),
            )

    def mark_failed(self, video_id: str, source: str | None, kind: FailureKind, error: str, attempts: int) -> None:
        with self._writing():
            self._db.execute(
                "UPDATE videos SET status=?, source=?, path=NULL, bytes=NULL, duration=NULL, failure_kind=?, error=?,"
                " attempts=attempts+?, updated_at=? WHERE video_id=?",
                (FAILED, source, kind.value, error, attempts, _now(), video_id),
            )

    def mark_pending(self, video_id: str) -> None:
        """A 'done' row whose file vanished goes back to pending."""
        self.mark_pending_many([video_id])

    def mark_pending_many(self, video_ids: Iterable[str]) -> None:
        """`mark_pending` for many rows, in one commit."""
        now = _now()
        with self._writing():
            self._db.executemany("UPDATE videos SET status=?, path=NULL, updated_at=? WHERE video_id=?",
                                 ((PENDING, now, video_id) for video_id in video_ids))

    def mark_stored_many(self, rows: Iterable[tuple[str, str, int]], source: str) -> None:
        """(video_id, object key, bytes) found on the output's object store: done, in one commit (a new
        id gets a row; its duration stays unknown, NULL: the object is not downloaded to probe it)."""
        now = _now()
        with self._writing():
            self._db.executemany(
                "INSERT INTO videos (video_id, status, source, path, bytes, attempts, updated_at)"
                " VALUES (?, ?, ?, ?, ?, 0, ?) ON CONFLICT(video_id) DO UPDATE SET status=excluded.status,"
                " source=COALESCE(videos.source, excluded.source), path=excluded.path, bytes=excluded.bytes,"
                " failure_kind=NULL, error=NULL, updated_at=excluded.updated_at",
                ((video_id, DONE, source, key, size, now) for video_id, key, size in rows),
            )

    def snapshot(self, target: Path) -> None:
        """A consistent one-file copy at `target` (SQLite's backup API: safe while this manifest is open)."""
        copy = sqlite3.connect(target)
        try:
            self._db.backup(copy)
            copy.execute("PRAGMA journal_mode=DELETE")  # one file, no -wal beside it
            copy.commit()
        finally:
            copy.close()

    def counts(self) -> list[tuple[str, str, int, int]]:
        """(status, failure kind or '', videos, bytes) sorted by status then kind; older spellings of a
        kind are counted under today's."""
        cursor = self._db.execute(
            "SELECT status, failure_kind, COUNT(*), COALESCE(SUM(bytes), 0) FROM videos GROUP BY status, failure_kind"
        )
        totals: dict[tuple[str, str], list[int]] = {}
        for status, kind, videos, size in cursor:
            total = totals.setdefault((status, failure_kind(kind).value if kind else ""), [0, 0])
            total[0] += videos
            total[1] += size
        return [(status, kind, videos, size) for (status, kind), (videos, size) in sorted(totals.items())]


def format_summary(counts: list[tuple[str, str, int, int]]) -> str:
    """A plain-text table: videos and MB by status and failure kind, with a total line."""
    lines = [f"{'status':<8} {'failure kind':<13} {'videos':>8} {'MB':>10}"]
    for status, kind, videos, size in counts:
        lines.append(f"{status:<8} {kind or '-':<13} {videos:>8} {size / 1e6:>10.1f}")
    total_videos = sum(row[2] for row in counts)
    total_bytes = sum(row[3] for row in counts)
    lines.append(f"{'total':<8} {'':<13} {total_videos:>8} {total_bytes / 1e6:>10.1f}")
    return "\n".join(lines)


def manifest_summary(videos_dir: Path) -> str:
    """The summary of `videos_dir/manifest.sqlite` (used by `howto-prep status` and at the end of a download)."""
    path = Path(videos_dir) / schema.MANIFEST_FILE
    if not path.exists():
        raise UserError(f"{videos_dir} holds no {schema.MANIFEST_FILE}")
    with Manifest(videos_dir) as manifest:
        return format_summary(manifest.counts())


def done_videos(videos_dir: Path) -> dict[str, Path]:
    """id -> file of every video the manifest marks done, opened read-only (a download may be running:
    SQLite lets readers in beside its one writer). This, not a folder walk, is what extract takes."""
    path = Path(videos_dir) / schema.MANIFEST_FILE
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30.0)
        try:
            rows = db.execute("SELECT video_id, path FROM videos WHERE status = ? ORDER BY video_id", (DONE,)).fetchall()
        finally:
            db.close()
    except sqlite3.DatabaseError as err:
        raise UserError(f"{path} is not a usable manifest ({err})") from None
    return {video_id: Path(videos_dir) / relative for video_id, relative in rows if relative}
