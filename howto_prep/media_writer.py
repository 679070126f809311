"""Write real mp4 files (H.264 + AAC) with PyAV: the synthetic corpus and the tests use it."""

from __future__ import annotations

import os
from fractions import Fraction
from pathlib import Path
from typing import Iterable

import numpy as np


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
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    rate = fps_fraction(fps)
    container = av.open(str(tmp), mode="w", format="mp4")
    try:
        video_stream = None
        audio_stream = None
        if audio is not None:
            samples = np.asarray(audio, dtype=np.float32)
            if samples.ndim == 1:
                samples = samples[None, :]
            layout = "mono" if samples.shape[0] == 1 else "stereo"
            audio_stream = container.add_stream("aac", rate=sample_rate, layout=layout)
        for frame_array in frames:
            if video_stream is None:
                height, width = frame_array.shape[:2]
                video_stream = container.add_stream("libx264", rate=rate)
                video_stream.width, video_stream.height = width, height
                video_stream.pix_fmt = "yuv420p"
                video_stream.options = {"crf": str(crf), "preset": "ultrafast", "g": "48"}
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame_array), format="rgb24")
            for packet in video_stream.encode(frame):
                container.mux(packet)
        if video_stream is None:
            raise ValueError("no frames to write")
        for packet in video_stream.encode():
            container.mux(packet)
        if audio_stream is not None:
            _encode_audio(container, audio_stream, samples, sample_rate)
    finally:
        container.close()
    os.replace(tmp, path)
    return path


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
