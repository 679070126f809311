"""Benchmark: the box's decode limit, and how close the whole `howto-prep extract` command gets to it.

All rows run on the same HowTo-like corpus (`howto-prep synth --encoding howto`: 640x360 / 480x360,
a few 1280x720, 25-30 fps, H.264 High with B-frames at 400-800 kbit/s, AAC), in one run, with one
decoder per core:
  limit     the issue's decode limit: one process per core, each decoding whole videos with decord at
            native resolution (RGB), sequential access (`next()`, one decoder thread), plus the
            soundtrack (decord AudioReader, 16 kHz mono: the samples extract reads, there with PyAV)
  limit-scaled  the limit with decord's own scaler to the 3D size (short side 112): the obvious way
            to reduce frames in the decoder; other pixels than the reference chain's, one size of two,
            so a reference point for what "reducing frames in the decoder" costs, not a way to run
  raw       the same with PyAV and no pixel conversion at all (the H.264 decoder alone), plus audio
  task      our decode task alone, one process per core: exactly what a Ray decode task runs
            (howto_prep.extract.ray_tasks.decode_stream: demux pass, audio + log-mel, one sequential
            decode with the exact ffmpeg frame choice and scaler), chunks dropped; OMP_NUM_THREADS=1
            as Ray gives a num_cpus=1 task; one H.264 decoder thread as extract now runs it while its
            tasks fill the cores ("task-auto": FFmpeg's automatic threads, the setting before)
  extract   the whole command (`python -m howto_prep.cli extract`, local Ray, all four features,
            shards written) with the visual models replaced by the zero-cost stand-in
            (howto_prep.features.standin: `--weights-2d/3d bench-zero` + HOWTO_PREP_BENCH_ONLY=1,
            bench only); `--models standin,random` adds the command with the real networks (random
            weights) for a GPU box (`--gpus N`)
Steady state: every row records when each video finished; with p decoders at once, the rate is the
video-seconds finished after the p-th finish and up to the p-th finish from the end, divided by the
time between them: all p decoders are busy there (before it they start, after it the last videos
drain while decoders fall idle, a tail that a 1.2 M-video run does not have). "start-up + tail" is the
wall time the steady rate does not explain (process/Ray/actor start, the drain).
CPU: every process of the row (the pool's workers; the command and all it starts: driver, Ray daemons,
workers, actor), sampled from /proc (bench/proc_tree.py), over the same window; "by CPU" compares
CPU-seconds per video-second, which stays honest when other jobs share the box and the wall clock does not.
"where the time goes" times the decode task's parts on a few videos in one process (ms per
video-second): the demux pass, audio, log-mel, decoding alone, and the frame choice + scaling.

    python bench/bench_decode_limit.py [--videos 32] [--seconds 30] [--corpus DIR] [--processes N]
        [--gpus 0] [--models standin[,random]] [--scaling-gpus 3] [--rounds 1] [--skip ROW ...]
    # GPU box (16 cores, 1 GPU): enough videos for 15 decode tasks to reach a steady state
    python bench/bench_decode_limit.py --videos 128 --seconds 60 --gpus 1 --models standin,random --scaling-gpus 3
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from gpu_sampler import GpuSampler  # noqa: E402
from proc_tree import TreeSampler  # noqa: E402

ROWS = ("limit", "limit-scaled", "raw", "task-auto", "task", "extract")
EXTRACT_ROLES = {"decode_stream": "decode workers", "FeatureModels": "model actor", "ray::IDLE": "idle Ray workers",
                 "default_worker": "idle Ray workers", "raylet": "Ray daemons", "gcs_server": "Ray daemons",
                 "ray/": "Ray daemons"}  # process title -> role; the command itself is "driver"
PROGRESS = re.compile(r"(\d+)/(\d+) \[")


# --- the corpus ---------------------------------------------------------------------------------

def howto_corpus(folder: Path, videos: int, seconds: float):
    """`videos` HowTo-like files of `seconds` each (kept in `folder` for the next run)."""
    from howto_prep.synthetic.corpus import generate_corpus

    started = time.perf_counter()
    info = generate_corpus(folder, videos=videos, seed=0, heldout_videos=0, min_seconds=seconds,
                           max_seconds=seconds, encoding="howto", workers=os.cpu_count() or 1)
    truth = json.loads(info.truth.read_text())["videos"]
    paths = [info.videos_dir / f"{video['video_id']}.mp4" for video in truth]
    durations = [video["duration"] for video in truth]
    formats = Counter(f"{v['width']}x{v['height']} {v['fps']:g} fps" for v in truth)
    kbits = 8 * sum(p.stat().st_size for p in paths) / sum(durations) / 1000
    print(f"corpus {folder}: {len(paths)} videos x {seconds:g} s (ready in {time.perf_counter() - started:.0f} s); "
          f"{', '.join(f'{n} x {k}' for k, n in sorted(formats.items()))}; {kbits:.0f} kbit/s average (video + audio)")
    return info, paths, durations


# --- rows limit / raw / task: one process per core ---------------------------------------------

def _worker_setup() -> None:
    os.environ["OMP_NUM_THREADS"] = "1"  # what Ray gives a num_cpus=1 task


def decord_soundtrack(path: str) -> None:
    """The 16 kHz mono soundtrack through decord (no audio stream: the video alone, as extract does)."""
    import decord

    try:
        decord.AudioReader(path, sample_rate=16_000, mono=True)
    except Exception as err:
        if "audio" not in str(err).lower():
            raise


def decord_frames(path: str, **size: int) -> None:
    """Every frame through decord, sequential, one thread; `width`/`height`: decord's own scaler."""
    import decord

    reader = decord.VideoReader(path, num_threads=1, **size)
    for _ in range(len(reader)):
        reader.next()


