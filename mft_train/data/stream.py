"""The pretraining stream: shards -> per-video random clips -> padded batches (mft_train.data.batch).

Two orders:
- "stream" (training): resampled shards (each rank and worker draws shards at random, so no rank
  starves), each video decoded without copying its arrays (mft_train.data.reader) and cut at once
  into its clips (`video_clip_block`), a shuffle buffer of those per-video clip blocks (a video's
  clips are much smaller than all of its features, so the buffer holds less memory), `with_epoch`
  to bound each loader; a corrupted shard or sample is skipped with a warning and counted (the
  reader's SkipPolicy), and the loader says what it skipped when it ends.
- "fixed" (tests, debugging): every video once, in shard order; global batch i holds videos
  [i*B, (i+1)*B) and rank r takes its slice, so any world size sees the same global batches.
Clip randomness comes from a generator seeded per (seed, epoch, segment, rank, worker) in "stream"
order and per (seed, epoch, video id) in "fixed" order, so a resumed run sees the same data.
"""

from __future__ import annotations

import math
import random
import zlib
from dataclasses import dataclass, replace
from typing import Iterable, Iterator

import numpy as np
import torch
import webdataset as wds
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from howto_prep.errors import ToolError, UserError
from mft_train.config import ORDERS
from mft_train.data.batch import collate_blocks, video_clip_block
from mft_train.data.clips import ClipSpec
from mft_train.data.reader import SkipPolicy, decode_sample, tar_samples
from mft_train.data.shards import DecodedSample, ShardSet, WordTable
from mft_train.training.preemption import ignore_stop_signals

PREFETCH_PER_WORKER = 4  # batches each worker may hold ready: bounds the loader's memory


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
    # None: decided by make_loader (True when a GPU is visible: batches go to it). half_features keeps
    # video and audio float16 (half the bytes to copy); pin_memory makes non-blocking copies asynchronous.
    half_features: bool | None = None
    pin_memory: bool | None = None


def _worker() -> tuple[int, int]:
    info = get_worker_info()
    return (info.id, info.num_workers) if info is not None else (0, 1)


