"""Decode a video once with decord: 1 fps and 24 fps frames in bounded chunks, 16 kHz mono audio.

Frame selection follows ffmpeg's `fps` filter (default `round=near`), computed from the real
frame timestamps, so variable-frame-rate files are handled like ffmpeg handles them:

* every source frame i gets the output slot r_i = round_half_up((t_i - t_0) * fps);
* output frame k shows the *last* source frame with r_i <= k (earlier slots repeat the first
  frame, skipped slots repeat the previous frame);
* the number of output frames is round_half_up(duration * fps), where duration = end of the last
  frame - start of the first (ffmpeg rounds the end-of-stream timestamp the same way).

Hence T2 = round(duration) rows at 1 fps, N24 = round(24 * duration) frames at 24 fps and
T3 = ceil(N24 / 16) 3D rows (about 1.5 per second). Chunks cover `chunk_seconds` of output time;
each needed source frame is decoded exactly once (one `get_batch` per chunk), so memory is
bounded by the chunk, not by the video's length.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from howto_prep import schema
from howto_prep.errors import FailureKind

DEFAULT_CHUNK_SECONDS = 10  # 10 s at 24 fps = 240 frames = 15 whole 16-frame clips
MIN_DURATION_S = 1.0
VFR_TOLERANCE = 0.01  # relative spread of frame durations above which a file counts as VFR


class MediaError(Exception):
    """A video that cannot be used; `kind` goes to failures.jsonl (bad_media, no_video, too_short)."""

    def __init__(self, kind: FailureKind, message: str) -> None:
        super().__init__(message)
        self.kind = kind

    def __reduce__(self):  # picklable across Ray processes
        return (MediaError, (self.kind, str(self)))


@dataclass(frozen=True)
class VideoInfo:
    """What meta.json needs to know about the source file."""

    duration: float
    fps: float
    width: int
    height: int
    num_frames: int
    variable_frame_rate: bool

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class FrameChunk:
    """Frames of one chunk of output time: `frames_1fps` (n, H, W, 3), `frames_24fps` (m, H, W, 3)."""

    index: int
    frames_1fps: np.ndarray | None
    frames_24fps: np.ndarray | None


def import_decord():
    """decord, imported after torch: decord's libraries pull in NVBLAS, which hijacks BLAS and
    crashes torch's CPU matmuls (SIGSEGV) when decord is loaded first in a process."""
    import torch  # noqa: F401  (must precede decord)
    import decord

    return decord


def round_half_up(values: np.ndarray | float) -> np.ndarray:
    """ffmpeg's AV_ROUND_NEAR_INF for non-negative values, tolerant of float32 timestamps."""
    return np.floor(np.asarray(values, dtype=np.float64) + 0.5 + 1e-6).astype(np.int64)


def output_count(duration: float, fps: float) -> int:
    """Frames the ffmpeg `fps` filter emits for `duration` seconds."""
    return int(round_half_up(duration * fps))


def select_frames(starts: np.ndarray, fps: float, count: int) -> np.ndarray:
    """Source frame index shown at each of `count` output frames of the `fps` filter."""
    relative = np.asarray(starts, dtype=np.float64) - float(starts[0])
    slots = np.maximum.accumulate(round_half_up(relative * fps))
    chosen = np.searchsorted(slots, np.arange(count), side="right") - 1
    return np.clip(chosen, 0, len(starts) - 1)


def rows_3d(frames_24fps: int) -> int:
    """3D rows: 16-frame clips, the last one zero-padded."""
    return math.ceil(frames_24fps / schema.CLIP_LEN_3D)


def open_video(path: Path, num_threads: int = 0):
    """decord VideoReader, with decord's errors turned into a MediaError with a kind."""
    decord = import_decord()
    path = Path(path)
    if path.is_file() and path.stat().st_size == 0:
        raise MediaError(FailureKind.BAD_MEDIA, f"{path.name} is empty (0 bytes)")
    try:
        return decord.VideoReader(str(path), num_threads=num_threads)
    except Exception as err:  # decord raises RuntimeError/DECORDError with ffmpeg's text
        text = " ".join(str(err).split())[:500]
        kind = FailureKind.NO_VIDEO if "cannot find video stream" in text else FailureKind.BAD_MEDIA
        raise MediaError(kind, f"cannot decode {path.name}: {text}") from None


