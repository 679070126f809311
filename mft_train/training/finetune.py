"""`mft-train finetune`: the papers' fine-tuning recipe on a clip-level shard set, through the one Trainer.

Recipe (docs/recipes.md section 6; presets eao_finetune_youcook2 / _msrvtt / _small): Adam with the
preset's learning rate times 0.9 after every epoch (ExponentialLR, as the released configs), all six
combinatorial loss weights 1, one example per clip (the whole clip at the preset's lengths, one of
its sentences drawn per epoch), the model kept in eval mode so DAVEnet's BatchNorm statistics stay
frozen. The model's architecture and initial weights come from
--init. What differs from pretraining is only the Trainer's batch source (ClipEpochs) and its
hooks (EvaluateEachEpoch); a checkpoint is written after every epoch.

Before training (epoch 0: zero-shot) and after every epoch the model is evaluated on --eval-shards;
the best epoch by t->va R@1 (then t->va R@5, then t->v R@1) is kept as OUT/best.pt (weights +
config + metrics, what `mft-train evaluate` reads), with its report in OUT/best-eval.json and .png.
OUT/results.json and the printed table hold every epoch (mft_train.training.finetune_report).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Iterator

import numpy as np

from howto_prep.errors import UserError
from mft_train.config import RunConfig
from mft_train.data.eval_sets import ClipSet, clip_batches, open_clip_set
from mft_train.evaluation.evaluate import evaluate_checkpoint, load_weights
from mft_train.evaluation.report import QUERIES_SUFFIX, write_query_lines
from mft_train.presets import load_raw
from mft_train.training import checkpoints
from mft_train.training.distributed import DistInfo, init_distributed, share_per_rank, shutdown_distributed
from mft_train.training.finetune_report import print_and_save_results
from mft_train.training.run_folder import prepare_run_dir
from mft_train.training.run_store import RunMirror, local_checkpoint, run_location
from mft_train.training.trainer import Trainer

PRESET_BY_BENCHMARK = {"youcook2": "eao_finetune_youcook2", "msrvtt": "eao_finetune_msrvtt"}
DEFAULT_PRESET = "eao_finetune_youcook2"
EVAL_SCALARS = ("R1", "R5", "R10")
EPOCH_QUERIES_DIR = "eval"  # OUT/eval/epoch-NNN.queries.jsonl: every epoch's per-query ranks


def best_key(results: dict[str, dict[str, float]]) -> tuple[float, float, float]:
    """Order of epochs: t->va R@1, then t->va R@5, then t->v R@1 (higher is better)."""
    return (results["t->va"]["R1"], results["t->va"]["R5"], results["t->v"]["R1"])


def finetune_config(preset: str | None, overrides: list[str], init_model: dict, benchmark: str) -> RunConfig:
    """The preset (default: by the training set's benchmark) + --set, with the model section of --init."""
    raw, where = load_raw(preset or PRESET_BY_BENCHMARK.get(benchmark, DEFAULT_PRESET), overrides)
    config = RunConfig.from_dict(raw, where)
    conflicting = sorted(k for k, v in config.model.items() if init_model.get(k) != v)
    if conflicting:
        raise UserError(f"model setting(s) {', '.join(conflicting)} differ from the --init checkpoint's; "
                        "fine-tuning keeps the checkpoint's architecture")
    return config.with_model(init_model)


def rank_slice(batch: dict, rank: int, world_size: int) -> dict:
    """This rank's equal share of a global batch (rows of every tensor, entries of every list)."""
    if world_size == 1:
        return batch
    rows = len(batch["clip_id"])
    share = rows // world_size
    part = slice(rank * share, (rank + 1) * share)
    return {k: v[part] for k, v in batch.items()}


def steps_in_epoch(num_clips: int, batch: int, world_size: int) -> int:
    """Full batches, plus a last partial one of at least 2 clips in one process (DDP needs equal shares)."""
    full, rest = divmod(num_clips, batch)
    return full + (1 if world_size == 1 and rest >= 2 else 0)


class ClipEpochs:
    """Fine-tuning batches: each epoch, the training clips shuffled by (seed, epoch), whole, one sentence each."""

    def __init__(self, train_set: ClipSet, config: RunConfig, dist_info: DistInfo) -> None:
        self.train_set, self.config, self.dist = train_set, config, dist_info
        batch = config.train.batch
        share_per_rank(batch, dist_info.world_size)
        self.steps_per_epoch = steps_in_epoch(train_set.num_clips, batch, dist_info.world_size)
        if self.steps_per_epoch == 0:
            raise UserError(f"{train_set.root} has {train_set.num_clips} clips, too few for one batch of {batch}")
        self.clips_per_step = batch

    def batches(self, first_step: int, count: int) -> Iterator[dict]:
        """The epoch starting at `first_step` (`count` is always one epoch: checkpoints fall on epoch ends)."""
        data, train = self.config.data, self.config.train
        epoch = first_step // self.steps_per_epoch + 1
        world_size = self.dist.world_size
        batches = clip_batches(
            self.train_set, train.batch, video_tokens=data.video_tokens, audio_frames=data.audio_frames,
            max_words=data.max_words,
            shuffle_seed=int(np.random.SeedSequence([train.seed, epoch]).generate_state(1)[0]),
            shuffle_buffer=data.shuffle_buffer, random_caption=True,
            min_clips=train.batch if world_size > 1 else 2,  # equal shares under DDP; negatives always
        )
        for batch in batches:
            yield rank_slice(batch, self.dist.rank, world_size)


class EvaluateEachEpoch:
    """Trainer hooks: evaluate on the held-out clips before training and after every epoch (rank 0),
    keep the best epoch as best.pt, and hand its R@1/5/10 to TensorBoard."""

    def __init__(self, config: RunConfig, eval_set: ClipSet, run_dir: Path, init_path: str | None,
                 mirror: RunMirror | None = None) -> None:
        self.config, self.eval_set, self.run_dir, self.init_path = config, eval_set, Path(run_dir), init_path
        self.mirror = mirror
        self.history: list[dict] = []
        self.best: dict | None = None

    def before_first_epoch(self, trainer: Trainer) -> dict[str, float]:
        return self.evaluate(trainer, 0, None)

    def after_epoch(self, trainer: Trainer, epoch: int, losses: list[float]) -> dict[str, float]:
        return self.evaluate(trainer, epoch, float(np.mean(losses)) if losses else None)

    def evaluate(self, trainer: Trainer, epoch: int, loss: float | None) -> dict[str, float]:
        if not trainer.dist.is_main:
            return {}
        state = {"config": self.config.to_dict(), "path": str(self.run_dir)}
        report = evaluate_checkpoint(state, self.eval_set, "at_once", None, trainer.device, model=trainer.model)
        trainer.model.eval()  # evaluation restores the mode it found; fine-tuning keeps BatchNorm frozen
        write_query_lines(self.run_dir / EPOCH_QUERIES_DIR / f"epoch-{epoch:03d}{QUERIES_SUFFIX}", report["_queries"])
        results = report["results"][report["headline"]]
        row = {"epoch": epoch, "step": trainer.step, "loss": loss, "results": results}
        self.history.append(row)
        if self.best is None or best_key(results) > best_key(self.best["row"]["results"]):
            self.best = {"row": row, "report": report}
            best = {"model": trainer.model.state_dict(), "config": self.config.to_dict(), "epoch": epoch,
                    "step": trainer.step, "metrics": results, "init": self.init_path}
            checkpoints.save_checkpoint(best, self.run_dir / checkpoints.BEST_FILE)
            if self.mirror is not None:
                self.mirror.publish_file(checkpoints.BEST_FILE)  # whole: a reader sees the old or the new one
        return {f"eval/{combo}/{name}": metrics[name] for combo, metrics in results.items() for name in EVAL_SCALARS}


def run_finetune(args: argparse.Namespace) -> int:
    """Check the inputs (checkpoint, both clip sets, config, out dir), then fine-tune and report."""
    init_state = checkpoints.load_checkpoint(local_checkpoint(args.init))  # a URL: downloaded once
    train_set = open_clip_set(args.shards)  # folders, or s3:// / gs:// URLs
    eval_set = open_clip_set(args.eval_shards)
    config = finetune_config(args.config, args.overrides, init_state["config"]["model"], train_set.benchmark)
    run_dir, mirror = run_location(args.out, getattr(args, "work", None))
    if ((run_dir / checkpoints.BEST_FILE).exists() or checkpoints.latest_checkpoint(run_dir) is not None
            or (mirror is not None and mirror.holds_run())):
        raise UserError(f"{mirror.url if mirror else run_dir} already holds a fine-tuning run; choose another --out")
    dist_info = init_distributed(force_cpu=config.train.device == "cpu")
    try:
        prepare_run_dir(run_dir, config, resume=False, is_main=dist_info.is_main)
        source = ClipEpochs(train_set, config, dist_info)
        hooks = EvaluateEachEpoch(config, eval_set, run_dir, init_state.get("path"), mirror)
        trainer = Trainer(config, source, run_dir, dist_info, hooks=hooks,
                          checkpoint_every=source.steps_per_epoch, name="finetune", mirror=mirror)
        load_weights(trainer.model, init_state)
        trainer.model.eval()  # BatchNorm frozen: running statistics are used and never updated
        trainer.run()
    finally:
        shutdown_distributed()
    if dist_info.is_main:
        print_and_save_results(run_dir, hooks.history, hooks.best, init_state.get("path"), train_set, eval_set)
        if mirror is not None:
            mirror.publish_outputs()  # results.json, best-eval.*, eval/: after the checkpoints and best.pt
    return 0
