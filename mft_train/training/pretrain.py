"""`mft-train pretrain`: the shard stream as the Trainer's batch source, and the command around it."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Iterable

import torch

from howto_prep.cli_support import Location
from mft_train.config import RunConfig
from mft_train.data.clips import clip_spec
from mft_train.data.shards import WordTable, discover_shards
from mft_train.data.stream import LoaderPlan, batches_per_epoch, make_loader, one_line_worker_errors
from mft_train.presets import load_config
from mft_train.training import checkpoints
from mft_train.training.distributed import (
    DistInfo,
    all_reduce_mean,
    init_distributed,
    share_per_rank,
    shutdown_distributed,
)
from mft_train.training.run_folder import prepare_run_dir
from mft_train.training.run_store import RunMirror, run_location
from mft_train.training.trainer import Trainer, TrainResult


class ShardStream:
    """Pretraining batches: `train.batch` videos per global step, `data.clips_per_video` random clips each.

    An epoch is `train.steps_per_epoch` steps, or (0) one pass's worth of the shard set's videos.
    `shards_dir` is a folder or an s3:// / gs:// URL (streamed: mft_train.data.store_set).
    """

    def __init__(self, shards_dir: Location, config: RunConfig, dist_info: DistInfo) -> None:
        self.shards = discover_shards(shards_dir)
        self.config, self.dist = config, dist_info
        self.spec = clip_spec(config.data)
        self.videos_per_rank = share_per_rank(config.train.batch, dist_info.world_size)
        self.steps_per_epoch = config.train.steps_per_epoch or batches_per_epoch(self.shards, config.train.batch)
        self.clips_per_step = config.train.batch * config.data.clips_per_video

    def batches(self, first_step: int, count: int) -> Iterable[dict]:
        data = self.config.data
        plan = LoaderPlan(
            videos_per_rank=self.videos_per_rank,
            clips_per_video=data.clips_per_video,
            num_batches=count,
            seed=self.config.train.seed,
            epoch=first_step // self.steps_per_epoch,
            first_step=first_step,
            rank=self.dist.rank,
            world_size=self.dist.world_size,
            order=data.order,
            shuffle_buffer=data.shuffle_buffer,
        )
        return one_line_worker_errors(make_loader(self.shards, self.spec, plan, data.workers))


def train(config: RunConfig, shards_dir: Location, run_dir: Path, dist_info: DistInfo, resume: bool = False,
          max_steps: int | None = None, mirror: RunMirror | None = None) -> TrainResult:
    """Pretrain (resuming if asked); returns the losses of the steps this call ran (mean over ranks).

    `mirror`: the store copy of an --out URL (`run_dir` is then its work folder): on --resume the
    two are brought level first (each machine's local rank 0), and every checkpoint is published."""
    if mirror is not None and resume:
        if dist_info.local_rank == 0:
            mirror.sync_for_resume(publish=dist_info.is_main)
        if dist_info.enabled:
            torch.distributed.barrier()  # no rank looks for the checkpoint before its machine has it
    prepare_run_dir(run_dir, config, resume, dist_info.is_main, mirror)
    trainer = Trainer(config, ShardStream(shards_dir, config, dist_info), run_dir, dist_info, mirror=mirror)
    if resume:
        trainer.resume()
    result = trainer.run(max_steps)
    if mirror is not None and dist_info.is_main:
        mirror.publish_tensorboard()  # the writer is closed now: its last events are on disk
    if dist_info.enabled:
        result.losses = [all_reduce_mean(v, trainer.device) for v in result.losses]
    return result


def run_pretrain(args: argparse.Namespace) -> int:
    """Validate everything cheap first (config, shards, vocabulary), then train; bad input -> UserError."""
    config = load_config(args.config, args.overrides, args.model)
    shards = discover_shards(args.shards)  # a folder, or an s3:// / gs:// URL (cli_support.location)
    WordTable(shards.root)  # fail before the model is built if the vocabulary is missing
    run_dir, mirror = run_location(args.out, getattr(args, "work", None))
    dist_info = init_distributed(force_cpu=config.train.device == "cpu")
    try:
        result = train(config, args.shards, run_dir, dist_info, resume=bool(args.resume), mirror=mirror)
    finally:
        shutdown_distributed()
    if dist_info.is_main:
        if result.losses:
            print(
                f"pretrain: steps {result.first_step}->{result.last_step}, loss {result.losses[0]:.4f} -> "
                f"{result.losses[-1]:.4f}, checkpoint {result.checkpoint}"
                + (f" (published to {mirror.url}/{checkpoints.CHECKPOINT_DIR}/)" if mirror else ""),
                file=sys.stderr,
            )
        else:
            print(f"pretrain: nothing to do, {args.out} already finished step {result.last_step}", file=sys.stderr)
    return 0
