"""One extract agent per model actor: the data path of `howto-prep extract`, beside the model it feeds.

An agent runs on its model actor's node and does there what the driver used to do for every chunk:
it starts the videos' decode streams (pinned to its node, so frames never cross the network), hands
their chunks to its model actor, builds each finished video's sample (captions read from the
memory-mapped caption index, tokens from the memory-mapped word2vec table) and writes it into its
own shards (its own slot of shard indices, `shards.WriterSlot`). The driver only hands it video ids
and paths and reads back small outcomes: which videos failed and why, and which shards were committed.

The work runs on a thread of the actor process, so `submit` and `poll` answer at once while it runs.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from howto_prep.errors import SystemFault, ToolError
from howto_prep.object_store import is_url

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class AgentSpec:
    """What an agent needs, sent once when it starts (small; no secrets, no data)."""

    out: str
    shard_size: int
    prefix: str
    slot: Any  # shards.WriterSlot
    names: tuple[str, ...]
    feature_info: dict
    max_videos: int
    max_chunks: int
    decoder_threads: int
    decode_timeout_s: float
    actor_timeout_s: float
    actor_restarts: int
    want_1fps: bool
    want_24fps: bool
    want_audio: bool
    captions: Any = None  # a checked CaptionIndex (sent as its location), or a small dict, or None
    word2vec: Any = None  # a checked Word2VecTable (sent as its location), or None
    node_id: str | None = None  # pin the decode tasks here (the model actor's node)
    publisher: Any = None  # shard_store.ShardPublisher for an --out URL (sent as URL + work folder + lock token)


@dataclass
class Report:
    """What an agent tells the driver at one poll: small records only."""

    outcomes: list[tuple[str, str | None, str | None, float, bool]] = field(default_factory=list)
    committed: list[dict] = field(default_factory=list)  # per-shard records (keys, count, video_seconds...)
    fault: str | None = None  # a SystemFault stopped this agent
    idle: bool = True  # nothing queued, running or uncommitted (the round was closed)
    queued: int = 0  # videos submitted and not yet started
    chunk_bytes: int = 0  # frame chunk bytes handed to the model actor (since the last poll)
    cross_node_bytes: int = 0  # of which were not on this agent's node (decode pinned elsewhere: should stay 0)


class ExtractAgent:
    """The per-model-actor data path (wrapped with ray.remote by the driver; plain in the benchmark)."""

    def __init__(self, spec: AgentSpec, actor: Any, decode_task: Any = None) -> None:
        from howto_prep.extract.ray_tasks import remote_decode
        from howto_prep.extract.run import MAX_CALLS, STREAM_BACKPRESSURE

        limit_file_size_for_tests()
        self.spec = spec
        self.actor = actor
        if decode_task is None:
            decode_task = remote_decode(MAX_CALLS, STREAM_BACKPRESSURE)
        if spec.node_id:
            from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

            decode_task = decode_task.options(scheduling_strategy=NodeAffinitySchedulingStrategy(spec.node_id,
                                                                                                 soft=False))
        self.decode_task = decode_task
        self.captions = spec.captions  # memory-mapped here on unpickling (CaptionIndex.__reduce__)
        self.vocab = spec.word2vec
        self.queue: collections.deque[tuple[str, str, dict | None]] = collections.deque()
        self.lock = threading.Lock()
        self.wake = threading.Condition(self.lock)
        self.report = Report()
        self.finishing = self.stopping = False
        self.csv_rows: dict[str, dict | None] = {}
        self.thread = threading.Thread(target=self._run, name="extract-agent", daemon=True)
        self.thread.start()

    def node(self) -> dict:
        """Where this agent runs (Ray node id and IP): the driver's per-node summary."""
        import ray

        return {"node": ray.get_runtime_context().get_node_id(), "host": ray.util.get_node_ip_address()}

    def submit(self, videos: list[tuple[str, str, dict | None]]) -> int:
        """Queue (video id, file, HowTo100M CSV columns); returns how many wait to start."""
        with self.wake:
            self.queue.extend(videos)
            self.report.idle = False
            self.wake.notify()
            return len(self.queue)

    def poll(self) -> Report:
        """Everything since the last poll (and hand it over: the driver records each item once)."""
        with self.lock:
            report, self.report = self.report, Report(idle=self.report.idle, fault=self.report.fault)
            report.queued = len(self.queue)
            return report

    def finish(self) -> None:
        """Close the round: finish the queued videos, close the open shard, then report idle (nothing of
        this agent is left uncommitted). A later `submit` starts a new round (the videos of a lost node)."""
        with self.wake:
            self.finishing = True
            self.wake.notify()

    def stop(self) -> None:
        """The run stops (a fault elsewhere, an interrupt): start nothing new, keep the whole samples written."""
        with self.wake:
            self.stopping = self.finishing = True
            self.queue.clear()
            self.wake.notify()

    def _feed(self) -> Iterator[tuple[str, Path] | None]:
        """The live feed of run_pipeline: the next queued video, None while none is queued; ends when the
        round is closed and nothing is queued."""
        while True:
            with self.lock:
                if self.queue:
                    video_id, path, row = self.queue.popleft()
                    self.csv_rows[video_id] = row
                elif self.finishing:
                    return
                else:
                    video_id = None
            yield None if video_id is None else (video_id, path if is_url(path) else Path(path))

    def _run(self) -> None:
        from howto_prep import shards

        parts = None
        if self.vocab is not None:
            from howto_prep.features.tokens import VocabularyParts

            parts = VocabularyParts(self.vocab, Path(self.spec.out))
        publisher = self.spec.publisher
        writer = shards.ShardWriter(Path(self.spec.out), self.spec.shard_size, self.spec.prefix,
                                    before_json=parts.add if parts else None, slot=self.spec.slot,
                                    after_commit=publisher.publish if publisher is not None else None)
        try:
            while not self.stopping:
                with self.wake:
                    self.wake.wait_for(lambda: self.queue or self.finishing)
                self._work(writer)
                writer.close_shard()
                if publisher is not None:
                    publisher.flush()  # the round ends with its shards on the store
                self._hand_over(writer)
                with self.lock:
                    if not self.queue:
                        self.report.idle = True
                    self.finishing = self.stopping
        except ToolError as err:
            writer.keep_after_fault()
            self._fault(str(err))
        except Exception as err:  # our code failed: never a video's fault
            writer.keep_after_fault()
            self._fault(f"extract agent failed: {type(err).__name__}: {' '.join(str(err).split())[:300]}")
        finally:
            writer.keep_after_fault()  # stopped: the whole samples written so far stay
            if publisher is not None:
                try:
                    publisher.flush()
                except ToolError as err:
                    if self.report.fault is None:
                        self._fault(str(err))
            self._hand_over(writer)
            with self.lock:
                self.report.idle = True

    def _hand_over(self, writer) -> None:  # type: ignore[no-untyped-def]
        """Move the writer's committed shard records into the next report."""
        with self.lock:
            self.report.committed.extend(writer.committed)
        writer.committed.clear()

    def _fault(self, text: str) -> None:
        with self.lock:
            self.report.fault = text

    def _work(self, writer) -> None:  # type: ignore[no-untyped-def]
        from howto_prep.extract.pipeline import run_pipeline
        from howto_prep.extract.sample import build_sample

        spec = self.spec
        decode = self._decode_function()
        outcomes = run_pipeline(self._feed(), decode, [self.actor] if self.actor is not None else [],
                                max_videos=spec.max_videos, max_chunks=spec.max_chunks,
                                timeout_s=spec.decode_timeout_s, actor_timeout_s=spec.actor_timeout_s,
                                actor_restarts=spec.actor_restarts, on_chunk=self._count_chunk)
        for outcome in outcomes:
            if self.stopping:
                return
            row = self.csv_rows.pop(outcome.video_id, None)
            if outcome.kind is not None:
                self._add_outcome((outcome.video_id, outcome.kind.value, outcome.error, 0.0, False))
                continue
            try:
                captions = self.captions.get(outcome.video_id) if self.captions is not None else None
                sample = build_sample(outcome.video_id, outcome.path, outcome.header, outcome.chunks,
                                      list(spec.names), spec.feature_info, captions, row, self.vocab)
            except Exception as err:  # our code failed on a decoded video: a bug, not the video's fault
                raise SystemFault(f"assembling {outcome.video_id}'s sample failed: "
                                  f"{' '.join(str(err).split())[:300]}") from None
            writer.write(sample.key, sample.fields, sample.token_ids, sample.duration)
            self._add_outcome((outcome.video_id, None, None, sample.duration, bool(sample.notes)))
            if writer.committed:
                self._hand_over(writer)

    def _count_chunk(self, ref: Any) -> None:
        """Where the chunk is: bytes on another node would be copied there to reach the model actor."""
        from ray.experimental import get_object_locations

        location = get_object_locations([ref]).get(ref) or {}
        size = int(location.get("object_size") or 0)
        with self.lock:
            self.report.chunk_bytes += size
            if self.spec.node_id and self.spec.node_id not in (location.get("node_ids") or []):
                self.report.cross_node_bytes += size

    def _add_outcome(self, outcome: tuple[str, str | None, str | None, float, bool]) -> None:
        with self.lock:
            self.report.outcomes.append(outcome)

    def _decode_function(self):  # type: ignore[no-untyped-def]
        """decode(path) -> the video's decode stream (on this agent's node when the spec names one)."""
        spec, task = self.spec, self.decode_task
        return lambda path: task.remote(path, spec.want_1fps, spec.want_24fps, spec.want_audio,
                                        decoder_threads=spec.decoder_threads)


def limit_file_size_for_tests() -> None:
    """Fault injection (tests): with HOWTO_PREP_FAULT_FILE_SIZE_LIMIT=BYTES the agent's process runs under
    that RLIMIT_FSIZE (SIGXFSZ ignored, as Python does), so a shard growing past it fails with a real
    EFBIG from the kernel, as on a filesystem with a file size limit. Only here: Ray's object store
    needs large files, so the limit cannot be put on the whole cluster."""
    limit = os.environ.get("HOWTO_PREP_FAULT_FILE_SIZE_LIMIT")
    if limit:
        import resource
        import signal

        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (int(limit), int(limit)))


def with_node(slot: Any, node: dict) -> Any:
    """The writer slot of an agent, its shard records naming the node that wrote them."""
    return dataclasses.replace(slot, record={**slot.record, **node})
