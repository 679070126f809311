"""Clip-level shard sets for evaluation and fine-tuning (`--youcook2`, `--msrvtt`, `--clips`).

The annotated videos are first extracted as a normal video-level set in `OUT/video-level/`
(resumable like any extraction), so each video is decoded and embedded once; every clip is then
sliced out of the stored rows by time into `OUT/`, so evaluation features are exactly the
pretraining features of the same seconds. The rows kept follow each feature's timeline
(shards/README.md): 2D rows floor(start)..ceil(end), 3D rows floor(1.5 start)..ceil(1.5 end),
log-mel frames round(100 start)..round(100 end), always at least one row. A video that is missing
or fails is reported; its clips still count in `clips.json`'s `num_expected`.
"""

from __future__ import annotations

import json
import logging
import math
from collections import defaultdict
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from howto_prep import schema, shards
from howto_prep.errors import UserError
from howto_prep.extract.annotations import ClipRecord
from howto_prep.extract.plan import ClipAnnotations, ExtractPlan
from howto_prep.extract.protocols import describe
from howto_prep.extract.sample import EMPTY_CAPTIONS
from howto_prep.extract.video_set import extract_video_set, finish_set
from howto_prep.files import atomic_write_json

if TYPE_CHECKING:
    from howto_prep.extract.caption_index import CaptionIndex
    from howto_prep.features.tokens import Word2VecVocabulary

logger = logging.getLogger(__name__)

VIDEO_LEVEL_DIR = "video-level"
MIN_CLIP_SECONDS = 1e-3  # a segment must start at least this long before the video's end
END_TOLERANCE_SECONDS = 1.0  # annotations in whole seconds may end a little past the file's last frame
MISSING_REASONS = ("video_absent", "video_failed", "outside_video", "unreadable")


def build_clip_set(plan: ExtractPlan, videos: dict[str, Path], captions: CaptionIndex | None,
                   vocab: Word2VecVocabulary) -> dict:
    """Extract the annotated videos once into `OUT/video-level/`, then cut their clips into `plan.out`."""
    annotations = plan.clip_annotations
    assert annotations is not None
    clips = annotations.clips
    if not clips:
        raise UserError(f"the {annotations.benchmark} annotations list no clips for this split")
    wanted_ids = list(dict.fromkeys(clip.video_id for clip in clips))
    absent = [video_id for video_id in wanted_ids if video_id not in videos]
    if len(absent) == len(wanted_ids):
        raise UserError(f"none of the {len(wanted_ids)} annotated videos is in {plan.videos_dir} (e.g. {absent[0]})")
    out_dir = plan.out
    video_level = replace(plan, out=out_dir / VIDEO_LEVEL_DIR)
    wanted = {video_id: videos[video_id] for video_id in wanted_ids if video_id in videos}
    extract_video_set(video_level, wanted, {video_id: (captions.get(video_id) if captions is not None else None)
                                            or EMPTY_CAPTIONS for video_id in wanted}, vocab)
    result = build_clip_shards(video_level.out, annotations, vocab, out_dir, plan.shard_size, plan.prefix,
                               absent_videos=set(absent))
    logger.info("clip set %s: %s", out_dir, clip_set_summary(result, annotations))
    return result


def clip_set_summary(result: dict, annotations: ClipAnnotations) -> str:
    """The protocol line, then present/expected clips and why the others are missing."""
    reasons = ", ".join(f"{count} {reason.replace('_', ' ')}" for reason, count in result["missing_reasons"].items() if count)
    skipped = len(annotations.source.without_sentences)
    return (f"{describe(annotations.record())}\n{result['present']} of {result['expected']} clips present "
            f"({result['written']} new)" + (f"; missing: {reasons}" if reasons else "")
            + (f"; {skipped} video(s) without any sentence skipped (not in N)" if skipped else "")
            + (f"; {result['cut_at_video_end']} clip(s) end past their video's end and were cut there"
               if result["cut_at_video_end"] else ""))


def row_span(start: float, end: float | None, rate: float, available: int, rounding: str = "outer") -> slice:
    """Rows of a feature at `rate` rows/s that cover [start, end) s, clamped to what exists."""
    if available <= 0:
        return slice(0, 0)
    if rounding == "outer":
        first = math.floor(start * rate + 1e-6)
        last = available if end is None else math.ceil(end * rate - 1e-6)
    else:
        first = round(start * rate)
        last = available if end is None else round(end * rate)
    first = min(max(first, 0), available - 1)
    last = min(max(last, first + 1), available)
    return slice(first, last)


def clip_span(clip: ClipRecord, duration: float) -> tuple[float, float] | None:
    """The clip's [start, end) inside a video of `duration` s, or None when the segment starts past its end."""
    if clip.start >= duration - MIN_CLIP_SECONDS:
        return None
    end = duration if clip.end is None else min(float(clip.end), duration)
    return float(clip.start), end


