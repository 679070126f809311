"""Decode a video once: 1 fps and 24 fps frames at the recipes' sizes in bounded chunks, 16 kHz audio.

The frames are exactly those of the reference extractor's ffmpeg chain (`fps=R,scale=W:H`, rgb24;
docs/recipes.md section 2), with one sequential decode feeding both visual features:

* Frame choice follows ffmpeg's `fps` filter (default `round=near`) in exact integer arithmetic on
  the container's timestamps (PyAV gives the integer pts and the stream's time base; decord's float32
  seconds put exact half-way cases, e.g. 48 fps -> 24 fps, on the wrong side): every source frame i
  gets the slot r_i = round_half_up((pts_i - pts_0) * time_base * fps); output frame k shows the
  *last* source frame with r_i <= k; the number of outputs is round_half_up(duration * fps), where
  duration = end of the last frame - start of the first. Variable frame rates follow from this.
* Scaling is ffmpeg's own: each chosen frame goes through a libavfilter graph `scale=W:H` (swscale,
  bicubic, in YUV) then `format=rgb24`, the same library code the reference chain runs, to short
  side 224 (2D) or 112 (3D), the long side truncated (`int(long * short_target / short)`); the 3D
  frames are then cropped to 112x112 at x = (W - 112) // 2, y = (H - 112) // 2 (truncation).

Hence T2 = round(duration) rows at 1 fps, N24 = round(24 * duration) frames at 24 fps and
T3 = ceil(N24 / 16) 3D rows (about 1.5 per second). Frames leave the decoder at the recipes' sizes,
so a chunk (`chunk_seconds` of output time) holds at most 10 x 224 x L + 240 x 112 x 112 x 3 bytes
whatever the source resolution (L = the scaled long side, 398 for 16:9): 3.0 MB + 9.0 MB.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any, Iterable, Iterator

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
    """Frames of one chunk of output time, at the recipes' sizes: `frames_1fps` (n, h2, w2, 3) with
    short side 224, `frames_24fps` (m, 112, 112, 3) scaled and cropped; uint8 RGB."""

    index: int
    frames_1fps: np.ndarray | None
    frames_24fps: np.ndarray | None


@dataclass(frozen=True)
class VideoSource:
    """A video file and the exact presentation timestamps of its frames (from a demux pass)."""

    path: Path
    pts: np.ndarray  # int64, sorted: one per frame, in the stream's time base
    durations: np.ndarray  # int64, same order
    time_base: Fraction
    width: int
    height: int
    threads: int = 0  # decoder threads; 0 = FFmpeg's choice
    every_packet_timed: bool = True  # every packet had a pts (frames can be matched to their index)


def import_decord():
    """decord, imported after torch: decord's libraries pull in NVBLAS, which hijacks BLAS and
    crashes torch's CPU matmuls (SIGSEGV) when decord is loaded first in a process."""
    import torch  # noqa: F401  (must precede decord)
    import decord

    return decord


def round_half_up(values: np.ndarray | float) -> np.ndarray:
    """ffmpeg's AV_ROUND_NEAR_INF for non-negative float64 values (durations from exact timestamps)."""
    return np.floor(np.asarray(values, dtype=np.float64) + 0.5 + 1e-9).astype(np.int64)


def output_count(duration: float, fps: float) -> int:
    """Frames the ffmpeg `fps` filter emits for `duration` seconds."""
    return int(round_half_up(duration * fps))


def exact_slots(pts: np.ndarray, time_base: Fraction, fps: Fraction) -> np.ndarray:
    """round_half_up((pts - pts_0) * time_base * fps) for every frame, in integers (no float error)."""
    scale = Fraction(time_base) * Fraction(fps)
    numerator = (np.asarray(pts, dtype=np.int64) - int(pts[0])) * scale.numerator
    return (2 * numerator + scale.denominator) // (2 * scale.denominator)


def select_frames(slots: np.ndarray, count: int) -> np.ndarray:
    """Source frame index shown at each of `count` output frames, given each source frame's slot."""
    monotone = np.maximum.accumulate(np.asarray(slots, dtype=np.int64))
    chosen = np.searchsorted(monotone, np.arange(count), side="right") - 1
    return np.clip(chosen, 0, len(monotone) - 1)


