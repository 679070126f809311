"""Benchmark: `howto-prep extract` end to end on many videos against the reference-style baseline.

  ours      the real command (`python -m howto_prep.cli extract`, local Ray): CPU decode tasks, as
            many as there are cores, stream chunks to the model actor(s) (`--gpus N`: one per GPU)
  baseline  the 2020 HowTo100M feature extractor's shape, as users run it today: a torch DataLoader
            with 4 decode workers (--decode-workers; one video per item) that each decode a video
            twice into whole-video float32 arrays (2D: 1 fps, short side 224; 3D: 24 fps, short side
            112, centre crop 112; PyAV/swscale bicubic at the reference's truncated sizes) plus its
            soundtrack; the main process runs fp32 models (no autocast) at batch 64 (--batch: frames
            for 2D, clips for 3D) on the device (cuda when --gpus > 0), then log-mel

Both walls include start-up (Ray and the actors for ours, the models for the baseline); the
baseline's extraction time alone is printed too. Same models (the same seeded random weights), same
features (2D, 3D, log-mel; no tokens). Output rows are checked against the schema, and ours (read back
from the shards) is compared with the baseline's rows: cosine per row for resnet152 and resnext101
(min / mean; the bar is >= 0.999 per row), max |difference| for log-mel.

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

import numpy as np

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


class ReferenceDecode:
    """torch Dataset, one video per item, decoded the 2020 HowTo100M extractor's way: a whole-video
    float32 array per model (2D: 1 fps, short side 224; 3D: 24 fps, short side 112, centre crop 112),
    i.e. two video decodes, plus the soundtrack (float32, 16 kHz mono) for log-mel."""

    def __init__(self, paths: list[str]) -> None:
        self.paths = paths

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict:
        import torch

        path = Path(self.paths[index])
        frames = {"video_2d": (schema.FPS_2D, schema.SHORT_SIDE_2D, False),
                  "video_3d": (schema.FPS_3D, schema.SIZE_3D, True)}
        item = {"name": path.stem}
        for key, (fps, short_side, crop) in frames.items():
            # the reference's ffmpeg chain: truncated long side, ffmpeg's default (bicubic) scaler
            item[key] = torch.from_numpy(bench_extract.pyav_frames(path, fps, short_side, crop, truncated_size=True,
                                                                   interpolation="BICUBIC"))
        item["audio"] = torch.from_numpy(bench_extract.pyav_audio(path))
        return item


def reference_2d(video, model, batch: int) -> np.ndarray:
    """float32 (T, H, W, 3) 0..255 -> (T, 2048) float16 rows: whole-video preprocessing on the CPU,
    then fp32 batches of `batch` frames on the model's device (the reference's loop)."""
    import torch

    pixels = video.permute(0, 3, 1, 2).div(255.0)
    pixels = (pixels - model.mean.cpu()) / model.std.cpu()
    rows = [model.model(pixels[i:i + batch].to(model.device)) for i in range(0, len(pixels), batch)]
    return torch.nn.functional.normalize(torch.cat(rows).float(), dim=1).to(torch.float16).cpu().numpy()


def reference_3d(video, model, batch: int) -> np.ndarray:
    """float32 (T, 112, 112, 3) 0..255 at 24 fps -> (ceil(T / 16), 2048) float16 rows: black-padded
    16-frame clips minus the Kinetics mean (CPU, whole video), fp32 batches of `batch` clips."""
    import torch

    length = schema.CLIP_LEN_3D
    count = math.ceil(len(video) / length)
    if count * length > len(video):
        video = torch.cat([video, video.new_zeros((count * length - len(video), *video.shape[1:]))])
    clips = video.view(count, length, *video.shape[1:]).permute(0, 4, 1, 2, 3) - model.mean.cpu()
    rows = [model.model(clips[i:i + batch].to(model.device)) for i in range(0, len(clips), batch)]
    return torch.nn.functional.normalize(torch.cat(rows).float(), dim=1).to(torch.float16).cpu().numpy()


def baseline_worker(paths: list[str], device: str, workers: int, batch: int, features_out: str) -> None:
    """Child process: the reference extractor's shape. fp32 models (no autocast) built once in this
    process with the same seeded random weights as ours; a DataLoader with `workers` decode workers
    hands it one whole decoded video at a time; both models at batch `batch`, then log-mel."""
    import torch
    from torch.utils.data import DataLoader

    from howto_prep.features.logmel import logmel
    from howto_prep.features.resnet2d import ResNet152Features
    from howto_prep.features.resnext3d import ResNeXt101Features

    started = time.perf_counter()
    model_2d = ResNet152Features("random", device, batch_size=batch, half=False, channels_last=False)
    model_3d = ResNeXt101Features("random", device, batch_size=batch, half=False, channels_last=False)
    bench_extract.warm_up(model_2d, model_3d)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    loader = DataLoader(ReferenceDecode(paths), batch_size=1, shuffle=False, num_workers=workers)
    features = {}
    extract_started = time.perf_counter()
    with torch.no_grad():
        for item in loader:
            name = item["name"][0]
            features[f"{name}/resnet152"] = reference_2d(item["video_2d"][0], model_2d, batch)
            features[f"{name}/resnext101"] = reference_3d(item["video_3d"][0], model_3d, batch)
            features[f"{name}/logmel"] = logmel(item["audio"][0].numpy())
    extract_s = time.perf_counter() - extract_started
    np.savez(features_out, **features)
    print(json.dumps({"extract_s": extract_s, "after_start_s": time.perf_counter() - started}))


def run_baseline(paths: list[Path], device: str, workers: int, batch: int, features_out: Path) -> tuple[float, float]:
    command = [sys.executable, __file__, "--baseline-worker", "--device", device, "--decode-workers", str(workers),
               "--batch", str(batch), "--features-out", str(features_out), *map(str, paths)]
    started = time.perf_counter()
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"baseline failed:\n{result.stderr[-3000:]}")
    return wall, json.loads(result.stdout.strip().splitlines()[-1])["extract_s"]


def compare_features(out: Path, features_file: Path) -> None:
    """Per video and row, cosine(ours, baseline) for the 2D and 3D rows (row counts aligned and
    reported when they differ); log-mel: max |difference|."""
    base = np.load(features_file)
    ours = {}
    for sample in shards.iterate_samples(out):
        meta = sample.get(schema.META_FIELD) or {}
        name = meta.get("video_id", sample["__key__"]) if isinstance(meta, dict) else sample["__key__"]
        ours[name] = sample
    for spec in schema.VISUAL_FEATURES:
        cosines, mismatched = [], []
        for name, sample in sorted(ours.items()):
            a = np.asarray(sample[spec.field], dtype=np.float32)
            b = np.asarray(base[f"{name}/{spec.name}"], dtype=np.float32)
            if len(a) != len(b):
                mismatched.append(f"{name}: ours {len(a)} vs baseline {len(b)}")
            rows = min(len(a), len(b))
            a, b = a[:rows], b[:rows]
            norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
            cosines.append(np.sum(a * b, axis=1) / np.maximum(norms, 1e-12))
        values = np.concatenate(cosines) if cosines else np.zeros(0)
        verdict = "PASS" if len(values) and values.min() >= 0.999 else "BELOW"
        print(f"equal features {spec.name:<10}: {len(values)} rows over {len(ours)} videos, cosine min "
              f"{values.min() if len(values) else float('nan'):.6f} mean {values.mean() if len(values) else float('nan'):.6f}"
              f" (bar >= 0.999 per row: {verdict})"
              + (f"; row counts differ, compared the first min(...) rows: {'; '.join(mismatched)}" if mismatched else ""))
    diffs = []
    for name, sample in ours.items():
        a, b = np.asarray(sample.get(schema.LOGMEL.field), dtype=np.float32), base[f"{name}/logmel"]
        if a.shape == b.shape:
            diffs.append(float(np.abs(a - b).max()))
        else:
            diffs.append(float("nan"))
            print(f"logmel shapes differ for {name}: ours {a.shape} vs baseline {b.shape}")
    if diffs:
        print(f"equal features logmel    : max |ours - baseline| over {len(diffs)} videos {max(diffs):.3g}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--size", default="640x360", help="WIDTHxHEIGHT")
    parser.add_argument("--gpus", type=int, default=0, help="--gpus for ours; the baseline uses cuda when > 0")
    parser.add_argument("--skip-baseline", action="store_true")
    parser.add_argument("--baseline-worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--decode-workers", type=int, default=4, help="baseline DataLoader num_workers (reference: 4)")
    parser.add_argument("--batch", type=int, default=64, help="baseline fp32 batch, frames (2D) / clips (3D)")
    parser.add_argument("--device", default="cpu", help=argparse.SUPPRESS)
    parser.add_argument("--features-out", default="", help=argparse.SUPPRESS)
    parser.add_argument("paths", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.baseline_worker:
        baseline_worker(args.paths, args.device, args.decode_workers, args.batch, args.features_out)
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
        features_file = Path(tmp) / "baseline_features.npz"
        base = None if args.skip_baseline else run_baseline(paths, "cuda" if args.gpus else "cpu",
                                                            args.decode_workers, args.batch, features_file)
        if base:
            compare_features(Path(tmp) / "shards", features_file)
    header = f"{'method':<32} | {'wall s':>7} | {'video-s/s':>9} | {'vs baseline wall':>16}"
    print(header)
    print("-" * len(header))
    print(f"{'ours: howto-prep extract':<32} | {ours_wall:>7.1f} | {total / ours_wall:>9.2f} | "
          f"{(base[0] / ours_wall if base else float('nan')):>15.2f}x")
    if base:
        print(f"{'baseline (wall, incl. start-up)':<32} | {base[0]:>7.1f} | {total / base[0]:>9.2f} | {1.0:>15.2f}x")
        print(f"{'baseline (extraction only)':<32} | {base[1]:>7.1f} | {total / base[1]:>9.2f} | "
              f"{base[0] / base[1]:>15.2f}x")
        print(f"ours / baseline speed, same run: {base[0] / ours_wall:.2f}x on wall (both incl. start-up); "
              f"{base[1] / ours_wall:.2f}x against the baseline's extraction-only time")


if __name__ == "__main__":
    main()
