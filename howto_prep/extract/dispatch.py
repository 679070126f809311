"""The driver of `howto-prep extract`: hand videos to the agents, record outcomes, survive a lost node.

The driver holds no feature row: per video it sends (id, file, CSV columns) to an agent and gets back
one small outcome; per shard, the shard's record. It alone writes failures.jsonl (through the failure
storm rule) and decides when the run is over. A video is done only when a committed shard holds it:
when an agent dies (its node removed, its process killed), every video it had that no per-shard JSON
on disk holds is handed to the agents still alive, so nothing is lost and nothing is written twice.
"""

from __future__ import annotations

import logging
import sys
import time
from collections import Counter, defaultdict, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from howto_prep import shards
from howto_prep.errors import SystemFault, failure_kind
from howto_prep.extract.failure_storm import FailureStorm

logger = logging.getLogger(__name__)

POLL_S = 0.2  # how often the driver collects the agents' reports
POLL_TIMEOUT_S = 120.0  # an agent that does not answer a poll for this long is lost
STOP_WAIT_S = 30.0  # how long a stopping run waits for the agents to close their shards


@dataclass
class AgentState:
    """The driver's view of one agent: what it was given and has not yet committed or failed."""

    handle: Any
    node: dict
    slots: int
    given: dict[str, tuple[str, str, dict | None]] = field(default_factory=dict)  # not yet committed or failed
    written: set[str] = field(default_factory=set)  # written into a shard that is still open
    queued: int = 0
    idle: bool = True
    alive: bool = True
    videos: int = 0
    video_seconds: float = 0.0
    chunk_bytes: int = 0
    cross_node_bytes: int = 0

    @property
    def running(self) -> int:
        """Videos given that have no outcome yet."""
        return len(self.given) - len(self.written)


@dataclass
class RunTotals:
    written: int = 0
    video_seconds: float = 0.0
    notes: int = 0
    redone: int = 0


