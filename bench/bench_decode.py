"""Benchmark: the decoder's frames against the reference ffmpeg chain, and its speed, vs the previous decoder.

Both methods deliver what the models consume (1 fps frames at short side 224, 24 fps frames at
112x112) for the same H.264 files (High profile, B-frames, a realistic preset, 640x360 / 480x270 /
1280x720 at 25-60 fps: HowTo100M's YouTube encodes look like this):
  ours      howto_prep.decode: exact-timestamp frame choice, one sequential PyAV decode, each chosen
            frame scaled by libavfilter's `scale` (ffmpeg's own scaler, bicubic in YUV), 3D crop at
            the reference's truncated offset
  previous  the decoder before this change: decord `get_batch` per 10 s chunk at native resolution
            (float32 timestamps), then torchvision bilinear antialiased resize and `center_crop`
Fidelity: mean and max absolute difference in grey levels against the reference chain
(`fps=R,scale=W:H,format=rgb24`, then the crop at int((W - 112) / 2)), built with PyAV's filter graph;
frames whose choice differs from ffmpeg's are counted. Speed: video-seconds per second on one thread,
each method in a fresh process, peak RSS reported.

    python bench/bench_decode.py [--seconds 30]
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
from fractions import Fraction
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

VIDEOS = [(640, 360, Fraction(30)), (640, 360, Fraction(48)), (480, 270, Fraction(25)),
          (1280, 720, Fraction(60)), (480, 360, Fraction(30000, 1001))]


def make_video(path: Path, width: int, height: int, rate: Fraction, seconds: float) -> Path:
    import test_reference_chain as chain

    chain.SECONDS = seconds
    return chain.write_video(path, width, height, rate)


def ours(path: Path) -> tuple[np.ndarray, np.ndarray]:
    from howto_prep import decode

    source = decode.open_video(path, num_threads=1)
    info = decode.probe(source)
    ones, dense = [], []
    for chunk in decode.iterate_chunks(source, info):
        ones += [] if chunk.frames_1fps is None else [chunk.frames_1fps]
        dense += [] if chunk.frames_24fps is None else [chunk.frames_24fps]
    return np.concatenate(ones), np.concatenate(dense)


def previous(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """The previous decoder and preprocessing, written out as they were."""
    import torch
    import decord
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms.v2 import functional as TF

    reader = decord.VideoReader(str(path), num_threads=1)
    times = np.asarray(reader.get_frame_timestamp(np.arange(len(reader))), dtype=np.float64)
    starts, duration = times[:, 0], float(times[-1, 1] - times[0, 0])

    def near(values):
        return np.floor(np.asarray(values, dtype=np.float64) + 0.5 + 1e-6).astype(np.int64)

    def picks(fps: float) -> np.ndarray:
        slots = np.maximum.accumulate(near((starts - starts[0]) * fps))
        chosen = np.searchsorted(slots, np.arange(int(near(duration * fps))), side="right") - 1
        return np.clip(chosen, 0, len(starts) - 1)

    pick_1, pick_24 = picks(1.0), picks(24.0)
    ones, dense = [], []
    for index in range(math.ceil(len(pick_24) / 240)):
        part_1, part_24 = pick_1[index * 10:(index + 1) * 10], pick_24[index * 240:(index + 1) * 240]
        needed = np.unique(np.concatenate([part_1, part_24]))
        frames = reader.get_batch(needed.tolist()).asnumpy()
        position = {int(f): row for row, f in enumerate(needed)}
        batch_1 = torch.from_numpy(frames[[position[int(f)] for f in part_1]]).permute(0, 3, 1, 2)
        batch_24 = torch.from_numpy(frames[[position[int(f)] for f in part_24]]).permute(0, 3, 1, 2)
        if len(batch_1):
            ones.append(TF.resize(batch_1, [224], InterpolationMode.BILINEAR, antialias=True).permute(0, 2, 3, 1).numpy())
        small = TF.resize(batch_24, [112], InterpolationMode.BILINEAR, antialias=True)
        dense.append(TF.center_crop(small, [112, 112]).permute(0, 2, 3, 1).numpy())
    return np.concatenate(ones), np.concatenate(dense)


def worker(method: str, path: Path) -> None:
    import torch

    torch.set_num_threads(1)
    run = ours if method == "ours" else previous
    started = time.perf_counter()
    ones, dense = run(path)
    seconds = time.perf_counter() - started
    np.save(path.with_suffix(f".{method}.1.npy"), ones)
    np.save(path.with_suffix(f".{method}.24.npy"), dense)
    print(json.dumps({"seconds": seconds, "rss_mib": peak_rss_mib()}))


def peak_rss_mib() -> float:
    """VmHWM of this process (ru_maxrss can carry the forking parent's peak across exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(method: str, path: Path) -> dict:
    output = subprocess.run([sys.executable, __file__, "--worker", method, str(path)], capture_output=True,
                            text=True, check=True).stdout
    return json.loads(output.strip().splitlines()[-1])


def fidelity(path: Path, method: str, width: int, height: int) -> tuple[float, int, int]:
    """(mean |diff| over both sizes, max |diff|, frames whose choice differs) against the chain."""
    import test_reference_chain as chain

    expected_2d, expected_3d = chain.reference_inputs(path, width, height)
    got_2d, got_3d = np.load(path.with_suffix(f".{method}.1.npy")), np.load(path.with_suffix(f".{method}.24.npy"))
    if got_2d.shape != expected_2d.shape or got_3d.shape != expected_3d.shape:
        return float("nan"), -1, -1
    diffs = [np.abs(a.astype(np.int16) - b.astype(np.int16)) for a, b in ((got_2d, expected_2d), (got_3d, expected_3d))]
    mean = float(sum(d.sum() for d in diffs) / sum(d.size for d in diffs))
    choice = sum(a != b for a, b in zip(chain.frame_codes(got_3d), chain.frame_codes(expected_3d)))
    return mean, int(max(d.max() for d in diffs)), int(choice)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--worker", nargs=2, metavar=("METHOD", "PATH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker[0], Path(args.worker[1]))
        return
    rows = []
    totals = {"ours": 0.0, "previous": 0.0}
    with tempfile.TemporaryDirectory() as tmp:
        for width, height, rate in VIDEOS:
            path = make_video(Path(tmp) / f"v{width}x{height}_{float(rate):.2f}.mp4", width, height, rate, args.seconds)
            result = {method: measure(method, path) for method in ("previous", "ours")}
            for method in totals:
                totals[method] += result[method]["seconds"]
            fid = {method: fidelity(path, method, width, height) for method in ("previous", "ours")}
            rows.append((f"{width}x{height} {float(rate):.2f} fps", result, fid))
    print(f"\n{args.seconds:g} s per video, one decoder thread, each run in a fresh process\n")
    print("| video | previous video-s/s | ours video-s/s | ratio | previous mean/max diff, frames chosen differently "
          "| ours mean/max diff, frames chosen differently | peak RSS previous -> ours |")
    print("|---|---|---|---|---|---|---|")
    for name, result, fid in rows:
        speed = {m: args.seconds / result[m]["seconds"] for m in result}
        print(f"| {name} | {speed['previous']:.1f} | {speed['ours']:.1f} | {speed['ours'] / speed['previous']:.2f}x "
              f"| {fid['previous'][0]:.2f} / {fid['previous'][1]}, {fid['previous'][2]} "
              f"| {fid['ours'][0]:.2f} / {fid['ours'][1]}, {fid['ours'][2]} "
              f"| {result['previous']['rss_mib']:.0f} -> {result['ours']['rss_mib']:.0f} MiB |")
    total = args.seconds * len(VIDEOS)
    print(f"\nall videos: previous {total / totals['previous']:.1f} video-s/s, ours {total / totals['ours']:.1f} "
          f"video-s/s ({totals['previous'] / totals['ours']:.2f}x)")


if __name__ == "__main__":
    main()
