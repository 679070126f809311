"""The pretraining stream: shards -> per-video random clips -> padded batches (mft_train.data.batch).

Two orders:
- "stream" (training): resampled shards (each rank and worker draws shards at random, so no rank
  starves), each video decoded without copying its arrays (`decode_sample_view`) and cut at once
  into its clips (`video_clip_block`), a shuffle buffer of those per-video clip blocks (a video's
  clips are much smaller than all of its features, so the buffer holds less memory), `with_epoch`
  to bound each loader; a corrupted shard or sample is skipped with a warning (`skip_with_warning`).
- "fixed" (tests, debugging): every video once, in shard order; global batch i holds videos
  [i*B, (i+1)*B) and rank r takes its slice, so any world size sees the same global batches.
Clip randomness comes from a generator seeded per (seed, epoch, segment, rank, worker) in "stream"
order and per (seed, epoch, video id) in "fixed" order, so a resumed run sees the same data.
"""

from __future__ import annotations

import io
import json
import math
import random
import re
import tarfile
import warnings
import zlib
from dataclasses import dataclass, replace
from typing import Callable, Iterable, Iterator

import numpy as np
import torch
import webdataset as wds
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from howto_prep.errors import UserError
from howto_prep.schema import CAPTIONS_FIELD, LOGMEL, META_FIELD, RESNET152, RESNEXT101, TOKEN_OFFSETS_FIELD, TOKENS_FIELD
from mft_train.data.batch import collate_blocks, video_clip_block
from mft_train.data.clips import ClipSpec
from mft_train.data.shards import DecodedSample, ShardSet, WordTable
from mft_train.training.preemption import ignore_stop_signals

ORDERS = ("stream", "fixed")
PREFETCH_PER_WORKER = 4  # batches each worker may hold ready: bounds the loader's memory
_META_MEMBER = re.compile(r"__[^/]*__($|/)")  # webdataset's skip_meta


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
    # None: decided by make_loader (True when a GPU is visible: batches go to it). half_features keeps
    # video and audio float16 (half the bytes to copy); pin_memory makes non-blocking copies asynchronous.
    half_features: bool | None = None
    pin_memory: bool | None = None


def skip_with_warning(error: Exception) -> bool:
    """Handler of the stream's stages: warn with the error (it names the shard or sample) and go on.

    Like webdataset's warn_and_continue without its 0.5 s sleep: resampled shards meet a damaged
    shard again and again, and each sleep would stall a loader worker. Python's warning filter shows
    each distinct message once per process, so a damaged shard does not flood the log either.
    """
    warnings.warn(repr(error))
    return True


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

    def _clips(self, record: DecodedSample, rng: np.random.Generator) -> dict:
        plan = self.plan
        return video_clip_block(record, plan.clips_per_video, self.spec, rng, plan.audio_pad_value,
                                bool(plan.half_features))

    def _collate(self, blocks: list[dict]) -> dict:
        return collate_blocks(blocks, self.words, self.spec.max_words)

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
            tar_samples(handler=skip_with_warning),
            wds.map(decode_sample_view, handler=skip_with_warning),
            wds.map(lambda record: self._clips(record, rng), handler=skip_with_warning),
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
            tar_samples(handler=skip_with_warning),
        )
        for position, sample in enumerate(source):
            batch, offset = divmod(position, per_global)
            if batch not in groups or offset // plan.videos_per_rank != plan.rank:
                continue
            record = decode_sample_view(sample)
            rng = np.random.default_rng(_mix(plan.seed, plan.epoch, zlib.crc32(record.video_id.encode())))
            groups[batch].append(self._clips(record, rng))
        for i, b in enumerate(wanted):
            if i % workers == worker:
                yield self._collate(groups[b])


def _local_path(url: str) -> str | None:
    """The file path of a local shard URL (a plain path or file:), else None (pipe:, http:, ...)."""
    if url.startswith("file:"):
        return url[len("file:"):]
    return None if "://" in url or url.startswith("pipe:") else url


def _tar_members(sources: Iterable[dict], handler: Callable[[Exception], bool]) -> Iterator[dict]:
    """webdataset's tar_file_expander, reading local tars with random access: one read per member.

    webdataset streams every tar (`tarfile` mode "r|*"), which reads a member in 10 KiB pieces and
    joins them: for HowTo100M-sized samples (about 7 MB) that was the loader's largest cost. Local
    files are opened seekable instead; other URLs go through webdataset unchanged. Members are
    skipped, grouped and reported exactly as webdataset does (`{}` marks the end of a shard).
    """
    for source in sources:
        url = source["url"]
        path = _local_path(url)
        if path is None:
            yield from wds.tariterators.tar_file_expander(wds.tariterators.url_opener([source], handler=handler),
                                                         handler=handler)
            continue
        try:
            with tarfile.open(path, mode="r:") as archive:
                for member in archive:
                    archive.members = []  # keep no per-member state across a long shard
                    name = member.name
                    if not member.isreg() or _META_MEMBER.match(name):
                        continue
                    if "/" not in name and name.startswith("__") and name.endswith("__"):
                        continue
                    yield {"fname": name, "data": archive.extractfile(member).read(), "__url__": url}
            yield {}
        except Exception as exn:  # a damaged shard: the handler warns (and the stream goes on) or re-raises
            exn.args = exn.args + (url,)
            if handler(exn):
                continue
            break


