"""Pretraining loop: Adam + ExponentialLR per epoch (or warm-up + cosine per step for MCN), AMP, DDP, atomic checkpoints, resume, logging.

The data of each stretch between checkpoints comes from a fresh loader seeded by (seed, epoch,
first step), so a run resumed from a checkpoint sees exactly the batches the uninterrupted run saw,
without replaying the stream. Logs go to TensorBoard (rank 0), a tqdm bar and metrics.jsonl (one
line per step; on resume lines after the checkpoint are dropped, so the file tells one history).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from howto_prep.errors import UserError
from mft_train import checkpoints
from mft_train.config import dump_config
from mft_train.data import LoaderPlan, ShardSet, batches_per_epoch, discover_shards, make_loader
from mft_train.data_clips import ClipSpec
from mft_train.distributed import DistInfo, all_reduce_mean, convert_batchnorm, gather_outputs
from mft_train.losses import combinatorial_loss
from mft_train.models import build_model

METRICS_FILE = "metrics.jsonl"
CONFIG_FILE = "config.yaml"
TENSORBOARD_DIR = "tensorboard"
EMBEDDING_KEYS = ("t", "v", "a", "tv", "ta", "va")


@dataclass
class TrainResult:
    """What a call to `train` did: the steps it ran and their losses (total and per term)."""

    first_step: int
    last_step: int
    losses: list[float] = field(default_factory=list)
    terms: list[dict[str, float]] = field(default_factory=list)
    checkpoint: Path | None = None


def clip_spec(data_cfg: dict) -> ClipSpec:
    return ClipSpec(
        clip_seconds=data_cfg["clip_seconds"],
        video_tokens=data_cfg["video_tokens"],
        audio_frames=data_cfg["audio_frames"],
        audio_shift_seconds=data_cfg["audio_shift_seconds"] if data_cfg["audio_shift"] else 0.0,
        max_words=data_cfg["max_words"],
    )


def choose_device(train_cfg: dict, dist_info: DistInfo) -> torch.device:
    wanted = train_cfg["device"]
    if wanted == "cuda" and dist_info.device.type != "cuda":
        raise UserError("train.device=cuda but no GPU is visible")
    return torch.device("cpu") if wanted == "cpu" else dist_info.device


def autocast_context(device: torch.device, amp: bool) -> contextlib.AbstractContextManager:
    """bf16 autocast on GPU when AMP is on; CPU trains in fp32 (bf16 on CPU is slow and lossy)."""
    if amp and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def move_batch(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


def make_scheduler(optimizer: torch.optim.Optimizer, train_cfg: dict, total_steps: int) -> torch.optim.lr_scheduler.LRScheduler:
    """exponential: lr * gamma ** epoch (stepped per epoch, EAO); cosine: linear warm-up then cosine
    decay to 0 over the run (stepped per step, MCN)."""
    if train_cfg["schedule"] == "exponential":
        return torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=train_cfg["lr_gamma"])
    warmup = train_cfg["warmup_steps"]

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total_steps - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


class CombinatorialObjective:
    """Everything-at-Once's six-term loss; stateless."""

    def __init__(self, loss_cfg: dict) -> None:
        self.weights, self.temperature = loss_cfg["weights"], loss_cfg["temperature"]

    def __call__(self, out: dict) -> tuple[torch.Tensor, dict]:
        return combinatorial_loss(out, self.weights, self.temperature)

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class MCNObjective:
    """MCN's MMS + clustering + reconstruction loss; its queue and centroids go into checkpoints."""

    def __init__(self, loss_cfg: dict, model: nn.Module, device: torch.device) -> None:
        from mft_train.mcn_losses import ClusterState, MCNLossConfig

        self.config = MCNLossConfig.from_dict(loss_cfg)
        self.device = device
        self.state = ClusterState(model.config.embed_dim, self.config)

    def __call__(self, out: dict) -> tuple[torch.Tensor, dict]:
        from mft_train.mcn_losses import mcn_loss

        return mcn_loss(out, self.state, self.config)

    def state_dict(self) -> dict:
        return self.state.state_dict()

    def load_state_dict(self, state: dict) -> None:
        if state:
            self.state.load_state_dict(state, self.device)


def make_objective(loss_cfg: dict, model: nn.Module, device: torch.device):
    name = loss_cfg.get("name", "combinatorial")
    if name == "combinatorial":
        return CombinatorialObjective(loss_cfg)
    if name == "mcn":
        return MCNObjective(loss_cfg, model, device)
    raise UserError(f"unknown loss.name {name!r}; expected combinatorial or mcn")


