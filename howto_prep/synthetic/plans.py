"""Video plans: everything needed to render one synthetic video (format, task, step timeline, look),
derived from the seed alone, so the same seed renders the same corpus."""

from __future__ import annotations

import string
from dataclasses import dataclass

import numpy as np

from howto_prep.synthetic.content import TASKS, Task

# 4:3 and 16:9, 240p to 360p; 240p twice as often, as it is the cheapest to encode
RESOLUTIONS = ((320, 240), (426, 240), (480, 360), (640, 360), (320, 240), (426, 240))
FRAME_RATES = (24.0, 25.0, 29.97, 30.0)
AUDIO_FORMATS = ((16_000, 1), (44_100, 2), (48_000, 1), (44_100, 1), (48_000, 2), (16_000, 2))
NO_AUDIO_EVERY = 8  # one video in eight has no audio stream (index % 8 == 2)

# Encodings of the corpus (`howto-prep synth --encoding`):
#   quick  the formats above, x264 ultrafast at crf 28: cheap to write and decode (tests, demo)
#   howto  like HowTo100M's YouTube files: 640x360 and 480x360 (one in eight 1280x720), 25/29.97/30 fps,
#          H.264 High profile with B-frames at 400-800 kbit/s (x264 medium), AAC 44.1/48 kHz stereo on every
#          video, and pictures that need those bits (texture, a slowly drifting camera, sensor grain)
ENCODINGS = ("quick", "howto")
HOWTO_RESOLUTIONS = ((640, 360), (480, 360), (640, 360), (480, 360), (640, 360), (1280, 720), (640, 360), (480, 360))
HOWTO_FRAME_RATES = (25.0, 29.97, 30.0, 29.97)
HOWTO_AUDIO_FORMATS = ((44_100, 2), (44_100, 2), (48_000, 2))
HOWTO_KBITS = {360: (400, 800), 720: (800, 800)}  # video bitrate range (kbit/s) by frame height


@dataclass(frozen=True)
class Segment:
    """One step shown from `start` to `end` seconds."""

    step: int  # global step index
    start: float
    end: float


@dataclass(frozen=True)
class VideoPlan:
    """Everything needed to render one video and its narration, derived from the seed alone."""

    video_id: str
    task: int
    duration: float
    fps: float
    width: int
    height: int
    sample_rate: int | None  # None: no audio stream
    channels: int
    segments: tuple[Segment, ...]
    background: tuple[tuple[int, int, int], tuple[int, int, int]]  # top and bottom gradient colours
    clutter: tuple[tuple[float, float, float, float, int, int, int], ...]  # static rectangles
    sprite_scale: float
    pan: float  # -1 left .. 1 right (stereo only)
    rank: int
    noise_seed: int
    bitrate: int | None = None  # video bit/s of the `howto` encoding; None: the quick crf encoding


def make_ids(rng: np.random.Generator, count: int) -> list[str]:
    """YouTube-like ids: 11 chars of [A-Za-z0-9_-], unique; some with '-', '_', one leading '-'."""
    letters = np.array(list(string.ascii_letters + string.digits))
    ids: list[str] = []
    seen: set[str] = set()
    while len(ids) < count:
        i = len(ids)
        chars = list(rng.choice(letters, 11))
        if i % 4 == 1:
            chars[int(rng.integers(1, 11))] = "-"
        if i % 4 == 3:
            chars[int(rng.integers(1, 11))] = "_"
        if i % 12 == 5:
            chars[0] = "-"  # real ids can start with '-': tools must not read them as options
        video_id = "".join(chars)
        if video_id not in seen:
            seen.add(video_id)
            ids.append(video_id)
    return ids


def _cycled(rng: np.random.Generator, options: tuple, count: int) -> list:
    """Each block of len(options) videos uses every option once, in a seeded order."""
    values: list = []
    while len(values) < count:
        values.extend(options[j] for j in rng.permutation(len(options)))
    return values[:count]


DURATION_POWER = 10  # mean duration: low + (high - low) / 11


