"""Benchmark: memory is flat in video length and resolution (peak RSS, measured, not computed).

For each input (HowTo-like 640x360 at 30 s, 300 s and 2,000 s, and a 1920x1080 one), two measurements:
  decode stream   a fresh process runs exactly what a Ray decode task runs
                  (howto_prep.extract.ray_tasks.decode_stream: demux pass, whole-soundtrack log-mel,
                  10 s frame chunks at 1 fps and 24 fps) and drops each chunk, as the model actor
                  consumes it; its own VmHWM (/proc/self/status; not ru_maxrss, which after fork+exec
                  can carry the parent's peak) and its RSS after the imports, before the video
  whole command   `howto-prep extract` on a folder holding only that video, visual models replaced by
                  the zero-cost stand-in (bench only: `--weights-2d/3d bench-zero`,
                  HOWTO_PREP_BENCH_ONLY=1), local Ray; its whole process tree (driver, Ray daemons,
                  decode worker, model actor) sampled every 0.2 s: the peak of the summed PSS (shared
                  pages such as Ray's object store split between the processes mapping them), the peak of
                  the summed RSS, and each role's own VmHWM
The inputs: a HowTo-like segment (`--segment` s: H.264 High with B-frames, x264 medium, 600 kbit/s at
640x360, 2.5 Mbit/s at 1080p, AAC 44.1 kHz stereo, 30 fps; synthetic.rendering's `howto` look) encoded
once and repeated by copying packets (synthetic.mp4.repeat_mp4), so a 2,000 s file takes seconds to make.

    python bench/bench_long_video.py [--lengths 30 300 2000] [--hd 1920x1080] [--hd-seconds 30]
        [--segment 10] [--skip-command] [--keep DIR]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from proc_tree import TreeSampler, status_kib  # noqa: E402

SAMPLE_S = 0.2


# --- inputs ---------------------------------------------------------------------------------------

def make_input(folder: Path, seconds: float, width: int, height: int, bitrate: int, segment: float) -> Path:
    """A HowTo-like `seconds`-long mp4 in its own folder (`folder/<name>/<id>.mp4`), kept if it exists."""
    from howto_prep.synthetic.mp4 import repeat_mp4
    from howto_prep.synthetic.plans import make_ids, make_plans
    from howto_prep.synthetic.rendering import write_video

    name = f"{width}x{height}_{seconds:g}s"
    video_id = make_ids(np.random.default_rng([width, height, int(seconds)]), 1)[0].replace("-", "x")
    path = folder / name / f"{video_id}.mp4"
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    plan = make_plans(np.random.default_rng(0), [video_id], segment, segment, encoding="howto")[0]
    plan = dataclasses.replace(plan, width=width, height=height, fps=30.0, sample_rate=44_100, channels=2,
                               bitrate=bitrate, sprite_scale=1.0)
    times = max(1, round(seconds / segment))
    piece = write_video(plan, folder / f"{name}.segment.mp4")
    if times == 1:
        piece.rename(path)
    else:
        repeat_mp4(piece, path, times)
        piece.unlink()
    return path


# --- the decode stream alone --------------------------------------------------------------------

def decode_worker(path: Path) -> None:
    """Child process: the decode task's work, chunks dropped as soon as they are counted."""
    os.environ["OMP_NUM_THREADS"] = "1"  # as Ray runs a num_cpus=1 task
    import av  # noqa: F401  (the imports the task makes, before the clock and the baseline RSS)

    from howto_prep.extract.ray_tasks import decode_stream
    from howto_prep.features import audio, logmel  # noqa: F401

    before = status_kib("self", "VmRSS") / 1024
    started = time.perf_counter()
    counts = {"chunks": 0, "frames_1fps": 0, "frames_24fps": 0, "logmel_frames": 0, "largest_chunk_mib": 0.0}
    for item in decode_stream(str(path), True, True, True):
        if isinstance(item, dict):
            counts["logmel_frames"] = int(item["logmel"].shape[1]) if item["logmel"] is not None else 0
            counts["duration"] = item["info"]["duration"]
        elif not isinstance(item, str):
            counts["chunks"] += 1
            counts["frames_1fps"] += len(item.frames_1fps)
            counts["frames_24fps"] += len(item.frames_24fps)
            size = (item.frames_1fps.nbytes + item.frames_24fps.nbytes) / 2**20
            counts["largest_chunk_mib"] = max(counts["largest_chunk_mib"], size)
    counts["seconds"] = time.perf_counter() - started
    counts["rss_before_mib"] = before
    counts["peak_rss_mib"] = status_kib("self", "VmHWM") / 1024
    print(json.dumps(counts))