class Trainer:
    """Owns the model, optimiser, scheduler and run directory of one pretraining run."""

    def __init__(self, config: dict, shards_dir: Path, run_dir: Path, dist_info: DistInfo) -> None:
        self.config, self.run_dir, self.dist = config, Path(run_dir), dist_info
        data_cfg, train_cfg = config["data"], config["train"]
        self.shards: ShardSet = discover_shards(shards_dir)
        self.spec = clip_spec(data_cfg)
        if train_cfg["batch"] % dist_info.world_size:
            raise UserError(f"train.batch {train_cfg['batch']} must be divisible by the number of processes {dist_info.world_size}")
        self.videos_per_rank = train_cfg["batch"] // dist_info.world_size
        self.steps_per_epoch = train_cfg["steps_per_epoch"] or batches_per_epoch(self.shards, train_cfg["batch"])
        self.total_steps = self.steps_per_epoch * train_cfg["epochs"]
        self.device = choose_device(train_cfg, dist_info)
        if train_cfg["cpu_threads"]:
            # On a shared or oversubscribed CPU, fewer threads per process avoids spin-wait stalls.
            torch.set_num_threads(train_cfg["cpu_threads"])

        torch.manual_seed(train_cfg["seed"])  # same initial weights on every rank (DDP also broadcasts)
        model = build_model(config["model"])
        if train_cfg["sync_batchnorm"]:
            model = convert_batchnorm(model, self.device)
        self.model = model.to(self.device)
        self.ddp = (
            DistributedDataParallel(self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
            if dist_info.enabled
            else None
        )
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=train_cfg["lr"], weight_decay=train_cfg["weight_decay"])
        self.scheduler = make_scheduler(self.optimizer, train_cfg, self.total_steps)
        self.objective = make_objective(config["loss"], self.model, self.device)
        # bf16 needs no loss scaling; the scaler is kept (disabled) so checkpoints have one format.
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=False)
        self.step = 0

    # ---- checkpoints -------------------------------------------------------------------------
    def state(self) -> dict:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "objective": self.objective.state_dict(),
            "rng": checkpoints.rng_state(),
            "step": self.step,
            "epoch": self.step // self.steps_per_epoch,
            "steps_per_epoch": self.steps_per_epoch,
            "config": self.config,
        }

    def save(self) -> Path:
        path = checkpoints.checkpoint_path(self.run_dir, self.step)
        if self.dist.is_main:
            checkpoints.save_atomic(self.state(), path)
            checkpoints.prune(self.run_dir, self.config["train"]["keep_checkpoints"])
        return path

    def resume(self) -> Path | None:
        path = checkpoints.latest_checkpoint(self.run_dir)
        if path is None:
            return None
        state = torch.load(path, map_location=self.device, weights_only=False)
        if state["config"]["model"] != self.config["model"]:
            raise UserError(f"{path} was trained with a different model config; use the same --config/--set or another --out")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.objective.load_state_dict(state.get("objective", {}))
        checkpoints.restore_rng_state(state["rng"])
        self.step = int(state["step"])
        return path

    # ---- one step -----------------------------------------------------------------------------
    def train_step(self, batch: dict) -> tuple[float, dict[str, float]]:
        train_cfg = self.config["train"]
        batch = move_batch(batch, self.device)
        self.optimizer.zero_grad(set_to_none=True)
        with autocast_context(self.device, train_cfg["amp"]):
            out = (self.ddp or self.model)(batch)
        out = gather_outputs({k: (v.float() if v.is_floating_point() else v) for k, v in out.items()})
        loss, parts = self.objective(out)
        # Keep every embedding in the graph even when a batch drops a term, so DDP always
        # sees gradients for every parameter (zero ones for the unused path).
        loss = loss + 0.0 * sum(out[key].sum() for key in EMBEDDING_KEYS if key in out)
        self.scaler.scale(loss).backward()
        if train_cfg["grad_clip"] > 0:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.model.parameters(), train_cfg["grad_clip"])
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return float(loss.detach()), {k: float(v) for k, v in parts.items()}

    # ---- the loop -----------------------------------------------------------------------------
    def loader_for(self, first_step: int, num_batches: int):
        data_cfg = self.config["data"]
        plan = LoaderPlan(
            videos_per_rank=self.videos_per_rank,
            clips_per_video=data_cfg["clips_per_video"],
            num_batches=num_batches,
            seed=self.config["train"]["seed"],
            epoch=first_step // self.steps_per_epoch,
            first_step=first_step,
            rank=self.dist.rank,
            world_size=self.dist.world_size,
            order=data_cfg["order"],
            shuffle_buffer=data_cfg["shuffle_buffer"],
            audio_pad_value=data_cfg["audio_pad_value"],
        )
        return make_loader(self.shards, self.spec, plan, data_cfg["workers"])

    def run(self, max_steps: int | None = None) -> TrainResult:
        """Train until the last epoch ends (or `max_steps` more steps); checkpoint every N steps and at the end."""
        train_cfg = self.config["train"]
        stop = self.total_steps if max_steps is None else min(self.total_steps, self.step + max_steps)
        result = TrainResult(first_step=self.step, last_step=self.step)
        clips_per_step = train_cfg["batch"] * self.config["data"]["clips_per_video"]
        logger = RunLogger(self.run_dir, self.dist.is_main, self.step, self.total_steps, train_cfg["log_every"])
        try:
            while self.step < stop:
                epoch_end = (self.step // self.steps_per_epoch + 1) * self.steps_per_epoch
                next_checkpoint = (self.step // train_cfg["checkpoint_every"] + 1) * train_cfg["checkpoint_every"]
                segment_end = min(epoch_end, next_checkpoint, stop)
                tick = time.perf_counter()
                for batch in self.loader_for(self.step, segment_end - self.step):
                    loss, parts = self.train_step(batch)
                    lr = self.optimizer.param_groups[0]["lr"]
                    self.step += 1
                    if train_cfg["schedule"] == "cosine":
                        self.scheduler.step()
                    now = time.perf_counter()
                    clips_per_s = clips_per_step / max(now - tick, 1e-9)
                    tick = now
                    result.losses.append(loss)
                    result.terms.append(parts)
                    logger.log(self.step, loss, parts, lr, clips_per_s)
                if self.step != segment_end:
                    raise RuntimeError(f"the data loader ended after step {self.step}, expected {segment_end}")
                if self.step == epoch_end and train_cfg["schedule"] == "exponential":
                    self.scheduler.step()
                if self.step % train_cfg["checkpoint_every"] == 0 or self.step == stop:
                    result.checkpoint = self.save()
        finally:
            logger.close()
        result.last_step = self.step
        return result


class RunLogger:
    """Rank-0 logging: metrics.jsonl and the tqdm bar every step; TensorBoard scalars (each loss
    term, lr, clips/s) every `every` steps."""

    def __init__(self, run_dir: Path, enabled: bool, step: int, total: int, every: int = 1) -> None:
        self.enabled, self.every = enabled, every
        self.metrics = Path(run_dir) / METRICS_FILE
        if not enabled:
            return
        from torch.utils.tensorboard import SummaryWriter

        truncate_metrics(self.metrics, step)
        self.writer = SummaryWriter(str(Path(run_dir) / TENSORBOARD_DIR), purge_step=step or None)
        self.bar = tqdm(total=total, initial=step, desc="pretrain", unit="step", dynamic_ncols=True)
        self.handle = open(self.metrics, "a")

    def log(self, step: int, loss: float, parts: dict[str, float], lr: float, clips_per_s: float) -> None:
        if not self.enabled:
            return
        if not math.isfinite(loss):
            raise UserError(f"the loss became {loss} at step {step}; lower train.lr or check the shards")
        self.handle.write(json.dumps({"step": step, "loss": loss, **{f"loss_{k}": v for k, v in parts.items()}, "lr": lr, "clips_per_s": clips_per_s}) + "\n")
        self.handle.flush()
        self.bar.update(1)
        if step % self.every and step != 1:
            return
        self.writer.add_scalar("loss/total", loss, step)
        for term, value in parts.items():
            self.writer.add_scalar(f"loss/{term}", value, step)
        self.writer.add_scalar("lr", lr, step)
        self.writer.add_scalar("clips_per_s", clips_per_s, step)
        self.bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", clips_s=f"{clips_per_s:.0f}")

    def close(self) -> None:
        if self.enabled:
            self.bar.close()
            self.writer.close()
            self.handle.close()


def truncate_metrics(path: Path, step: int) -> None:
    """Drop metrics lines after `step` (left by a run that died after its last checkpoint); atomic."""
    if not path.is_file():
        return
    kept = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= step]
    temp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    temp.write_text("".join(line + "\n" for line in kept))
    os.replace(temp, path)


def prepare_run_dir(run_dir: Path, config: dict, resume: bool, is_main: bool) -> None:
    """Create the run folder and write config.yaml; refuse to mix runs without --resume."""
    run_dir = Path(run_dir)
    if checkpoints.latest_checkpoint(run_dir) is not None and not resume:
        raise UserError(f"{run_dir} already holds a run; pass --resume to continue it or choose another --out")
    if is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        temp = run_dir / f".{CONFIG_FILE}.tmp-{os.getpid()}"
        temp.write_text(dump_config(config))
        os.replace(temp, run_dir / CONFIG_FILE)


def train(config: dict, shards_dir: Path, run_dir: Path, dist_info: DistInfo, resume: bool = False, max_steps: int | None = None) -> TrainResult:
    """Build everything, resume if asked, run; returns the losses of the steps this call ran."""
    prepare_run_dir(run_dir, config, resume, dist_info.is_main)
    trainer = Trainer(config, shards_dir, run_dir, dist_info)
    if resume:
        trainer.resume()
    result = trainer.run(max_steps)
    result.losses = [all_reduce_mean(v, trainer.device) for v in result.losses] if dist_info.enabled else result.losses
    return result
