"""The soundtrack at 16 kHz mono, decoded with PyAV for the decode task.

Sample for sample what decord's AudioReader (sample_rate=16000, mono=True) returns, the reader the
recipes first ran with: both run FFmpeg's libswresample with its defaults on the best audio stream's
frames in order and flush it at the end (tests/test_audio_decode.py compares them on every audio
format of the synthetic corpus). Why not decord here: decord needs torch imported first, and the two
take a peak RSS of 1,126 MiB against numpy's 25 MiB (`resource.getrusage` after the imports), in every
decode worker; with this reader
and the numpy log-mel a decode worker imports neither (bench/bench_long_video.py measures it).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from howto_prep import schema
from howto_prep.errors import FailureKind


def read_audio(path: Path) -> np.ndarray | None:
    """16 kHz mono float32 samples, or None when the file has no audio stream; MediaError (bad_media)
    when the audio cannot be decoded."""
    import av

    from howto_prep.decode import MediaError

    path = Path(path)
    try:
        with av.open(str(path)) as container:
            if not container.streams.audio:
                return None
            stream = container.streams.best("audio")
            # frame_size only regroups the output into 1 s frames: a third less Python work per second
            resampler = av.AudioResampler(format="fltp", layout="mono", rate=schema.AUDIO_SAMPLE_RATE,
                                          frame_size=schema.AUDIO_SAMPLE_RATE)
            samples = _Samples(_expected_seconds(container, stream))
            for frame in container.decode(stream):
                for out in resampler.resample(frame):
                    samples.add(out.to_ndarray()[0])
            for out in resampler.resample(None):
                samples.add(out.to_ndarray()[0])
    except av.error.FFmpegError as err:
        raise MediaError(FailureKind.BAD_MEDIA, f"cannot decode the audio of {path.name}: "
                         f"{' '.join(str(err).split())[:300]}") from None
    return samples.array()


def _expected_seconds(container, stream) -> float:
    """The audio stream's (else the file's) duration from the header, 60 s when neither says."""
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return container.duration / 1_000_000
    return 60.0


class _Samples:
    """A float32 buffer sized from the header's duration (+1 s) and grown 1.5x if that was short: the
    soundtrack is held once, not as a list of frames plus their concatenation (2x at the peak)."""

    def __init__(self, seconds: float) -> None:
        self.buffer = np.empty(int((seconds + 1.0) * schema.AUDIO_SAMPLE_RATE), dtype=np.float32)
        self.count = 0

    def add(self, values: np.ndarray) -> None:
        end = self.count + len(values)
        if end > len(self.buffer):
            grown = np.empty(max(end, len(self.buffer) * 3 // 2), dtype=np.float32)
            grown[:self.count] = self.buffer[:self.count]
            self.buffer = grown
        self.buffer[self.count:end] = values
        self.count = end

    def array(self) -> np.ndarray:
        return self.buffer[:self.count]