def decode_limit(path: str) -> float:
    """decord at native resolution, sequential, one thread, plus the 16 kHz mono soundtrack."""
    decord_frames(path)
    decord_soundtrack(path)
    return time.monotonic()


def decode_limit_scaled(path: str) -> float:
    """`decode_limit` with decord scaling every frame to the 3D size (short side 112) itself."""
    import av

    from howto_prep import schema
    from howto_prep.decode import scaled_size

    with av.open(path) as container:
        context = container.streams.video[0].codec_context
        width, height = scaled_size(context.width, context.height, schema.SIZE_3D)
    decord_frames(path, width=width, height=height)
    decord_soundtrack(path)
    return time.monotonic()


def decode_raw(path: str) -> float:
    """PyAV, every frame decoded and nothing converted, one thread; then the soundtrack as above."""
    import av

    with av.open(path) as container:
        stream = container.streams.video[0]
        stream.codec_context.thread_count = 1
        for _ in container.decode(stream):
            pass
    decord_soundtrack(path)
    return time.monotonic()


def decode_task(path: str) -> float:
    """What one Ray decode task runs for one video (all three outputs wanted), chunks dropped, with one
    H.264 decoder thread, as extract runs it while its tasks fill the cores (run.decoder_threads)."""
    from howto_prep.extract.ray_tasks import decode_stream

    for _ in decode_stream(path, True, True, True, decoder_threads=1):
        pass
    return time.monotonic()


def decode_task_auto_threads(path: str) -> float:
    """`decode_task` with FFmpeg's automatic decoder threads (cores + 1): extract's setting before."""
    from howto_prep.extract.ray_tasks import decode_stream

    for _ in decode_stream(path, True, True, True, decoder_threads=0):
        pass
    return time.monotonic()