@wds.pipelinefilter
def tar_samples(sources: Iterable[dict], handler: Callable[[Exception], bool] = wds.reraise_exception) -> Iterator[dict]:
    """`wds.tarfile_to_samples` with the faster local reader (_tar_members): the same samples, faster."""
    return wds.tariterators.group_by_keys(_tar_members(sources, handler), handler=handler)


def npy_view(data: bytes) -> np.ndarray:
    """The array of an .npy file's bytes as a read-only view into them (np.load would copy it)."""
    stream = io.BytesIO(data)
    version = np.lib.format.read_magic(stream)
    if version == (1, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(stream)
    else:
        shape, fortran, dtype = np.lib.format.read_array_header_2_0(stream)
    if dtype.hasobject:
        raise ValueError("object arrays are not part of the shard format")
    array = np.frombuffer(data, dtype=dtype, count=math.prod(shape), offset=stream.tell())
    return array.reshape(shape, order="F" if fortran else "C")


def decode_sample_view(sample: dict) -> DecodedSample:
    """`mft_train.data.shards.decode_sample` without copies: the feature arrays view the sample's bytes.

    A HowTo100M video holds about 7 MB of features of which its clips use a small part, so copying
    them all (np.load) was one of the loader's largest costs. The views are read-only and live only
    until the video's clips are cut (`video_clip_block` copies what it keeps). Each array is checked
    against the shard format (_member_view), so a damaged sample raises, never yields garbage.
    """
    meta = json.loads(sample[META_FIELD])
    captions = json.loads(sample[CAPTIONS_FIELD])
    return DecodedSample(
        video_id=str(meta.get("video_id", sample.get("__key__"))),
        duration=float(meta["duration"]),
        resnet152=_member_view(sample, RESNET152.field),
        resnext101=_member_view(sample, RESNEXT101.field),
        logmel=_member_view(sample, LOGMEL.field) if LOGMEL.field in sample else None,
        caption_starts=np.asarray(captions["start"], np.float64),
        caption_ends=np.asarray(captions["end"], np.float64),
        tokens=_member_view(sample, TOKENS_FIELD),
        token_offsets=_member_view(sample, TOKEN_OFFSETS_FIELD),
    )


# Each .npy member's layout (shards/README.md): (dtype kinds, shape with None for any length).
_MEMBER_LAYOUTS = {
    RESNET152.field: ("f", (None, RESNET152.dim)),
    RESNEXT101.field: ("f", (None, RESNEXT101.dim)),
    LOGMEL.field: ("f", (LOGMEL.dim, None)),
    TOKENS_FIELD: ("iu", (None,)),
    TOKEN_OFFSETS_FIELD: ("iu", (None,)),
}


def _member_view(sample: dict, field: str) -> np.ndarray:
    """npy_view of one member, checked against its layout; a missing, unreadable or foreign member
    raises a ValueError naming the sample, the member and the shard (the stream warns with it and skips)."""
    kinds, shape = _MEMBER_LAYOUTS[field]
    try:
        if field not in sample:
            raise ValueError("member missing")
        array = npy_view(sample[field])
        if array.dtype.kind not in kinds or len(array.shape) != len(shape) or any(
                want is not None and want != got for want, got in zip(shape, array.shape)):
            raise ValueError(f"{array.dtype} {array.shape} is not the shard format's "
                             f"{'float' if kinds == 'f' else 'integer'} ({', '.join(str(n or 'N') for n in shape)})")
    except ValueError as err:
        raise ValueError(f"sample {sample.get('__key__')} in {sample.get('__url__')}: {field}: {err}") from None
    return array


def _mix(*values: int) -> int:
    """One 63-bit seed from several integers (stable across processes, unlike hash())."""
    return int(np.random.SeedSequence([int(v) & 0xFFFFFFFF for v in values]).generate_state(2, np.uint64)[0] >> 1)


def make_loader(shards: ShardSet, spec: ClipSpec, plan: LoaderPlan, workers: int) -> DataLoader:
    """torch DataLoader over ClipBatches: batching happens in the workers, the loader passes batches on.

    With a GPU visible (or when the plan asks) batches carry float16 video and audio and arrive in
    pinned memory, so `move_batch`'s non-blocking copies overlap with compute and move half the bytes.
    """
    gpu = torch.cuda.is_available()
    plan = replace(plan, half_features=gpu if plan.half_features is None else plan.half_features,
                   pin_memory=gpu if plan.pin_memory is None else plan.pin_memory)
    workers = max(0, min(workers, plan.num_batches))
    return DataLoader(
        ClipBatches(shards, spec, plan),
        batch_size=None,
        num_workers=workers,
        persistent_workers=False,
        prefetch_factor=PREFETCH_PER_WORKER if workers else None,
        pin_memory=plan.pin_memory,
        worker_init_fn=ignore_stop_signals if workers else None,  # a stop signal is the trainer's to handle
    )


def batches_per_epoch(shards: ShardSet, global_videos: int) -> int:
    """Steps in one pass over the videos at `global_videos` videos per step (at least 1)."""
    return max(1, math.floor(shards.num_videos / global_videos))
