"""Where a video's search windows lie, and the model inputs of one window.

Why windows: a video of minutes holds many steps; retrieval should point at the seconds that match,
so every video is cut into overlapping windows of the pretraining clip length (what the model saw
in training: 8 s = 12 video tokens / 768 log-mel frames in the paper preset), every `stride` seconds.
Video and audio of a window cover the same seconds (no +4 s audio shift: like evaluation, the window
is the unit being described). A window carries no text: the model embeds its video, its audio and
the fused pair.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from howto_prep.errors import UserError
from howto_prep.schema import LOGMEL
from mft_train.data.clips import ClipPlan, ClipSpec, clip_arrays
from mft_train.data.shards import DecodedSample


@dataclass(frozen=True)
class WindowSpec:
    """Window length and hop (s) and the model input sizes of one window."""

    seconds: float
    stride: float
    video_tokens: int
    audio_frames: int

    def to_dict(self) -> dict:
        return asdict(self)


def window_spec(clip_seconds: float, video_tokens: int, audio_frames: int,
                seconds: float | None = None, stride: float | None = None) -> WindowSpec:
    """Windows of `seconds` (default: the training clip) every `stride` (default: half a window);
    token and frame counts scale with the length from the training clip's (8 s: 12 / 768)."""
    seconds = float(seconds if seconds is not None else clip_seconds)
    if not seconds > 0:
        raise UserError(f"--window must be a positive number of seconds, got {seconds}")
    stride = float(stride if stride is not None else seconds / 2)
    if not stride > 0:
        raise UserError(f"--stride must be a positive number of seconds, got {stride}")
    scale = seconds / clip_seconds
    return WindowSpec(seconds, stride, max(1, round(video_tokens * scale)), max(1, round(audio_frames * scale)))


def window_bounds(duration: float, spec: WindowSpec) -> list[tuple[float, float]]:
    """(start, end) of every window: starts 0, stride, 2 stride, ... until one reaches the end.

    The last window may be shorter (it ends at the video's end); a video shorter than a window is
    one window.
    """
    duration = max(float(duration), 0.0)
    count = 1 + max(0, math.ceil((duration - spec.seconds) / spec.stride - 1e-9))
    bounds = []
    for k in range(count):
        start = round(k * spec.stride, 6)
        bounds.append((start, round(min(start + spec.seconds, duration), 6) if duration > 0 else start + spec.seconds))
    return bounds


def window_inputs(record: DecodedSample, start: float, end: float, spec: WindowSpec) -> dict[str, np.ndarray]:
    """Per-clip arrays (mft_train.data.clips layout) of the window [start, end): no caption words."""
    clip = ClipSpec(clip_seconds=spec.seconds, video_tokens=spec.video_tokens, audio_frames=spec.audio_frames,
                    audio_shift_seconds=0.0, max_words=1)
    plan = ClipPlan(start, (), (start, end), (start, start + spec.audio_frames / LOGMEL.rate))
    arrays = clip_arrays(record, plan, clip)
    # frames past the window's end (a last, shorter window) are masked like padding
    frames = max(0, min(spec.audio_frames, round((end - start) * LOGMEL.rate)))
    arrays["audio_mask"][frames:] = False
    return arrays
