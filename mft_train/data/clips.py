"""Everything-at-Once clip sampling (docs/recipes.md section 6) as pure functions over one video's arrays.

`plan_clip` decides *which* captions and time windows a clip uses; `clip_arrays` turns a plan into
fixed-size arrays with masks. Neither touches files or global state, so the tests check them
against caption timelines worked out by hand.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from howto_prep.schema import LOGMEL, RESNET152, RESNEXT101
from mft_train.data.shards import DecodedSample

if TYPE_CHECKING:
    from mft_train.config import DataSettings


@dataclass(frozen=True)
class ClipSpec:
    """Sizes of one training clip; the defaults are the paper preset."""

    clip_seconds: float = 8.0
    video_tokens: int = 12
    audio_frames: int = 768
    audio_shift_seconds: float = 4.0  # the EAO code's random shift is always +4 s (quirk); 0 turns it off
    max_words: int = 20


def clip_spec(data: DataSettings) -> ClipSpec:
    """The training clip of a config's data section (the audio shift applies only when switched on)."""
    return ClipSpec(
        clip_seconds=data.clip_seconds,
        video_tokens=data.video_tokens,
        audio_frames=data.audio_frames,
        audio_shift_seconds=data.audio_shift_seconds if data.audio_shift else 0.0,
        max_words=data.max_words,
    )


@dataclass(frozen=True)
class ClipPlan:
    """Where one clip lies: the drawn start, its captions (anchor first) and its time windows (s)."""

    start: float
    caption_order: tuple[int, ...]  # anchor first, then captions in the order they were added
    video_window: tuple[float, float]
    audio_window: tuple[float, float]

    @property
    def has_text(self) -> bool:
        return bool(self.caption_order)


def draw_start(rng: np.random.Generator, duration: float, clip_seconds: float) -> float:
    """Uniform start in [0, duration - clip_seconds]; 0 when the video is shorter than a clip."""
    return float(rng.uniform(0.0, max(0.0, duration - clip_seconds)))


def _containing(starts: np.ndarray, ends: np.ndarray, time: float) -> int | None:
    hits = np.flatnonzero((starts <= time) & (time <= ends))
    return int(hits[0]) if hits.size else None


def plan_clip(start: float, caption_starts: np.ndarray, caption_ends: np.ndarray, spec: ClipSpec) -> ClipPlan:
    """Apply the paper's rule to a drawn start.

    Anchor on the caption containing `start`, else the one containing `start + clip_seconds`, else
    the clip has no text. Grow the caption span [lo, hi] one neighbour at a time, taking the one
    that keeps the span shortest (ties: the previous caption), until it lasts >= clip_seconds or
    no neighbour is left. The video window is the span; without text it is the drawn clip itself.
    """
    end = start + spec.clip_seconds
    audio_start = start + spec.audio_shift_seconds
    audio_window = (audio_start, audio_start + spec.audio_frames / LOGMEL.rate)
    anchor = _containing(caption_starts, caption_ends, start)
    if anchor is None:
        anchor = _containing(caption_starts, caption_ends, end)
    if anchor is None:
        return ClipPlan(start, (), (start, end), audio_window)
    lo = hi = anchor
    order = [anchor]
    count = len(caption_starts)
    while caption_ends[hi] - caption_starts[lo] < spec.clip_seconds:
        with_previous = caption_ends[hi] - caption_starts[lo - 1] if lo > 0 else math.inf
        with_next = caption_ends[hi + 1] - caption_starts[lo] if hi + 1 < count else math.inf
        if math.isinf(with_previous) and math.isinf(with_next):
            break
        if with_previous <= with_next:
            lo -= 1
            order.append(lo)
        else:
            hi += 1
            order.append(hi)
    window = (float(caption_starts[lo]), float(caption_ends[hi]))
    return ClipPlan(start, tuple(order), window, audio_window)


def video_token_rows(window: tuple[float, float], n3d: int, n2d: int, max_tokens: int) -> tuple[np.ndarray, np.ndarray]:
    """3D rows overlapping the window (first `max_tokens`) and, per 3D row, the nearest 2D row.

    3D row k covers [k/1.5, (k+1)/1.5); the 2D row nearest to its centre (k + 0.5)/1.5 is the one
    covering that instant (2D row i covers [i, i+1)), clamped to the last 2D row.
    """
    first = max(0, int(math.floor(window[0] * RESNEXT101.rate)))
    last = min(n3d, int(math.ceil(window[1] * RESNEXT101.rate)))
    rows3d = np.arange(first, max(first, last))[:max_tokens]
    centres = (rows3d + 0.5) / RESNEXT101.rate
    rows2d = np.minimum(np.floor(centres * RESNET152.rate).astype(np.int64), max(n2d - 1, 0))
    return rows3d, rows2d


def _l2_normalise(rows: np.ndarray) -> np.ndarray:
    rows = rows.astype(np.float32)
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    return rows / np.maximum(norms, 1e-12)


def clip_token_ids(record: DecodedSample, caption_order: tuple[int, ...], max_words: int) -> np.ndarray:
    """Token ids of the captions in `caption_order` (anchor first, added ones appended: quirk), first max_words."""
    parts = [record.tokens[record.token_offsets[i] : record.token_offsets[i + 1]] for i in caption_order]
    ids = np.concatenate(parts) if parts else np.zeros(0, np.int32)
    return ids[:max_words].astype(np.int64)


def clip_arrays(record: DecodedSample, plan: ClipPlan, spec: ClipSpec) -> dict[str, np.ndarray]:
    """Fixed-size arrays of one clip: video (Nv, 4096) + mask, token ids (<= max_words), audio (40, Na) + mask.

    Padding rows/frames are zeros with a False mask; the collate step sets the audio padding value.
    """
    n3d, n2d = len(record.resnext101), len(record.resnet152)
    video = np.zeros((spec.video_tokens, RESNET152.dim + RESNEXT101.dim), np.float32)
    video_mask = np.zeros(spec.video_tokens, bool)
    if n3d and n2d:
        rows3d, rows2d = video_token_rows(plan.video_window, n3d, n2d, spec.video_tokens)
        count = len(rows3d)
        video[:count, : RESNET152.dim] = _l2_normalise(record.resnet152[rows2d])
        video[:count, RESNET152.dim :] = _l2_normalise(record.resnext101[rows3d])
        video_mask[:count] = True
    audio = np.zeros((LOGMEL.dim, spec.audio_frames), np.float32)
    audio_mask = np.zeros(spec.audio_frames, bool)
    if record.logmel is not None:
        first = int(round(plan.audio_window[0] * LOGMEL.rate))
        frames = record.logmel[:, first : first + spec.audio_frames]
        audio[:, : frames.shape[1]] = frames
        audio_mask[: frames.shape[1]] = True
    return {
        "video": video,
        "video_mask": video_mask,
        "token_ids": clip_token_ids(record, plan.caption_order, spec.max_words),
        "audio": audio,
        "audio_mask": audio_mask,
    }


def sample_clips(record: DecodedSample, count: int, spec: ClipSpec, rng: np.random.Generator) -> list[dict[str, np.ndarray]]:
    """`count` independent random clips of one video, each tagged with its video id."""
    clips = []
    for _ in range(count):
        start = draw_start(rng, record.duration, spec.clip_seconds)
        plan = plan_clip(start, record.caption_starts, record.caption_ends, spec)
        clip = clip_arrays(record, plan, spec)
        clip["video_id"] = record.video_id
        clips.append(clip)
    return clips
