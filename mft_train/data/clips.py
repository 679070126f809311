"""Training clip sampling (docs/recipes.md sections 6 and 8) as pure functions over one video's arrays.

`plan_clip` (EAO: a drawn start) and `plan_caption_clip` (MCN: a drawn caption) decide *which*
captions and time windows a clip uses; `draw_clip_plan` draws one the way the config's anchor says;
`clip_arrays` turns a plan into fixed-size arrays with masks. None touches files or global state, so
the tests check them against caption timelines worked out by hand.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from howto_prep.features.logmel import HOP, N_FFT
from howto_prep.schema import AUDIO_SAMPLE_RATE, LOGMEL, MAX_WORDS, RESNET152, RESNEXT101
from mft_train.data.shards import DecodedSample

if TYPE_CHECKING:
    from mft_train.config import DataSettings

# How a training clip is anchored: "random_start" (EAO: a uniform start, then the caption covering it)
# or "random_caption" (MCN: a caption drawn uniformly among the video's captions).
CLIP_ANCHORS = ("random_start", "random_caption")


@dataclass(frozen=True)
class ClipSpec:
    """Sizes of one training clip; the defaults are the paper preset."""

    clip_seconds: float = 8.0
    video_tokens: int = 12
    audio_frames: int = 768
    audio_shift_seconds: float = 4.0  # the EAO code's random shift is always +4 s (quirk); 0 turns it off
    max_words: int = MAX_WORDS
    anchor: str = "random_start"  # one of CLIP_ANCHORS


def clip_spec(data: DataSettings) -> ClipSpec:
    """The training clip of a config's data section (the audio shift applies only when switched on)."""
    return ClipSpec(
        clip_seconds=data.clip_seconds,
        video_tokens=data.video_tokens,
        audio_frames=data.audio_frames,
        audio_shift_seconds=data.audio_shift_seconds if data.audio_shift else 0.0,
        max_words=data.max_words,
        anchor=data.clip_anchor,
    )


@dataclass(frozen=True)
class ClipPlan:
    """Where one clip lies: the drawn start, its captions (anchor first) and its time windows (s).

    The audio window holds log-mel frame boundaries divided by the frame rate: `clip_arrays` takes
    frames round(rate * audio_window[0]) up to round(rate * audio_window[1]), at most audio_frames."""

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


def released_frame_index(seconds: float) -> int:
    """Log-mel frame of an instant as the released EAO and MCN loaders compute it (librosa's
    time_to_frames with n_fft = 400): samples truncated, minus half a window, floor-divided by the hop,
    i.e. floor(100 t - 1.25) up to float rounding. Negative near 0 s; callers clamp."""
    samples = int(seconds * AUDIO_SAMPLE_RATE)
    return (samples - N_FFT // 2) // HOP


def frame_window(first: int, stop: int) -> tuple[float, float]:
    """Frames [first, stop) as the (start, end) seconds of a ClipPlan's audio window."""
    return first / LOGMEL.rate, stop / LOGMEL.rate


def audio_window_without_text(start: float, spec: ClipSpec) -> tuple[float, float]:
    """A clip without text hears audio_frames frames from its drawn start, unshifted (released EAO)."""
    first = max(0, released_frame_index(start))
    return frame_window(first, first + spec.audio_frames)


def audio_window_of_span(span: tuple[float, float], spec: ClipSpec) -> tuple[float, float]:
    """Audio of a clip with text, anchored on the caption span's start as the released loaders do.

    With a shift (EAO's always-taken `flag_text_audio_misaligned` branch): [span start + shift,
    + clip_seconds]; without (MCN, EAO with the flag off): the span itself. The end frame bounds the
    clip (at most audio_frames are kept); the start is clamped to frame 0 and the end to the start."""
    if spec.audio_shift_seconds > 0:
        begin = span[0] + spec.audio_shift_seconds
        end = begin + spec.clip_seconds
    else:
        begin, end = span
    first = max(0, released_frame_index(begin))
    return frame_window(first, max(first, released_frame_index(end)))


def grow_span(anchor: int, caption_starts: np.ndarray, caption_ends: np.ndarray,
              min_seconds: float) -> tuple[int, int, tuple[int, ...]]:
    """(lo, hi, order): grow [anchor, anchor] one neighbouring caption at a time, taking the one that
    keeps the span shortest (ties: the previous caption), until it lasts >= min_seconds or no
    neighbour is left. `order` lists the captions as they were added, anchor first."""
    lo = hi = anchor
    order = [anchor]
    count = len(caption_starts)
    while caption_ends[hi] - caption_starts[lo] < min_seconds:
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
    return lo, hi, tuple(order)


def plan_from_anchor(start: float, anchor: int, caption_starts: np.ndarray, caption_ends: np.ndarray,
                     spec: ClipSpec) -> ClipPlan:
    """The clip grown from caption `anchor`: video over the span, audio from the span's start."""
    lo, hi, order = grow_span(anchor, caption_starts, caption_ends, spec.clip_seconds)
    span = (float(caption_starts[lo]), float(caption_ends[hi]))
    return ClipPlan(start, order, span, audio_window_of_span(span, spec))


def plan_clip(start: float, caption_starts: np.ndarray, caption_ends: np.ndarray, spec: ClipSpec) -> ClipPlan:
    """Apply the EAO rule to a drawn start.

    Anchor on the caption containing `start`, else the one containing `start + clip_seconds`, else
    the clip has no text; grow the span (`grow_span`). The video window is the span; without text it
    is the drawn clip itself. Audio: `audio_window_of_span`, or `audio_window_without_text`.
    """
    end = start + spec.clip_seconds
    anchor = _containing(caption_starts, caption_ends, start)
    if anchor is None:
        anchor = _containing(caption_starts, caption_ends, end)
    if anchor is None:
        return ClipPlan(start, (), (start, end), audio_window_without_text(start, spec))
    return plan_from_anchor(start, anchor, caption_starts, caption_ends, spec)


def plan_caption_clip(anchor: int, caption_starts: np.ndarray, caption_ends: np.ndarray, spec: ClipSpec) -> ClipPlan:
    """Apply the MCN rule: the clip grown from a drawn caption (so every clip has text)."""
    return plan_from_anchor(float(caption_starts[anchor]), anchor, caption_starts, caption_ends, spec)


def draw_clip_plan(rng: np.random.Generator, duration: float, caption_starts: np.ndarray,
                   caption_ends: np.ndarray, spec: ClipSpec) -> ClipPlan:
    """One random clip as `spec.anchor` says: a uniform start (EAO), or a caption drawn uniformly
    with replacement (MCN; a video without captions falls back to a drawn start, without text)."""
    if spec.anchor == "random_caption" and len(caption_starts):
        return plan_caption_clip(int(rng.integers(len(caption_starts))), caption_starts, caption_ends, spec)
    return plan_clip(draw_start(rng, duration, spec.clip_seconds), caption_starts, caption_ends, spec)


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

    Padding rows/frames are zeros with a False mask (the models overwrite padded audio with their own value).
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
        stop = min(first + spec.audio_frames, int(round(plan.audio_window[1] * LOGMEL.rate)))
        frames = record.logmel[:, first : max(first, stop)]
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
        plan = draw_clip_plan(rng, record.duration, record.caption_starts, record.caption_ends, spec)
        clip = clip_arrays(record, plan, spec)
        clip["video_id"] = record.video_id
        clips.append(clip)
    return clips