def frame_times(reader) -> np.ndarray:
    """(N, 2) start and end time of every frame, in seconds, from the container's timestamps."""
    return np.asarray(reader.get_frame_timestamp(np.arange(len(reader))), dtype=np.float64)


def probe(reader) -> VideoInfo:
    """Duration, rate and size from the real timestamps; raises MediaError for unusable files."""
    times = frame_times(reader)
    duration = float(times[-1, 1] - times[0, 0])
    if not np.isfinite(duration) or duration < MIN_DURATION_S:
        raise MediaError(FailureKind.TOO_SHORT, f"video lasts {duration:.3f} s, shorter than {MIN_DURATION_S:g} s")
    steps = np.diff(times[:, 0])
    variable = bool(len(steps) > 1 and (steps.max() - steps.min()) > VFR_TOLERANCE * max(steps.mean(), 1e-9))
    height, width = reader[0].shape[:2]
    reader.seek(0)
    return VideoInfo(duration=duration, fps=float(len(times) / duration), width=int(width),
                     height=int(height), num_frames=len(times), variable_frame_rate=variable)


def iterate_chunks(reader, info: VideoInfo, want_1fps: bool = True, want_24fps: bool = True,
                   chunk_seconds: int = DEFAULT_CHUNK_SECONDS) -> Iterator[FrameChunk]:
    """Yield the 1 fps and 24 fps frames chunk by chunk, decoding each source frame once."""
    starts = frame_times(reader)[:, 0]
    pick_1 = select_frames(starts, schema.FPS_2D, output_count(info.duration, schema.FPS_2D)) if want_1fps else None
    pick_24 = select_frames(starts, schema.FPS_3D, output_count(info.duration, schema.FPS_3D)) if want_24fps else None
    per_1 = int(chunk_seconds * schema.FPS_2D)
    per_24 = int(chunk_seconds * schema.FPS_3D)
    if per_24 % schema.CLIP_LEN_3D:
        raise ValueError(f"chunk_seconds={chunk_seconds} does not hold whole 16-frame clips at 24 fps")
    n_chunks = max(math.ceil(len(pick_1) / per_1) if pick_1 is not None else 0,
                   math.ceil(len(pick_24) / per_24) if pick_24 is not None else 0)
    for index in range(n_chunks):
        part_1 = pick_1[index * per_1:(index + 1) * per_1] if pick_1 is not None else None
        part_24 = pick_24[index * per_24:(index + 1) * per_24] if pick_24 is not None else None
        needed = np.unique(np.concatenate([p for p in (part_1, part_24) if p is not None]))
        decoded = reader.get_batch(needed.tolist()).asnumpy() if len(needed) else None
        position = {int(frame): row for row, frame in enumerate(needed)}

        def take(part: np.ndarray | None) -> np.ndarray | None:
            if part is None:
                return None
            return decoded[[position[int(frame)] for frame in part]]

        yield FrameChunk(index=index, frames_1fps=take(part_1), frames_24fps=take(part_24))


def read_audio(path: Path) -> np.ndarray | None:
    """16 kHz mono float32 samples, or None when the file has no audio stream."""
    decord = import_decord()
    try:
        reader = decord.AudioReader(str(path), sample_rate=schema.AUDIO_SAMPLE_RATE, mono=True)
    except Exception as err:
        if "audio stream" in str(err).lower():
            return None
        raise MediaError(FailureKind.BAD_MEDIA, f"cannot decode the audio of {Path(path).name}: "
                         f"{' '.join(str(err).split())[:300]}") from None
    samples = np.asarray(reader._array if hasattr(reader, "_array") else reader[:].asnumpy(), dtype=np.float32)
    return np.ascontiguousarray(samples.reshape(-1) if samples.shape[0] == 1 else samples.mean(axis=0))
