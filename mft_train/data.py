"""Shard stream -> per-video random clips -> padded batches with masks (the agreed batch dict).

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

import io
import json
import math
import random
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
import webdataset as wds
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from howto_prep.errors import UserError
from howto_prep.schema import (
    CAPTIONS_FIELD,
    INDEX_FILE,
    LOGMEL,
    META_FIELD,
    RESNET152,
    RESNEXT101,
    TOKEN_OFFSETS_FIELD,
    TOKENS_FIELD,
    VOCAB_DIR,
    VOCAB_VECTORS,
    VOCAB_W2V_IDS,
    WORD_DIM,
)
from mft_train.data_clips import ClipSpec, VideoRecord, sample_clips

ORDERS = ("stream", "fixed")


@dataclass(frozen=True)
class ShardSet:
    """The readable shards of a shard-set directory and their sample counts."""

    root: Path
    urls: list[str]
    counts: list[int]

    @property
    def num_videos(self) -> int:
        return sum(self.counts)


def discover_shards(root: Path) -> ShardSet:
    """Shards listed by index.json (wids format), else every tar whose per-shard JSON exists.

    A shard exists only when its JSON does (it is written last), so a half-written tar is ignored.
    """
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"shard directory {root} does not exist")
    index = root / INDEX_FILE
    entries: list[tuple[Path, int]] = []
    if index.is_file():
        try:
            listing = json.loads(index.read_text())["shardlist"]
            entries = [(root / item["url"], int(item["nsamples"])) for item in listing]
        except (ValueError, KeyError, TypeError) as err:
            raise UserError(f"{index} is not a wids shard index ({err})") from err
    else:
        for tar in sorted(root.glob("*.tar")):
            sidecar = tar.with_suffix(".json")
            if sidecar.is_file():
                info = json.loads(sidecar.read_text())
                count = info.get("samples", info.get("count", len(info.get("keys", []))))
                entries.append((tar, int(count)))
    entries = [(path, count) for path, count in entries if path.is_file() and count > 0]
    if not entries:
        raise UserError(f"no complete shards in {root}; run `howto-prep extract --out {root}` first")
    return ShardSet(root, [str(path) for path, _ in entries], [count for _, count in entries])


class WordTable:
    """Frozen word2vec lookup: token ids (word2vec row ids) -> vocab rows -> 300-d vectors.

    The table is memory-mapped, so every loader worker shares one copy through the page cache.
    """

    def __init__(self, root: Path) -> None:
        vocab = Path(root) / VOCAB_DIR
        ids_path, vectors_path = vocab / VOCAB_W2V_IDS, vocab / VOCAB_VECTORS
        if not ids_path.is_file() or not vectors_path.is_file():
            raise UserError(f"the shard set has no vocabulary: {ids_path} and {vectors_path} are needed")
        self.w2v_ids = np.load(ids_path)
        self.vectors = np.load(vectors_path, mmap_mode="r")
        if self.vectors.shape != (len(self.w2v_ids), WORD_DIM):
            raise UserError(f"{vectors_path} has shape {self.vectors.shape}, expected ({len(self.w2v_ids)}, {WORD_DIM})")

    def lookup(self, token_ids: np.ndarray) -> np.ndarray:
        rows = np.searchsorted(self.w2v_ids, token_ids)
        rows = np.minimum(rows, len(self.w2v_ids) - 1)
        if token_ids.size and not np.array_equal(self.w2v_ids[rows], token_ids):
            raise ValueError("a token id is missing from vocab/w2v_ids.npy")
        return np.asarray(self.vectors[rows], dtype=np.float32)


def _npy(sample: dict, field: str) -> np.ndarray:
    return np.load(io.BytesIO(sample[field]), allow_pickle=False)


def decode_sample(sample: dict) -> VideoRecord:
    """Raw tar sample (field -> bytes) -> VideoRecord; raises on a malformed sample."""
    meta = json.loads(sample[META_FIELD])
    captions = json.loads(sample[CAPTIONS_FIELD])
    logmel = _npy(sample, LOGMEL.field) if LOGMEL.field in sample else None
    return VideoRecord(
        video_id=str(meta.get("video_id", sample.get("__key__"))),
        duration=float(meta["duration"]),
        resnet152=_npy(sample, RESNET152.field),
        resnext101=_npy(sample, RESNEXT101.field),
        logmel=logmel,
        caption_starts=np.asarray(captions["start"], np.float64),
        caption_ends=np.asarray(captions["end"], np.float64),
        tokens=_npy(sample, TOKENS_FIELD),
        token_offsets=_npy(sample, TOKEN_OFFSETS_FIELD),
    )


def collate(videos: list[list[dict]], words: WordTable, max_words: int, audio_pad_value: float) -> dict:
    """Per-video clip lists -> the batch dict agreed with mft_train.models (clips of a video adjacent)."""
    clips = [clip for video in videos for clip in video]
    text = np.zeros((len(clips), max_words, WORD_DIM), np.float32)
    text_mask = np.zeros((len(clips), max_words), bool)
    for i, clip in enumerate(clips):
        count = len(clip["token_ids"])
        text[i, :count] = words.lookup(clip["token_ids"])
        text_mask[i, :count] = True
    audio = np.stack([clip["audio"] for clip in clips])
    audio_mask = np.stack([clip["audio_mask"] for clip in clips])
    audio = np.where(audio_mask[:, None, :], audio, np.float32(audio_pad_value))
    return {
        "video": torch.from_numpy(np.stack([clip["video"] for clip in clips])),
        "video_mask": torch.from_numpy(np.stack([clip["video_mask"] for clip in clips])),
        "text": torch.from_numpy(text),
        "text_mask": torch.from_numpy(text_mask),
        "audio": torch.from_numpy(np.ascontiguousarray(audio, dtype=np.float32)),
        "audio_mask": torch.from_numpy(audio_mask),
        "video_id": [clip["video_id"] for clip in clips],
    }


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
