"""Clip lists for evaluation and fine-tuning, read from the benchmarks' files exactly as they are published.

YouCook2 (`youcookii_annotations_trainval.json`): one clip per annotated segment, one sentence each.
MSR-VTT (`train_val_videodatainfo.json`, `test_videodatainfo.json`, the 2017 `videodatainfo.json`; one
or several at once): each video *is* a clip (its own short file) with its 20 sentences, ordered by
sen_id. A list file narrows a set to its rows: a bare id per line, a one-column csv with the header
`video_id` (the 7k/9k training lists), or the JSFusion 1k-A csv `key,vid_key,video_id,sentence`, whose
`sentence` becomes the clip's only sentence (the protocol's query). A clips csv (`video_id,start,end`
and `text` or `caption`; other columns such as the YouCook2 list's `task` are ignored) covers anything
else, the 3,350-clip YouCook2 validation list included. Everything becomes a `ClipList` of
`ClipRecord`s, which the clip-shard builder cuts out of the video-level features.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

from howto_prep.errors import UserError

YOUCOOK2_SPLITS = ("training", "validation")
MSRVTT_SPLITS = ("train", "validate", "test")
MSRVTT_SPLIT_ALIASES = {"val": "validate"}  # the 2017 release says "val", the 2016 one "validate"
CAPTION_COLUMNS = ("text", "caption")  # the YouCook2 list's column, then ours
LIST_SENTENCE_COLUMN = "sentence"  # the JSFusion 1k-A list's query sentence


@dataclass(frozen=True)
class ClipRecord:
    """One evaluation clip: a time span of a video plus the sentence(s) that describe it."""

    clip_id: str  # WebDataset key: unique, no dots
    video_id: str  # the video file the clip is cut from
    start: float
    end: float | None  # None: to the end of the video (MSR-VTT clips are whole files)
    captions: tuple[str, ...]
    split: str


@dataclass(frozen=True)
class ClipList:
    """The clips one annotation source lists, in its order, with its split label and what reading set aside."""

    benchmark: str  # youcook2 | msrvtt | clips
    split: str  # a benchmark split, or "list:NAME" for a set narrowed by a list file
    clips: tuple[ClipRecord, ...]
    list_format: str  # youcook2-json | msrvtt-json | msrvtt-ids | msrvtt-jsfusion | clips-csv
    columns: tuple[str, ...] = ()  # a csv list's header, for telling the published lists apart
    without_sentences: tuple[str, ...] = field(default=())  # videos skipped: no sentence in any file

    def __iter__(self) -> Iterator[ClipRecord]:
        return iter(self.clips)

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, index: int) -> ClipRecord:
        return self.clips[index]


def _load_json(path: Path) -> Any:
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except FileNotFoundError:
        raise UserError(f"annotation file not found: {path}") from None
    except OSError as err:
        raise UserError(f"cannot read {path}: {err.strerror}") from None
    except json.JSONDecodeError as err:
        raise UserError(f"{path} is not valid JSON ({err.msg} at line {err.lineno})") from None


def _read_csv(path: Path) -> tuple[list[str], list[list[str]]]:
    """(first row, the other non-empty rows) of a csv file, quoted fields and UTF-8 (with or without BOM)."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            rows = [row for row in csv.reader(handle) if any(cell.strip() for cell in row)]
    except FileNotFoundError:
        raise UserError(f"list file not found: {path}") from None
    except OSError as err:
        raise UserError(f"cannot read {path}: {err.strerror}") from None
    except (UnicodeDecodeError, csv.Error) as err:
        raise UserError(f"{path} is not a readable UTF-8 csv ({err})") from None
    if not rows:
        raise UserError(f"{path} is empty")
    return [cell.strip() for cell in rows[0]], rows[1:]


def clip_key(video_id: str, index: int) -> str:
    return f"{video_id}_{index:04d}".replace(".", "_")


def load_youcook2(path: Path, split: str = "validation") -> ClipList:
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
    return ClipList("youcook2", split, tuple(clips), "youcook2-json")


def msrvtt_split_name(name: str) -> str:
    """The one name of an MSR-VTT split: "val" (2017 release) and "validate" (2016) are the same split."""
    return MSRVTT_SPLIT_ALIASES.get(name, name)


@dataclass
class _MsrvttInfo:
    """Videos (id -> split) and sentences (id -> [(sen_id, text)]) merged from one or more info files."""

    splits: dict[str, str] = field(default_factory=dict)
    sentences: dict[str, list[tuple[int, str]]] = field(default_factory=dict)
    names: list[str] = field(default_factory=list)

    def add(self, path: Path) -> None:
        data = _load_json(path)
        if not isinstance(data, dict) or "videos" not in data or "sentences" not in data:
            raise UserError(f"{path} lacks 'videos' and 'sentences': not an MSR-VTT videodatainfo.json")
        try:
            for video in data["videos"]:
                self.splits[str(video["video_id"])] = msrvtt_split_name(str(video.get("split", "")))
            for item in data["sentences"]:
                self.sentences.setdefault(str(item["video_id"]), []).append((int(item.get("sen_id", 0)), str(item["caption"])))
        except (KeyError, TypeError, ValueError):
            raise UserError(f"{path}: a video or sentence entry lacks video_id/caption") from None
        self.names.append(path.name)

    def texts(self, video_id: str) -> tuple[str, ...]:
        return tuple(text for _, text in sorted(self.sentences.get(video_id, [])))


