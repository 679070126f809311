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
import math
import sys
from collections import defaultdict
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Iterable

import numpy as np

from howto_prep import schema, shards
from howto_prep.errors import UserError
from howto_prep.extract.annotations import ClipRecord
from howto_prep.extract.plan import ExtractPlan
from howto_prep.extract.sample import EMPTY_CAPTIONS
from howto_prep.extract.video_set import extract_video_set, finish_set
from howto_prep.files import atomic_write_json

if TYPE_CHECKING:
    from howto_prep.features.tokens import Word2VecVocabulary

VIDEO_LEVEL_DIR = "video-level"


def build_clip_set(plan: ExtractPlan, videos: dict[str, Path], captions: dict[str, dict],
                   vocab: Word2VecVocabulary) -> dict:
    """Extract the annotated videos once into `OUT/video-level/`, then cut their clips into `plan.out`."""
    assert plan.clip_annotations is not None
    benchmark, clips = plan.clip_annotations.benchmark, plan.clip_annotations.clips
    if not clips:
        raise UserError(f"the {benchmark} annotations list no clips for this split")
    wanted_ids = list(dict.fromkeys(clip.video_id for clip in clips))
    missing = [video_id for video_id in wanted_ids if video_id not in videos]
    if len(missing) == len(wanted_ids):
        raise UserError(f"none of the {len(wanted_ids)} annotated videos is in {plan.videos_dir} (e.g. {missing[0]})")
    out_dir = plan.out
    video_level = replace(plan, out=out_dir / VIDEO_LEVEL_DIR)
    wanted = {video_id: videos[video_id] for video_id in wanted_ids if video_id in videos}
    extract_video_set(video_level, wanted, {video_id: captions.get(video_id, EMPTY_CAPTIONS) for video_id in wanted},
                      vocab)
    result = build_clip_shards(video_level.out, clips, benchmark, vocab, out_dir, plan.shard_size, plan.prefix)
    print(f"clip set {out_dir}: {benchmark}, {result['present']} of {result['expected']} clips "
          f"({result['written']} new); {len(missing)} annotated video(s) not found in {plan.videos_dir}",
          file=sys.stderr)
    print(shards.shard_set_summary(out_dir))
    return result


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


def clip_fields(sample: dict, clip: ClipRecord,
                vocab: Word2VecVocabulary) -> tuple[dict[str, bytes], np.ndarray, float]:
    """One clip's fields (encoded), its token ids and its length in seconds, from a decoded video sample."""
    meta = dict(sample[schema.META_FIELD])
    duration = float(meta["duration"])
    end = duration if clip.end is None else min(float(clip.end), duration)
    start = min(float(clip.start), max(duration - 1e-3, 0.0))
    length = max(end - start, 0.0)
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


def build_clip_shards(video_shards: Path, clips: Iterable[ClipRecord], benchmark: str, vocab: Word2VecVocabulary,
                      out_dir: Path, max_bytes: int = schema.DEFAULT_SHARD_BYTES,
                      prefix: str = schema.DEFAULT_PREFIX) -> dict:
    """Write the clip-level shard set `out_dir` from the video-level set `video_shards`; resumable.

    Clips already in finished shards are skipped; `clips.json` lists every annotated clip (in
    annotation order) and `num_expected`, so clips whose video is missing still count in evaluation.
    """
    clips = list(clips)
    by_video: dict[str, list[ClipRecord]] = defaultdict(list)
    for clip in clips:
        by_video[clip.video_id].append(clip)
    out_dir = Path(out_dir)
    writer = shards.ShardWriter(out_dir, max_bytes, prefix)
    done = shards.finished_keys(out_dir)
    written = 0
    with writer:
        for sample in shards.iterate_samples(video_shards):
            for clip in by_video.get(sample["__key__"], []):
                if clip.clip_id in done:
                    continue
                fields, token_ids, length = clip_fields(sample, clip, vocab)
                writer.write(clip.clip_id, fields, token_ids, length)
                written += 1
    finish_set(out_dir, vocab)
    present = shards.finished_keys(out_dir)
    listing = {"benchmark": benchmark, "split": clips[0].split if clips else None,
               "clip_ids": [clip.clip_id for clip in clips], "num_expected": len(clips),
               "missing": [clip.clip_id for clip in clips if clip.clip_id not in present]}
    atomic_write_json(out_dir / schema.CLIPS_FILE, listing)
    return {"written": written, "present": len(present), "expected": len(clips)}
