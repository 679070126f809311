"""Benchmark: one-pass chunked extraction vs a two-pass, whole-video-in-RAM baseline (reference style).

Both sides use the same videos, the same models (random weights) and the same feature classes.
  ours      decord, one pass per video in 10 s chunks feeding the 2D and 3D models, log-mel of
            the soundtrack (howto_prep.decode + howto_prep.extract.ray_tasks: what each Ray task/actor runs);
            decoding runs one chunk ahead of the models in a thread, as the Ray decode task runs
            ahead of the model actor in `howto-prep extract`
  baseline  the reference extractor's shape: for each model, decode the whole video with PyAV
            (no ffmpeg binary here; ffmpeg's automatic frame/slice threading) at that model's rate
            and size into ONE float32 array, then run the model over it (plain NCHW layout, batch
            64 frames / 8 clips); audio decoded again.
Each (method, video) runs in a fresh process, which reports its extraction time (models already
built) and its peak RSS (its own VmHWM). Printed: video-seconds per second, peak RSS, and ours/baseline ratios.

    python bench/bench_extract.py [--short 10] [--long 40] [--size 320x180] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import json
import math
import queue
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Iterator

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from howto_prep import schema  # noqa: E402


def make_video(path: Path, seconds: float, width: int, height: int, fps: float = 30.0) -> Path:
    """Moving gradients and a tone: a real H.264 + AAC mp4 that compresses like real footage."""
    from howto_prep.synthetic.mp4 import write_mp4

    y, x = np.mgrid[0:height, 0:width]

    def frames():
        for i in range(int(seconds * fps)):
            yield np.stack([(x + 3 * i) % 256, (y + i) % 256, ((x + y) // 2 + 5 * i) % 256], -1).astype(np.uint8)

    rate = 44_100
    t = np.arange(int(seconds * rate)) / rate
    audio = (0.3 * np.sin(2 * np.pi * (220 + 30 * np.sin(t)) * t)).astype(np.float32)
    return write_mp4(path, frames(), fps, audio, rate)


def peak_rss_mib() -> float:
    """VmHWM of this process: its own peak RSS (ru_maxrss can carry the forking parent's peak across exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def read_ahead(items: Iterator, depth: int = 1) -> Iterator:
    """Items of `items` produced in a thread, at most `depth` ahead of the consumer (decord and
    torch release the GIL, so decoding the next chunk overlaps the models on the current one)."""
    ready: queue.Queue = queue.Queue(maxsize=depth)
    done = object()

    def produce() -> None:
        try:
            for item in items:
                ready.put(item)
        except BaseException as err:  # handed to the consumer, raised there
            ready.put(err)
        ready.put(done)

    threading.Thread(target=produce, daemon=True).start()
    while (item := ready.get()) is not done:
        if isinstance(item, BaseException):
            raise item
        yield item


def run_ours(path: Path, device: str) -> dict:
    from howto_prep.extract.ray_tasks import FeatureModels, decode_stream

    models = FeatureModels(["resnet152", "resnext101"], "random", "random", device)
    warm_up(*models.models.values())
    started = time.perf_counter()
    rows = {"resnet152": 0, "resnext101": 0}
    for item in read_ahead(decode_stream(str(path), True, True, True)):
        if isinstance(item, dict):
            logmel_frames = item["logmel"].shape[1]
        elif not isinstance(item, str):
            for name, array in models.embed(item)[1].items():
                rows[name] += len(array)
    return {"seconds": time.perf_counter() - started, "rows": rows, "logmel_frames": logmel_frames}


def warm_up(*models) -> None:
    """One small call per model before the clock starts (CUDA context, kernels, thread pools)."""
    for model in models:
        model(np.zeros((16, 120, 160, 3), dtype=np.uint8))


def fps_filter(frames, fps: float):
    """Online ffmpeg `fps` filter over decoded PyAV frames: yields the frame shown at each output slot."""
    current, slot, first, last, step = None, 0, None, 0.0, 0.0
    for frame in frames:
        t = float(frame.time)
        first = t if first is None else first
        rounded = math.floor((t - first) * fps + 0.5 + 1e-6)
        while current is not None and slot < rounded:
            yield current
            slot += 1
        current, step, last = frame, t - last if current is not None else step, t
    stop = math.floor((last - first + step) * fps + 0.5 + 1e-6)
    while current is not None and slot < stop:
        yield current
        slot += 1


def scaled_size(width: int, height: int, short_side: int) -> tuple[int, int]:
    """(width, height) with the short side at `short_side`, the long one rounded to even (ffmpeg scale)."""
    scale = short_side / min(width, height)
    return (round(width * scale / 2) * 2 if width > height else short_side,
            round(height * scale / 2) * 2 if height > width else short_side)


def pyav_frames(path: Path, fps: float, short_side: int, crop: bool, truncated_size: bool = False,
                interpolation: str | None = None) -> np.ndarray:
    """The whole video at `fps`, scaled by libswscale (like ffmpeg fps -> scale), as ONE float32 array.

    truncated_size: the long side truncated as the reference computes it (howto_prep.decode.scaled_size)
    instead of rounded to even; interpolation: PyAV's swscale interpolation (None: PyAV's default)."""
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"  # what the ffmpeg command line does by default
        if truncated_size:
            from howto_prep.decode import scaled_size as reference_size

            size = reference_size(stream.codec_context.width, stream.codec_context.height, short_side)
        else:
            size = scaled_size(stream.codec_context.width, stream.codec_context.height, short_side)
        picked = [f.reformat(width=size[0], height=size[1], format="rgb24",
                             interpolation=interpolation).to_ndarray()
                  for f in fps_filter(container.decode(video=0), fps)]
    video = np.stack(picked).astype(np.float32)  # the reference's whole-video float buffer
    del picked
    if crop:
        top, left = (video.shape[1] - short_side) // 2, (video.shape[2] - short_side) // 2
        video = np.ascontiguousarray(video[:, top:top + short_side, left:left + short_side])
    return video


def pyav_audio(path: Path) -> np.ndarray:
    import av

    with av.open(str(path)) as container:
        resampler = av.AudioResampler(format="flt", layout="mono", rate=schema.AUDIO_SAMPLE_RATE)
        parts = [r.to_ndarray().reshape(-1) for f in container.decode(audio=0) for r in resampler.resample(f)]
    return np.concatenate(parts)


def baseline_models(device: str) -> tuple:
    """The same two models, in the reference's plain NCHW layout and batch sizes, warmed up."""
    from howto_prep.features.resnet2d import ResNet152Features
    from howto_prep.features.resnext3d import ResNeXt101Features

    model_2d = ResNet152Features("random", device, batch_size=64, channels_last=False)
    model_3d = ResNeXt101Features("random", device, batch_size=8, channels_last=False)
    warm_up(model_2d, model_3d)
    return model_2d, model_3d


def run_baseline(path: Path, device: str) -> dict:
    return baseline_extract(path, *baseline_models(device))


def baseline_extract(path: Path, model_2d, model_3d) -> dict:
    """One video the reference way: a whole-video decode per model, then the soundtrack again."""
    from howto_prep.features.logmel import logmel

    started = time.perf_counter()
    video = pyav_frames(path, schema.FPS_2D, schema.SHORT_SIDE_2D, crop=False)  # pass 1
    rows_2d = sum(len(model_2d(video[i:i + 64].astype(np.uint8))) for i in range(0, len(video), 64))
    del video
    video = pyav_frames(path, schema.FPS_3D, schema.SIZE_3D, crop=True)  # pass 2
    rows_3d = sum(len(model_3d(video[i:i + 128].astype(np.uint8))) for i in range(0, len(video), 128))
    del video
    mel = logmel(pyav_audio(path))  # pass 3 (audio)
    return {"seconds": time.perf_counter() - started, "rows": {"resnet152": rows_2d, "resnext101": rows_3d},
            "logmel_frames": mel.shape[1]}


def worker(method: str, path: Path, device: str) -> None:
    import torch  # (before decord: see howto_prep.decode.import_decord)

    result = (run_ours if method == "ours" else run_baseline)(path, device)
    result["peak_rss_mib"] = peak_rss_mib()
    if device.startswith("cuda"):
        result["peak_gpu_mib"] = torch.cuda.max_memory_allocated() / 2**20
    print(json.dumps(result))


def measure(method: str, path: Path, device: str) -> dict:
    out = subprocess.run([sys.executable, __file__, "--worker", method, str(path), "--device", device],
                         capture_output=True, text=True, cwd=ROOT)
    if out.returncode != 0:
        raise SystemExit(f"{method} failed on {path.name}:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--short", type=float, default=10.0, help="seconds of the short video")
    parser.add_argument("--long", type=float, default=40.0, help="seconds of the long video")
    parser.add_argument("--size", default="320x180", help="WIDTHxHEIGHT of the test videos")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--worker", nargs=2, metavar=("METHOD", "PATH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker[0], Path(args.worker[1]), args.device)
        return
    width, height = (int(v) for v in args.size.lower().split("x"))
    import torch

    print(f"bench_extract: device={args.device} torch threads={torch.get_num_threads()} "
          f"videos {args.short:g} s and {args.long:g} s at {width}x{height} 30 fps, random weights")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for seconds in (args.short, args.long):
            path = make_video(Path(tmp) / f"bench_{seconds:g}s.mp4", seconds, width, height)
            results = {m: measure(m, path, args.device) for m in ("baseline", "ours")}
            expected = {"resnet152": math.floor(seconds + 0.5), "resnext101": math.ceil(math.floor(24 * seconds + 0.5) / 16)}
            for method, result in results.items():
                if result["rows"] != expected:
                    raise SystemExit(f"{method} produced {result['rows']} rows, expected {expected}")
            rows.append((seconds, results))
    gpu = args.device.startswith("cuda")
    header = (f"{'video':>7} | {'method':<8} | {'video-s/s':>9} | {'peak RSS MiB':>12} | {'speed ratio':>11} | "
              f"{'RSS ratio':>9}" + (f" | {'peak GPU MiB':>12}" if gpu else ""))
    print(header)
    print("-" * len(header))
    for seconds, results in rows:
        base = results["baseline"]
        for method in ("baseline", "ours"):
            r = results[method]
            speed = seconds / r["seconds"]
            print(f"{seconds:>6g}s | {method:<8} | {speed:>9.3f} | {r['peak_rss_mib']:>12.0f} | "
                  f"{base['seconds'] / r['seconds']:>10.2f}x | {r['peak_rss_mib'] / base['peak_rss_mib']:>8.2f}x"
                  + (f" | {r['peak_gpu_mib']:>12.0f}" if gpu else ""))
    (short_s, short), (long_s, long_) = rows
    for method in ("baseline", "ours"):
        growth = long_[method]["peak_rss_mib"] - short[method]["peak_rss_mib"]
        print(f"{method}: peak RSS grows by {growth:+.0f} MiB from {short_s:g} s to {long_s:g} s of video")


if __name__ == "__main__":
    main()
