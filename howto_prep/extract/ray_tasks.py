"""What runs inside Ray for `howto-prep extract`: the decode stream (CPU task) and the model actor.

The decode task is a streaming generator: it yields one header (video info, log-mel or the reason
it is missing), then one FrameChunk per `chunk_seconds` of video. The driver hands each chunk's
ObjectRef to a model actor, so frames never pass through the driver and at most a few chunks of
one video are alive at a time.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from howto_prep import schema
from howto_prep.decode import DEFAULT_CHUNK_SECONDS, FrameChunk, MediaError, iterate_chunks, open_video, probe

STARTED = "started"
ACTOR_RESTARTS = 3  # restarts of one model actor (crashed or hung) before the run stops as a system fault
LOGMEL_INFO = {"model": "AVLnet log-mel (40 mel, 25 ms Hamming, 10 ms hop, power_to_db ref=max, top_db 80)",
               "weights": None, "weights_sha256": None, "rate": schema.LOGMEL.rate, "dim": schema.LOGMEL.dim}


def decode_stream(path: str, want_1fps: bool, want_24fps: bool, want_logmel: bool,
                  chunk_seconds: int = DEFAULT_CHUNK_SECONDS, decoder_threads: int = 0) -> Iterator[dict | FrameChunk]:
    """STARTED, then the header dict, then the frame chunks; MediaError for an unusable file.

    STARTED tells the driver the task is running, so worker start-up never counts as a hung decode.
    `decoder_threads`: H.264 decoder threads (0: FFmpeg's choice, cores + 1); see run.decoder_threads.
    """
    yield STARTED
    with local_video(path) as local:
        reader = open_video(local, num_threads=decoder_threads)
        info = probe(reader)
        header: dict[str, Any] = {"info": info.as_dict(), "logmel": None, "missing": {}, "audio_sample_rate": None}
        if want_logmel:
            header.update(audio_header(local))
        yield header
        if want_1fps or want_24fps:
            yield from iterate_chunks(reader, info, want_1fps, want_24fps, chunk_seconds)


@contextlib.contextmanager
def local_video(path: str) -> Iterator[Path]:
    """The video as a local file: itself, or (an object URL) a whole copy in this node's temporary
    folder, deleted when the decode ends. Decoding seeks; a download first keeps the decode's reads
    local and a store fault (SystemFault after retries) apart from a bad file."""
    from howto_prep.object_store import Store, is_url

    if not is_url(path):
        yield Path(path)
        return
    folder, _, name = path.rpartition("/")
    handle, temp = tempfile.mkstemp(prefix="howto-video-", suffix=f"-{name}")
    os.close(handle)
    try:
        Store.for_url(folder).get_file(name, temp)
        yield Path(temp)
    finally:
        with contextlib.suppress(OSError):
            os.unlink(temp)


def audio_header(path: Path) -> dict[str, Any]:
    """Log-mel of the whole soundtrack (its dB reference is the video's maximum), or why it is missing.

    The soundtrack comes from features.audio (PyAV; the same samples as decord's AudioReader) and
    the log-mel from numpy, so a decode worker never imports torch or decord (peak RSS of a bare
    `import torch` 662 MiB, with decord 1,126 MiB, numpy alone 25 MiB: `resource.getrusage` after the import)."""
    from howto_prep.features.audio import read_audio
    from howto_prep.features.logmel import logmel

    try:
        audio = read_audio(path)
    except MediaError as err:
        return {"logmel": None, "missing": {"logmel": str(err)}, "audio_sample_rate": None}
    if audio is None:
        return {"logmel": None, "missing": {"logmel": "no audio stream"}, "audio_sample_rate": None}
    if len(audio) < 400:  # less than one 25 ms window
        return {"logmel": None, "missing": {"logmel": f"audio stream holds only {len(audio)} samples"},
                "audio_sample_rate": schema.AUDIO_SAMPLE_RATE}
    return {"logmel": logmel(audio), "missing": {}, "audio_sample_rate": schema.AUDIO_SAMPLE_RATE}


class FeatureModels:
    """The visual models of one process; `embed` turns one FrameChunk into feature rows."""

    def __init__(self, names: list[str], weights_2d: str, weights_3d: str, device: str = "cpu",
                 threads: int | None = None) -> None:
        import torch

        if threads:
            torch.set_num_threads(threads)
        from howto_prep.features.standin import ZeroFeatures, is_standin

        self.models: dict[str, Any] = {}
        if schema.RESNET152.name in names and is_standin(weights_2d):  # benchmarks only (features.standin)
            self.models[schema.RESNET152.name] = ZeroFeatures(schema.RESNET152, "--weights-2d")
        elif schema.RESNET152.name in names:
            from howto_prep.features.resnet2d import ResNet152Features

            self.models[schema.RESNET152.name] = ResNet152Features(weights=weights_2d, device=device)
        if schema.RESNEXT101.name in names and is_standin(weights_3d):
            self.models[schema.RESNEXT101.name] = ZeroFeatures(schema.RESNEXT101, "--weights-3d")
        elif schema.RESNEXT101.name in names:
            from howto_prep.features.resnext3d import ResNeXt101Features

            self.models[schema.RESNEXT101.name] = ResNeXt101Features(weights=weights_3d, device=device)

    def node(self) -> str:
        """The Ray node this actor runs on (its agent is placed there)."""
        import ray

        return ray.get_runtime_context().get_node_id()

    def info(self) -> dict[str, dict]:
        return {name: dict(model.info) for name, model in self.models.items()}

    def embed(self, chunk: FrameChunk) -> tuple[int, dict[str, np.ndarray]]:
        hang_once_for_tests()
        out: dict[str, np.ndarray] = {}
        if schema.RESNET152.name in self.models and chunk.frames_1fps is not None:
            out[schema.RESNET152.name] = self.models[schema.RESNET152.name](chunk.frames_1fps)
        if schema.RESNEXT101.name in self.models and chunk.frames_24fps is not None:
            out[schema.RESNEXT101.name] = self.models[schema.RESNEXT101.name](chunk.frames_24fps)
        return chunk.index, out


def hang_once_for_tests() -> None:
    """Fault injection (tests, chaos runs): with HOWTO_PREP_FAULT_ACTOR_HANG=FILE, the first embed call of
    the run writes this process's pid to FILE and never returns, as a wedged GPU driver would."""
    marker = os.environ.get("HOWTO_PREP_FAULT_ACTOR_HANG")
    if marker and not os.path.exists(marker):
        with open(marker, "w") as handle:
            handle.write(str(os.getpid()))
        while True:
            time.sleep(3600)


def remote_decode(max_calls: int, backpressure: int):
    """The decode task as a Ray streaming generator (recycled every `max_calls` videos)."""
    import ray

    return ray.remote(num_cpus=1, max_calls=max_calls, num_returns="streaming",
                      _generator_backpressure_num_objects=backpressure, max_retries=0)(decode_stream)


def start_actors(names: list[str], weights_2d: str, weights_3d: str, gpus: int, cpu_threads: int,
                 gpu_share: float = 1.0, nodes: list[str] | None = None) -> list:
    """`gpus` GPU actors (each reserving `gpu_share` of a GPU: Ray places several on one device when it
    is below 1, and spreads them over the cluster's GPU nodes), or one CPU actor using `cpu_threads`
    torch threads on each of `nodes` (default: one, wherever Ray puts it)."""
    import ray

    # A crashed (or killed, because hung) actor is restarted and its pending chunks are sent again.
    actor_class = ray.remote(FeatureModels)
    recover = {"max_restarts": ACTOR_RESTARTS, "max_task_retries": ACTOR_RESTARTS}
    if gpus > 0:
        on_gpu = actor_class.options(num_cpus=1, num_gpus=gpu_share, **recover)
        return [on_gpu.remote(names, weights_2d, weights_3d, "cuda") for _ in range(gpus)]
    # num_cpus=0: torch's own threads use the cores; Ray's CPU slots are left to the decode tasks.
    if not nodes:
        return [actor_class.options(num_cpus=0, **recover).remote(names, weights_2d, weights_3d, "cpu", cpu_threads)]
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    return [actor_class.options(num_cpus=0, scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False),
                                **recover).remote(names, weights_2d, weights_3d, "cpu", cpu_threads) for node in nodes]


def default_cpu_threads() -> int:
    return max(1, os.cpu_count() or 1)