def select_frames_at(starts_seconds: Iterable[float], fps: float, count: int) -> np.ndarray:
    """`select_frames` for timestamps in seconds, in exact rational arithmetic (simulations, tests)."""
    starts = [Fraction(value) for value in starts_seconds]
    rate = Fraction(fps)
    slots = [math.floor((start - starts[0]) * rate + Fraction(1, 2)) for start in starts]
    return select_frames(np.asarray(slots, dtype=np.int64), count)


def rows_3d(frames_24fps: int) -> int:
    """3D rows: 16-frame clips, the last one zero-padded."""
    return math.ceil(frames_24fps / schema.CLIP_LEN_3D)


def scaled_size(width: int, height: int, short_side: int) -> tuple[int, int]:
    """(w, h) with the short side set and the long side truncated, as the reference computes it."""
    if width >= height:
        return int(width * short_side / height), short_side
    return short_side, int(height * short_side / width)


def crop_origin(size: int, target: int = schema.SIZE_3D) -> int:
    """The reference's center-crop offset: int((size - target) / 2), truncated (199 -> 43)."""
    return (size - target) // 2


def open_video(path: Path, num_threads: int = 0) -> VideoSource:
    """Read every frame's exact timestamp (a demux pass, no decoding) and the frame size; a
    MediaError with a kind for files that cannot be used."""
    import av

    path = Path(path)
    if path.is_file() and path.stat().st_size == 0:
        raise MediaError(FailureKind.BAD_MEDIA, f"{path.name} is empty (0 bytes)")
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise MediaError(FailureKind.NO_VIDEO, f"cannot decode {path.name}: cannot find video stream")
            stream = container.streams.video[0]
            width, height = int(stream.codec_context.width), int(stream.codec_context.height)
            pts, durations, every_packet_timed = packet_times(container, stream)
            time_base = Fraction(stream.time_base)
    except av.error.FFmpegError as err:
        raise MediaError(FailureKind.BAD_MEDIA, f"cannot decode {path.name}: {' '.join(str(err).split())[:500]}") from None
    if len(pts) == 0 or width <= 0 or height <= 0:
        raise MediaError(FailureKind.BAD_MEDIA, f"cannot decode {path.name}: no video frames")
    return VideoSource(path, pts, durations, time_base, width, height, num_threads, every_packet_timed)


def packet_times(container, stream) -> tuple[np.ndarray, np.ndarray, bool]:
    """Sorted presentation timestamps and durations of the stream's frames (from its packets), and
    whether every packet carried its own pts."""
    stamps: list[tuple[int, int]] = []
    every_packet_timed = True
    for packet in container.demux(stream):
        if packet.size == 0:  # the demuxer's end-of-stream marker
            continue
        every_packet_timed = every_packet_timed and packet.pts is not None
        stamp = packet.pts if packet.pts is not None else packet.dts
        if stamp is not None:
            stamps.append((int(stamp), int(packet.duration or 0)))
    stamps.sort()
    array = np.asarray(stamps, dtype=np.int64).reshape(-1, 2)
    durations = array[:, 1].copy()
    gaps = np.diff(array[:, 0])
    missing = durations <= 0
    if missing.any():  # no packet duration: the gap to the next frame (the last one repeats the previous)
        fallback = np.r_[gaps, gaps[-1] if len(gaps) else 1]
        durations[missing] = np.maximum(fallback[missing], 1)
    return array[:, 0].copy(), durations, every_packet_timed


def probe(source: VideoSource) -> VideoInfo:
    """Duration, rate and size from the exact timestamps; raises MediaError for unusable files."""
    ticks = int(source.pts[-1] + source.durations[-1] - source.pts[0])
    duration = float(ticks * source.time_base)
    if not np.isfinite(duration) or duration < MIN_DURATION_S:
        raise MediaError(FailureKind.TOO_SHORT, f"video lasts {duration:.3f} s, shorter than {MIN_DURATION_S:g} s")
    steps = np.diff(source.pts).astype(np.float64)
    variable = bool(len(steps) > 1 and (steps.max() - steps.min()) > VFR_TOLERANCE * max(steps.mean(), 1e-9))
    return VideoInfo(duration=duration, fps=float(len(source.pts) / duration), width=source.width,
                     height=source.height, num_frames=len(source.pts), variable_frame_rate=variable)


