"""Clip lists for evaluation and fine-tuning, read from the benchmarks' own annotation formats.

YouCook2 (`youcookii_annotations_trainval.json`): one clip per annotated segment, one sentence each.
MSR-VTT (`videodatainfo.json`): each video *is* a clip (its own short file), with 20 sentences;
the 1k-A test set is a plain list of video ids. A generic `clips.csv` (video_id,start,end,caption)
covers anything else. All three become `ClipRecord`s, which the clip-shard builder cuts out of the
video-level features (so evaluation clips reuse the one decode pass per video).
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from howto_prep.errors import UserError

YOUCOOK2_SPLITS = ("training", "validation")
MSRVTT_SPLITS = ("train", "validate", "test")


@dataclass(frozen=True)
class ClipRecord:
    """One evaluation clip: a time span of a video plus the sentence(s) that describe it."""

    clip_id: str  # WebDataset key: unique, no dots
    video_id: str  # the video file the clip is cut from
    start: float
    end: float | None  # None: to the end of the video (MSR-VTT clips are whole files)
    captions: tuple[str, ...]
    split: str


def _load_json(path: Path) -> Any:
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except FileNotFoundError:
        raise UserError(f"annotation file not found: {path}") from None
    except json.JSONDecodeError as err:
        raise UserError(f"{path} is not valid JSON ({err.msg} at line {err.lineno})") from None


def clip_key(video_id: str, index: int) -> str:
    return f"{video_id}_{index:04d}".replace(".", "_")


def load_youcook2(path: Path, split: str = "validation") -> list[ClipRecord]:
    """Segments of the videos in `split` ("training" or "validation"), in file order."""
    if split not in YOUCOOK2_SPLITS:
        raise UserError(f"unknown YouCook2 split {split!r}; choose from {', '.join(YOUCOOK2_SPLITS)}")
    data = _load_json(path)
    database = data.get("database") if isinstance(data, dict) else None
    if not isinstance(database, dict):
        raise UserError(f"{path} has no 'database' object: not a YouCook2 annotation file")
    clips: list[ClipRecord] = []
    for video_id, entry in database.items():
        if entry.get("subset") != split:
            continue
        for index, annotation in enumerate(entry.get("annotations", [])):
            try:
                start, end = (float(value) for value in annotation["segment"])
                sentence = str(annotation["sentence"])
            except (KeyError, TypeError, ValueError):
                raise UserError(f"{path}: video {video_id} annotation {index} lacks segment/sentence") from None
            if end <= start:
                raise UserError(f"{path}: video {video_id} annotation {index} has end <= start")
            clips.append(ClipRecord(clip_key(video_id, index), video_id, start, end, (sentence,), split))
    return clips


def load_msrvtt(path: Path, split: str = "test", test_list: Path | None = None) -> list[ClipRecord]:
    """MSR-VTT videos of `split`, or exactly the ids of `test_list` (e.g. the 1k-A list), in that order."""
    if split not in MSRVTT_SPLITS:
        raise UserError(f"unknown MSR-VTT split {split!r}; choose from {', '.join(MSRVTT_SPLITS)}")
    data = _load_json(path)
    if not isinstance(data, dict) or "videos" not in data or "sentences" not in data:
        raise UserError(f"{path} lacks 'videos' and 'sentences': not an MSR-VTT videodatainfo.json")
    sentences: dict[str, list[tuple[int, str]]] = {}
    for item in data["sentences"]:
        sentences.setdefault(str(item["video_id"]), []).append((int(item.get("sen_id", 0)), str(item["caption"])))
    splits = {str(video["video_id"]): str(video.get("split", "")) for video in data["videos"]}
    if test_list is not None:
        try:
            wanted = [line.strip() for line in test_list.read_text().splitlines() if line.strip()]
        except OSError as err:
            raise UserError(f"cannot read the test list {test_list}: {err.strerror}") from None
        unknown = [video_id for video_id in wanted if video_id not in splits]
        if unknown:
            raise UserError(f"{test_list}: {len(unknown)} id(s) not in {path.name}, e.g. {unknown[0]}")
    else:
        wanted = [video_id for video_id, video_split in splits.items() if video_split == split]
    clips = []
    for video_id in wanted:
        texts = tuple(text for _, text in sorted(sentences.get(video_id, [])))
        if not texts:
            raise UserError(f"{path}: video {video_id} has no sentences")
        clips.append(ClipRecord(video_id.replace(".", "_"), video_id, 0.0, None, texts, split))
    return clips


def load_clips_csv(path: Path) -> list[ClipRecord]:
    """Generic clips: columns video_id,start,end,caption (one row per clip)."""
    try:
        handle = open(path, newline="", encoding="utf-8")
    except OSError as err:
        raise UserError(f"cannot read {path}: {err.strerror}") from None
    with handle:
        reader = csv.DictReader(handle)
        missing = {"video_id", "start", "end", "caption"} - set(reader.fieldnames or [])
        if missing:
            raise UserError(f"{path} lacks column(s) {', '.join(sorted(missing))}")
        clips = []
        counts: dict[str, int] = {}
        for line, row in enumerate(reader, start=2):
            try:
                start, end = float(row["start"]), float(row["end"])
            except ValueError:
                raise UserError(f"{path} line {line}: start/end are not numbers") from None
            if end <= start:
                raise UserError(f"{path} line {line}: end <= start")
            video_id = row["video_id"].strip()
            index = counts.get(video_id, 0)
            counts[video_id] = index + 1
            clips.append(ClipRecord(clip_key(video_id, index), video_id, start, end, (row["caption"],), "clips"))
    if not clips:
        raise UserError(f"{path} has no clips")
    return clips