def run_pool(function, paths: list[Path], processes: int) -> tuple[float, list[float], TreeSampler]:
    """(wall incl. process start, finish time of each video, CPU of the workers) with `processes`
    spawned workers."""
    started = time.monotonic()
    sampler = TreeSampler(os.getpid(), include_root=False, started=started)
    with ProcessPoolExecutor(max_workers=processes, mp_context=get_context("spawn"),
                             initializer=_worker_setup) as pool:
        finished = list(pool.map(function, [str(p) for p in paths]))
    wall = time.monotonic() - started
    return wall, [t - started for t in finished], sampler.stop()


# --- row extract: the whole command ------------------------------------------------------------

def run_extract(info, out: Path, gpus: int, models: str, gpu_share: float = 1.0) -> tuple[float, list[float], str, TreeSampler]:
    """(wall, finish time of each video, the command's own summary line); finish times come from its
    progress bar, refreshed on every video (TQDM_MINITERS=1, TQDM_MININTERVAL=0)."""
    weights = ["bench-zero", "bench-zero"] if models == "standin" else ["random", "random"]
    command = [sys.executable, "-m", "howto_prep.cli", "extract", "--videos", str(info.videos_dir),
               "--captions", str(info.captions), "--word2vec", str(info.word2vec), "--csv", str(info.csv),
               "--out", str(out), "--weights-2d", weights[0], "--weights-3d", weights[1], "--gpus", str(gpus),
               "--gpu-share", f"{gpu_share:g}"]
    env = dict(os.environ, TQDM_MINITERS="1", TQDM_MININTERVAL="0", RAY_ENABLE_UV_RUN_RUNTIME_ENV="0",
               HOWTO_PREP_BENCH_ONLY="1" if models == "standin" else "0")
    started = time.monotonic()
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    sampler = TreeSampler(process.pid, started=started, roles=EXTRACT_ROLES, provisional=("idle Ray workers",))
    sampler.gpu = GpuSampler(started) if gpus > 0 else None
    finished: list[float] = []
    text: list[str] = []

    def read_stderr() -> None:
        seen, buffer = 0, b""
        while chunk := process.stderr.read1(4096):
            now = time.monotonic() - started
            buffer += chunk
            *parts, buffer = re.split(rb"[\r\n]", buffer)
            for part in parts:
                line = part.decode(errors="replace")
                match = PROGRESS.search(line) if line.startswith("extract:") else None
                if match and int(match.group(1)) > seen:
                    finished.extend([now] * (int(match.group(1)) - seen))
                    seen = int(match.group(1))
                elif line.strip() and not match:
                    text.append(line)
        text.append(buffer.decode(errors="replace"))

    reader = threading.Thread(target=read_stderr, daemon=True)
    reader.start()
    stdout = process.stdout.read().decode()
    process.wait()
    reader.join()
    wall = time.monotonic() - started
    sampler.stop()
    if sampler.gpu is not None:
        sampler.gpu.stop()
    if process.returncode != 0:
        raise SystemExit(f"howto-prep extract failed (exit {process.returncode}):\n" + "\n".join(text[-40:]))
    summary = next((line for line in text if "video-s in" in line), "")
    return wall, finished, summary.strip() + ("\n" + stdout.strip() if stdout.strip() else ""), sampler


def check_shards(out: Path, durations: list[float]) -> None:
    """Every video is in the shards with the schema's row counts (a fast run that wrote nothing fails)."""
    from howto_prep import schema, shards
    from howto_prep.extract.sample import expected_rows

    samples = list(shards.iterate_samples(out))
    if len(samples) != len(durations):
        raise SystemExit(f"extract wrote {len(samples)} samples, expected {len(durations)}")
    for sample in samples:
        meta = sample[schema.META_FIELD]
        duration = (json.loads(meta) if isinstance(meta, (bytes, str)) else meta)["duration"]
        rows = expected_rows(duration)
        got = {name: len(sample[spec.field]) for name, spec in schema.FEATURES.items() if spec.field in sample
               and name in rows}
        if got != {name: rows[name] for name in got} or len(got) != 2:
            raise SystemExit(f"a sample has rows {got}, expected {rows}")


# --- the table --------------------------------------------------------------------------------

