"""Benchmark: how much CPU does `howto-prep extract`'s driver spend per video-second?

One driver must keep up with a whole cluster: HowTo100M on one 8-GPU node needs ~2,800 video-s/s,
more on several nodes. Both designs run here on real Ray with the real pieces - the scheduling loop
(extract.pipeline), the model actor (ray_tasks, with the zero-cost stand-in of features.standin), the
sample builder (extract.sample, with a real-sized log-mel) and the shard writer (real tars) - fed by
fake decode streams that only sleep (`--chunk-s` per 10 video-s chunk) and yield small frames, so
that the driver's own cost is what is measured:

- before: the driver runs the loop, fetches every chunk's rows and the log-mel, builds each sample and
  writes the shards (what `howto-prep extract` did until the agents);
- after: the driver only hands video ids to the agents (extract.agent, one per model actor) and reads
  their small reports (extract.dispatch); the agents do all of the above beside their model actor.

Reported: CPU time of the driver's main thread (`time.thread_time`) and of its whole process
(`time.process_time`: Ray's own threads in the driver included) per video-second, and the video-s/s
at which the main thread would be saturated.

    python bench/bench_driver_scale.py [--streams 8 32] [--agents 4] [--chunks 8] [--chunk-s 0.25]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from howto_prep import schema, shards  # noqa: E402
from howto_prep.decode import FrameChunk  # noqa: E402
from howto_prep.extract.ray_tasks import LOGMEL_INFO, STARTED, start_actors  # noqa: E402
from howto_prep.features.standin import ENABLE_VARIABLE, STANDIN  # noqa: E402

VIDEO_S_PER_CHUNK = 10.0  # extract's chunk length (decode.DEFAULT_CHUNK_SECONDS)
NAMES = (schema.RESNET152.name, schema.RESNEXT101.name, schema.LOGMEL.name)


def fake_decode(path: str, want_1fps: bool = True, want_24fps: bool = True, want_audio: bool = True,
                decoder_threads: int = 0):
    """The decode task's protocol (STARTED, header, chunks) without decoding: `/bench/<chunks>/<chunk_s>/<id>`."""
    chunks, chunk_s = int(Path(path).parts[2]), float(Path(path).parts[3])
    duration = VIDEO_S_PER_CHUNK * chunks
    yield STARTED
    info = {"duration": duration, "fps": 25.0, "width": 4, "height": 4, "num_frames": int(25 * duration),
            "variable_frame_rate": False}
    logmel = np.zeros((int(100 * duration) + 1, schema.LOGMEL.dim), np.float32)  # a real-sized log-mel
    yield {"info": info, "logmel": logmel, "missing": {}, "audio_sample_rate": schema.AUDIO_SAMPLE_RATE}
    for index in range(chunks):
        time.sleep(chunk_s)
        yield FrameChunk(index, np.zeros((10, 4, 4, 3), np.uint8), np.zeros((240, 2, 2, 3), np.uint8))


def feature_info() -> dict:
    standin = {"model": "stand-in", "weights": STANDIN, "weights_sha256": None, "dim": 2048}
    return {schema.RESNET152.name: {**standin, "rate": 1.0}, schema.RESNEXT101.name: {**standin, "rate": 1.5},
            schema.LOGMEL.name: LOGMEL_INFO}


def videos(count: int, chunks: int, chunk_s: float, tag: str) -> list[tuple[str, Path]]:
    return [(f"{tag}{i}", Path(f"/bench/{chunks}/{chunk_s}/{tag}{i}.mp4")) for i in range(count)]


def before(streams: int, chunks: int, chunk_s: float, out: Path) -> tuple[int, float, float, float]:
    """The driver does everything: loop, fetch, build, write (the design before the agents)."""
    import ray

    from howto_prep.extract.pipeline import run_pipeline
    from howto_prep.extract.sample import build_sample

    task = ray.remote(num_cpus=0, num_returns="streaming", max_retries=0,
                      _generator_backpressure_num_objects=3)(fake_decode)
    actors = start_actors(list(NAMES[:2]), STANDIN, STANDIN, gpus=0, cpu_threads=1)
    ray.get([actor.info.remote() for actor in actors])
    bound = 2 * len(actors) + 1 + streams  # the models cost nothing here: let every stream flow
    info = feature_info()
    for _ in run_pipeline(videos(streams, 1, 0.0, "warm"), lambda p: task.remote(p), actors, max_videos=streams,
                          max_chunks=bound, timeout_s=120):
        pass  # start the worker processes first: start-up is not the loop's cost
    todo = videos(3 * streams, chunks, chunk_s, "b")
    started, thread0, process0 = time.perf_counter(), time.thread_time(), time.process_time()
    done = 0
    with shards.ShardWriter(out, 50 << 20) as writer:
        for outcome in run_pipeline(todo, lambda p: task.remote(p), actors, max_videos=streams, max_chunks=bound,
                                    timeout_s=120):
            sample = build_sample(outcome.video_id, outcome.path, outcome.header, outcome.chunks, list(NAMES), info,
                                  None, None)
            writer.write(sample.key, sample.fields, sample.token_ids, sample.duration)
            done += 1
    wall, thread, process = time.perf_counter() - started, time.thread_time() - thread0, time.process_time() - process0
    for actor in actors:
        ray.kill(actor)
    return done, wall, thread, process


