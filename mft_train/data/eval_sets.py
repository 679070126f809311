"""Clip-level shard sets (YouCook2, MSR-VTT, clips.csv) -> batches of whole clips for evaluation and fine-tuning.

A clip-level set (shards/README.md, "Clip-level shard sets") holds one WebDataset sample per clip,
already cut to the clip's seconds, plus `clips.json` (benchmark, annotated clip ids, num_expected).
Unlike pretraining there is no random clip sampling: the whole clip is the example.

- "at_once": the clip's first `video_tokens` video tokens and `audio_frames` log-mel frames (the
  preset's evaluation lengths, EVAL_LENGTHS), zero-padded with a False mask when shorter.
- "clips": the clip cut into consecutive training-length windows (8 s = 12 tokens / 768 frames in
  the paper presets), at most as many as fit in the evaluation lengths; each window is a row of
  the batch and `clip_index` says which clip it belongs to, so the evaluator can average them.
Text: caption `caption_index` (the first for evaluation; fine-tuning draws one per epoch), its
first `max_words` in-vocabulary words. The order is the shard order (deterministic); training
shuffles with a seeded buffer.

Video tokens pair each 3D row with the 2D row covering its centre, counted from the clip's first
stored rows (the clip starts at 2D row floor(start) and 3D row floor(1.5 start), so the pairing
may be one 2D row off the source video's; both tools agree on it, so it is the same every run).
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
import webdataset as wds

from howto_prep.cli_support import Location
from howto_prep.errors import UserError
from howto_prep.schema import CLIPS_FILE, LOGMEL, MAX_WORDS, RESNEXT101
from mft_train.data.batch import collate
from mft_train.data.clips import ClipPlan, ClipSpec, clip_arrays
from mft_train.data.reader import SkipPolicy, read_records
from mft_train.data.shards import DecodedSample, ShardSet, WordTable, discover_shards
from mft_train.data.store_set import is_store_url, read_set_file

# Evaluation lengths of the paper's fine-tuning/evaluation protocol (docs/recipes.md sections 6-7).
EVAL_LENGTHS: dict[str, tuple[int, int]] = {"youcook2": (72, 4608), "msrvtt": (48, 3072)}
DEFAULT_EVAL_LENGTHS = EVAL_LENGTHS["youcook2"]  # generic clips.csv sets: up to 48 s, like YouCook2
STRATEGIES = ("at_once", "clips")


@dataclass(frozen=True)
class ClipSet:
    """A readable clip-level shard set: its shards, vocabulary and clips.json manifest."""

    shards: ShardSet
    words: WordTable
    manifest: dict = field(default_factory=dict)

    @property
    def root(self) -> Location:
        return self.shards.root

    @property
    def benchmark(self) -> str:
        return str(self.manifest.get("benchmark", "clips"))

    @property
    def protocol(self) -> dict:
        """The protocol record clips.json keeps (name, N, query rule); {} for a set built before protocols."""
        record = self.manifest.get("protocol")
        return record if isinstance(record, dict) else {}

    @property
    def all_sentences(self) -> bool:
        """Whether every sentence of a clip is a query (MSR-VTT full) rather than its first one."""
        return bool(self.protocol.get("all_sentences", False))

    @property
    def num_expected_queries(self) -> int:
        """Text queries the protocol counts (present or not): N, or all sentences under MSR-VTT full."""
        queries = self.protocol.get("num_queries")
        return int(queries) if isinstance(queries, int) and queries > 0 else self.num_expected

    def missing_reasons(self) -> dict[str, str]:
        """{clip id: why it has no sample} for the listed clips the shards lack (clips.json)."""
        by_reason = self.manifest.get("missing_by_reason")
        if not isinstance(by_reason, dict):
            return {str(clip_id): "missing" for clip_id in self.manifest.get("missing", [])}
        return {str(clip_id): str(reason) for reason, ids in by_reason.items() for clip_id in ids}

    @property
    def num_clips(self) -> int:
        """Clips present in the shards (the index's sample counts)."""
        return self.shards.num_videos

    @property
    def num_expected(self) -> int:
        """Clips the annotation lists (present or not); falls back to the clips present."""
        expected = self.manifest.get("num_expected")
        return int(expected) if isinstance(expected, int) and expected > 0 else self.num_clips

    def eval_lengths(self) -> tuple[int, int]:
        """(video tokens, audio frames) used to encode a whole clip of this benchmark."""
        return EVAL_LENGTHS.get(self.benchmark, DEFAULT_EVAL_LENGTHS)


def open_clip_set(root: Location) -> ClipSet:
    """Check that `root` (a folder or an s3:// / gs:// URL) is a clip-level shard set (shards, vocab/,
    clips.json); UserError otherwise."""
    root = root if is_store_url(root) else Path(root)
    shards = discover_shards(root)
    manifest_path = f"{root}/{CLIPS_FILE}" if is_store_url(root) else root / CLIPS_FILE
    text = read_set_file(str(root), CLIPS_FILE) if is_store_url(root) else (
        manifest_path.read_bytes() if manifest_path.is_file() else None)
    if text is None:
        raise UserError(
            f"{root} has no {CLIPS_FILE}, so it is not a clip-level shard set; build one with "
            "`howto-prep extract --youcook2 FILE | --msrvtt FILE | --clips clips.csv`"
        )
    try:
        manifest = json.loads(text)
    except ValueError as err:
        raise UserError(f"{manifest_path} is not valid JSON ({err})") from None
    if not isinstance(manifest, dict):
        raise UserError(f"{manifest_path} must hold a JSON object with benchmark, clip_ids and num_expected")
    return ClipSet(shards, WordTable(root), manifest)


def whole_clip(record: DecodedSample, video_tokens: int, audio_frames: int, max_words: int, caption_index: int = 0) -> dict:
    """The whole clip as one example: the first video_tokens tokens / audio_frames frames, padded."""
    spec = ClipSpec(clip_seconds=record.duration, video_tokens=video_tokens, audio_frames=audio_frames,
                    audio_shift_seconds=0.0, max_words=max_words)
    window = (0.0, video_tokens / RESNEXT101.rate)
    plan = ClipPlan(0.0, _caption_order(record, caption_index), window, (0.0, audio_frames / LOGMEL.rate))
    return clip_arrays(record, plan, spec)


def clip_windows(record: DecodedSample, window: ClipSpec, max_windows: int, caption_index: int = 0) -> list[dict]:
    """Consecutive training-length windows of the clip (at least one, at most max_windows).

    Window k covers [k, k + 1) * clip_seconds of the clip for video and audio alike (no audio shift:
    the clip is already aligned to its sentence); every window carries the same sentence.
    """
    seconds = window.clip_seconds
    count = max(1, min(max_windows, math.ceil(record.duration / seconds - 1e-6)))
    order = _caption_order(record, caption_index)
    spec = ClipSpec(seconds, window.video_tokens, window.audio_frames, 0.0, window.max_words)
    examples = []
    for k in range(count):
        start = k * seconds
        plan = ClipPlan(start, order, (start, start + seconds), (start, start + window.audio_frames / LOGMEL.rate))
        examples.append(clip_arrays(record, plan, spec))
    return examples


def _caption_order(record: DecodedSample, caption_index: int) -> tuple[int, ...]:
    captions = len(record.token_offsets) - 1
    return (caption_index % captions,) if captions > 0 else ()


def iterate_records(clip_set: ClipSet, shuffle_seed: int | None = None, shuffle_buffer: int = 1000,
                    skips: SkipPolicy | None = None) -> Iterator[DecodedSample]:
    """Decoded clip samples in shard order (or shuffled with a seeded buffer); bad samples are skipped.

    A damaged shard or a sample that cannot be decoded is skipped by `skips` (a warning, counted; the
    clip then counts as missing); a sample that is not a clip (video-level shards) is a UserError.
    """
    urls = list(clip_set.shards.urls)
    if shuffle_seed is not None:
        random.Random(shuffle_seed).shuffle(urls)
    shuffle = [] if shuffle_seed is None else [
        wds.shuffle(shuffle_buffer, initial=shuffle_buffer, rng=random.Random(shuffle_seed))]
    for key, meta, record in read_records(urls, skips if skips is not None else SkipPolicy(), *shuffle):
        if meta.get("kind") != "clip":
            raise UserError(f"sample {key} in {clip_set.root} is not a clip (meta kind {meta.get('kind')!r}); "
                            "give a clip-level shard set")
        yield _with_clip_id(record, str(meta.get("clip_id", key)))


def _with_clip_id(record: DecodedSample, clip_id: str) -> DecodedSample:
    """Use the clip id as the record's id, so batches name clips rather than source videos."""
    return replace(record, video_id=clip_id)


def clip_batches(clip_set: ClipSet, batch_clips: int, *, video_tokens: int, audio_frames: int,
                 max_words: int = MAX_WORDS, strategy: str = "at_once", window: ClipSpec | None = None,
                 shuffle_seed: int | None = None, shuffle_buffer: int = 1000, random_caption: bool = False,
                 min_clips: int = 1, skips: SkipPolicy | None = None) -> Iterator[dict]:
    """Batches of `batch_clips` clips in the mft_train.data.batch layout plus `clip_id` and `clip_index`.

    `clip_index` (LongTensor, one per row) is the clip's position inside the batch: one row per clip
    for "at_once", one row per window for "clips". A final batch with fewer than `min_clips` clips
    is dropped (fine-tuning needs negatives). `random_caption` draws the caption of each clip from a
    generator seeded by shuffle_seed (MSR-VTT: one of 20 sentences per epoch). `skips` counts the
    clips skipped as unreadable (iterate_records).
    """
    if strategy not in STRATEGIES:
        raise UserError(f"strategy must be one of {', '.join(STRATEGIES)}, not {strategy!r}")
    if strategy == "clips" and window is None:
        raise UserError("the clips strategy needs the training window lengths")
    max_windows = max(1, video_tokens // window.video_tokens) if window is not None else 1
    caption_rng = np.random.default_rng(shuffle_seed if shuffle_seed is not None else 0)
    pending: list[list[dict]] = []

    texts: list[str] = []

    def flush() -> dict:
        batch = collate(pending, clip_set.words, max_words)
        batch["clip_id"] = [clips[0]["video_id"] for clips in pending]
        batch["clip_index"] = torch.tensor([i for i, clips in enumerate(pending) for _ in clips], dtype=torch.long)
        batch["query_text"] = list(texts)
        texts.clear()
        return batch

    for record in iterate_records(clip_set, shuffle_seed, shuffle_buffer, skips):
        captions = len(record.token_offsets) - 1
        caption = int(caption_rng.integers(captions)) if random_caption and captions > 1 else 0
        if strategy == "at_once":
            examples = [whole_clip(record, video_tokens, audio_frames, max_words, caption)]
        else:
            examples = clip_windows(record, window, max_windows, caption)
        for example in examples:
            example["video_id"] = record.video_id
        pending.append(examples)
        texts.append(record.caption_texts[caption] if caption < len(record.caption_texts) else "")
        if len(pending) == batch_clips:
            yield flush()
            pending = []
    if pending and len(pending) >= min_clips:
        yield flush()


TEXT_ONLY_AUDIO_FRAMES = 64  # one audio token after DAVEnet-v2's x64 (four after v1's x16), all masked


def sentence_batches(clip_set: ClipSet, batch_size: int, max_words: int = MAX_WORDS,
                     skips: SkipPolicy | None = None) -> Iterator[dict]:
    """Every sentence of every clip as a text-only row, for protocols whose queries are all sentences.

    Both models embed text from the text alone (EAO: the text tokens through the shared block by
    themselves; MCN: its text branch), so each row carries a one-token video and a 64-frame audio,
    both masked out, instead of the clip's features: 20 sentences cost about one clip's encoding.
    `clip_id` names each sentence's clip and `query_text` the sentence.
    """
    pending: list[list[dict]] = []
    owners: list[str] = []
    texts: list[str] = []

    def flush() -> dict:
        batch = collate(pending, clip_set.words, max_words)
        batch.update(clip_id=list(owners), query_text=list(texts),
                     clip_index=torch.arange(len(pending), dtype=torch.long))
        for pending_list in (pending, owners, texts):
            pending_list.clear()
        return batch

    for record in iterate_records(clip_set, skips=skips):
        for caption in range(len(record.token_offsets) - 1):
            example = whole_clip(record, 1, TEXT_ONLY_AUDIO_FRAMES, max_words, caption)
            example["video_mask"][:] = False
            example["audio_mask"][:] = False
            example["video_id"] = record.video_id
            pending.append([example])
            owners.append(record.video_id)
            texts.append(record.caption_texts[caption] if caption < len(record.caption_texts) else "")
            if len(pending) == batch_size:
                yield flush()
    if pending:
        yield flush()
