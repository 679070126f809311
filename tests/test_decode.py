"""decode.py on real mp4 files: ffmpeg `fps` frame selection, chunking, audio, bad media kinds."""

from __future__ import annotations

import math
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from howto_prep import decode
from howto_prep.features.audio import read_audio
from howto_prep.synthetic.mp4 import write_mp4

LEVEL_STEP = 12  # frame i is flat: red 12 * (i % 20) + 8, green 12 * (i // 20) + 8: a frame names its index


def level_frames(count: int, height: int = 48, width: int = 64) -> list[np.ndarray]:
    frames = []
    for i in range(count):
        frame = np.full((height, width, 3), 128, np.uint8)
        frame[..., 0] = LEVEL_STEP * (i % 20) + 8
        frame[..., 1] = LEVEL_STEP * (i // 20) + 8
        frames.append(frame)
    return frames


def frame_index(frame: np.ndarray, count: int) -> int:
    """Index of the source frame a decoded frame shows (nearest levels: the codec is lossy)."""
    red, green = float(frame[..., 0].mean()), float(frame[..., 1].mean())
    index = int(round((green - 8) / LEVEL_STEP)) * 20 + int(round((red - 8) / LEVEL_STEP))
    return min(max(index, 0), count - 1)


def fps_filter_reference(starts: list[float], end: float, fps: float) -> list[int]:
    """ffmpeg's fps filter, simulated frame by frame as vf_fps.c does it (two-frame buffer).

    Each input frame gets pts round(t * fps) (half away from zero); output pts k is filled by the
    buffered frame, which is dropped once the next frame's pts <= k; output stops at round(end * fps).
    """
    def near(x: float) -> int:
        return math.floor(x + 0.5 + 1e-6)

    rounded = [near((t - starts[0]) * fps) for t in starts]
    stop = near((end - starts[0]) * fps)
    out, current, k = [], 0, 0
    for nxt in range(1, len(starts) + 1):
        limit = rounded[nxt] if nxt < len(starts) else stop
        if nxt < len(starts) and rounded[nxt] <= k:
            current = nxt
            continue
        while k < limit and k < stop:
            out.append(current)
            k += 1
        current = nxt
    return out


def test_selection_matches_hand_computed_cfr_values() -> None:
    starts = np.arange(75) / 30.0  # 2.5 s at 30 fps
    # output k shows the last frame whose start rounds to <= k: 14 (0.467 s), 44, 74
    assert decode.select_frames_at(starts, 1.0, decode.output_count(2.5, 1.0)).tolist() == [14, 44, 74]
    assert decode.output_count(2.5, 24.0) == 60 and decode.rows_3d(60) == 4
    assert decode.output_count(2.49, 1.0) == 2


@pytest.mark.parametrize("fps_in", [30.0, 30000 / 1001, 25.0, 60.0, 12.0])
@pytest.mark.parametrize("fps_out", [1.0, 24.0])
def test_selection_matches_fps_filter_simulation(fps_in: float, fps_out: float) -> None:
    count = int(7.3 * fps_in)
    starts = [i / fps_in for i in range(count)]
    end = count / fps_in
    expected = fps_filter_reference(starts, end, fps_out)
    got = decode.select_frames_at(np.array(starts), fps_out, decode.output_count(end, fps_out))
    assert got.tolist() == expected


def test_selection_variable_frame_rate_matches_simulation() -> None:
    rng = np.random.default_rng(3)
    starts = np.cumsum(np.r_[0.0, rng.uniform(0.005, 0.4, 80)])
    end = float(starts[-1] + 0.05)
    for fps in (1.0, 24.0):
        expected = fps_filter_reference(starts.tolist(), end, fps)
        assert decode.select_frames_at(starts, fps, decode.output_count(end, fps)).tolist() == expected


def test_chunks_decode_the_selected_frames_of_a_real_mp4(tmp_path: Path) -> None:
    count = 75  # 2.5 s at 30 fps
    path = write_mp4(tmp_path / "levels.mp4", level_frames(count), 30.0)
    source = decode.open_video(path)
    info = decode.probe(source)
    assert info.duration == pytest.approx(2.5, abs=1e-3) and (info.width, info.height) == (64, 48)
    assert not info.variable_frame_rate
    chunks = list(decode.iterate_chunks(source, info, chunk_seconds=2))
    # Frames leave the decoder at the recipes' sizes: short side 224 (2D), 112x112 cropped (3D).
    assert chunks[0].frames_1fps.shape[1:] == (224, 298, 3) and chunks[0].frames_24fps.shape[1:] == (112, 112, 3)
    ones = np.concatenate([c.frames_1fps for c in chunks])
    all_24 = np.concatenate([c.frames_24fps for c in chunks])
    starts = [i / 30 for i in range(count)]
    assert [frame_index(f, count) for f in ones] == fps_filter_reference(starts, 2.5, 1.0) == [14, 44, 74]
    assert [frame_index(f, count) for f in all_24] == fps_filter_reference(starts, 2.5, 24.0)
    assert [len(c.frames_24fps) for c in chunks] == [48, 12]  # whole 16-frame clips except the last
    assert [len(c.frames_1fps) for c in chunks] == [2, 1]


def test_outputs_after_the_last_decoded_frame_repeat_it(tmp_path: Path) -> None:
    # A damaged tail can leave the decoder short of the frames the timestamps promise: every output is
    # still written, the later ones repeating the last decoded frame (as the fps filter repeats its last
    # input), and a chunk never holds an unwritten slot.
    import av

    count, decoded = 60, 40  # 2 s at 30 fps; the decoder "loses" the last 20 frames
    path = write_mp4(tmp_path / "levels.mp4", level_frames(count), 30.0)
    source = decode.open_video(path)
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        track = decode.make_tracks(source, stream, False, True, 1, 48)["24fps"]
        for position, frame in zip(range(decoded), container.decode(stream)):
            track.offer(frame, position)
    track.finish()
    chunk = track.take(final=True)
    assert track.take(final=True) is None
    assert len(chunk) == len(track.picks) == 48
    assert [frame_index(f, count) for f in chunk] == [min(int(p), decoded - 1) for p in track.picks]


def write_vfr_mp4(path: Path, pts_ms: list[int]) -> Path:
    """An mp4 whose frames sit at the given millisecond timestamps (variable frame rate)."""
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=30)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        stream.codec_context.time_base = Fraction(1, 1000)
        for i, (frame_array, pts) in enumerate(zip(level_frames(len(pts_ms)), pts_ms)):
            frame = av.VideoFrame.from_ndarray(frame_array, format="rgb24")
            frame.pts, frame.time_base = pts, Fraction(1, 1000)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def test_variable_frame_rate_uses_real_timestamps(tmp_path: Path) -> None:
    steps = [20 if i % 2 == 0 else 90 for i in range(39)]
    pts_ms = np.r_[0, np.cumsum(steps)].astype(int).tolist()
    source = decode.open_video(write_vfr_mp4(tmp_path / "vfr.mp4", pts_ms))
    info = decode.probe(source)
    assert info.variable_frame_rate
    chunk = next(decode.iterate_chunks(source, info, want_24fps=False))
    starts = (source.pts * float(source.time_base)).tolist()
    assert starts[:4] == pytest.approx([0.0, 0.02, 0.11, 0.13], abs=1e-4)
    expected = fps_filter_reference(starts, starts[0] + info.duration, 1.0)
    assert [frame_index(f, len(pts_ms)) for f in chunk.frames_1fps] == expected
    assert len(expected) == decode.output_count(info.duration, 1.0)


