"""Inputs of `howto-prep extract`: the video files, caption.json and word2vec (as on-disk indexes: see
input_index), the HowTo100M CSV, weight options."""

from __future__ import annotations

import csv
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Union

from howto_prep.errors import UserError
from howto_prep.schema import CSV_META_COLUMNS, MANIFEST_FILE

if TYPE_CHECKING:
    from howto_prep.extract.caption_index import CaptionIndex
    from howto_prep.features.word2vec_table import Word2VecTable

logger = logging.getLogger(__name__)

VIDEO_EXTENSIONS = {".mp4", ".mkv", ".webm", ".mov", ".avi", ".m4v", ".flv", ".3gp", ".mpg", ".mpeg", ".ts"}


VideoRef = Union[Path, str]  # a video file, or the URL of a video object (--videos s3://...)


def source_name(video: VideoRef) -> str:
    """The file name of a video, local or on a store (what meta.json's `source` records)."""
    return str(video).rstrip("/").rsplit("/", 1)[-1]


def find_stored_videos(url: str) -> dict[str, str]:
    """id -> object URL of the videos under a store URL, by the same rules as for a folder (video
    extensions, hidden parts skipped, the first key in sorted order wins). The listing is the contract:
    a download to a URL uploads a video only whole and validated, and never its partial files."""
    from howto_prep.object_store import Store

    store = Store.for_url(url)
    store.check_access()
    found: dict[str, str] = {}
    for key, _ in sorted(store.iter_objects()):
        parts = key.split("/")
        stem, dot, extension = parts[-1].rpartition(".")
        if any(part.startswith(".") for part in parts) or not dot or f".{extension.lower()}" not in VIDEO_EXTENSIONS:
            continue
        found.setdefault(stem, store.url_of(key))
    return found


def find_videos(videos_dir: VideoRef) -> dict[str, VideoRef]:
    """id -> file of the videos to extract.

    When `videos_dir` holds a download's manifest.sqlite, the manifest is the contract: exactly the
    videos it marks done, at their recorded paths (a file in `.partial/` or a half-validated one is
    never taken). Without a manifest, every video file under the folder, skipping hidden files and
    hidden folders; when one id has several files, the first in sorted order wins.
    """
    from howto_prep.object_store import is_url

    if is_url(videos_dir):
        return dict(find_stored_videos(str(videos_dir)))
    videos_dir = Path(videos_dir)
    if not videos_dir.is_dir():
        raise UserError(f"--videos {videos_dir} is not a folder")
    if (videos_dir / MANIFEST_FILE).exists():
        from howto_prep.download.manifest import done_videos

        recorded = done_videos(videos_dir)
        missing = [vid for vid, path in recorded.items() if not path.is_file()]
        if missing:
            logger.warning("extract: %d video(s) marked done in the manifest have no file (e.g. %s); "
                           "rerun `howto-prep download` to fetch them again", len(missing), missing[0])
        return {vid: path for vid, path in recorded.items() if path.is_file()}
    found: dict[str, Path] = {}
    for path in sorted(videos_dir.rglob("*")):
        relative = path.relative_to(videos_dir).parts
        if any(part.startswith(".") for part in relative) or path.suffix.lower() not in VIDEO_EXTENSIONS \
                or path.is_dir():
            continue
        found.setdefault(path.stem, path)
    return found


def open_captions(path: Path, out_dir: Path) -> CaptionIndex:
    """caption.json as its on-disk index under the output (built once, checked against the file each run)."""
    from howto_prep.extract.caption_index import CaptionIndex

    if not Path(path).is_file():
        raise UserError(f"--captions {path} does not exist")
    return CaptionIndex.open(Path(path), Path(out_dir))


def load_csv_columns(path: Path | None, wanted: set[str] | None = None) -> dict[str, dict]:
    """video_id -> the HowTo100M_v1.csv category columns of the `wanted` videos (empty without --csv).

    Streamed row by row; only the wanted rows are kept, their repeated values (categories) interned."""
    if path is None:
        return {}
    rows: dict[str, dict] = {}
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            if not reader.fieldnames or "video_id" not in reader.fieldnames:
                raise UserError(f"--csv {path} has no video_id column")
            for row in reader:
                if wanted is None or row["video_id"] in wanted:
                    rows[row["video_id"]] = {column: parse_cell(row.get(column)) for column in CSV_META_COLUMNS}
    except FileNotFoundError:
        raise UserError(f"--csv {path} does not exist") from None
    return rows


def parse_cell(value: str | None) -> str | int | None:
    if value is None or value == "":
        return None
    return int(value) if value.lstrip("-").isdigit() else sys.intern(value)


def check_weights(spec: str, option: str, named: tuple[str, ...]) -> None:
    """A weights option is one of the named choices or an existing file."""
    if spec in named:
        return
    if not Path(spec).is_file():
        raise UserError(f"{option} {spec}: no such file (use {' | '.join(named)} or a path to a state dict)")


def open_word2vec(path: Path, out_dir: Path) -> Word2VecTable:
    """The word2vec .bin as its memory-mapped table under the output (built once, checked each run)."""
    from howto_prep.features.word2vec_table import Word2VecTable

    if not Path(path).is_file():
        raise UserError(f"--word2vec {path} does not exist")
    return Word2VecTable.open(Path(path), Path(out_dir))