def steady_window(finished: list[float], durations: list[float], parallel: int) -> tuple[float, float, float]:
    """(start, end, video-seconds finished) of the steady window: from the `parallel`-th finish to the
    `parallel`-th from the end (to the last one when there are too few videos; see the docstring)."""
    order = sorted(range(len(finished)), key=finished.__getitem__)
    times = [finished[i] for i in order]
    if len(times) <= parallel:
        return float("nan"), float("nan"), float("nan")
    last = len(times) - parallel if len(times) - parallel > parallel else len(times) - 1
    return times[parallel - 1], times[last], sum(durations[i] for i in order[parallel:last + 1])


def steady_rate(finished: list[float], durations: list[float], parallel: int) -> float:
    """Video-seconds per second in the steady window."""
    start, end, work = steady_window(finished, durations, parallel)
    return work / max(end - start, 1e-9)


def steady_cpu(finished: list[float], durations: list[float], parallel: int, sampler: TreeSampler) -> float:
    """CPU seconds (every process of the row) per video-second in the steady window."""
    start, end, work = steady_window(finished, durations, parallel)
    return (sampler.cpu_at(end) - sampler.cpu_at(start)) / work


def where_the_time_goes(paths: list[Path], count: int) -> dict[str, float]:
    """ms per video-second of the decode task's parts, in this process (one decoder thread like the
    limit's, OMP_NUM_THREADS=1), on the first `count` videos."""
    _worker_setup()
    import av
    import numpy as np

    from howto_prep import decode
    from howto_prep.features.audio import read_audio
    from howto_prep.features.logmel import logmel


    parts = Counter()
    seconds = 0.0
    logmel(np.zeros(16_000, np.float32))  # first-call costs are start-up, not per video
    for path in paths[:count]:
        clock = time.perf_counter()
        source = decode.open_video(path, num_threads=1)
        info = decode.probe(source)
        parts["demux pass (exact timestamps)"] += time.perf_counter() - clock
        clock = time.perf_counter()
        audio = read_audio(path)
        parts["audio decode (PyAV, 16 kHz mono)"] += time.perf_counter() - clock
        clock = time.perf_counter()
        if audio is not None:
            logmel(audio)
        parts["log-mel"] += time.perf_counter() - clock
        clock = time.perf_counter()
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            stream.codec_context.thread_count = 1
            tracks = decode.make_tracks(source, stream, True, True, 10, 240)
            for _ in decode.decode_shown_frames(container, stream, source, tracks):
                pass
        decoding = time.perf_counter() - clock
        parts["H.264 decoding (frames no output shows skipped if non-reference)"] += decoding
        clock = time.perf_counter()
        for _ in decode.iterate_chunks(source, info):
            pass
        parts["frame choice + ffmpeg scale (rest of the frame pass)"] += time.perf_counter() - clock - decoding
        seconds += info.duration
    return {name: 1000 * value / seconds for name, value in parts.items()}


def gpu_count() -> int:
    try:
        import torch

        return torch.cuda.device_count()
    except Exception:
        return 0


def median(values: list[float]) -> float:
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2


