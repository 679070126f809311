"""Benchmark: the per-frame cost of the exact ffmpeg scale path in howto_prep.decode (A/B in one process).

Decodes H.264 test videos once (the textured clips of tests/test_reference_chain.py, HowTo sizes), keeps
the decoded frames, then times variants of `scale=W:H,format=rgb24` on the same frames, interleaved
over several rounds (CPU time of this process, all threads included), and checks each against the
reference graph (libavfilter's defaults) pixel for pixel:
  graph (auto threads)   the filter graph with FFmpeg's default thread count (decode.py before)
  graph threads=16       the same graph with 16 threads (FFmpeg's default on a 16-core box)
  graph threads=1        the same graph with one thread (decode.Scaler of the previous stop)
  planar gbrp threads=1  odd output widths (full chroma): `scale=W:H,format=gbrp`, planes interleaved in numpy
  bilinear / area / fast_bilinear gbrp   odd widths, cheaper swscale filters: OTHER pixels, printed only to
                         show what giving up identity with the reference chain would buy
  two-step (yuv422p)     even output widths: scale in YUV 4:2:2 then convert to RGB (accurate_rnd, bitexact);
                         identical for untagged yuv420p, NOT for bt709-tagged or full-range sources, so unused
  decode.Scaler          what decode.py uses (planar gbrp where swscale works in full chroma, else rgb24)
Then the whole frame pass (`decode.iterate_chunks`, 1 fps + 24 fps) with the scalers of the last two
stops and today's decode.Scaler.

    python bench/bench_scale_paths.py [--seconds 10] [--rounds 5] [--corpus DIR]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import numpy as np  # noqa: E402


def graph(stream, specs, threads=None):
    import av

    g = av.filter.Graph()
    if threads is not None:
        g.threads = threads
    nodes = [g.add_buffer(template=stream)] + [g.add(name, arg) for name, arg in specs] + [g.add("buffersink")]
    for up, down in zip(nodes, nodes[1:]):
        up.link_to(down)
    g.configure()
    return g


class OldScaler:
    """decode.Scaler two stops ago: one graph `scale=W:H,format=rgb24`, FFmpeg's automatic thread count."""

    threads: int | None = None

    def __init__(self, stream, width, height):
        self.graph = graph(stream, [("scale", f"{width}:{height}"), ("format", "rgb24")], self.threads)

    def __call__(self, frame, crop=None):
        self.graph.push(frame)
        image = self.graph.pull().to_ndarray()
        if crop is not None:
            x, y, w, h = crop
            image = image[y:y + h, x:x + w]
        return np.ascontiguousarray(image)


class OneThreadScaler(OldScaler):
    """decode.Scaler of the previous stop: the rgb24 graph on one thread."""

    threads = 1