def after(streams: int, agents: int, chunks: int, chunk_s: float, out: Path) -> tuple[int, float, float, float]:
    """The driver hands out ids and reads reports; `agents` agents (one per model actor) do the rest."""
    import ray

    from howto_prep.extract.agent import AgentSpec, ExtractAgent
    from howto_prep.extract.dispatch import AgentState, Dispatcher
    from howto_prep.extract.failure_storm import FailureStorm

    node = ray.get_runtime_context().get_node_id()
    task = ray.remote(num_cpus=0, num_returns="streaming", max_retries=0,
                      _generator_backpressure_num_objects=3)(fake_decode)
    actors = start_actors(list(NAMES[:2]), STANDIN, STANDIN, gpus=0, cpu_threads=1, nodes=[node] * agents)
    ray.get([actor.info.remote() for actor in actors])
    per_agent = max(1, streams // agents)
    remote_agent = ray.remote(ExtractAgent).options(num_cpus=0)
    states = []
    for actor, slot in zip(actors, shards.writer_slots(out, "bench", agents)):
        spec = AgentSpec(out=str(out), shard_size=50 << 20, prefix="bench", slot=slot, names=NAMES,
                         feature_info=feature_info(), max_videos=per_agent, max_chunks=per_agent + 3,
                         decoder_threads=1, decode_timeout_s=120, actor_timeout_s=120, actor_restarts=3,
                         want_1fps=True, want_24fps=True, want_audio=True, node_id=node)
        states.append(AgentState(handle=remote_agent.remote(spec, actor, task), node={"node": node, "host": "local"},
                                 slots=per_agent))
    ray.get([state.handle.poll.remote() for state in states])

    class Quiet:  # no progress bar in a benchmark table
        def update(self, _: int) -> None: ...
        def set_postfix_str(self, _: str) -> None: ...

    Dispatcher(out, states, FailureStorm(), Quiet()).run(
        [(vid, str(path), None) for vid, path in videos(streams, 1, 0.0, "warm")])  # worker start-up first
    todo = [(vid, str(path), None) for vid, path in videos(3 * streams, chunks, chunk_s, "a")]
    started, thread0, process0 = time.perf_counter(), time.thread_time(), time.process_time()
    totals = Dispatcher(out, states, FailureStorm(), Quiet()).run(todo)
    wall, thread, process = time.perf_counter() - started, time.thread_time() - thread0, time.process_time() - process0
    for state in states:
        ray.kill(state.handle)
    for actor in actors:
        ray.kill(actor)
    return totals.written, wall, thread, process


def row(design: str, streams: int, done: int, total: int, chunks: int, wall: float, thread: float,
        process: float) -> str:
    video_s = done * chunks * VIDEO_S_PER_CHUNK
    return (f"| {design} | {streams} | {done}/{total} | {video_s / wall:.0f} | {1000 * thread / video_s:.4f} | "
            f"{1000 * process / video_s:.4f} | {video_s / max(thread, 1e-9):,.0f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, nargs="+", default=[8, 32])
    parser.add_argument("--agents", type=int, default=4, help="agents (model actors) in the 'after' design")
    parser.add_argument("--chunks", type=int, default=8, help="chunks per video (10 video-s each)")
    parser.add_argument("--chunk-s", type=float, default=0.25, help="wall seconds a fake decoder takes per chunk")
    args = parser.parse_args()
    import ray

    os.environ[ENABLE_VARIABLE] = "1"  # the stand-in's second key, inherited by Ray's workers
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    print(f"{args.chunks} chunks of {VIDEO_S_PER_CHUNK:g} video-s per video, {args.chunk_s:g} s per chunk per "
          f"stream; samples with 2D, 3D and log-mel rows written into real shards\n")
    print("| design | decode streams at once | videos done | video-s/s | driver main thread, ms CPU per video-s | "
          "driver process, ms CPU per video-s | video-s/s at which the main thread would be saturated |")
    print("|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory(prefix="driver-bench-") as folder:
        for index, streams in enumerate(args.streams):
            done, wall, thread, process = before(streams, args.chunks, args.chunk_s, Path(folder) / f"before{index}")
            print(row("before: the driver fetches, builds and writes", streams, done, 3 * streams, args.chunks,
                      wall, thread, process), flush=True)
            done, wall, thread, process = after(streams, args.agents, args.chunks, args.chunk_s,
                                                Path(folder) / f"after{index}")
            print(row(f"after: {args.agents} agents", streams, done, 3 * streams, args.chunks, wall, thread, process),
                  flush=True)


if __name__ == "__main__":
    main()
