"""The pretraining stream: shards -> per-video random clips -> padded batches (mft_train.data.batch).

Two orders:
- "stream" (training): resampled shards (each rank and worker draws shards at random, so no rank
  starves), a sample shuffle buffer, `with_epoch` to bound each loader; a corrupted shard or sample
  is skipped with a warning (webdataset's `warn_and_continue`).
- "fixed" (tests, debugging): every video once, in shard order; global batch i holds videos
  [i*B, (i+1)*B) and rank r takes its slice, so any world size sees the same global batches.
Clip randomness comes from a generator seeded per (seed, epoch, segment, rank, worker) in "stream"
order and per (seed, epoch, video id) in "fixed" order, so a resumed run sees the same data.
"""

from __future__ import annotations

import math
import random
import zlib
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import webdataset as wds
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from howto_prep.errors import UserError
from mft_train.data.batch import collate
from mft_train.data.clips import ClipSpec, sample_clips
from mft_train.data.shards import ShardSet, WordTable, decode_sample

ORDERS = ("stream", "fixed")


@dataclass(frozen=True)
class LoaderPlan:
    """Everything that decides a loader's content: which data, which seed, how many batches."""

    videos_per_rank: int
    clips_per_video: int
    num_batches: int
    seed: int
    epoch: int
    first_step: int  # global step at which this loader starts (stream seeds / fixed offsets)
    rank: int = 0
    world_size: int = 1
    order: str = "stream"
    shuffle_buffer: int = 1000
    audio_pad_value: float = 0.0


def _worker() -> tuple[int, int]:
    info = get_worker_info()
    return (info.id, info.num_workers) if info is not None else (0, 1)


class ClipBatches(IterableDataset):
    """Iterable of collated batches for one rank; split across DataLoader workers by batch index."""

    def __init__(self, shards: ShardSet, spec: ClipSpec, plan: LoaderPlan) -> None:
        super().__init__()
        if plan.order not in ORDERS:
            raise UserError(f"data.order must be one of {', '.join(ORDERS)}, not {plan.order!r}")
        self.shards, self.spec, self.plan = shards, spec, plan
        self.words = WordTable(shards.root)

    def _collate(self, videos: list[list[dict]]) -> dict:
        return collate(videos, self.words, self.spec.max_words, self.plan.audio_pad_value)

    def __iter__(self) -> Iterator[dict]:
        return self._fixed() if self.plan.order == "fixed" else self._stream()

    def _stream(self) -> Iterator[dict]:
        plan = self.plan
        worker, workers = _worker()
        seed = _mix(plan.seed, plan.epoch, plan.first_step, plan.rank, worker)
        rng = np.random.default_rng(seed)
        # Worker w yields batches w, w + W, ...; the DataLoader interleaves them back in order.
        my_batches = len(range(worker, plan.num_batches, workers))
        pipeline = wds.DataPipeline(
            wds.ResampledShards(self.shards.urls, seed=seed, worker_seed=lambda: 0, deterministic=True),
            wds.tarfile_to_samples(handler=wds.warn_and_continue),
            wds.shuffle(plan.shuffle_buffer, initial=min(plan.shuffle_buffer, 100), rng=random.Random(seed)),
            wds.map(decode_sample, handler=wds.warn_and_continue),
            wds.map(lambda record: sample_clips(record, plan.clips_per_video, self.spec, rng), handler=wds.warn_and_continue),
            wds.batched(plan.videos_per_rank, collation_fn=self._collate, partial=False),
        ).with_epoch(my_batches)
        yield from pipeline

    def _fixed(self) -> Iterator[dict]:
        """Videos in shard order; global batch b = videos [b*G, (b+1)*G), this rank's slice of it."""
        plan = self.plan
        worker, workers = _worker()
        per_global = plan.videos_per_rank * plan.world_size
        total_batches = self.shards.num_videos // per_global
        if total_batches == 0:
            raise UserError(f"the shard set has {self.shards.num_videos} videos, fewer than one global batch ({per_global})")
        wanted = [(plan.first_step + i) % total_batches for i in range(plan.num_batches)]
        mine = {b for i, b in enumerate(wanted) if i % workers == worker}
        groups: dict[int, list[list[dict]]] = {b: [] for b in mine}
        source = wds.DataPipeline(
            wds.SimpleShardList(self.shards.urls),
            wds.tarfile_to_samples(handler=wds.warn_and_continue),
        )
        for position, sample in enumerate(source):
            batch, offset = divmod(position, per_global)
            if batch not in groups or offset // plan.videos_per_rank != plan.rank:
                continue
            record = decode_sample(sample)
            rng = np.random.default_rng(_mix(plan.seed, plan.epoch, zlib.crc32(record.video_id.encode())))
            groups[batch].append(sample_clips(record, plan.clips_per_video, self.spec, rng))
        for i, b in enumerate(wanted):
            if i % workers == worker:
                yield self._collate(groups[b])


def _mix(*values: int) -> int:
    """One 63-bit seed from several integers (stable across processes, unlike hash())."""
    return int(np.random.SeedSequence([int(v) & 0xFFFFFFFF for v in values]).generate_state(2, np.uint64)[0] >> 1)


def make_loader(shards: ShardSet, spec: ClipSpec, plan: LoaderPlan, workers: int) -> DataLoader:
    """torch DataLoader over ClipBatches: batching happens in the workers, the loader passes batches on."""
    workers = max(0, min(workers, plan.num_batches))
    return DataLoader(
        ClipBatches(shards, spec, plan),
        batch_size=None,
        num_workers=workers,
        persistent_workers=False,
        prefetch_factor=4 if workers else None,
    )


def batches_per_epoch(shards: ShardSet, global_videos: int) -> int:
    """Steps in one pass over the videos at `global_videos` videos per step (at least 1)."""
    return max(1, math.floor(shards.num_videos / global_videos))