class ClipBatches(IterableDataset):
    """Iterable of collated batches for one rank; split across DataLoader workers by batch index."""

    def __init__(self, shards: ShardSet, spec: ClipSpec, plan: LoaderPlan, skips: SkipPolicy | None = None) -> None:
        super().__init__()
        if plan.order not in ORDERS:
            raise UserError(f"data.order must be one of {', '.join(ORDERS)}, not {plan.order!r}")
        self.shards, self.spec, self.plan = shards, spec, plan
        self.skips = skips if skips is not None else SkipPolicy()
        self.words = WordTable(shards.root)

    def _clips(self, record: DecodedSample, rng: np.random.Generator) -> dict:
        plan = self.plan
        return video_clip_block(record, plan.clips_per_video, self.spec, rng, bool(plan.half_features))

    def _collate(self, blocks: list[dict]) -> dict:
        return collate_blocks(blocks, self.words, self.spec.max_words)

    def __iter__(self) -> Iterator[dict]:
        batches = self._fixed() if self.plan.order == "fixed" else self._stream()
        try:
            yield from batches
        finally:  # also when the consumer stops early: the generator is closed
            worker, workers = _worker()
            alone = workers == 1 and self.plan.world_size == 1
            self.skips.report("training stream" if alone else f"training stream (rank {self.plan.rank}, worker {worker})")

    def _stream(self) -> Iterator[dict]:
        plan = self.plan
        worker, workers = _worker()
        seed = _mix(plan.seed, plan.epoch, plan.first_step, plan.rank, worker)
        rng = np.random.default_rng(seed)
        # Worker w yields batches w, w + W, ...; the DataLoader interleaves them back in order.
        my_batches = len(range(worker, plan.num_batches, workers))
        pipeline = wds.DataPipeline(
            wds.ResampledShards(self.shards.urls, seed=seed, worker_seed=lambda: 0, deterministic=True),
            tar_samples(handler=self.skips),
            wds.map(decode_sample, handler=self.skips),
            wds.map(self.skips.took),  # a set none of whose samples decodes stops, not resamples forever
            wds.map(lambda record: self._clips(record, rng), handler=self.skips),
            wds.shuffle(plan.shuffle_buffer, initial=min(plan.shuffle_buffer, 100), rng=random.Random(seed)),
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
        groups: dict[int, list[dict]] = {b: [] for b in mine}
        source = wds.DataPipeline(
            wds.SimpleShardList(self.shards.urls),
            tar_samples(handler=self.skips),
        )
        for position, sample in enumerate(source):
            batch, offset = divmod(position, per_global)
            if batch not in groups or offset // plan.videos_per_rank != plan.rank:
                continue
            record = decode_sample(sample)
            rng = np.random.default_rng(_mix(plan.seed, plan.epoch, zlib.crc32(record.video_id.encode())))
            groups[batch].append(self._clips(record, rng))
        for i, b in enumerate(wanted):
            if i % workers == worker:
                yield self._collate(groups[b])


def _mix(*values: int) -> int:
    """One 63-bit seed from several integers (stable across processes, unlike hash())."""
    return int(np.random.SeedSequence([int(v) & 0xFFFFFFFF for v in values]).generate_state(2, np.uint64)[0] >> 1)


def make_loader(shards: ShardSet, spec: ClipSpec, plan: LoaderPlan, workers: int,
                skips: SkipPolicy | None = None) -> DataLoader:
    """torch DataLoader over ClipBatches: batching happens in the workers, the loader passes batches on.

    `skips` counts what the stream skipped (with workers, each worker counts and reports its own copy).

    With a GPU visible (or when the plan asks) batches carry float16 video and audio and arrive in
    pinned memory, so `move_batch`'s non-blocking copies overlap with compute and move half the bytes.
    """
    gpu = torch.cuda.is_available()
    plan = replace(plan, half_features=gpu if plan.half_features is None else plan.half_features,
                   pin_memory=gpu if plan.pin_memory is None else plan.pin_memory)
    workers = max(0, min(workers, plan.num_batches))
    return DataLoader(
        ClipBatches(shards, spec, plan, skips),
        batch_size=None,
        num_workers=workers,
        persistent_workers=False,
        prefetch_factor=PREFETCH_PER_WORKER if workers else None,
        pin_memory=plan.pin_memory,
        worker_init_fn=ignore_stop_signals if workers else None,  # a stop signal is the trainer's to handle
    )


def one_line_worker_errors(batches: Iterable[dict]) -> Iterator[dict]:
    """The batches of a loader, with a ToolError raised in a DataLoader worker (a store refusing,
    bad input) re-raised as its own one-line message: torch re-raises it in the main process with
    the worker's whole traceback as its text, which the CLI would print.

    The workers are shut down as soon as the batches end, fail or are no longer wanted: a failed
    loader's iterator lives on in reference cycles (its exception's traceback), and at exit
    multiprocessing would wait forever for workers that ignore SIGTERM (ignore_stop_signals)."""
    iterator = iter(batches)
    try:
        yield from iterator
    except ToolError as err:
        text = str(err)
        if "\n" not in text or "DataLoader worker" not in text.split("\n", 1)[0]:
            raise
        last = text.rstrip().splitlines()[-1]  # "howto_prep.errors.SystemFault: <the one line>"
        raise type(err)(last.split(": ", 1)[1] if ": " in last else last) from None
    finally:
        shutdown = getattr(iterator, "_shutdown_workers", None)  # torch's multi-process iterator
        if shutdown is not None:
            shutdown()


def batches_per_epoch(shards: ShardSet, global_videos: int) -> int:
    """Steps in one pass over the videos at `global_videos` videos per step (at least 1)."""
    return max(1, math.floor(shards.num_videos / global_videos))