def clip_fields(sample: dict, clip: ClipRecord, span: tuple[float, float],
                vocab: Word2VecVocabulary) -> tuple[dict[str, bytes], np.ndarray, float]:
    """One clip's fields (encoded), its token ids and its length in seconds, from a decoded video sample."""
    meta = dict(sample[schema.META_FIELD])
    duration = float(meta["duration"])
    start, end = span
    length = end - start
    fields: dict[str, bytes] = {}
    for spec, rounding in ((schema.RESNET152, "outer"), (schema.RESNEXT101, "outer")):
        if spec.field in sample:
            rows = sample[spec.field]
            fields[spec.field] = shards.npy_bytes(rows[row_span(start, end, spec.rate, len(rows), rounding)])
    if schema.LOGMEL.field in sample:
        mel = sample[schema.LOGMEL.field]
        frames = row_span(start, end, schema.LOGMEL.rate, mel.shape[1], "round")
        fields[schema.LOGMEL.field] = shards.npy_bytes(mel[:, frames])
    texts = list(clip.captions)
    fields[schema.CAPTIONS_FIELD] = json.dumps(
        {"start": [0.0] * len(texts), "end": [round(length, 3)] * len(texts), "text": texts}).encode()
    tokens, offsets = vocab.encode(texts)
    fields[schema.TOKENS_FIELD] = shards.npy_bytes(tokens.astype(np.int32))
    fields[schema.TOKEN_OFFSETS_FIELD] = shards.npy_bytes(offsets.astype(np.int32))
    meta.update({"kind": "clip", "clip_id": clip.clip_id, "video_id": clip.video_id, "clip_start": start,
                 "clip_end": end, "split": clip.split, "duration": length, "source_duration": duration})
    fields = {schema.META_FIELD: json.dumps(meta, sort_keys=True).encode(), **fields}
    return fields, tokens.astype(np.int64), length


def build_clip_shards(video_shards: Path, annotations: ClipAnnotations, vocab: Word2VecVocabulary,
                      out_dir: Path, max_bytes: int = schema.DEFAULT_SHARD_BYTES,
                      prefix: str = schema.DEFAULT_PREFIX, absent_videos: set[str] | None = None) -> dict:
    """Write the clip-level shard set `out_dir` from the video-level set `video_shards`; resumable.

    Clips already in finished shards are skipped. `clips.json` lists every annotated clip (in
    annotation order), `num_expected` and the protocol, and says why each missing clip is missing
    (video absent, video failed, segment outside the video file), so they count against N.
    """
    clips = list(annotations.clips)
    by_video: dict[str, list[ClipRecord]] = defaultdict(list)
    for clip in clips:
        by_video[clip.video_id].append(clip)
    out_dir = Path(out_dir)
    writer = shards.ShardWriter(out_dir, max_bytes, prefix)
    done = shards.finished_keys(out_dir)
    written, cut = 0, 0
    outside: set[str] = set()
    seen_videos: set[str] = set()
    with writer:
        for sample in shards.iterate_samples(video_shards):
            seen_videos.add(sample["__key__"])
            duration = float(sample[schema.META_FIELD]["duration"])
            for clip in by_video.get(sample["__key__"], []):
                span = clip_span(clip, duration)
                if span is None:
                    outside.add(clip.clip_id)
                    continue
                cut += clip.end is not None and clip.end > duration + END_TOLERANCE_SECONDS
                if clip.clip_id in done:
                    continue
                fields, token_ids, length = clip_fields(sample, clip, span, vocab)
                writer.write(clip.clip_id, fields, token_ids, length)
                written += 1
    finish_set(out_dir, vocab)
    present = shards.finished_keys(out_dir)
    missing = {clip.clip_id: missing_reason(clip, outside, seen_videos, absent_videos or set())
               for clip in clips if clip.clip_id not in present}
    if outside:
        logger.warning("warning: %d annotated segment(s) start after the end of their video file (e.g. %s): "
                       "counted as missing", len(outside), sorted(outside)[0])
    by_reason = {reason: [clip_id for clip_id, r in missing.items() if r == reason] for reason in MISSING_REASONS}
    reasons = {reason: len(ids) for reason, ids in by_reason.items()}
    listing = {"benchmark": annotations.benchmark, "split": annotations.source.split,
               "protocol": annotations.record(), "clip_ids": [clip.clip_id for clip in clips],
               "num_expected": len(clips), "missing": list(missing), "missing_by_reason": by_reason,
               "without_sentences": list(annotations.source.without_sentences), "cut_at_video_end": cut}
    atomic_write_json(out_dir / schema.CLIPS_FILE, listing)
    return {"written": written, "present": len(present), "expected": len(clips), "missing_reasons": reasons,
            "cut_at_video_end": cut}


def missing_reason(clip: ClipRecord, outside: set[str], seen_videos: set[str], absent_videos: set[str]) -> str:
    """Why a listed clip has no sample: one of MISSING_REASONS."""
    if clip.clip_id in outside:
        return "outside_video"
    if clip.video_id in absent_videos:
        return "video_absent"
    return "video_failed" if clip.video_id not in seen_videos else "unreadable"
