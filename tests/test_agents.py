"""Extract's agents (extract.agent) and the driver's dispatcher (extract.dispatch) on a real local Ray.

Two agents on one node stand for two nodes: each writes its own shards (its writer slot), the driver
only records outcomes, and an agent lost mid-run (killed as its node would be) has every video it had
and no committed shard holds redone by the other: nothing lost, nothing written twice.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

from howto_prep import schema, shards

FEATURES = (schema.LOGMEL.name,)  # no model actor: the decode task's log-mel is the whole sample


@pytest.fixture(scope="module")
def local_ray():
    import ray

    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    yield ray
    ray.shutdown()


def start_two_agents(ray, out: Path, captions: dict) -> list:
    from howto_prep.extract.agent import AgentSpec, ExtractAgent, with_node
    from howto_prep.extract.dispatch import AgentState
    from howto_prep.extract.ray_tasks import LOGMEL_INFO

    node = ray.get_runtime_context().get_node_id()
    states = []
    for position, slot in enumerate(shards.writer_slots(out, schema.DEFAULT_PREFIX, 2)):
        where = {"node": node, "host": f"agent-{position}"}
        spec = AgentSpec(out=str(out), shard_size=1, prefix=schema.DEFAULT_PREFIX, slot=with_node(slot, where),
                         names=FEATURES, feature_info={schema.LOGMEL.name: LOGMEL_INFO}, max_videos=1, max_chunks=3,
                         decoder_threads=1, decode_timeout_s=120, actor_timeout_s=120, actor_restarts=3,
                         want_1fps=False, want_24fps=False, want_audio=True, captions=captions, node_id=node)
        handle = ray.remote(ExtractAgent).options(num_cpus=0, max_restarts=0).remote(spec, None)
        states.append(AgentState(handle=handle, node=where, slots=1))
    ray.get([state.handle.poll.remote() for state in states])
    return states


class Progress:
    def __init__(self) -> None:
        self.n = 0

    def update(self, count: int) -> None:
        self.n += count

    def set_postfix_str(self, _: str) -> None:
        pass


def committed_keys(out: Path) -> list[str]:
    return [key for record in shards.read_shard_records(out) for key in record["keys"]]


def test_each_agent_writes_its_own_shards_and_the_driver_holds_no_sample(local_ray, synth_corpus, tmp_path):
    from howto_prep.extract.dispatch import Dispatcher
    from howto_prep.extract.failure_storm import FailureStorm

    out = tmp_path / "set"
    captions = json.loads(synth_corpus.captions.read_text())
    agents = start_two_agents(local_ray, out, captions)
    todo = [(path.stem, str(path), None) for path in sorted(synth_corpus.videos_dir.glob("*.mp4"))]
    totals = Dispatcher(out, agents, FailureStorm(), Progress()).run(todo)
    keys = committed_keys(out)
    assert sorted(keys) == sorted(video_id for video_id, _, _ in todo) and totals.written == len(todo)
    records = shards.read_shard_records(out)
    assert {record["host"] for record in records} == {"agent-0", "agent-1"}  # both wrote, each its own names
    even = {int(record["url"].split("-")[1][:6]) % 2 for record in records if record["host"] == "agent-0"}
    assert len(even) == 1  # one agent's slot: every other index
    assert not (out / schema.INDEX_FILE).exists()  # several writers: index.json is the end of the run's job
    sample = next(iter(shards.iterate_samples(out)))
    assert json.loads(json.dumps(sample["captions.json"]))["text"] == captions[sample["__key__"]]["text"]


def test_a_lost_agent_has_its_videos_redone_by_the_other_nothing_twice(local_ray, synth_corpus, tmp_path):
    from howto_prep.extract.dispatch import Dispatcher
    from howto_prep.extract.failure_storm import FailureStorm

    out = tmp_path / "set"
    agents = start_two_agents(local_ray, out, json.loads(synth_corpus.captions.read_text()))
    todo = [(path.stem, str(path), None) for path in sorted(synth_corpus.videos_dir.glob("*.mp4"))]
    dispatcher = Dispatcher(out, agents, FailureStorm(), Progress())
    result: dict = {}
    runner = threading.Thread(target=lambda: result.update(totals=dispatcher.run(todo)))
    runner.start()
    deadline = time.monotonic() + 120
    while not any(record["host"] == "agent-0" for record in shards.read_shard_records(out)):
        assert time.monotonic() < deadline, "agent-0 never committed a shard"
        time.sleep(0.05)
    local_ray.kill(agents[0].handle)  # as its node leaving the cluster would
    runner.join(timeout=180)
    assert not runner.is_alive() and "totals" in result
    keys = committed_keys(out)
    assert len(keys) == len(set(keys)), "a video was written twice"
    assert sorted(keys) == sorted(video_id for video_id, _, _ in todo), "a video was lost"
    assert not agents[0].alive and agents[1].alive
