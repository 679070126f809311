"""The scheduling loop of `howto-prep extract` (howto_prep.extract.pipeline) with real Ray, real decode
tasks and a model actor as slow as a busy GPU."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from howto_prep.extract.pipeline import run_pipeline
from howto_prep.extract.ray_tasks import remote_decode
from howto_prep.synthetic.mp4 import write_mp4

EMBED_S = 1.5


def test_a_decode_slot_is_refilled_when_its_stream_ends_not_when_the_model_is_done(tmp_path: Path) -> None:
    # One decode slot, two 2-second videos (one chunk each). Once video a is decoded, its slot must take
    # video b while the model still works on a's chunk: a slot held until the model is done leaves a
    # decoder core idle for the model's latency at every video (about 5 % of a 16-core box's decode).
    import ray

    from howto_prep.cluster import init_ray

    init_ray(None)
    y, x = np.mgrid[0:90, 0:160]
    frames = [np.stack([(x + 3 * i) % 256, (y + i) % 256, np.full_like(x, 7 * i % 256)], -1).astype(np.uint8)
              for i in range(60)]
    videos = []
    for name in ("a", "b"):
        write_mp4(tmp_path / f"{name}.mp4", frames, 30.0)
        videos.append((name, tmp_path / f"{name}.mp4"))
    task = remote_decode(max_calls=10, backpressure=2)
    launched: dict[str, float] = {}

    def decode(path: str):
        launched[Path(path).stem] = time.monotonic()
        return task.remote(path, True, True, False)

    class SlowModels:  # defined here so that Ray ships it by value (tests/ is not importable in workers)
        """A model actor that takes EMBED_S per chunk and returns no rows."""

        def embed(self, chunk):
            time.sleep(EMBED_S)
            return chunk.index, {}

    actor = ray.remote(SlowModels).options(num_cpus=0).remote()
    finished: dict[str, float] = {}
    for outcome in run_pipeline(videos, decode, [actor], max_videos=1, max_chunks=3, timeout_s=120):
        assert outcome.kind is None, outcome.error
        assert sorted(outcome.chunks) == [0]
        finished[outcome.video_id] = time.monotonic()
    assert set(finished) == {"a", "b"}
    assert launched["b"] < finished["a"] - EMBED_S / 3, \
        f"video b was started {launched['b'] - finished['a']:+.2f} s after video a was done: its slot waited for the model"
