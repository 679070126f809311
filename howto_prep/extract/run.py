"""Running an extraction: start Ray, the model actors and one agent beside each (extract.agent: the data
path, writing its own shards), then hand them the videos (extract.dispatch: the driver's loop)."""

from __future__ import annotations

import logging
import math
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Union

from howto_prep import schema, shards
from howto_prep.errors import SystemFault, UserError
from howto_prep.extract.failure_storm import FailureStorm
from howto_prep.extract.plan import ExtractPlan

if TYPE_CHECKING:
    from howto_prep.extract.caption_index import CaptionIndex
    from howto_prep.features.word2vec_table import Word2VecTable

CaptionSource = Union["CaptionIndex", dict[str, dict], None]  # see run_work

logger = logging.getLogger(__name__)

MAX_CALLS = 50  # decode worker processes are recycled after this many videos
STREAM_BACKPRESSURE = 2  # unconsumed chunks a decode stream may hold


def run_work(plan: ExtractPlan, todo: list[tuple[str, Path]], captions: CaptionSource,
             csv_rows: dict[str, dict], word2vec: Word2VecTable | None) -> int:
    """Extract `todo` through one agent per model actor (extract.agent); failures go to failures.jsonl.

    `captions`: the checked caption index, or a small dict (a clip set's videos); `word2vec`: the checked
    word2vec table. Both travel to the agents as their location and are memory-mapped there (their
    __reduce__). Returns how many videos had no captions."""
    from howto_prep.extract.dispatch import Dispatcher, per_node_lines, progress_bar

    started = time.perf_counter()
    actors, feature_info = start_ray(plan)
    agents = start_agents(plan, actors, feature_info, len(todo), captions, word2vec)
    ready = time.perf_counter()
    storm = FailureStorm(plan.failure_storm)
    items = [(video_id, str(path), csv_rows.get(video_id)) for video_id, path in todo]
    with progress_bar(len(items)) as bar:
        dispatcher = Dispatcher(plan.out, agents, storm, bar)
        try:
            totals = dispatcher.run(items)
        except BaseException:  # a fault, an interrupt: the agents keep their whole samples, start nothing new
            dispatcher.stop()
            raise
    elapsed = time.perf_counter() - ready
    logger.info("extract: %d videos, %.0f video-s in %.1f s (%.2f video-s/s) after %.1f s of start-up (Ray and %s)",
                totals.written, totals.video_seconds, elapsed, totals.video_seconds / max(elapsed, 1e-9),
                ready - started, actor_layout(plan, len(actors)))
    for line in per_node_lines(agents):
        logger.info("%s", line)
    if totals.redone:
        logger.info("extract: %d video(s) of lost agents were redone by the others", totals.redone)
    return totals.notes


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


def start_ray(plan: ExtractPlan) -> tuple[list, dict[str, dict]]:
    """Start (or join) Ray and the model actors; return (actors, feature info)."""
    import ray

    from howto_prep.cluster import init_ray, task_failure
    from howto_prep.extract.ray_tasks import LOGMEL_INFO, default_cpu_threads, start_actors

    os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
    init_ray(plan.address, num_cpus=None if plan.address else max(2, os.cpu_count() or 1))
    available = float(ray.cluster_resources().get("GPU", 0))
    if plan.gpus and available + 1e-6 < plan.gpus * plan.gpu_share:
        share = math.floor(100 / plan.gpus) / 100
        hint = f"; --gpu-share {share:g} puts {plan.gpus} actors on one device" if available >= 1 and share else ""
        raise UserError(f"--gpus {plan.gpus} --gpu-share {plan.gpu_share:g} needs {plan.gpus * plan.gpu_share:g} "
                        f"GPU(s); the Ray cluster has {available:g}{hint}")
    check_nodes(plan)
    actors = start_actors(plan.visual_features, plan.weights_2d, plan.weights_3d, plan.gpus, default_cpu_threads(),
                          plan.gpu_share, nodes=[node["NodeID"] for node in cpu_nodes()]) if plan.visual_features else []
    try:
        feature_info = ray.get(actors[0].info.remote()) if plan.visual_features else {}
    except Exception as err:
        _, text = task_failure(err)
        raise UserError(f"the feature models could not be loaded: {text}") from None
    feature_info[schema.LOGMEL.name] = LOGMEL_INFO
    feature_info[schema.TOKENS_FEATURE] = {"model": "word2vec ids, regex [\\w']+",
                                           "weights": Path(plan.word2vec).name if plan.word2vec else None,
                                           "rate": None, "dim": schema.WORD_DIM}
    return actors, feature_info