def _durations(rng: np.random.Generator, count: int, low: float, high: float) -> list[float]:
    """low + (high - low) * q**10 with q stratified over blocks of up to 24 videos.

    Most videos are short and each block has its long ones (the top stratum lies in the top third
    of the range), so a default corpus spans 10 s to a few minutes and still encodes fast.
    """
    values: list[float] = []
    while len(values) < count:
        block = min(24, count - len(values))
        strata = rng.permutation(block)
        for stratum in strata:
            q = (stratum + float(rng.random())) / block
            values.append(round(float(low + (high - low) * q ** DURATION_POWER), 2))
    return values


def _segments(rng: np.random.Generator, task: Task, duration: float) -> tuple[Segment, ...]:
    """Intro, then the task's steps in order (cyclically, from a random first step), then an outro."""
    intro = float(rng.uniform(0.5, 3.0)) if duration >= 14 else float(rng.uniform(0.3, 1.0))
    outro = float(rng.uniform(1.0, 4.0)) if duration >= 30 else 0.0
    usable = duration - intro - outro
    count = max(2, int(round(usable / rng.uniform(7.0, 11.0))))
    weights = rng.uniform(0.6, 1.4, count)
    lengths = usable * weights / weights.sum()
    first = int(rng.integers(len(task.steps)))
    segments, t = [], intro
    for k, length in enumerate(lengths):
        step = task.steps[(first + k) % len(task.steps)]
        segments.append(Segment(step.index, round(t, 3), round(t + float(length), 3)))
        t += float(length)
    return tuple(segments)


def make_plans(
    rng: np.random.Generator, ids: list[str], min_seconds: float, max_seconds: float, first_index: int = 0,
    encoding: str = "quick",
) -> list[VideoPlan]:
    """Plans for `ids`; formats cycle so that any 4+ videos include 29.97 fps and (quick encoding) 3+ an
    audio-less one; the `howto` encoding uses HowTo100M-like formats and bitrates (see ENCODINGS)."""
    if encoding not in ENCODINGS:
        raise ValueError(f"unknown encoding {encoding!r} (one of {', '.join(ENCODINGS)})")
    howto = encoding == "howto"
    count = len(ids)
    resolutions = _cycled(rng, HOWTO_RESOLUTIONS if howto else RESOLUTIONS, count)
    rates = _cycled(rng, HOWTO_FRAME_RATES if howto else FRAME_RATES, count)
    audio = _cycled(rng, HOWTO_AUDIO_FORMATS if howto else AUDIO_FORMATS, count)
    durations = _durations(rng, count, min_seconds, max_seconds)
    plans = []
    for i, video_id in enumerate(ids):
        task = TASKS[int(rng.integers(len(TASKS)))] if i >= len(TASKS) else TASKS[(i + first_index) % len(TASKS)]
        has_audio = howto or (i + first_index) % NO_AUDIO_EVERY != 2
        bitrate = None
        if howto:
            low, high = HOWTO_KBITS[360 if resolutions[i][1] <= 360 else 720]
            bitrate = int(rng.integers(low, high + 1)) * 1000
        top = tuple(int(v) for v in rng.integers(0, 90, 3))
        bottom = tuple(int(v) for v in rng.integers(0, 90, 3))
        clutter = tuple(
            (float(rng.uniform(0, 0.8)), float(rng.uniform(0, 0.8)), float(rng.uniform(0.1, 0.3)),
             float(rng.uniform(0.05, 0.2)), *(int(v) for v in rng.integers(60, 140, 3)))
            for _ in range(int(rng.integers(1, 4)))
        )
        plans.append(VideoPlan(
            video_id=video_id, task=task.index, duration=durations[i], fps=rates[i],
            width=resolutions[i][0], height=resolutions[i][1],
            sample_rate=audio[i][0] if has_audio else None, channels=audio[i][1] if has_audio else 0,
            segments=_segments(rng, task, durations[i]), background=(top, bottom), clutter=clutter,
            sprite_scale=float(rng.uniform(0.9, 1.1)), pan=float(rng.uniform(-0.6, 0.6)),
            rank=int(rng.integers(1, 150)), noise_seed=int(rng.integers(2**31)), bitrate=bitrate,
        ))
    return plans