def main() -> None:
    import av

    import test_reference_chain as ref
    from howto_prep import decode

    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--corpus", type=Path, help="time the frame pass on the .mp4 files under this folder "
                        "(e.g. a bench_decode_limit --corpus) instead of the test clips")
    args = parser.parse_args()
    ref.SECONDS = args.seconds
    print(f"load average {os.getloadavg()}, {os.cpu_count()} CPUs, PyAV {av.__version__}")
    with tempfile.TemporaryDirectory() as tmp:
        paths = [ref.write_video(Path(tmp) / f"v{w}x{h}.mp4", w, h, Fraction(30)) for w, h in ((640, 360), (480, 360))]
        for path in paths:
            with av.open(str(path)) as container:
                stream = container.streams.video[0]
                stream.codec_context.thread_count = 1
                frames = list(container.decode(stream))
                print(f"\n{path.name}: {len(frames)} frames")
                for short in (decode.schema.SIZE_3D, decode.schema.SHORT_SIDE_2D):
                    w, h = decode.scaled_size(stream.codec_context.width, stream.codec_context.height, short)
                    plain = [("scale", f"{w}:{h}"), ("format", "rgb24")]
                    variants = {"graph (auto threads)": OldScaler(stream, w, h),
                                "graph threads=16": lambda f, g=graph(stream, plain, 16): (g.push(f), g.pull().to_ndarray())[1],
                                "graph threads=1": lambda f, g=graph(stream, plain, 1): (g.push(f), g.pull().to_ndarray())[1],
                                "decode.Scaler": decode.Scaler(stream, w, h)}
                    if w % 2:
                        planar = [("scale", f"{w}:{h}"), ("format", "gbrp")]
                        variants["planar gbrp threads=1"] = lambda f, g=graph(stream, planar, 1): (g.push(f), g.pull().to_ndarray())[1]
                        for flags in ("bilinear", "area", "fast_bilinear"):  # other pixels: what dropping identity buys
                            other = [("scale", f"{w}:{h}:flags={flags}"), ("format", "gbrp")]
                            variants[f"{flags} gbrp (other pixels)"] = \
                                lambda f, g=graph(stream, other, 1): (g.push(f), g.pull().to_ndarray())[1]
                    if w % 2 == 0:
                        two = [("scale", f"{w}:{h}:flags=bicubic+accurate_rnd"), ("format", "yuv422p"),
                               ("scale", "flags=bicubic+accurate_rnd+bitexact"), ("format", "rgb24")]
                        variants["two-step (yuv422p)"] = lambda f, g=graph(stream, two, 1): (g.push(f), g.pull().to_ndarray())[1]
                    cpu = {name: [] for name in variants}
                    outputs = {}
                    for _ in range(args.rounds):
                        for name, scale in variants.items():
                            started = time.process_time()
                            outputs[name] = [scale(f) for f in frames]
                            cpu[name].append(time.process_time() - started)
                    reference = outputs["graph (auto threads)"]
                    for name, times in cpu.items():
                        same = all(np.array_equal(a, b) for a, b in zip(reference, outputs[name]))
                        diff = np.mean([np.abs(a.astype(np.int16) - b).mean() for a, b in zip(reference, outputs[name])])
                        print(f"  {w}x{h} {name:22s} CPU {1000 * min(times) / len(frames):.3f} ms/frame (min of {args.rounds}), "
                              f"median {1000 * sorted(times)[len(times) // 2] / len(frames):.3f}  "
                              f"{'identical' if same else f'DIFFERENT (mean |diff| {diff:.2f} grey levels)'}")
        # the whole frame pass: iterate_chunks with the old and the new scaler, interleaved
        if args.corpus:
            paths = sorted(args.corpus.rglob("*.mp4"))
        new_scaler = decode.Scaler
        scalers = {"rgb24, auto threads (two stops ago)": OldScaler, "rgb24, 1 thread (last stop)": OneThreadScaler,
                   "decode.Scaler (now)": new_scaler}
        totals = {name: [] for name in scalers}
        seconds = 0.0
        for round_ in range(args.rounds):
            for name, cls in scalers.items():
                decode.Scaler = cls
                spent = 0.0
                for path in paths:
                    source = decode.open_video(path, num_threads=1)
                    info = decode.probe(source)
                    started = time.process_time()
                    for _ in decode.iterate_chunks(source, info):
                        pass
                    spent += time.process_time() - started
                    if round_ == 0 and cls is OldScaler:
                        seconds += info.duration
                totals[name].append(spent)
        decode.Scaler = new_scaler
        print(f"\nframe pass (decode + choice + scale, 1 thread), {len(paths)} videos, {seconds:g} video-s, "
              f"CPU ms per video-second (min / median of {args.rounds}):")
        for name, times in totals.items():
            print(f"  {name:36s} {1000 * min(times) / seconds:.1f} / {1000 * sorted(times)[len(times) // 2] / seconds:.1f}")
    print(f"load average {os.getloadavg()}")


if __name__ == "__main__":
    main()
