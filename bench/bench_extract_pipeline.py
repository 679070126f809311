"""Benchmark: `howto-prep extract` end to end on many videos against the reference-style baseline.

  ours      the real command (`python -m howto_prep.cli extract`, local Ray): CPU decode tasks, as
            many as there are cores, stream chunks to the model actor(s) (`--gpus N`: one per GPU)
  baseline  bench_extract.py's reference-style extractor (a whole-video PyAV decode per model, then
            the soundtrack again), over the same videos one after another in one process

Both walls include start-up (Ray and the actors for ours, the models for the baseline); the
baseline's extraction time alone is printed too. Same models (random weights), same features
(2D, 3D, log-mel; no tokens). Output rows are checked against the schema.

    python bench/bench_extract_pipeline.py [--videos 8] [--seconds 60] [--size 640x360] [--gpus 0]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import bench_extract  # noqa: E402
from howto_prep import schema, shards  # noqa: E402

FEATURES = "resnet152,resnext101,logmel"


def make_videos(folder: Path, count: int, seconds: float, width: int, height: int) -> list[Path]:
    """`count` real mp4s, encoded in parallel (encoding is not what is measured)."""
    folder.mkdir(parents=True)
    paths = [folder / f"bench{i:03d}.mp4" for i in range(count)]
    with ProcessPoolExecutor(max_workers=min(count, os.cpu_count() or 1)) as pool:
        list(pool.map(bench_extract.make_video, paths, [seconds] * count, [width] * count, [height] * count))
    return paths


def run_ours(videos: Path, out: Path, gpus: int) -> float:
    captions = out.parent / "caption.json"
    captions.write_text("{}")
    command = [sys.executable, "-m", "howto_prep.cli", "extract", "--videos", str(videos), "--captions",
               str(captions), "--out", str(out), "--features", FEATURES, "--weights-2d", "random",
               "--weights-3d", "random", "--gpus", str(gpus)]
    started = time.perf_counter()
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"howto-prep extract failed:\n{result.stderr[-3000:]}")
    print(result.stdout.strip())
    print("\n".join(line for line in result.stderr.splitlines() if "video-s in" in line))
    return wall


def check_ours(out: Path, count: int, seconds: float) -> None:
    """Every video in the shards with the schema's row counts (a fast run that wrote nothing fails)."""
    samples = list(shards.iterate_samples(out))
    expected_2d, expected_3d = math.floor(seconds + 0.5), math.ceil(math.floor(24 * seconds + 0.5) / 16)
    got = sorted((len(s[schema.RESNET152.field]), len(s[schema.RESNEXT101.field])) for s in samples)
    if got != [(expected_2d, expected_3d)] * count:
        raise SystemExit(f"ours wrote rows {got}, expected {count} x {(expected_2d, expected_3d)}")


def baseline_worker(paths: list[str], device: str) -> None:
    """Child process: build the models once, then the reference way over each video in turn."""
    import torch  # noqa: F401  (before decord: see howto_prep.decode.import_decord)

    started = time.perf_counter()
    models = bench_extract.baseline_models(device)
    extract_s = sum(bench_extract.baseline_extract(Path(p), *models)["seconds"] for p in paths)
    print(json.dumps({"extract_s": extract_s, "after_start_s": time.perf_counter() - started}))


def run_baseline(paths: list[Path], device: str) -> tuple[float, float]:
    command = [sys.executable, __file__, "--baseline-worker", "--device", device, *map(str, paths)]
    started = time.perf_counter()
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"baseline failed:\n{result.stderr[-3000:]}")
    return wall, json.loads(result.stdout.strip().splitlines()[-1])["extract_s"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--size", default="640x360", help="WIDTHxHEIGHT")
    parser.add_argument("--gpus", type=int, default=0, help="--gpus for ours; the baseline uses cuda when > 0")
    parser.add_argument("--skip-baseline", action="store_true")
    parser.add_argument("--baseline-worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--device", default="cpu", help=argparse.SUPPRESS)
    parser.add_argument("paths", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.baseline_worker:
        baseline_worker(args.paths, args.device)
        return
    width, height = (int(v) for v in args.size.lower().split("x"))
    total = args.videos * args.seconds
    print(f"bench_extract_pipeline: {args.videos} videos x {args.seconds:g} s at {width}x{height} 30 fps "
          f"({total:g} video-s), {os.cpu_count()} CPUs, --gpus {args.gpus}, random weights, features {FEATURES}")
    with tempfile.TemporaryDirectory() as tmp:
        paths = make_videos(Path(tmp) / "videos", args.videos, args.seconds, width, height)
        ours_wall = run_ours(Path(tmp) / "videos", Path(tmp) / "shards", args.gpus)
        check_ours(Path(tmp) / "shards", args.videos, args.seconds)
        print(f"ours: {ours_wall:.1f} s wall, {total / ours_wall:.2f} video-s/s (baseline next)", flush=True)
        base = None if args.skip_baseline else run_baseline(paths, "cuda" if args.gpus else "cpu")
    header = f"{'method':<32} | {'wall s':>7} | {'video-s/s':>9} | {'vs baseline wall':>16}"
    print(header)
    print("-" * len(header))
    print(f"{'ours: howto-prep extract':<32} | {ours_wall:>7.1f} | {total / ours_wall:>9.2f} | "
          f"{(base[0] / ours_wall if base else float('nan')):>15.2f}x")
    if base:
        print(f"{'baseline (wall, incl. start-up)':<32} | {base[0]:>7.1f} | {total / base[0]:>9.2f} | {1.0:>15.2f}x")
        print(f"{'baseline (extraction only)':<32} | {base[1]:>7.1f} | {total / base[1]:>9.2f} | "
              f"{base[0] / base[1]:>15.2f}x")


if __name__ == "__main__":
    main()