def exact_output_count(source: VideoSource, fps: float) -> int:
    """round_half_up(duration * fps) in integers: the `fps` filter's number of output frames."""
    ticks = int(source.pts[-1] + source.durations[-1] - source.pts[0])
    total = Fraction(ticks) * source.time_base * Fraction(fps).limit_denominator(1 << 16)
    return int((2 * total.numerator + total.denominator) // (2 * total.denominator))


def swscale_full_chroma(source_format, width: int) -> bool:
    """Whether swscale converts this source to packed RGB of this width with full chroma interpolation.

    swscale forces it for an odd output width and for sources whose chroma is not subsampled
    (libswscale's context setup); the packed rgb24 output then runs its plain-C full-chroma writer."""
    import av

    fmt = av.VideoFormat(source_format) if isinstance(source_format, str) else source_format
    chroma_not_subsampled = fmt.chroma_width(64) == 64 and fmt.chroma_height(64) == 64
    return bool(width % 2 or chroma_not_subsampled)


class Scaler:
    """libavfilter `scale=W:H,format=rgb24` on single frames: the reference chain's own scaler.

    One graph per output size, built once per video and fed every chosen frame. Where swscale works in
    full chroma (the odd 3D widths such as 199 and 149, or 4:4:4 sources), the graph asks for planar
    RGB (`gbrp`) instead: the same full-chroma arithmetic per pixel, so the same bytes (tested against
    `rgb24` on every source layout the tests make), written by swscale's SIMD planar writer rather than
    its plain-C packed one: 0.24 instead of 0.55 ms per 640x360 -> 199x112 frame, the largest cost of the
    frame pass after H.264 decoding (bench/bench_scale_paths.py). For even widths with subsampled chroma
    (the 2D frames) rgb24 takes a different chroma path, so those keep `rgb24`.
    It runs on one thread: with FFmpeg's default (a thread per core) swscale splits each small frame into
    row slices for a thread pool: the same pixels for more CPU per frame, and more so the more cores."""

    def __init__(self, stream, width: int, height: int) -> None:
        import av

        self.planar = swscale_full_chroma(stream.codec_context.format, width)
        self.graph = av.filter.Graph()
        self.graph.threads = 1  # before any filter is added
        source = self.graph.add_buffer(template=stream)
        scale = self.graph.add("scale", f"{width}:{height}")
        to_rgb = self.graph.add("format", "gbrp" if self.planar else "rgb24")
        sink = self.graph.add("buffersink")
        source.link_to(scale)
        scale.link_to(to_rgb)
        to_rgb.link_to(sink)
        self.graph.configure()

    def __call__(self, frame, window: tuple[int, int, int, int] | None = None,
                 out: np.ndarray | None = None) -> np.ndarray:
        """The scaled frame as (h, w, 3) uint8 RGB, optionally only the window (x, y, w, h), written into
        `out` (a slot of the chunk being filled: no per-frame array, no copy when the chunk is made)."""
        self.graph.push(frame)
        scaled = self.graph.pull()
        x, y, w, h = window if window is not None else (0, 0, scaled.width, scaled.height)
        image = np.empty((h, w, 3), dtype=np.uint8) if out is None else out
        if not self.planar:
            image[...] = scaled.to_ndarray()[y:y + h, x:x + w]
            return image
        for channel, plane in zip((1, 2, 0), scaled.planes):  # gbrp holds G, B, R planes
            rows = np.frombuffer(plane, dtype=np.uint8).reshape(-1, plane.line_size)
            image[:, :, channel] = rows[y:y + h, x:x + w]
        return image


@dataclass
class _Track:
    """One output rate: which source frame each output shows, and the chunks being filled.

    Each output frame is written once, straight into its slot of a chunk-sized array, so a chunk is
    never assembled from per-frame arrays (bench/bench_decode_limit.py, "where the time goes")."""

    picks: np.ndarray  # source frame index of every output frame
    per_chunk: int
    scaler: Scaler
    window: tuple[int, int, int, int] | None  # the 3D crop (x, y, w, h); None: the whole frame
    frame_shape: tuple[int, int, int]  # (h, w, 3) of one output frame
    filling: np.ndarray | None = None  # the chunk being filled
    filled: int = 0  # its slots written so far
    whole: list[np.ndarray] = field(default_factory=list)  # chunks filled, not yet taken
    done: int = 0  # outputs written so far
    last: np.ndarray | None = None  # the latest output frame (a slot of some chunk)

    def offer(self, frame, position: int) -> None:
        """Scale `frame` once if any output shows it (or an earlier frame the decoder skipped)."""
        if self.done >= len(self.picks) or self.picks[self.done] > position:
            return
        self.last = self.scaler(frame, self.window, out=self.next_slot())
        self.done += 1
        while self.done < len(self.picks) and self.picks[self.done] <= position:
            self.next_slot()[...] = self.last  # the same source frame shown again
            self.done += 1

    def finish(self) -> None:
        while self.done < len(self.picks) and self.last is not None:
            self.next_slot()[...] = self.last
            self.done += 1

    def next_slot(self) -> np.ndarray:
        """The next output frame's slot; a chunk whose last slot this is counts as whole."""
        if self.filling is None:
            self.filling = np.empty((self.per_chunk, *self.frame_shape), dtype=np.uint8)
        slot = self.filling[self.filled]
        self.filled += 1
        if self.filled == self.per_chunk:
            self.whole.append(self.filling)
            self.filling, self.filled = None, 0
        return slot

    def has_frames(self) -> bool:
        return bool(self.whole) or self.filled > 0

    def take(self, final: bool) -> np.ndarray | None:
        """The next chunk's frames; a short remainder only once no more outputs can come."""
        if self.whole:
            return self.whole.pop(0)
        if self.filled and (final or self.done == len(self.picks)):
            part = self.filling[:self.filled]
            self.filling, self.filled = None, 0
            return part
        return None


def iterate_chunks(source: VideoSource, info: VideoInfo, want_1fps: bool = True, want_24fps: bool = True,
                   chunk_seconds: int = DEFAULT_CHUNK_SECONDS) -> Iterator[FrameChunk]:
    """Yield the 1 fps (short side 224) and 24 fps (112x112) frames chunk by chunk from one
    sequential decode; each chosen source frame is scaled once per size that needs it."""
    import av

    per_1 = int(chunk_seconds * schema.FPS_2D)
    per_24 = int(chunk_seconds * schema.FPS_3D)
    if per_24 % schema.CLIP_LEN_3D:
        raise ValueError(f"chunk_seconds={chunk_seconds} does not hold whole 16-frame clips at 24 fps")
    if not (want_1fps or want_24fps):
        return
    try:
        with av.open(str(source.path)) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            stream.codec_context.thread_count = source.threads
            tracks = make_tracks(source, stream, want_1fps, want_24fps, per_1, per_24)
            chunk_index = 0
            position = -1
            for frame in decode_shown_frames(container, stream, source, tracks):
                position = frame_position(source, frame, position)
                for track in tracks.values():
                    track.offer(frame, position)
                while chunk_ready(tracks):
                    yield chunk_of(chunk_index, tracks, final=False)
                    chunk_index += 1
    except av.error.FFmpegError as err:
        raise MediaError(FailureKind.BAD_MEDIA, f"cannot decode {source.path.name}: {' '.join(str(err).split())[:500]}") from None
    for track in tracks.values():  # outputs after the last decoded frame repeat it (as ffmpeg does)
        track.finish()
    while any(track.has_frames() for track in tracks.values()):
        yield chunk_of(chunk_index, tracks, final=True)
        chunk_index += 1


# Decoders that read `skip_frame` on every packet (checked frame for frame against the full decode in
# tests/test_reference_chain.py). libdav1d (AV1) reads it once, when it opens: a frame skipped first
# would switch off every later non-reference frame, shown or not; others decode everything.
SKIP_PER_PACKET_DECODERS = frozenset({"h264", "hevc", "mpeg4"})


def decode_shown_frames(container, stream, source: VideoSource, tracks: dict[str, "_Track"]) -> Iterator:
    """Decode the stream, skipping the frames no output shows where that cannot change any other frame.

    A frame that no track picks and that no other frame references (H.264 nal_ref_idc = 0, most
    B-frames) is not decoded: FFmpeg's `skip_frame=NONREF`, switched per packet. Every other frame is
    decoded exactly as before, so the pixels do not change (tests/test_reference_chain.py at 24-60 fps).
    At 29.97/30 fps a sixth of the frames is never shown at 24 fps, and about half of those are
    non-reference: ~7 % less H.264 work (bench/bench_decode_limit.py); at 50/60 fps much more. Only
    for files whose packets all carry a pts (a frame is matched to its index by its pts) and decoders
    in SKIP_PER_PACKET_DECODERS."""
    context = stream.codec_context
    if not source.every_packet_timed or context.name not in SKIP_PER_PACKET_DECODERS:
        yield from container.decode(stream)
        return
    shown = np.zeros(len(source.pts) + 1, dtype=np.int64)  # prefix sums: shown frames before each index
    for track in tracks.values():
        shown[1:][track.picks] = 1
    shown = np.cumsum(shown)
    skipping = False
    for packet in container.demux(stream):
        skip = False  # the end-of-stream packet (no pts) drains the decoder as usual
        if packet.pts is not None:  # every frame with this pts (a broken file may repeat one) unshown
            first = int(source.pts.searchsorted(packet.pts, "left"))
            last = int(source.pts.searchsorted(packet.pts, "right"))
            skip = last > first and shown[last] == shown[first]
        if skip != skipping:  # the decoder reads it when this packet is sent
            context.skip_frame = "NONREF" if skip else "DEFAULT"
            skipping = skip
        yield from context.decode(packet)


def frame_position(source: VideoSource, frame, previous: int) -> int:
    """The decoded frame's index among the sorted timestamps (the next one if it has no pts)."""
    if frame.pts is None:
        return min(previous + 1, len(source.pts) - 1)
    return int(source.pts.searchsorted(frame.pts, "right")) - 1


def make_tracks(source: VideoSource, stream, want_1fps: bool, want_24fps: bool, per_1: int,
                per_24: int) -> dict[str, "_Track"]:
    tracks: dict[str, _Track] = {}
    for name, wanted, fps, short, per in (("1fps", want_1fps, schema.FPS_2D, schema.SHORT_SIDE_2D, per_1),
                                          ("24fps", want_24fps, schema.FPS_3D, schema.SIZE_3D, per_24)):
        if not wanted:
            continue
        rate = Fraction(fps).limit_denominator(1 << 16)
        width, height = scaled_size(source.width, source.height, short)
        window = ((crop_origin(width), crop_origin(height), schema.SIZE_3D, schema.SIZE_3D)
                  if name == "24fps" else None)
        shape = (window[3], window[2], 3) if window else (height, width, 3)
        tracks[name] = _Track(select_frames(exact_slots(source.pts, source.time_base, rate), exact_output_count(source, fps)),
                              per, Scaler(stream, width, height), window, shape)
    return tracks


def chunk_ready(tracks: dict[str, "_Track"]) -> bool:
    """A chunk is whole when every track has a chunk's worth of outputs (or has none left)."""
    full = [bool(t.whole) for t in tracks.values()]
    return any(full) and all(f or t.done == len(t.picks) for f, t in zip(full, tracks.values()))


def chunk_of(index: int, tracks: dict[str, "_Track"], final: bool) -> FrameChunk:
    one, dense = tracks.get("1fps"), tracks.get("24fps")
    return FrameChunk(index=index, frames_1fps=one.take(final) if one else None,
                      frames_24fps=dense.take(final) if dense else None)
