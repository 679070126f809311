"""Benchmark: does `howto-prep extract`'s driver keep up with many decode streams at once?

An 8-GPU node runs ~120 decode streams into one driver. This bench feeds the real scheduling loop
(howto_prep.extract.pipeline.run_pipeline, real Ray) from N concurrent fake decode streams that only
sleep (`--chunk-s` seconds per 10 video-s chunk, no CPU) and yield tiny chunks to extract's own CPU
model actor (ray_tasks.start_actors) running the zero-cost stand-in (features.standin), so the
driver's own cost is what is measured: the CPU time of its main thread (the loop, Ray's waits and
fetches) per video-second, and how busy that thread is. Shard writing is not included (the whole
command's driver CPU is in bench_decode_limit.py's per-process breakdown).

    python bench/bench_driver_scale.py [--streams 8 16 48] [--chunks 8] [--chunk-s 0.25]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from howto_prep import schema  # noqa: E402
from howto_prep.decode import FrameChunk  # noqa: E402
from howto_prep.extract.pipeline import run_pipeline  # noqa: E402
from howto_prep.extract.ray_tasks import STARTED, start_actors  # noqa: E402
from howto_prep.features.standin import ENABLE_VARIABLE, STANDIN  # noqa: E402

VIDEO_S_PER_CHUNK = 10.0  # extract's chunk length (decode.DEFAULT_CHUNK_SECONDS)


def fake_decode(path: str, chunks: int, chunk_s: float):
    """The decode task's protocol (STARTED, header, chunks) with no decoding: sleeps, tiny frames."""
    yield STARTED
    yield {"info": {"duration": VIDEO_S_PER_CHUNK * chunks}, "logmel": None, "missing": {}, "audio_sample_rate": None}
    for index in range(chunks):
        time.sleep(chunk_s)
        yield FrameChunk(index, np.zeros((10, 4, 4, 3), np.uint8), np.zeros((240, 2, 2, 3), np.uint8))


def measure(streams: int, chunks: int, chunk_s: float) -> str:
    import ray

    task = ray.remote(num_cpus=0, num_returns="streaming", max_retries=0,
                      _generator_backpressure_num_objects=3)(fake_decode)
    actors = start_actors([schema.RESNET152.name, schema.RESNEXT101.name], STANDIN, STANDIN, gpus=0, cpu_threads=1)
    ray.get([actor.info.remote() for actor in actors])
    bound = 2 * len(actors) + 1 + streams  # the models cost nothing here: let every stream flow
    videos = [(f"v{i}", Path(f"/bench/v{i}.mp4")) for i in range(3 * streams)]
    for _ in run_pipeline(videos[:streams], lambda p: task.remote(p, 1, 0.0), actors, max_videos=streams,
                          max_chunks=bound, timeout_s=120):
        pass  # start the worker processes first: start-up is not the loop's cost
    started, cpu_started = time.perf_counter(), time.thread_time()
    done = sum(outcome.kind is None for outcome in run_pipeline(
        videos, lambda p: task.remote(p, chunks, chunk_s), actors, max_videos=streams, max_chunks=bound, timeout_s=120))
    wall, cpu = time.perf_counter() - started, time.thread_time() - cpu_started
    video_s = done * chunks * VIDEO_S_PER_CHUNK
    ceiling = video_s / cpu
    for actor in actors:
        ray.kill(actor)
    return (f"| {streams} | {done}/{len(videos)} | {video_s / wall:.0f} | {1000 * cpu / video_s:.3f} | "
            f"{cpu / wall:.0%} | {ceiling:,.0f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, nargs="+", default=[8, 16, 48])
    parser.add_argument("--chunks", type=int, default=8, help="chunks per video (10 video-s each)")
    parser.add_argument("--chunk-s", type=float, default=0.25, help="wall seconds a fake decoder takes per chunk")
    args = parser.parse_args()
    import ray

    os.environ[ENABLE_VARIABLE] = "1"  # the stand-in's second key, inherited by Ray's workers
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
    print(f"{args.chunks} chunks of {VIDEO_S_PER_CHUNK:g} video-s per video, {args.chunk_s:g} s per chunk per stream\n")
    print("| streams at once | videos done | video-s/s | driver main thread, ms per video-s | thread busy | "
          "video-s/s at which the thread would be saturated |")
    print("|---|---|---|---|---|---|")
    for streams in args.streams:
        print(measure(streams, args.chunks, args.chunk_s), flush=True)


if __name__ == "__main__":
    main()