def read_video_list(path: Path) -> tuple[list[str], dict[str, str], tuple[str, ...]]:
    """(video ids in order, {id: the list's sentence} for a JSFusion list, the csv header or ()).

    A first line that names a `video_id` column is a csv header (the 7k/9k and JSFusion lists);
    otherwise every line is a bare id.
    """
    header, rows = _read_csv(path)
    if "video_id" not in header:
        rows, header = [header, *rows], []
    if not header:
        ids = [row[0].strip() for row in rows]
        return ids, {}, ()
    column = header.index("video_id")
    sentence_column = header.index(LIST_SENTENCE_COLUMN) if LIST_SENTENCE_COLUMN in header else None
    ids, sentences = [], {}
    for line, row in enumerate(rows, start=2):
        if len(row) != len(header):
            raise UserError(f"{path} line {line}: {len(row)} field(s), the header has {len(header)}")
        video_id = row[column].strip()
        ids.append(video_id)
        if sentence_column is not None:
            sentences[video_id] = row[sentence_column]
    return ids, sentences, tuple(header)


def load_msrvtt(paths: Path | Sequence[Path], split: str = "test", test_list: Path | None = None) -> ClipList:
    """MSR-VTT videos of `split` over all `paths`, or exactly the rows of `test_list`, in that order.

    A video without any sentence is skipped and counted (`without_sentences`), never fatal; with a
    JSFusion list its sentence is the clip's only sentence, so the JSON's sentences are not needed.
    """
    split = msrvtt_split_name(split)
    if split not in MSRVTT_SPLITS:
        raise UserError(f"unknown MSR-VTT split {split!r}; choose from train, validate (or val), test")
    info = _MsrvttInfo()
    for path in [paths] if isinstance(paths, Path) else list(paths):
        info.add(Path(path))
    columns: tuple[str, ...] = ()
    list_sentences: dict[str, str] = {}
    if test_list is not None:
        wanted, list_sentences, columns = read_video_list(test_list)
        unknown = [video_id for video_id in wanted if video_id not in info.splits]
        if unknown:
            raise UserError(f"{test_list}: {len(unknown)} id(s) not in {', '.join(info.names)}, e.g. {unknown[0]}"
                            + ("; the 9k list spans train_val and test: give both with --msrvtt" if len(info.names) == 1 else ""))
        repeated = len(wanted) - len(set(wanted))
        if repeated:
            raise UserError(f"{test_list} lists {repeated} video id(s) more than once")
        label, list_format = f"list:{test_list.name}", "msrvtt-jsfusion" if list_sentences else "msrvtt-ids"
    else:
        wanted = [video_id for video_id, video_split in info.splits.items() if video_split == split]
        if not wanted:
            present = sorted(set(info.splits.values()))
            raise UserError(f"{', '.join(info.names)} hold(s) no video of split {split!r}; its splits: "
                            f"{', '.join(present) or 'none'} (val and validate are the same split)")
        label, list_format = split, "msrvtt-json"
    clips, skipped = [], []
    for video_id in wanted:
        texts = (list_sentences[video_id],) if video_id in list_sentences else info.texts(video_id)
        if not texts:
            skipped.append(video_id)
            continue
        clips.append(ClipRecord(video_id.replace(".", "_"), video_id, 0.0, None, texts, label))
    return ClipList("msrvtt", label, tuple(clips), list_format, columns, tuple(skipped))


def load_clips_csv(path: Path) -> ClipList:
    """Clips of a csv with columns video_id, start, end and text or caption (one row per clip; others ignored)."""
    header, rows = _read_csv(path)
    caption_column = next((name for name in CAPTION_COLUMNS if name in header), None)
    missing = sorted({"video_id", "start", "end"} - set(header)) + ([] if caption_column else ["text (or caption)"])
    if missing:
        raise UserError(f"{path} lacks column(s) {', '.join(missing)}")
    index = {name: header.index(name) for name in ("video_id", "start", "end", caption_column)}
    label = f"list:{path.name}"
    clips = []
    counts: dict[str, int] = {}
    for line, row in enumerate(rows, start=2):
        if len(row) != len(header):
            raise UserError(f"{path} line {line}: {len(row)} field(s), the header has {len(header)}")
        try:
            start, end = float(row[index["start"]]), float(row[index["end"]])
        except ValueError:
            raise UserError(f"{path} line {line}: start/end are not numbers") from None
        if end <= start:
            raise UserError(f"{path} line {line}: end <= start")
        video_id = row[index["video_id"]].strip()
        number = counts.get(video_id, 0)
        counts[video_id] = number + 1
        clips.append(ClipRecord(clip_key(video_id, number), video_id, start, end, (row[index[caption_column]],), label))
    if not clips:
        raise UserError(f"{path} has no clips")
    return ClipList("clips", label, tuple(clips), "clips-csv", tuple(header))