def measure_stream(path: Path) -> dict:
    out = subprocess.run([sys.executable, __file__, "--worker", str(path)], capture_output=True, text=True, cwd=ROOT)
    if out.returncode != 0:
        raise SystemExit(f"decode failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


# --- the whole command --------------------------------------------------------------------------

ROLES = {"decode_stream": "decode worker", "FeatureModels": "model actor", "ray::IDLE": "idle Ray workers",
         "default_worker": "idle Ray workers", "raylet": "Ray daemons", "gcs_server": "Ray daemons",
         "ray/": "Ray daemons"}  # process title -> role; the command itself is "driver"


def measure_command(path: Path, work: Path) -> dict:
    (work / "caption.json").write_text("{}")
    out = work / "shards"
    command = [sys.executable, "-m", "howto_prep.cli", "extract", "--videos", str(path.parent), "--captions",
               str(work / "caption.json"), "--out", str(out), "--features", "resnet152,resnext101,logmel",
               "--weights-2d", "bench-zero", "--weights-3d", "bench-zero"]
    env = dict(os.environ, HOWTO_PREP_BENCH_ONLY="1", RAY_ENABLE_UV_RUN_RUNTIME_ENV="0")
    started = time.perf_counter()
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    sampler = TreeSampler(process.pid, interval=SAMPLE_S, pss=True, roles=ROLES, provisional=("idle Ray workers",))
    stderr = process.stderr.read().decode(errors="replace")
    process.wait()
    sampler.stop()
    if process.returncode != 0:
        raise SystemExit(f"howto-prep extract failed (exit {process.returncode}):\n{stderr[-3000:]}")
    return {"seconds": time.perf_counter() - started, "peak_pss_mib": sampler.peak_pss / 1024,
            "peak_rss_mib": sampler.peak_rss / 1024, "hwm_mib": sampler.hwm_mib_by_role(),
            "summary": next((line for line in stderr.splitlines() if "video-s in" in line), "")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=float, nargs="+", default=[30.0, 300.0, 2000.0],
                        help="seconds of the 640x360 inputs")
    parser.add_argument("--size", default="640x360", help="WIDTHxHEIGHT of the length series")
    parser.add_argument("--hd", default="1920x1080", help="WIDTHxHEIGHT of the high-resolution input ('' to skip)")
    parser.add_argument("--hd-seconds", type=float, default=30.0)
    parser.add_argument("--segment", type=float, default=10.0, help="seconds encoded once, then repeated")
    parser.add_argument("--skip-command", action="store_true", help="only the decode stream")
    parser.add_argument("--keep", type=Path, help="folder for the inputs, kept for the next run")
    parser.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        decode_worker(args.worker)
        return
    width, height = (int(v) for v in args.size.lower().split("x"))
    cases = [(seconds, width, height, 600_000) for seconds in args.lengths]
    if args.hd:
        hd_width, hd_height = (int(v) for v in args.hd.lower().split("x"))
        cases.append((args.hd_seconds, hd_width, hd_height, 2_500_000))
    load = os.getloadavg()
    print(f"bench_long_video: {os.cpu_count()} CPUs; load average before: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.keep or Path(tmp) / "inputs"
        for seconds, w, h, bitrate in cases:
            started = time.perf_counter()
            path = make_input(folder, seconds, w, h, bitrate, args.segment)
            made = time.perf_counter() - started
            stream = measure_stream(path)
            expected = (round(stream["duration"]), round(24 * stream["duration"]))
            if (stream["frames_1fps"], stream["frames_24fps"]) != expected:
                raise SystemExit(f"decoded {stream['frames_1fps']}/{stream['frames_24fps']} frames, expected {expected}")
            command = None
            if not args.skip_command:
                work = Path(tmp) / f"run-{len(rows)}"
                work.mkdir()
                command = measure_command(path, work)
            rows.append((f"{w}x{h}, {stream['duration']:.0f} s", path, made, stream, command))
            load = os.getloadavg()
            print(f"{rows[-1][0]}: {path.stat().st_size / 2**20:.0f} MiB file (made in {made:.0f} s); decode stream "
                  f"{stream['seconds']:.0f} s; command {command['seconds']:.0f} s; load {load[0]:.2f}"
                  if command else f"{rows[-1][0]}: decode stream {stream['seconds']:.0f} s; load {load[0]:.2f}",
                  flush=True)
    load = os.getloadavg()
    print(f"\nload average after: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}\n")
    print("| input | decode stream: RSS after imports -> peak (VmHWM) MiB | largest chunk MiB | log-mel frames "
          "| command: peak sum of PSS MiB | peak sum of RSS MiB | driver VmHWM | decode worker VmHWM "
          "| model actor VmHWM | Ray daemons + idle workers (largest VmHWM) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, _, _, stream, command in rows:
        cells = [f"{stream['rss_before_mib']:.0f} -> {stream['peak_rss_mib']:.0f}",
                 f"{stream['largest_chunk_mib']:.1f}", f"{stream['logmel_frames']}"]
        if command:
            hwm = command["hwm_mib"]
            cells += [f"{command['peak_pss_mib']:.0f}", f"{command['peak_rss_mib']:.0f}"]
            cells += [f"{hwm.get(role, float('nan')):.0f}" for role in
                      ("driver", "decode worker", "model actor")]
            cells.append(f"{max(hwm.get('Ray daemons', 0.0), hwm.get('idle Ray workers', 0.0)):.0f}")
        else:
            cells += ["-"] * 6
        print(f"| {name} | " + " | ".join(cells) + " |")
    for name, _, _, _, command in rows:
        if command:
            print(f"{name}: {command['summary']}")


if __name__ == "__main__":
    main()
