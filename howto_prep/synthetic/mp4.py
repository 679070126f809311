"""Write real mp4 files (H.264 + AAC) with PyAV: the synthetic corpus and the tests use it."""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Iterable

import numpy as np

from howto_prep.files import atomic_path


@dataclass(frozen=True)
class VideoEncoding:
    """libx264 settings of one file: quality-targeted (`crf`) or bitrate-targeted (`bitrate`)."""

    preset: str = "ultrafast"
    crf: int | None = 28
    bitrate: int | None = None  # bit/s: average-bitrate control with a VBV cap (maxrate 1.5x, 2 s buffer)
    profile: str | None = None  # None: the encoder's choice (ultrafast gives Constrained Baseline)
    gop: int | None = 48  # None: x264's default (keyint 250)
    threads: int | None = None  # None: the encoder's choice; 1 keeps bitrate control identical on any machine
    audio_bitrate: int | None = None  # bit/s of the AAC track; None: the encoder's default

    def options(self) -> dict[str, str]:
        """The libx264 / AVCodecContext options PyAV passes to the encoder."""
        options = {"preset": self.preset}
        if self.bitrate is not None:
            options.update(b=str(self.bitrate), maxrate=str(self.bitrate * 3 // 2), bufsize=str(self.bitrate * 2))
        elif self.crf is not None:
            options["crf"] = str(self.crf)
        if self.profile is not None:
            options["profile"] = self.profile
        if self.gop is not None:
            options["g"] = str(self.gop)
        if self.threads is not None:
            options["threads"] = str(self.threads)
        return options


def howto_encoding(bitrate: int) -> VideoEncoding:
    """What HowTo100M's YouTube downloads look like to a decoder: H.264 High profile with B-frames
    (x264 `medium`: 3 B-frames, 3 reference frames, CABAC, 8x8 transform) at `bitrate` bit/s,
    x264's default GOP, 128 kbit/s AAC. One encoder thread, so the same seed gives the same bits."""
    return VideoEncoding(preset="medium", crf=None, bitrate=int(bitrate), profile="high", gop=None, threads=1,
                         audio_bitrate=128_000)


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
    encoding: VideoEncoding | None = None,
) -> Path:
    """Encode RGB uint8 frames (H, W, 3) and optional mono/stereo float audio in [-1, 1] to `path`.

    `encoding` overrides `crf` (default: x264 ultrafast at `crf`, GOP 48: quick to write, for tests).
    Written to a temporary name and renamed, so a crash never leaves a partial file under `path`.
    """
    import av

    path = Path(path)
    encoding = encoding or VideoEncoding(crf=crf)
    samples = _channels_first(audio)
    with atomic_path(path) as temp:
        with av.open(str(temp), mode="w", format="mp4") as container:
            audio_stream = None
            if samples is not None:  # added first, so audio stays stream 0 as in every corpus made so far
                layout = "mono" if samples.shape[0] == 1 else "stereo"
                audio_stream = container.add_stream("aac", rate=sample_rate, layout=layout)
                if encoding.audio_bitrate:
                    audio_stream.bit_rate = encoding.audio_bitrate
            _encode_video(container, frames, fps_fraction(fps), encoding)
            if audio_stream is not None:
                _encode_audio(container, audio_stream, samples, sample_rate)
    return path


def _channels_first(audio: np.ndarray | None) -> np.ndarray | None:
    """Float32 (channels, samples) from mono (samples,) or (channels, samples) audio."""
    if audio is None:
        return None
    samples = np.asarray(audio, dtype=np.float32)
    return samples[None, :] if samples.ndim == 1 else samples


def _encode_video(container, frames: Iterable[np.ndarray], rate: Fraction, encoding: VideoEncoding) -> None:
    import av

    stream = None
    for frame_array in frames:
        if stream is None:  # the size is known only from the first frame
            height, width = frame_array.shape[:2]
            stream = container.add_stream("libx264", rate=rate)
            stream.width, stream.height = width, height
            stream.pix_fmt = "yuv420p"
            stream.options = encoding.options()
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


def repeat_mp4(source: Path, path: Path, times: int) -> Path:
    """`source` played `times` times in a row, by copying its packets (no re-encoding): a long file with
    exactly the source's encoding, made in seconds (memory benchmarks). Each stream's timestamps go on
    where its previous copy ended (the audio may drift from the video by under one AAC frame per copy)."""
    import av

    path = Path(path)
    spans: dict[int, int] = {}
    with av.open(str(source)) as container:
        for packet in container.demux():
            if packet.size == 0 or packet.pts is None:
                continue
            first, last = spans.get(packet.stream.index, (packet.pts, packet.pts))
            spans[packet.stream.index] = (min(first, packet.pts), max(last, packet.pts + (packet.duration or 0)))
    spans = {index: last - first for index, (first, last) in spans.items()}
    with atomic_path(path) as temp, av.open(str(temp), mode="w", format="mp4") as output:
        with av.open(str(source)) as container:
            streams = {s.index: output.add_stream_from_template(s) for s in container.streams if s.index in spans}
        for copy in range(times):
            with av.open(str(source)) as container:
                for packet in container.demux():
                    if packet.size == 0 or packet.stream.index not in streams:
                        continue
                    shift = copy * spans[packet.stream.index]
                    packet.pts = None if packet.pts is None else packet.pts + shift
                    packet.dts = None if packet.dts is None else packet.dts + shift
                    packet.stream = streams[packet.stream.index]
                    output.mux(packet)
    return path
