"""Write real mp4 files (H.264 + AAC) with PyAV: the synthetic corpus and the tests use it."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path
from typing import Iterable

import numpy as np

from howto_prep.files import atomic_path


def fps_fraction(fps: float) -> Fraction:
    """29.97 -> 30000/1001 (the NTSC rate real uploads carry); other rates exactly."""
    if abs(fps - 29.97) < 0.01:
        return Fraction(30000, 1001)
    if abs(fps - 23.976) < 0.01:
        return Fraction(24000, 1001)
    return Fraction(fps).limit_denominator(1001)


def write_mp4(
    path: Path,
    frames: Iterable[np.ndarray],
    fps: float,
    audio: np.ndarray | None = None,
    sample_rate: int = 44_100,
    crf: int = 28,
) -> Path:
    """Encode RGB uint8 frames (H, W, 3) and optional mono/stereo float audio in [-1, 1] to `path`.

    Written to a temporary name and renamed, so a crash never leaves a partial file under `path`.
    """
    import av

    path = Path(path)
    samples = _channels_first(audio)
    with atomic_path(path) as temp:
        with av.open(str(temp), mode="w", format="mp4") as container:
            audio_stream = None
            if samples is not None:  # added first, so audio stays stream 0 as in every corpus made so far
                layout = "mono" if samples.shape[0] == 1 else "stereo"
                audio_stream = container.add_stream("aac", rate=sample_rate, layout=layout)
            _encode_video(container, frames, fps_fraction(fps), crf)
            if audio_stream is not None:
                _encode_audio(container, audio_stream, samples, sample_rate)
    return path


def _channels_first(audio: np.ndarray | None) -> np.ndarray | None:
    """Float32 (channels, samples) from mono (samples,) or (channels, samples) audio."""
    if audio is None:
        return None
    samples = np.asarray(audio, dtype=np.float32)
    return samples[None, :] if samples.ndim == 1 else samples


def _encode_video(container, frames: Iterable[np.ndarray], rate: Fraction, crf: int) -> None:
    import av

    stream = None
    for frame_array in frames:
        if stream is None:  # the size is known only from the first frame
            height, width = frame_array.shape[:2]
            stream = container.add_stream("libx264", rate=rate)
            stream.width, stream.height = width, height
            stream.pix_fmt = "yuv420p"
            stream.options = {"crf": str(crf), "preset": "ultrafast", "g": "48"}
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame_array), format="rgb24")
        for packet in stream.encode(frame):
            container.mux(packet)
    if stream is None:
        raise ValueError("no frames to write")
    for packet in stream.encode():
        container.mux(packet)


def _encode_audio(container, stream, samples: np.ndarray, sample_rate: int) -> None:
    import av

    channels = samples.shape[0]
    chunk = 1024 * 16
    pts = 0
    for start in range(0, samples.shape[1], chunk):
        block = np.ascontiguousarray(samples[:, start:start + chunk], dtype=np.float32)
        frame = av.AudioFrame.from_ndarray(block, format="fltp", layout="mono" if channels == 1 else "stereo")
        frame.sample_rate = sample_rate
        frame.pts = pts
        pts += block.shape[1]
        for packet in stream.encode(frame):
            container.mux(packet)
    for packet in stream.encode():
        container.mux(packet)
