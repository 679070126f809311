"""The Ray scheduling loop of `howto-prep extract`: decode streams -> model actors -> results in the driver.

Bounds: at most `max_videos` decode streams at once, each holding at most `backpressure` unconsumed
chunks, and at most `max_chunks` chunks queued on the actors in total, so memory does not depend on
how long the videos are. A video whose stream has ended frees its decode slot at once, while the
models finish its last chunks. A stream that produces nothing for `timeout_s` is cancelled (its worker
process is killed) and the video is recorded as DECODE_TIMEOUT.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np

from howto_prep.cluster import task_failure
from howto_prep.errors import FailureKind, SystemFault


@dataclass
class Outcome:
    """Result of one video: `header` and `chunks` on success, else `kind` and `error`."""

    video_id: str
    path: Path
    header: dict | None = None
    chunks: dict[int, dict[str, np.ndarray]] = field(default_factory=dict)
    kind: FailureKind | None = None
    error: str | None = None


@dataclass
class _Job:
    video_id: str
    path: Path
    stream: Any
    waiting_since: float | None = None  # None until the decode task runs (worker start-up is no hang)
    started: bool = False
    header: dict | None = None
    pending: dict = field(default_factory=dict)  # embed ObjectRef -> actor index
    sent: dict = field(default_factory=dict)  # embed ObjectRef -> when it was sent (or its actor restarted)
    chunks: dict = field(default_factory=dict)
    stream_done: bool = False


IDLE_WAIT_S = 0.05  # how often an idle loop asks its live feed for videos again


def run_pipeline(videos: Iterable[tuple[str, Path] | None], decode: Callable[[str], Any], actors: list,
                 max_videos: int, max_chunks: int, timeout_s: float,
                 actor_timeout_s: float | None = None, actor_restarts: int = 3,
                 on_chunk: Callable[[Any], None] | None = None) -> Iterator[Outcome]:
    """Yield one Outcome per video, in completion order; no video's failure stops the others.

    `videos` may be a live feed: None from it means "nothing queued now" (the loop goes on with what
    it has and asks again); the loop ends when the feed is exhausted and every video has its outcome.

    A model actor that returns nothing for `actor_timeout_s` while it has work is killed; Ray restarts
    it and sends its pending chunks again. After `actor_restarts` such kills the run stops
    (SystemFault): the actor, not the videos, is at fault. `on_chunk(ref)` sees each chunk's ObjectRef
    before it goes to an actor (extract's agents count the bytes that would cross nodes)."""
    import ray

    actor_timeout_s = timeout_s if actor_timeout_s is None else actor_timeout_s
    kills = [0] * len(actors)
    todo = iter(videos)
    active: dict[str, _Job] = {}
    load = [0] * len(actors)
    exhausted = False
    while True:
        # A slot is a decoder: it takes the next video once its stream has ended, while the models
        # may still hold the stream's last chunks (memory stays bounded: those are within max_chunks).
        while not exhausted and sum(not job.stream_done for job in active.values()) < max(1, max_videos):
            try:
                item = next(todo)
            except StopIteration:
                exhausted = True
                break
            if item is None:  # a live feed with nothing queued right now (extract's agents): ask again later
                break
            video_id, path = item
            active[video_id] = _Job(video_id, path, decode(str(path)))
        if not active:
            if exhausted:
                return
            time.sleep(IDLE_WAIT_S)
            continue
        queued = sum(load)
        now = time.monotonic()
        streams = []
        for job in active.values():
            if job.stream_done:
                continue
            if job.header is not None and queued >= max_chunks:
                job.waiting_since = now  # throttled by us, not hung
                continue
            streams.append(job.stream)
        embeds = [ref for job in active.values() for ref in job.pending]
        ready, _ = ray.wait(streams + embeds, num_returns=1, timeout=0.5)
        finished: list[Outcome] = []
        for item in ready:
            job = next(j for j in active.values() if item is j.stream or item in j.pending)
            try:
                if item is job.stream:
                    _advance_stream(job, actors, load, on_chunk)
                else:
                    index, rows = ray.get(item)
                    load[job.pending.pop(item)] -= 1
                    job.sent.pop(item, None)
                    job.chunks[index] = rows
            except Exception as err:  # an Outcome either way: the driver decides whose fault it is
                kind, text = task_failure(err)
                if item is job.stream and kind == FailureKind.WORKER_DIED:
                    kind = FailureKind.DECODER_CRASHED  # the decode process died on this file
                elif item is not job.stream:
                    text = f"feature model actor: {text}"
                finished.append(_drop(job, active, load, kind, text))
                continue
            if job.stream_done and not job.pending:
                del active[job.video_id]
                finished.append(Outcome(job.video_id, job.path, header=job.header, chunks=job.chunks))
        now = time.monotonic()
        restart_hung_actors(active, actors, kills, actor_timeout_s, actor_restarts, now)
        for job in list(active.values()):
            if not job.stream_done and job.waiting_since is not None and now - job.waiting_since > timeout_s:
                ray.cancel(job.stream, force=True)
                finished.append(_drop(job, active, load, FailureKind.DECODE_TIMEOUT,
                                      f"decoding produced nothing for {timeout_s:g} s; the task was killed"))
        yield from finished


def _advance_stream(job: _Job, actors: list, load: list[int], on_chunk: Callable[[Any], None] | None) -> None:
    """Take the stream's next item: the header (fetched), or a chunk (sent to the least busy actor)."""
    import ray

    job.waiting_since = time.monotonic()
    try:
        ref = next(job.stream)
    except StopIteration:
        job.stream_done = True
        return
    if not job.started:
        job.started = True  # the STARTED marker: the clock for a hung decode starts now
        return
    if job.header is None:
        job.header = ray.get(ref)
        return
    if on_chunk is not None:
        on_chunk(ref)
    chosen = min(range(len(actors)), key=lambda i: load[i])
    load[chosen] += 1
    embed = actors[chosen].embed.remote(ref)
    job.pending[embed] = chosen
    job.sent[embed] = time.monotonic()


RESTART_WAIT_S = 600.0  # how long a killed actor may take to come back (model weights load)


def restart_hung_actors(active: dict[str, _Job], actors: list, kills: list[int], timeout_s: float,
                        restarts: int, now: float) -> None:
    """Kill an actor whose oldest pending chunk waited `timeout_s` (Ray restarts it and resends its
    chunks); SystemFault once an actor needed more than `restarts` kills."""
    import ray

    for index, actor in enumerate(actors):
        waiting = [(job, ref) for job in active.values() for ref, owner in job.pending.items() if owner == index]
        if not waiting or now - min(job.sent[ref] for job, ref in waiting) <= timeout_s:
            continue
        if kills[index] >= restarts:
            raise SystemFault(f"feature model actor {index} answered nothing for {timeout_s:g} s after "
                              f"{kills[index]} restarts; the finished shards are kept, rerun to continue")
        kills[index] += 1
        ray.kill(actor, no_restart=False)
        try:  # wait until Ray has restarted it (models loaded): restart time is not hang time
            ray.get(actor.info.remote(), timeout=max(timeout_s, RESTART_WAIT_S))
        except Exception as err:
            raise SystemFault(f"feature model actor {index} did not come back after a restart: "
                              f"{' '.join(str(err).split())[:300]}") from None
        ready = time.monotonic()
        for job, ref in waiting:
            job.sent[ref] = ready  # the restarted actor gets the full time again


def _drop(job: _Job, active: dict, load: list[int], kind: FailureKind, text: str) -> Outcome:
    import ray

    for ref, actor_index in job.pending.items():
        load[actor_index] -= 1
        ray.cancel(ref)
    job.pending.clear()
    job.sent.clear()
    active.pop(job.video_id, None)
    return Outcome(job.video_id, job.path, kind=kind, error=text)