class Dispatcher:
    """Feeds `todo` to the agents and records what comes back (see the module docstring)."""

    def __init__(self, out: Path, agents: list[AgentState], storm: FailureStorm, progress: Any) -> None:
        self.out, self.agents, self.storm, self.progress = out, agents, storm, progress
        self.todo: deque[tuple[str, str, dict | None]] = deque()
        self.totals = RunTotals()

    def run(self, todo: list[tuple[str, str, dict | None]]) -> RunTotals:
        """Until every video of `todo` is in a committed shard or recorded as failed."""
        self.todo.extend(todo)
        closing = False
        while True:
            live = [agent for agent in self.agents if agent.alive]
            if not live:
                raise SystemFault("every extract agent was lost (their nodes left the cluster); the finished "
                                  "shards are kept, rerun to continue")
            self._feed(live)
            busy = self.todo or any(agent.running for agent in live)
            if not busy and not closing:
                for agent in live:
                    agent.handle.finish.remote()
                closing = True
            elif busy:
                closing = False
            self._collect(live)
            if closing and not self.todo and all(agent.idle and not agent.given for agent in self.agents if agent.alive):
                break
            time.sleep(POLL_S)
        for video_id, kind, error in self.storm.succeeded():  # the run ended: what is held back was real
            shards.record_failure(self.out, video_id, kind, error)
        return self.totals

    def _feed(self, live: list[AgentState]) -> None:
        """Keep about two videos per decode slot queued on every agent (the slots never wait on the driver)."""
        for agent in sorted(live, key=lambda a: a.queued):
            want = 2 * agent.slots - agent.queued
            batch = [self.todo.popleft() for _ in range(min(want, len(self.todo)))] if want > 0 else []
            if batch:
                for item in batch:
                    agent.given[item[0]] = item
                agent.queued += len(batch)
                agent.idle = False
                agent.handle.submit.remote(batch)

    def _collect(self, live: list[AgentState]) -> None:
        import ray

        refs = [agent.handle.poll.remote() for agent in live]
        for agent, ref in zip(live, refs):
            try:
                report = ray.get(ref, timeout=POLL_TIMEOUT_S)
            except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError) as err:
                self._lost(agent, err)
                continue
            self._record(agent, report)

    def _record(self, agent: AgentState, report: Any) -> None:
        for video_id, kind, error, seconds, notes in report.outcomes:
            self.progress.update(1)
            if kind is None:
                agent.written.add(video_id)
                self.totals.notes += notes
                for record in self.storm.succeeded():
                    shards.record_failure(self.out, *record)
                continue
            agent.given.pop(video_id, None)
            self.progress.set_postfix_str(f"last failure: {video_id} ({kind})")
            for record in self.storm.failed(video_id, failure_kind(kind), error or ""):
                shards.record_failure(self.out, *record)
        for record in report.committed:
            for key in record["keys"]:
                agent.given.pop(key, None)
                agent.written.discard(key)
            agent.videos += record["count"]
            agent.video_seconds += record.get("video_seconds", 0.0)
            self.totals.written += record["count"]
            self.totals.video_seconds += record.get("video_seconds", 0.0)
        agent.chunk_bytes += report.chunk_bytes
        agent.cross_node_bytes += report.cross_node_bytes
        agent.queued = report.queued
        agent.idle = report.idle
        if report.fault:
            raise SystemFault(report.fault)

    def _lost(self, agent: AgentState, err: BaseException) -> None:
        """An agent died or hangs: what it had and no committed shard holds goes to the others."""
        agent.alive = False
        committed = shards.finished_keys(self.out)  # it may have committed shards it never reported
        redo = [item for video_id, item in agent.given.items() if video_id not in committed]
        self.totals.redone += len(redo)
        self.progress.update(-len(agent.written - committed))
        logger.warning("extract: lost the agent on node %s (%s); %d of its videos go to the other agents",
                       agent.node.get("host"), type(err).__name__, len(redo))
        agent.given.clear()
        agent.written.clear()
        self.todo.extendleft(reversed(redo))

    def stop(self) -> None:
        """A fault or an interrupt: every agent keeps the whole samples it wrote and starts nothing new."""
        import ray

        live = [agent for agent in self.agents if agent.alive]
        for agent in live:
            agent.handle.stop.remote()
        deadline = time.monotonic() + STOP_WAIT_S
        while live and time.monotonic() < deadline:
            refs = [agent.handle.poll.remote() for agent in live]
            reports = []
            for agent, ref in zip(live, refs):
                try:
                    reports.append((agent, ray.get(ref, timeout=max(0.1, deadline - time.monotonic()))))
                except Exception:  # lost or slow: its open shard is redone by the next run
                    agent.alive = False
            live = [agent for agent, report in reports if not report.idle]
            time.sleep(POLL_S)


def per_node_lines(agents: list[AgentState]) -> list[str]:
    """One line per node: videos, video-seconds and the bytes that crossed nodes to reach a model."""
    by_node: dict[str, Counter] = defaultdict(Counter)
    hosts: dict[str, str] = {}
    for agent in agents:
        node = agent.node.get("node", "?")
        hosts[node] = agent.node.get("host", "?")
        by_node[node].update({"videos": agent.videos, "video_s": agent.video_seconds,
                              "chunk_bytes": agent.chunk_bytes, "cross": agent.cross_node_bytes,
                              "agents": 1, "lost": int(not agent.alive)})
    lines = []
    for node, count in sorted(by_node.items(), key=lambda item: hosts[item[0]]):
        per_s = count["cross"] / count["video_s"] if count["video_s"] else 0.0
        lost = f", {count['lost']} lost" if count["lost"] else ""
        lines.append(f"extract: node {hosts[node]} ({node[:8]}): {count['videos']} videos, "
                     f"{count['video_s']:,.0f} video-s, {count['agents']} agent(s){lost}; cross-node chunk bytes "
                     f"{count['cross']:,} of {count['chunk_bytes']:,} ({per_s:,.0f} B per video-s)")
    return lines


def progress_bar(total: int):  # type: ignore[no-untyped-def]
    from tqdm import tqdm

    return tqdm(total=total, unit="video", desc="extract", file=sys.stderr)

