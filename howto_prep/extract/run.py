"""Running an extraction: start Ray and the model actors, stream the videos through the pipeline, and
write each finished video's sample as it arrives (the driver is the shard set's only writer)."""

from __future__ import annotations

import logging
import math
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from howto_prep import schema
from howto_prep.errors import SystemFault, UserError
from howto_prep.extract.failure_storm import FailureStorm
from howto_prep.extract.ray_tasks import ACTOR_RESTARTS
from howto_prep.extract.plan import ExtractPlan
from howto_prep.shards import ShardWriter

if TYPE_CHECKING:
    from howto_prep.features.tokens import Word2VecVocabulary

logger = logging.getLogger(__name__)

MAX_CALLS = 50  # decode worker processes are recycled after this many videos
STREAM_BACKPRESSURE = 2  # unconsumed chunks a decode stream may hold


def run_work(plan: ExtractPlan, todo: list[tuple[str, Path]], writer: ShardWriter, captions: dict[str, dict],
             csv_rows: dict[str, dict], vocab: Word2VecVocabulary | None) -> int:
    """Extract `todo` into `writer`; failures go to failures.jsonl. Returns how many videos had no captions."""
    from tqdm import tqdm

    from howto_prep import shards
    from howto_prep.extract.pipeline import run_pipeline
    from howto_prep.extract.sample import build_sample

    names = list(plan.features)
    started = time.perf_counter()
    actors, feature_info, decode = start_ray(plan)
    ready = time.perf_counter()
    written, video_seconds, notes = 0, 0.0, 0
    cpus = _ray_cpus()
    max_videos = plan.workers or max(1, int(cpus) - plan.gpus)
    threads = decoder_threads(cpus, max_videos, len(todo))
    outcomes = run_pipeline(todo, lambda path: decode(path, threads), actors, max_videos=max_videos,
                            max_chunks=2 * len(actors) + 1, timeout_s=plan.decode_timeout_s,
                            actor_timeout_s=plan.actor_timeout_s, actor_restarts=ACTOR_RESTARTS)
    storm = FailureStorm(plan.failure_storm)
    with tqdm(total=len(todo), unit="video", desc="extract", file=sys.stderr) as bar, writer:
        try:
            for outcome in outcomes:
                bar.update(1)
                if outcome.kind is not None:
                    for video_id, kind, error in storm.failed(outcome.video_id, outcome.kind, outcome.error or ""):
                        shards.record_failure(plan.out, video_id, kind, error)
                    bar.set_postfix_str(f"last failure: {outcome.video_id} ({outcome.kind})")
                    continue
                try:
                    sample = build_sample(outcome.video_id, outcome.path, outcome.header, outcome.chunks, names,
                                          feature_info, captions.get(outcome.video_id),
                                          csv_rows.get(outcome.video_id), vocab)
                except Exception as err:  # our code failed on a decoded video: a bug, not the video's fault
                    raise SystemFault(f"assembling {outcome.video_id}'s sample failed: "
                                      f"{' '.join(str(err).split())[:300]}") from None
                for video_id, kind, error in storm.succeeded():
                    shards.record_failure(plan.out, video_id, kind, error)
                notes += bool(sample.notes)
                writer.write(sample.key, sample.fields, sample.token_ids, sample.duration)
                written, video_seconds = written + 1, video_seconds + sample.duration
            for video_id, kind, error in storm.succeeded():  # the run ended: what is held back was real
                shards.record_failure(plan.out, video_id, kind, error)
        except SystemFault:  # storage faults included: the shard writer and failures.jsonl raise them
            writer.keep_after_fault()  # every whole sample written so far, if the disk lets us; rerun redoes the rest
            raise
    elapsed = time.perf_counter() - ready
    logger.info("extract: %d videos, %.0f video-s in %.1f s (%.2f video-s/s) after %.1f s of start-up (Ray and %s)",
                written, video_seconds, elapsed, video_seconds / max(elapsed, 1e-9), ready - started,
                actor_layout(plan, len(actors)))
    return notes


def actor_layout(plan: ExtractPlan, actors: int) -> str:
    """'3 model actors, 0.33 GPU each' / '1 model actor, on the CPU' / 'no model actor'."""
    if not actors:
        return "no model actor"
    noun = "model actor" if actors == 1 else "model actors"
    where = f"{plan.gpu_share:g} GPU each" if plan.gpus else "on the CPU"
    return f"{actors} {noun}, {where}"


MAX_DECODER_THREADS = 16  # FFmpeg's own cap for automatic threads


def decoder_threads(cpus: float, max_videos: int, videos: int) -> int:
    """H.264 decoder threads per decode task: 1 while the tasks fill the CPU slots (one decoder per core;
    FFmpeg's automatic frame threads cost about 6% more CPU per video-second there:
    bench/bench_decode_limit.py), else the spare cores split between the videos (one long video)."""
    running = max(1, min(max_videos, videos))
    return max(1, min(MAX_DECODER_THREADS, int(cpus) // running))


def start_ray(plan: ExtractPlan) -> tuple[list, dict[str, dict], Callable[..., Any]]:
    """Start (or join) Ray, the model actors and the decode task; return (actors, feature info, decode),
    where decode(path, decoder_threads=0) starts a video's decode stream."""
    import ray

    from howto_prep.cluster import init_ray, task_failure
    from howto_prep.extract.ray_tasks import LOGMEL_INFO, default_cpu_threads, remote_decode, start_actors

    os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
    init_ray(plan.address, num_cpus=None if plan.address else max(2, os.cpu_count() or 1))
    available = float(ray.cluster_resources().get("GPU", 0))
    if plan.gpus and available + 1e-6 < plan.gpus * plan.gpu_share:
        share = math.floor(100 / plan.gpus) / 100
        hint = f"; --gpu-share {share:g} puts {plan.gpus} actors on one device" if available >= 1 and share else ""
        raise UserError(f"--gpus {plan.gpus} --gpu-share {plan.gpu_share:g} needs {plan.gpus * plan.gpu_share:g} "
                        f"GPU(s); the Ray cluster has {available:g}{hint}")
    visual = plan.visual_features
    actors = start_actors(visual, plan.weights_2d, plan.weights_3d, plan.gpus, default_cpu_threads(),
                          plan.gpu_share) if visual else []
    try:
        feature_info = ray.get(actors[0].info.remote()) if actors else {}
    except Exception as err:
        _, text = task_failure(err)
        raise UserError(f"the feature models could not be loaded: {text}") from None
    feature_info[schema.LOGMEL.name] = LOGMEL_INFO
    feature_info[schema.TOKENS_FEATURE] = {"model": "word2vec ids, regex [\\w']+",
                                           "weights": Path(plan.word2vec).name if plan.word2vec else None,
                                           "rate": None, "dim": schema.WORD_DIM}
    task = remote_decode(MAX_CALLS, STREAM_BACKPRESSURE)
    want_1, want_24 = plan.wants(schema.RESNET152.name), plan.wants(schema.RESNEXT101.name)
    want_audio = plan.wants(schema.LOGMEL.name)
    return actors, feature_info, lambda path, threads=0: task.remote(path, want_1, want_24, want_audio,
                                                                     decoder_threads=threads)


def _ray_cpus() -> float:
    import ray

    return ray.cluster_resources().get("CPU", 1)