def check_nodes(plan: ExtractPlan) -> None:
    """Every node must see the output and the inputs (a shared filesystem): checked before any work.

    An input given as a URL is read from its copy in the driver's cache: the agents open caption.json
    and the .bin there, so on a cluster that cache must be on the shared filesystem (the check says
    so); a copied --csv is read by the driver alone and is not checked."""
    from howto_prep.node_check import check_nodes_see

    paths = {"--out": plan.out}
    if not isinstance(plan.videos_dir, str):  # a URL is read by each node from the store
        paths["--videos"] = plan.videos_dir
    paths.update({option: path for option, path in (("--captions", plan.captions), ("--word2vec", plan.word2vec),
                                                    ("--csv", plan.csv))
                  if path is not None and not (option == "--csv" and option in plan.copied_inputs)})
    try:
        check_nodes_see(paths)
    except SystemFault as err:
        hint = cache_hint(plan, str(err))
        if not hint:
            raise
        raise SystemFault(f"{err}{hint}") from None


def cache_hint(plan: ExtractPlan, message: str) -> str:
    """What to do when a node misses an input the driver copied from a store into its local cache."""
    from howto_prep.local_copies import CACHE_VARIABLE, cache_root

    copied = [option for option in plan.copied_inputs if option in message]
    if not copied:
        return ""
    return (f" ({', '.join(copied)} came from a URL and is read from its copy in {cache_root()}: set "
            f"{CACHE_VARIABLE} to a folder on the shared filesystem)")


def cpu_nodes() -> list[dict]:
    """The alive Ray nodes with CPUs, in a stable order (a CPU-only run puts one model actor on each)."""
    import ray

    nodes = [node for node in ray.nodes() if node.get("Alive") and node.get("Resources", {}).get("CPU", 0) > 0]
    return sorted(nodes, key=lambda node: (node.get("NodeManagerAddress", ""), node["NodeID"]))


def start_agents(plan: ExtractPlan, actors: list, feature_info: dict, videos: int, captions: CaptionSource,
                 word2vec: Word2VecTable | None) -> list:
    """One agent per model actor, on its node (no visual feature: one per node), each with its decode
    slots (its node's CPUs less the GPU actors there, shared by the node's agents), its writer slot."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from howto_prep.extract.agent import AgentSpec, ExtractAgent, with_node
    from howto_prep.extract.dispatch import AgentState
    from howto_prep.extract.ray_tasks import ACTOR_RESTARTS

    nodes = {node["NodeID"]: node for node in cpu_nodes()}
    if actors:
        homes = ray.get([actor.node.remote() for actor in actors])
    else:
        homes, actors = list(nodes), [None] * len(nodes)
    per_node = {node: homes.count(node) for node in set(homes)}
    slots = shards.writer_slots(plan.out, plan.prefix, len(actors))
    remote_agent = ray.remote(ExtractAgent)
    states = []
    for actor, home, slot in zip(actors, homes, slots):
        cpus = int(nodes.get(home, {}).get("Resources", {}).get("CPU", 1))
        decode_slots = (math.ceil(plan.workers / len(actors)) if plan.workers
                        else max(1, (cpus - (per_node[home] if plan.gpus else 0)) // per_node[home]))
        node = {"node": home, "host": nodes.get(home, {}).get("NodeManagerAddress", "?")}
        spec = AgentSpec(out=str(plan.out), shard_size=plan.shard_size, prefix=plan.prefix, slot=with_node(slot, node),
                         names=tuple(plan.features), feature_info=feature_info, max_videos=decode_slots,
                         max_chunks=3, decoder_threads=decoder_threads(cpus // per_node[home], decode_slots,
                                                                       math.ceil(videos / len(actors))),
                         decode_timeout_s=plan.decode_timeout_s, actor_timeout_s=plan.actor_timeout_s,
                         actor_restarts=ACTOR_RESTARTS, want_1fps=plan.wants(schema.RESNET152.name),
                         want_24fps=plan.wants(schema.RESNEXT101.name), want_audio=plan.wants(schema.LOGMEL.name),
                         captions=captions, word2vec=word2vec, node_id=home, publisher=plan.publisher)
        placed = remote_agent.options(num_cpus=0, max_restarts=0,
                                      scheduling_strategy=NodeAffinitySchedulingStrategy(home, soft=False))
        states.append(AgentState(handle=placed.remote(spec, actor), node=node, slots=decode_slots))
    ray.get([state.handle.poll.remote() for state in states])  # started (the indexes opened) before the clock runs
    return states