def test_odd_frame_size_decodes(tmp_path: Path) -> None:
    import av

    path = tmp_path / "odd.mp4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=24)
        stream.width, stream.height, stream.pix_fmt = 321, 241, "yuv444p"  # 4:2:0 needs even sizes
        for frame_array in level_frames(30, 241, 321):
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame_array, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    source = decode.open_video(path)
    info = decode.probe(source)
    chunk = next(decode.iterate_chunks(source, info))
    # 321x241: 2D 298x224 (int(321 * 224 / 241) = 298), 3D 149x112 cropped at x = int(37 / 2) = 18.
    assert chunk.frames_1fps.shape == (1, 224, 298, 3) and chunk.frames_24fps.shape == (30, 112, 112, 3)


def test_audio_is_16k_mono_float32(tmp_path: Path) -> None:
    rate = 44_100
    tone = 0.4 * np.sin(2 * np.pi * 440 * np.arange(int(2 * rate)) / rate)
    path = write_mp4(tmp_path / "tone.mp4", level_frames(60), 30.0, np.stack([tone, tone]), rate)
    audio = read_audio(path)
    assert audio.dtype == np.float32 and audio.ndim == 1
    assert abs(len(audio) - 32_000) < 1_600  # 2 s, give or take the codec's priming samples
    segment = audio[4000:20000]
    peak_hz = np.argmax(np.abs(np.fft.rfft(segment))) * 16_000 / len(segment)
    assert peak_hz == pytest.approx(440, abs=2)
    assert read_audio(write_mp4(tmp_path / "silent.mp4", level_frames(30), 30.0)) is None


def test_bad_media_kinds(tmp_path: Path) -> None:
    import av

    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    good = write_mp4(tmp_path / "good.mp4", level_frames(60), 30.0)
    truncated = tmp_path / "truncated.mp4"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    short = write_mp4(tmp_path / "short.mp4", level_frames(12), 30.0)
    audio_only = tmp_path / "audio_only.mp4"
    with av.open(str(audio_only), "w") as container:
        stream = container.add_stream("aac", rate=16_000, layout="mono")
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 16_000), np.float32), format="fltp", layout="mono")
        frame.sample_rate = 16_000
        for packet in list(stream.encode(frame)) + list(stream.encode()):
            container.mux(packet)
    expected = {empty: "bad_media", truncated: "bad_media", audio_only: "no_video", short: "too_short"}
    for path, kind in expected.items():
        with pytest.raises(decode.MediaError) as caught:
            decode.probe(decode.open_video(path))
        assert caught.value.kind == kind, (path.name, str(caught.value))
        assert str(caught.value)
