"""`mft-train finetune`: the papers' fine-tuning recipe on a clip-level shard set, evaluated every epoch.

Recipe (docs/recipes.md section 6; presets eao_finetune_youcook2 / _msrvtt / _small): Adam with the
preset's learning rate, all six combinatorial loss weights 1, one example per clip (the whole clip
at the preset's lengths, one of its sentences drawn per epoch), the model kept in eval mode so
DAVEnet's BatchNorm statistics stay frozen. The model's architecture and initial weights come from
--init; the optimiser step, DDP gathering, checkpoint files and logging are mft_train.engine's.

Before training (epoch 0: zero-shot) and after every epoch the model is evaluated on --eval-shards
with mft_train.evaluate; the best epoch by t->va R@1 (then t->va R@5, then t->v R@1) is kept as
OUT/best.pt (weights + config + metrics, what `mft-train evaluate` reads), with its report in
OUT/best-eval.json and OUT/best-eval.png. OUT/results.json and the printed table hold every epoch.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from howto_prep.errors import UserError

PRESET_BY_BENCHMARK = {"youcook2": "eao_finetune_youcook2", "msrvtt": "eao_finetune_msrvtt"}
DEFAULT_PRESET = "eao_finetune_youcook2"
BEST_FILE = "best.pt"
RESULTS_FILE = "results.json"
HEADLINE = ("t->va", "t->v")


def best_key(results: dict[str, dict[str, float]]) -> tuple[float, float, float]:
    """Order of epochs: t->va R@1, then t->va R@5, then t->v R@1 (higher is better)."""
    return (results["t->va"]["R1"], results["t->va"]["R5"], results["t->v"]["R1"])


def finetune_config(preset: str | None, overrides: list[str], init_model: dict, benchmark: str) -> dict:
    """The preset (default: by the training set's benchmark) + --set, with the model section of --init."""
    from mft_train.config import load_config, validate

    config = load_config(preset or PRESET_BY_BENCHMARK.get(benchmark, DEFAULT_PRESET), overrides)
    asked = config.get("model") or {}
    conflicting = sorted(k for k, v in asked.items() if init_model.get(k) != v)
    if conflicting:
        raise UserError(f"model setting(s) {', '.join(conflicting)} differ from the --init checkpoint's; "
                        "fine-tuning keeps the checkpoint's architecture")
    config["model"] = dict(init_model)
    return validate(config, where="the fine-tuning config")


def rank_slice(batch: dict, rank: int, world_size: int) -> dict:
    """This rank's equal share of a global batch (rows of every tensor, entries of every list)."""
    if world_size == 1:
        return batch
    rows = len(batch["clip_id"])
    share = rows // world_size
    part = slice(rank * share, (rank + 1) * share)
    return {k: v[part] for k, v in batch.items()}


def epoch_batches(train_set, config: dict, epoch: int, world_size: int):
    """Shuffled (seed, epoch) batches of whole clips; one sentence drawn per clip."""
    from mft_train.eval_data import clip_batches

    data, train = config["data"], config["train"]
    batch = train["batch"]
    return clip_batches(
        train_set, batch, video_tokens=data["video_tokens"], audio_frames=data["audio_frames"],
        max_words=data["max_words"], audio_pad_value=data["audio_pad_value"],
        shuffle_seed=int(np.random.SeedSequence([train["seed"], epoch]).generate_state(1)[0]),
        shuffle_buffer=data["shuffle_buffer"], random_caption=True,
        min_clips=batch if world_size > 1 else 2,  # equal shares under DDP; negatives always
    )


def steps_in_epoch(num_clips: int, batch: int, world_size: int) -> int:
    full, rest = divmod(num_clips, batch)
    return full + (1 if world_size == 1 and rest >= 2 else 0)


def format_results(history: list[dict], best_epoch: int, chance: float) -> str:
    """One row per epoch: mean loss and the headline metrics; the best epoch is starred."""
    header = (f"{'epoch':>5} {'loss':>8} " + " ".join(f"{c + ' R@' + k:>11}" for c in HEADLINE for k in ("1", "5", "10"))
              + f" {'t->va MedR':>11}")
    lines = [f"fine-tuning results (chance R@1 = {chance:.2f})", header]
    for row in history:
        loss = "-" if row["loss"] is None else f"{row['loss']:.4f}"
        metrics = row["results"]
        cells = " ".join(f"{metrics[c]['R' + k]:11.1f}" for c in HEADLINE for k in ("1", "5", "10"))
        star = " *" if row["epoch"] == best_epoch else ""
        lines.append(f"{row['epoch']:>5} {loss:>8} {cells} {metrics['t->va']['MedR']:11.1f}{star}")
    lines.append(f"* best epoch {best_epoch} (by t->va R@1), saved as {BEST_FILE}")
    return "\n".join(lines)


class FineTuner:
    """Wraps an engine Trainer: initial weights from --init, eval mode, epoch loop over whole clips."""

    def __init__(self, config: dict, init_state: dict, train_set, eval_set, run_dir: Path, dist_info) -> None:
        from mft_train.engine import Trainer

        self.config, self.train_set, self.eval_set = config, train_set, eval_set
        self.run_dir, self.dist = Path(run_dir), dist_info
        self.trainer = Trainer(config, train_set.root, run_dir, dist_info)
        try:
            self.trainer.model.load_state_dict(init_state["model"])
        except RuntimeError as err:
            raise UserError(f"--init {init_state.get('path')} does not match its model config ({str(err).splitlines()[0]})") from None
        self.trainer.model.eval()  # BatchNorm frozen: running statistics are used and never updated
        self.init_path = init_state.get("path")
        batch = config["train"]["batch"]
        self.steps_per_epoch = steps_in_epoch(train_set.num_clips, batch, dist_info.world_size)
        if self.steps_per_epoch == 0:
            raise UserError(f"{train_set.root} has {train_set.num_clips} clips, too few for one batch of {batch}")
        self.trainer.steps_per_epoch = self.steps_per_epoch
        self.history: list[dict] = []
        self.best: dict | None = None

    def evaluate(self, epoch: int, loss: float | None) -> dict:
        from mft_train.evaluate import evaluate_checkpoint

        state = {"config": self.config, "path": str(self.run_dir)}
        report = evaluate_checkpoint(state, self.eval_set, "at_once", None, self.trainer.device, model=self.trainer.model)
        self.trainer.model.eval()
        results = report["results"][report["headline"]]
        row = {"epoch": epoch, "step": self.trainer.step, "loss": loss, "results": results}
        self.history.append(row)
        if self.best is None or best_key(results) > best_key(self.best["row"]["results"]):
            self.best = {"row": row, "report": report}
            self.save_best(epoch, results)
        return row

    def save_best(self, epoch: int, results: dict) -> None:
        from mft_train import checkpoints

        state = {"model": self.trainer.model.state_dict(), "config": self.config, "epoch": epoch,
                 "step": self.trainer.step, "metrics": results, "init": self.init_path}
        checkpoints.save_atomic(state, self.run_dir / BEST_FILE)

    def run(self) -> list[dict]:
        from mft_train.engine import RunLogger

        epochs = self.config["train"]["epochs"]
        logger = RunLogger(self.run_dir, self.dist.is_main, 0, self.steps_per_epoch * epochs)
        try:
            if self.dist.is_main:
                self._log_eval(logger, self.evaluate(0, None))
            clips_per_step = self.config["train"]["batch"]
            per_step_schedule = self.config["train"].get("schedule", "exponential") == "cosine"
            for epoch in range(1, epochs + 1):
                losses = []
                tick = time.perf_counter()
                for batch in epoch_batches(self.train_set, self.config, epoch, self.dist.world_size):
                    batch = rank_slice(batch, self.dist.rank, self.dist.world_size)
                    inputs = {k: v for k, v in batch.items() if k not in ("clip_id", "clip_index")}
                    loss, parts = self.trainer.train_step(inputs)
                    lr = self.trainer.optimizer.param_groups[0]["lr"]
                    self.trainer.step += 1
                    if per_step_schedule:
                        self.trainer.scheduler.step()
                    now = time.perf_counter()
                    logger.log(self.trainer.step, loss, parts, lr, clips_per_step / max(now - tick, 1e-9))
                    tick = now
                    losses.append(loss)
                if not per_step_schedule:
                    self.trainer.scheduler.step()
                self.trainer.save()
                if self.dist.is_main:
                    self._log_eval(logger, self.evaluate(epoch, float(np.mean(losses)) if losses else None))
        finally:
            logger.close()
        return self.history

    @staticmethod
    def _log_eval(logger, row: dict) -> None:
        if logger.enabled:
            for combo, metrics in row["results"].items():
                for name in ("R1", "R5", "R10"):
                    logger.writer.add_scalar(f"eval/{combo}/{name}", metrics[name], row["step"])


def run_finetune(args: argparse.Namespace) -> int:
    """Check the inputs (checkpoint, both clip sets, config, out dir), then fine-tune and report."""
    from mft_train import checkpoints
    from mft_train.distributed import init_distributed, shutdown_distributed
    from mft_train.engine import prepare_run_dir
    from mft_train.eval_data import open_clip_set
    from mft_train.evaluate import format_table, load_checkpoint, save_report, write_json_atomic

    init_state = load_checkpoint(Path(args.init))
    train_set = open_clip_set(Path(args.shards))
    eval_set = open_clip_set(Path(args.eval_shards))
    config = finetune_config(args.config, args.overrides, init_state["config"]["model"], train_set.benchmark)
    run_dir = Path(args.out)
    if (run_dir / BEST_FILE).exists() or checkpoints.latest_checkpoint(run_dir) is not None:
        raise UserError(f"{run_dir} already holds a fine-tuning run; choose another --out")
    dist_info = init_distributed(force_cpu=config["train"]["device"] == "cpu")
    try:
        prepare_run_dir(run_dir, config, resume=False, is_main=dist_info.is_main)
        tuner = FineTuner(config, init_state, train_set, eval_set, run_dir, dist_info)
        history = tuner.run()
    finally:
        shutdown_distributed()
    if not dist_info.is_main:
        return 0
    best = tuner.best
    report = best["report"]
    chance = report["chance_R1"]
    best_epoch = best["row"]["epoch"]
    write_json_atomic(run_dir / RESULTS_FILE, {"init": tuner.init_path, "train_shards": str(train_set.root),
                                               "eval_shards": str(eval_set.root), "num_expected": report["num_expected"],
                                               "chance_R1": chance, "best_epoch": best_epoch, "epochs": history})
    json_path, png = save_report(report, run_dir / "best-eval.json")
    print(format_table(report["results"][report["headline"]], report["num_expected"],
                       f"best epoch {best_epoch} on {report['benchmark']} ({report['num_clips']} clips)"))
    print()
    print(format_results(history, best_epoch, chance))
    print(f"finetune: wrote {run_dir / BEST_FILE}, {run_dir / RESULTS_FILE}, {json_path}, {png}", file=sys.stderr)
    return 0
