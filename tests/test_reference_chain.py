"""Our decoded frames against the reference extractor's own ffmpeg chain, frame for frame, pixel for pixel.

The reference (HowTo100M's extractor) runs ffmpeg with `fps=R,scale=W:H` to rgb24 and then crops the
3D input at x = int((W - 112) / 2). Here that chain is built independently of our code with PyAV's
libavfilter graph (its own `fps` filter chooses the frames), the sizes and crop offsets are computed
from the recipe's formulas written out below, and our decoder's output must be identical.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from howto_prep import decode
from howto_prep.features.resnext3d import ResNeXt101Features

SECONDS = 2.6


def textured_frames(width: int, height: int, count: int) -> list[np.ndarray]:
    """Gradients, noise and a moving block (scaling differences show), plus two flat blocks that
    encode the frame's index (frame choice shows)."""
    rng = np.random.default_rng(width * 7 + height)
    ys, xs = np.mgrid[0:height, 0:width]
    noise = rng.integers(0, 40, size=(height, width, 3))
    frames = []
    for i in range(count):
        image = np.stack([128 + 90 * np.sin(xs / 13.0 + i / 4), 128 + 90 * np.cos(ys / 9.0 - i / 6),
                          (xs + ys + 5 * i) % 200], axis=-1) + noise
        left = (i * 9) % max(1, width - 40)
        image[height // 5:height // 5 + 30, left:left + 40] = (240, 30, 30)
        top, middle = height // 2 - 16, width // 2  # the code blocks sit where every crop keeps them
        image[top:top + 32, middle - 32:middle] = (i % 16) * 16 + 8
        image[top:top + 32, middle:middle + 32] = (i // 16) * 16 + 8
        frames.append(np.clip(image, 0, 255).astype(np.uint8))
    return frames


ENCODER_OPTIONS = {"libx264": {"crf": "20", "preset": "faster"},  # High, B-frames
                   "libx265": {"crf": "24", "preset": "faster", "x265-params": "log-level=error"},
                   "mpeg4": {"bf": "2", "qscale": "4"}, "libvpx-vp9": {"crf": "32", "b": "0", "lag-in-frames": "16"},
                   "libsvtav1": {"preset": "12", "crf": "35"}}


def write_video(path: Path, width: int, height: int, rate: Fraction, pts: list[int] | None = None,
                time_base: Fraction | None = None, pix_fmt: str = "yuv420p", color: dict | None = None,
                codec: str = "libx264") -> Path:
    """H.264 (High, B-frames, a realistic preset) at `rate`, or at explicit `pts` (variable rate);
    `pix_fmt` and `color` (colorspace / range tags) give the other layouts a file may carry, `codec`
    the other codecs (HEVC, MPEG-4 part 2, VP9, AV1)."""
    import av

    count = len(pts) if pts is not None else int(SECONDS * rate)
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=rate)
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
        stream.options = ENCODER_OPTIONS[codec]
        if color:
            stream.codec_context.options = color
        if time_base is not None:
            stream.codec_context.time_base = time_base
        for index, image in enumerate(textured_frames(width, height, count)):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            if pts is not None:
                frame.pts, frame.time_base = pts[index], time_base
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return path


def reference_size(width: int, height: int, short: int) -> tuple[int, int]:
    """The reference's arithmetic: short side set, long side int(long * short / short_in)."""
    return (int(width * short / height), short) if width >= height else (short, int(height * short / width))


def ffmpeg_chain(path: Path, fps: int, width: int, height: int) -> np.ndarray:
    """Frames of `ffmpeg -i path -vf fps=FPS,scale=W:H -pix_fmt rgb24`, through libavfilter."""
    import av

    frames = []
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        graph = av.filter.Graph()
        chain = [graph.add_buffer(template=stream), graph.add("fps", str(fps)),
                 graph.add("scale", f"{width}:{height}"), graph.add("format", "rgb24"), graph.add("buffersink")]
        for upstream, downstream in zip(chain, chain[1:]):
            upstream.link_to(downstream)
        graph.configure()

        def drain() -> None:
            while True:
                try:
                    frames.append(graph.pull().to_ndarray())
                except (av.error.BlockingIOError, av.error.EOFError):
                    return

        for frame in container.decode(stream):
            graph.push(frame)
            drain()
        graph.push(None)
        drain()
    return np.stack(frames)


def reference_inputs(path: Path, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """(2D frames at short side 224, 3D frames scaled to short side 112 and cropped 112x112)."""
    two_d = ffmpeg_chain(path, 1, *reference_size(width, height, 224))
    w3, h3 = reference_size(width, height, 112)
    x, y = int((w3 - 112) / 2), int((h3 - 112) / 2)
    three_d = ffmpeg_chain(path, 24, w3, h3)[:, y:y + 112, x:x + 112]
    return two_d, three_d


def ours(path: Path) -> tuple[np.ndarray, np.ndarray]:
    source = decode.open_video(path)
    chunks = list(decode.iterate_chunks(source, decode.probe(source), chunk_seconds=2))
    return (np.concatenate([c.frames_1fps for c in chunks if c.frames_1fps is not None]),
            np.concatenate([c.frames_24fps for c in chunks if c.frames_24fps is not None]))


def frame_codes(frames: np.ndarray) -> list[int]:
    """The source index each frame shows, read from the two flat blocks left and right of the
    centre (they scale with the frame; only their inner part is read)."""
    height, width = frames.shape[1:3]
    y, x = height // 2, width // 2
    low = frames[:, y - 3:y + 3, x - 8:x - 3].mean(axis=(1, 2, 3))
    high = frames[:, y - 3:y + 3, x + 3:x + 8].mean(axis=(1, 2, 3))
    return [int(round((h - 8) / 16)) * 16 + int(round((lo - 8) / 16)) for lo, h in zip(low, high)]


@pytest.mark.parametrize("rate", [Fraction(15), Fraction(24), Fraction(25), Fraction(30000, 1001), Fraction(30), Fraction(48),
                                  Fraction(50), Fraction(60)], ids=lambda r: f"{float(r):.2f}fps")
def test_frames_equal_the_ffmpeg_chain_at_every_common_rate(tmp_path: Path, rate: Fraction):
    # 15 fps (screencasts): most frames fill two or more outputs, and the last outputs come after the
    # last frame (the `fps` filter repeats it to the end of its duration)
    path = write_video(tmp_path / "v.mp4", 640, 360, rate)  # 3D: 199x112, cropped at x = 43 (odd)
    expected_2d, expected_3d = reference_inputs(path, 640, 360)
    got_2d, got_3d = ours(path)
    assert got_2d.shape == expected_2d.shape == (len(expected_2d), 224, 398, 3)
    assert got_3d.shape == expected_3d.shape
    assert frame_codes(got_3d) == frame_codes(expected_3d)
    np.testing.assert_array_equal(got_3d, expected_3d)
    np.testing.assert_array_equal(got_2d, expected_2d)


@pytest.mark.parametrize("width, height", [(480, 270), (270, 480), (480, 360), (320, 240), (362, 202)],
                         ids=["16x9-odd", "portrait-odd", "4x3", "4x3-small", "odd-crop-both"])
def test_sizes_and_crop_offsets_equal_the_reference(tmp_path: Path, width: int, height: int):
    path = write_video(tmp_path / "v.mp4", width, height, Fraction(25))
    expected_2d, expected_3d = reference_inputs(path, width, height)
    got_2d, got_3d = ours(path)
    np.testing.assert_array_equal(got_2d, expected_2d)
    np.testing.assert_array_equal(got_3d, expected_3d)


@pytest.mark.parametrize("pix_fmt, color", [
    ("yuv420p", {"colorspace": "bt709", "color_range": "tv"}), ("yuvj420p", None),
    ("yuv420p", {"colorspace": "bt709", "color_range": "pc"}), ("yuv422p", None), ("yuv444p", None),
    ("yuv420p10le", None)], ids=["bt709", "full-range", "bt709-full-range", "422", "444", "10-bit"])
@pytest.mark.parametrize("width, height", [(640, 360), (600, 336), (642, 360), (360, 640)],
                         ids=["3d-odd", "3d-even", "2d-odd", "portrait"])
def test_every_source_layout_scales_as_the_ffmpeg_chain(tmp_path: Path, pix_fmt: str, color: dict | None,
                                                       width: int, height: int):
    # decode.Scaler takes swscale's planar RGB output where rgb24 would run in full chroma (odd widths:
    # 199, 399; 4:4:4 sources): it must give rgb24's bytes for every layout, odd and even widths alike.
    global SECONDS
    SECONDS, seconds = 1.2, SECONDS
    try:
        path = write_video(tmp_path / "v.mp4", width, height, Fraction(25), pix_fmt=pix_fmt, color=color)
    finally:
        SECONDS = seconds
    expected_2d, expected_3d = reference_inputs(path, width, height)
    got_2d, got_3d = ours(path)
    np.testing.assert_array_equal(got_2d, expected_2d)
    np.testing.assert_array_equal(got_3d, expected_3d)


def test_variable_frame_rate_file_follows_the_fps_filter(tmp_path: Path):
    steps = [15 if i % 3 else 70 for i in range(70)]  # ms between frames: 15, 15, 70, ...
    pts = np.r_[0, np.cumsum(steps)].astype(int).tolist()
    path = write_video(tmp_path / "vfr.mp4", 320, 240, Fraction(30), pts=pts, time_base=Fraction(1, 1000))
    source = decode.open_video(path)
    assert decode.probe(source).variable_frame_rate
    expected_2d, expected_3d = reference_inputs(path, 320, 240)
    got_2d, got_3d = ours(path)
    assert frame_codes(got_3d) == frame_codes(expected_3d)
    np.testing.assert_array_equal(got_3d, expected_3d)
    np.testing.assert_array_equal(got_2d, expected_2d)


def test_half_way_source_frames_round_up_as_ffmpeg_does():
    # 48 fps to 24 fps: source frame 97 starts at 97/48 s = output slot 48.5, which ffmpeg rounds up
    # to 49, so output 48 shows frame 96. In float32 seconds 97/48 is 2.02083325: slot 48.4999980.
    pts = np.arange(150, dtype=np.int64) * 256  # time base 1/12288: 256 ticks per frame = 48 fps
    slots = decode.exact_slots(pts, Fraction(1, 12288), Fraction(24))
    assert slots[97] == 49 and slots[95] == 48 and slots[1] == 1  # 0.5 -> 1, 1.0 -> 1 ... 47.5 -> 48
    picks = decode.select_frames(slots, 75)
    assert picks[48] == 96 and picks[:4].tolist() == [0, 2, 4, 6]


def test_3d_crop_truncates_and_the_mean_is_the_reference_one():
    from howto_prep.features.weights import RandomWeightsWarning

    with pytest.warns(RandomWeightsWarning):
        extractor = ResNeXt101Features(weights="random")
    frames = np.zeros((20, 112, 199, 3), dtype=np.uint8)
    frames[:, :, 43] = 255  # the first column of the reference's crop (x = int(87 / 2) = 43)
    clips = extractor.clips(frames).numpy()
    assert clips.shape == (2, 3, 16, 112, 112)
    mean = np.array([110.6, 103.2, 96.3])
    np.testing.assert_allclose(clips[0, :, 0, 0, 0], 255 - mean, atol=1e-4)  # column 43 is kept
    np.testing.assert_allclose(clips[0, :, 0, 0, 111], -mean, atol=1e-4)
    # Padding to whole clips happens before the mean is subtracted: padded frames hold -mean.
    np.testing.assert_allclose(clips[1, :, 15, 50, 50], -mean, atol=1e-4)


@pytest.mark.parametrize("threads", [1, 0], ids=["one-thread", "frame-threads"])
def test_frames_no_output_shows_are_not_decoded(tmp_path: Path, threads: int):
    # 60 fps -> 24 fps shows 2 of 5 frames; the non-reference B-frames among the rest are skipped, and
    # the frames that are shown stay the ffmpeg chain's (the rate tests above compare every pixel).
    import av

    path = write_video(tmp_path / "v.mp4", 320, 180, Fraction(60))
    source = decode.open_video(path, num_threads=threads)
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.codec_context.thread_count = threads
        tracks = decode.make_tracks(source, stream, True, True, 10, 240)
        decoded = [frame.pts for frame in decode.decode_shown_frames(container, stream, source, tracks)]
    shown = {int(source.pts[i]) for track in tracks.values() for i in track.picks}
    assert shown <= set(decoded)
    assert len(decoded) < 0.8 * len(source.pts)
    assert decoded == sorted(decoded)


@pytest.mark.parametrize("codec", ["libx265", "mpeg4", "libvpx-vp9", "libsvtav1"], ids=["hevc", "mpeg4", "vp9", "av1"])
def test_other_codecs_give_the_ffmpeg_chain_frames(tmp_path: Path, codec: str):
    # 60 fps, where most frames are never shown: skipping them must not change a shown one, whatever the
    # decoder (libdav1d reads skip_frame only when it opens: per-packet skipping broke AV1 files).
    path = write_video(tmp_path / "v.mp4", 320, 180, Fraction(60), codec=codec)
    expected_2d, expected_3d = reference_inputs(path, 320, 180)
    got_2d, got_3d = ours(path)
    assert frame_codes(got_3d) == frame_codes(expected_3d)
    np.testing.assert_array_equal(got_3d, expected_3d)
    np.testing.assert_array_equal(got_2d, expected_2d)
