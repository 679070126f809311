"""Inputs of `howto-prep extract`: the video files, caption.json, the HowTo100M CSV, word2vec, weight options."""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from howto_prep.errors import ToolError, UserError
from howto_prep.schema import CSV_META_COLUMNS, MANIFEST_FILE

if TYPE_CHECKING:
    from howto_prep.features.tokens import Word2VecVocabulary

logger = logging.getLogger(__name__)

VIDEO_EXTENSIONS = {".mp4", ".mkv", ".webm", ".mov", ".avi", ".m4v", ".flv", ".3gp", ".mpg", ".mpeg", ".ts"}


def find_videos(videos_dir: Path) -> dict[str, Path]:
    """id -> file of the videos to extract.

    When `videos_dir` holds a download's manifest.sqlite, the manifest is the contract: exactly the
    videos it marks done, at their recorded paths (a file in `.partial/` or a half-validated one is
    never taken). Without a manifest, every video file under the folder, skipping hidden files and
    hidden folders; when one id has several files, the first in sorted order wins.
    """
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


def load_captions(path: Path) -> dict[str, dict]:
    """caption.json: {video_id: {"start": [...], "end": [...], "text": [...]}}."""
    try:
        with open(path, encoding="utf-8") as handle:
            captions = json.load(handle)
    except FileNotFoundError:
        raise UserError(f"--captions {path} does not exist") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UserError(f"--captions {path} is not valid JSON ({err})") from None
    if not isinstance(captions, dict):
        raise UserError(f"--captions {path} must map video ids to {{start, end, text}} lists")
    for video_id, entry in captions.items():
        if not isinstance(entry, dict) or not all(isinstance(entry.get(k), list) for k in ("start", "end", "text")) \
                or not len(entry["start"]) == len(entry["end"]) == len(entry["text"]):
            raise UserError(f"--captions {path}: entry {video_id!r} needs start, end and text lists of equal length")
    return captions


def load_csv_columns(path: Path | None) -> dict[str, dict]:
    """video_id -> the HowTo100M_v1.csv category columns (empty without --csv)."""
    if path is None:
        return {}
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            if not reader.fieldnames or "video_id" not in reader.fieldnames:
                raise UserError(f"--csv {path} has no video_id column")
            return {row["video_id"]: {column: parse_cell(row.get(column)) for column in CSV_META_COLUMNS}
                    for row in reader}
    except FileNotFoundError:
        raise UserError(f"--csv {path} does not exist") from None


def parse_cell(value: str | None) -> str | int | None:
    if value is None or value == "":
        return None
    return int(value) if value.lstrip("-").isdigit() else value


def check_weights(spec: str, option: str, named: tuple[str, ...]) -> None:
    """A weights option is one of the named choices or an existing file."""
    if spec in named:
        return
    if not Path(spec).is_file():
        raise UserError(f"{option} {spec}: no such file (use {' | '.join(named)} or a path to a state dict)")


def load_vocabulary(path: Path) -> Word2VecVocabulary:
    """The word2vec vocabulary, loaded once in the driver (never in the workers)."""
    from howto_prep.features.tokens import Word2VecVocabulary

    try:
        return Word2VecVocabulary(Path(path))
    except ToolError:  # ours already (a storage fault included): not to be re-labelled as bad input
        raise
    except Exception as err:
        raise UserError(f"--word2vec {path} cannot be read as a word2vec .bin file ({type(err).__name__})") from None