def spread(values: list[float], unit: str = "x") -> str:
    """'median' for one round, 'median (min-max)' for several."""
    if len(values) == 1:
        return f"{values[0]:.2f}{unit}"
    return f"{median(values):.2f}{unit} ({min(values):.2f}-{max(values):.2f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=30.0, help="length of every video")
    parser.add_argument("--corpus", type=Path, help="corpus folder, kept for the next run (default: a temp dir)")
    parser.add_argument("--processes", type=int, default=os.cpu_count() or 1, help="decoders at once (default: cores)")
    parser.add_argument("--gpus", type=int, default=0, help="--gpus of the extract rows")
    parser.add_argument("--models", default="standin", help="extract rows: standin and/or random (real networks)")
    parser.add_argument("--scaling-gpus", type=int, default=0, help="also run the real networks with --gpus N "
                        "(on a box with fewer GPUs, N actors sharing one device: --gpu-share 1/N) and report "
                        "its rate over the --gpus row's")
    parser.add_argument("--rounds", type=int, default=1, help="run every row this many times, interleaved; "
                        "ratios are taken within a round (same conditions) and reported as median (min-max)")
    parser.add_argument("--skip", nargs="*", default=[], choices=[*ROWS, "breakdown"])
    parser.add_argument("--breakdown-videos", type=int, default=4)
    args = parser.parse_args()
    load = os.getloadavg()
    print(f"bench_decode_limit: {os.cpu_count()} CPUs, {args.processes} decoders at once, --gpus {args.gpus}, "
          f"{args.rounds} round(s); load average before: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    with tempfile.TemporaryDirectory() as tmp:
        info, paths, durations = howto_corpus(args.corpus or Path(tmp) / "corpus", args.videos, args.seconds)
        total = sum(durations)
        results: dict[str, list[tuple[float, list[float], int, TreeSampler]]] = {}
        functions = {"limit": decode_limit, "limit-scaled": decode_limit_scaled, "raw": decode_raw,
                     "task-auto": decode_task_auto_threads, "task": decode_task}
        summaries = {}
        for round_ in range(args.rounds):
            for row in ("limit", "limit-scaled", "raw", "task-auto", "task"):
                if row not in args.skip:
                    wall, finished, sampler = run_pool(functions[row], paths, args.processes)
                    results.setdefault(row, []).append((wall, finished, args.processes, sampler))
                    print(f"round {round_ + 1} {row}: {wall:.1f} s, load {os.getloadavg()[0]:.2f}", flush=True)
            if "extract" not in args.skip:
                for models in args.models.split(","):
                    out = Path(tmp) / f"shards-{models}-{round_}"
                    wall, finished, summaries[models], sampler = run_extract(info, out, args.gpus, models)
                    check_shards(out, durations)
                    parallel = max(1, args.processes - args.gpus)  # extract's default decode tasks in flight
                    results.setdefault(f"extract ({models})", []).append((wall, finished, parallel, sampler))
                    print(f"round {round_ + 1} extract ({models}): {wall:.1f} s, load {os.getloadavg()[0]:.2f}", flush=True)
                if args.scaling_gpus:
                    share = 1.0 if gpu_count() >= args.scaling_gpus else math.floor(100 / args.scaling_gpus) / 100
                    out = Path(tmp) / f"shards-scaling-{round_}"
                    try:  # the other rows are still worth printing if this one fails
                        wall, finished, summaries["scaling"], sampler = run_extract(info, out, args.scaling_gpus,
                                                                                    "random", share)
                        check_shards(out, durations)
                    except (SystemExit, Exception) as err:
                        print(f"round {round_ + 1} --gpus {args.scaling_gpus} --gpu-share {share:g} failed: {err}")
                        continue
                    row = f"extract (random, --gpus {args.scaling_gpus} --gpu-share {share:g})"
                    results.setdefault(row, []).append((wall, finished, max(1, args.processes - args.scaling_gpus), sampler))
                    print(f"round {round_ + 1} {row}: {wall:.1f} s, load {os.getloadavg()[0]:.2f}", flush=True)
        breakdown = None if "breakdown" in args.skip else where_the_time_goes(paths, args.breakdown_videos)
    load = os.getloadavg()
    names = {"limit": "decode limit: decord native RGB + audio",
             "limit-scaled": "decord scaling to the 3D size itself (one size, other pixels) + audio",
             "raw": "PyAV decode only (no pixels) + audio",
             "task-auto": "our decode task alone, FFmpeg's automatic decoder threads (before)",
             "task": "our decode task alone, 1 decoder thread (as extract now runs it)",
             "extract (standin)": "howto-prep extract, zero-cost model stand-in",
             "extract (random)": f"howto-prep extract, real networks (random weights), --gpus {args.gpus}"}
    steady = {row: [steady_rate(r[1], durations, r[2]) for r in runs] for row, runs in results.items()}
    cpu = {row: [steady_cpu(r[1], durations, r[2], r[3]) for r in runs] for row, runs in results.items()}

    def ratios(row: str, over: str = "limit", by_cpu: bool = False) -> list[float]:
        pairs = zip(cpu[over], cpu[row]) if by_cpu else zip(steady[row], steady[over])
        return [top / bottom if bottom else float("nan") for top, bottom in pairs]  # nan: a window too short

    print(f"\n{len(paths)} videos, {total:g} video-s, {args.rounds} round(s); load average after: "
          f"{load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    print("steady = from the p-th finish to the p-th from the end (p = decoders); CPU = every process of the row, same window; "
          "'by CPU' = the limit's CPU-s per video-s / the row's (the ratio on an otherwise idle box if the row "
          "kept its cores as busy as the limit does); values are medians over the rounds, ratios are taken "
          "within each round: median (min-max)\n")
    print("| row | decoders | wall s | video-s/s incl. start-up | start-up + tail s | steady video-s/s | "
          "steady / decode limit | CPU-s per video-s | by CPU / decode limit | cores busy |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for row, runs in results.items():
        wall, parallel = median([r[0] for r in runs]), runs[0][2]
        rate, per_cpu = median(steady[row]), median(cpu[row])
        lost = wall - total / rate
        ratio = spread(ratios(row)) if "limit" in steady else "-"
        by_cpu = spread(ratios(row, by_cpu=True)) if "limit" in cpu else "-"
        print(f"| {names.get(row, row)} | {parallel} | {wall:.1f} | {total / wall:.1f} | {lost:.1f} | "
              f"{rate:.1f} | {ratio} | {1000 * per_cpu:.1f} ms | {by_cpu} | {per_cpu * rate:.2f} |")
    scaling = [row for row in results if row.startswith("extract (random, --gpus")]
    if scaling and "extract (random)" in results:
        print(f"\nscaling: {scaling[0]} / extract --gpus {args.gpus}: "
              f"{spread(ratios(scaling[0], over='extract (random)'))} by wall")
    if "task" in results and "extract (standin)" in results:
        print(f"\npipeline efficiency (extract with the stand-in / our decode task alone): "
              f"{spread(ratios('extract (standin)', over='task'))} by wall, "
              f"{spread(ratios('extract (standin)', over='task', by_cpu=True))} by CPU")
    for row, runs in results.items():
        if row.startswith("extract"):
            by_role: Counter = Counter()
            work_total = 0.0
            for wall, finished, parallel, sampler in runs:
                start, end, work = steady_window(finished, durations, parallel)
                by_role.update(sampler.role_cpu_between(start, end))
                work_total += work
            print(f"\n{row}: CPU in the steady window by process, ms per video-s: " + ", ".join(
                f"{role} {1000 * seconds / work_total:.1f}" for role, seconds in by_role.most_common()))
            for round_, (wall, finished, parallel, sampler) in enumerate(runs):
                gpu = sampler.gpu
                start, end, _ = steady_window(finished, durations, parallel)
                if gpu is not None and gpu.summary(start, end):
                    print(f"{row}, round {round_ + 1}: {gpu.summary(start, end)}")
    for models, summary in summaries.items():
        print(f"\nextract ({models}) said (last round): {summary}")
    if breakdown:
        print(f"\nwhere the time goes in the decode task (first {args.breakdown_videos} videos, one process, "
              "one decoder thread; ms per video-second):\n")
        print("| part | ms per video-s | share |")
        print("|---|---|---|")
        whole = sum(breakdown.values())
        for name, ms in breakdown.items():
            print(f"| {name} | {ms:.1f} | {ms / whole:.0%} |")
        print(f"| all | {whole:.1f} | = {1000 / whole:.1f} video-s/s per core |")


if __name__ == "__main__":
    main()
