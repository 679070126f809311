"""Benchmark: memory of the decode side of `howto-prep extract` on one long video (default 2,000 s).

The issue's bound: a 2,000 s video must not need more than about 2 GB per worker. A fresh process
runs exactly what a Ray decode task runs (howto_prep.extract.ray_tasks.decode_stream: probe, the
whole soundtrack's log-mel, then 10 s frame chunks at 1 fps and 24 fps) and drops each chunk, as
the model actor would consume it; its peak RSS is printed next to the whole-video float32 arrays
the reference-style baseline (bench_extract.py) would hold for the same video. The model side's
memory depends on the chunk, not the video: bench_extract.py measures it at two lengths.

    python bench/bench_long_video.py [--seconds 2000] [--size 640x360]
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from howto_prep import schema  # noqa: E402


def make_long_video(path: Path, seconds: float, width: int, height: int, fps: float = 30.0) -> Path:
    """A real H.264 + AAC mp4 of a moving gradient (rolled, so generating it is cheap) and a tone."""
    from howto_prep.synthetic.mp4 import write_mp4

    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x % 256, y % 256, ((x + y) // 2) % 256], -1).astype(np.uint8)
    frames = (np.roll(base, 3 * i, axis=1) for i in range(int(seconds * fps)))
    rate = 16_000
    t = np.arange(int(seconds * rate), dtype=np.float64) / rate
    audio = (0.3 * np.sin(2 * np.pi * (220 + 30 * np.sin(t)) * t)).astype(np.float32)
    return write_mp4(path, frames, fps, audio, rate)


def decode_worker(path: Path) -> None:
    """Child process: the decode task's work, chunks dropped as soon as they are counted."""
    import torch  # noqa: F401  (before decord: see howto_prep.decode.import_decord)

    from howto_prep.extract.ray_tasks import decode_stream

    started = time.perf_counter()
    counts = {"chunks": 0, "frames_1fps": 0, "frames_24fps": 0, "logmel_frames": 0, "largest_chunk_mib": 0.0}
    for item in decode_stream(str(path), True, True, True):
        if isinstance(item, dict):
            counts["logmel_frames"] = int(item["logmel"].shape[1])
            counts["duration"] = item["info"]["duration"]
        elif not isinstance(item, str):
            counts["chunks"] += 1
            counts["frames_1fps"] += len(item.frames_1fps)
            counts["frames_24fps"] += len(item.frames_24fps)
            size = (item.frames_1fps.nbytes + item.frames_24fps.nbytes) / 2**20
            counts["largest_chunk_mib"] = max(counts["largest_chunk_mib"], size)
    counts["seconds"] = time.perf_counter() - started
    counts["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(counts))


def baseline_arrays_mib(seconds: float, width: int, height: int) -> dict[str, float]:
    """The whole-video float32 arrays of the reference-style baseline (pass 1 and pass 2)."""
    from bench_extract import scaled_size

    w2, h2 = scaled_size(width, height, schema.SHORT_SIDE_2D)
    w3, h3 = scaled_size(width, height, schema.SIZE_3D)
    pass_2d = math.floor(seconds + 0.5) * h2 * w2 * 3 * 4
    pass_3d = math.floor(24 * seconds + 0.5) * h3 * w3 * 3 * 4
    return {"2D pass": pass_2d / 2**20, "3D pass": pass_3d / 2**20}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2000.0)
    parser.add_argument("--size", default="640x360", help="WIDTHxHEIGHT")
    parser.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        decode_worker(args.worker)
        return
    width, height = (int(v) for v in args.size.lower().split("x"))
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        path = make_long_video(Path(tmp) / "long.mp4", args.seconds, width, height)
        print(f"bench_long_video: {args.seconds:g} s at {width}x{height} 30 fps, "
              f"{path.stat().st_size / 2**20:.0f} MiB, written in {time.perf_counter() - started:.0f} s")
        out = subprocess.run([sys.executable, __file__, "--worker", str(path)], capture_output=True, text=True, cwd=ROOT)
    if out.returncode != 0:
        raise SystemExit(f"decode failed:\n{out.stderr[-3000:]}")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    expected = (math.floor(args.seconds + 0.5), math.floor(24 * args.seconds + 0.5))
    if (result["frames_1fps"], result["frames_24fps"]) != expected:
        raise SystemExit(f"decoded {result['frames_1fps']}/{result['frames_24fps']} frames, expected {expected}")
    print(f"decode task: {result['chunks']} chunks in {result['seconds']:.0f} s "
          f"({args.seconds / result['seconds']:.1f} video-s/s), largest chunk {result['largest_chunk_mib']:.0f} MiB, "
          f"log-mel {result['logmel_frames']} frames")
    print(f"{'what':<58} | {'MiB':>8}")
    print(f"{'ours: decode task peak RSS (measured)':<58} | {result['peak_rss_mib']:>8.0f}")
    arrays = baseline_arrays_mib(args.seconds, width, height)
    for name, mib in arrays.items():
        print(f"{'baseline: whole-video float32 array, ' + name + ' (computed)':<58} | {mib:>8.0f}")


if __name__ == "__main__":
    main()
