"""The one training loop: model, optimiser, schedule, objective, steps, checkpoints, resume.

The Trainer does not know where its batches come from or what happens between epochs:
- a BatchSource says how many steps make an epoch and hands out a fresh iterable of batches for
  each stretch between checkpoints (pretraining: the shard stream seeded by (seed, epoch, first
  step), so a resumed run sees exactly the batches the uninterrupted run saw; fine-tuning: one
  epoch of whole clips);
- optional EpochHooks run before the first epoch and after every epoch and return TensorBoard
  scalars (fine-tuning evaluates there and keeps best.pt).
Each stretch ends at an epoch end, a checkpoint step or the last step, whichever comes first; the
exponential schedule steps at epoch ends, the cosine one after every step.

After every step all ranks agree, in one all_reduce of the logged numbers, on the loss and on whether
a stop was requested (mft_train.training.preemption): a non-finite loss stops every rank after the
same step with one line (no rank is left waiting in a collective), and SIGTERM stops every rank
after the same step with a checkpoint that records the step its loader started at, so `--resume`
skips to the exact batch and continues with the batches the uninterrupted run would have seen.
"""

from __future__ import annotations

import itertools
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Protocol

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from howto_prep.errors import Diverged, Interrupted, UserError
from mft_train.config import RunConfig
from mft_train.data.batch import model_inputs
from mft_train.losses.objectives import make_objective
from mft_train.models import build_model
from mft_train.training import checkpoints, distributed
from mft_train.training.device import autocast_context, choose_device, configure_backends, move_batch
from mft_train.training.distributed import DistInfo, gather_outputs
from mft_train.training.preemption import StopRequest
from mft_train.training.optim import (
    adam_implementation,
    make_optimizer,
    make_scheduler,
    steps_every_step,
    use_adam_implementation,
)
from mft_train.training.run_folder import RunLogger


@dataclass
class TrainResult:
    """What a call to `Trainer.run` did: the steps it ran and their losses (total and per term)."""

    first_step: int
    last_step: int
    losses: list[float] = field(default_factory=list)
    terms: list[dict[str, float]] = field(default_factory=list)
    checkpoint: Path | None = None


class BatchSource(Protocol):
    """Where a run's batches come from."""

    steps_per_epoch: int
    clips_per_step: int  # over all ranks, for the clips/s log

    def batches(self, first_step: int, count: int) -> Iterable[dict]:
        """This rank's `count` batches for the global steps first_step + 1 ... first_step + count."""
        ...


class EpochHooks(Protocol):
    """What happens around epochs; each returns TensorBoard scalars to log at the current step."""

    def before_first_epoch(self, trainer: Trainer) -> dict[str, float]: ...

    def after_epoch(self, trainer: Trainer, epoch: int, losses: list[float]) -> dict[str, float]: ...


class CheckpointMirror(Protocol):
    """Where checkpoints are copied after each local save (mft_train.training.run_store.RunMirror)."""

    def publish_checkpoint(self, path: Path, step: int) -> None: ...

    def prune(self, keep: int) -> None: ...


class Trainer:
    """Owns the model, optimiser, scheduler, objective and step counter of one run."""

    def __init__(self, config: RunConfig, source: BatchSource, run_dir: Path, dist_info: DistInfo,
                 hooks: EpochHooks | None = None, checkpoint_every: int | None = None, name: str = "pretrain",
                 mirror: CheckpointMirror | None = None) -> None:
        train = config.train
        self.config, self.source, self.run_dir, self.dist = config, source, Path(run_dir), dist_info
        self.hooks, self.name, self.mirror = hooks, name, mirror
        self.checkpoint_every = checkpoint_every or train.checkpoint_every
        self.steps_per_epoch = source.steps_per_epoch
        self.total_steps = self.steps_per_epoch * train.epochs
        self.device = choose_device(train.device, dist_info.device)
        if train.cpu_threads:
            # On a shared or oversubscribed CPU, fewer threads per process avoids spin-wait stalls.
            torch.set_num_threads(train.cpu_threads)
        configure_backends(self.device)

        torch.manual_seed(train.seed)  # same initial weights on every rank (DDP also broadcasts)
        model = build_model(config.model)
        if train.sync_batchnorm:
            model = distributed.sync_batchnorm(model, self.device)
        self.model = model.to(self.device)
        if train.compile:
            # In place (nn.Module.compile): parameter and state_dict names stay those of the model.
            self.model.compile()
        self.ddp = (
            DistributedDataParallel(self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
            if dist_info.enabled
            else None
        )
        self.optimizer = make_optimizer(self.model, train)
        self.scheduler = make_scheduler(self.optimizer, train, self.total_steps)
        self.objective = make_objective(config.loss, self.model, self.device)
        self.step = 0
        self.data_origin = 0  # the step the current stretch's loader started at (a stop may fall inside it)
        self.stop = StopRequest()
        self.stop_agreed = False  # the last step's stop decision, the same on every rank

    # ---- checkpoints -------------------------------------------------------------------------
    def state(self) -> dict:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "objective": self.objective.state_dict(),
            "rng": checkpoints.rng_state(),
            "step": self.step,
            "data_origin": self.data_origin,
            "epoch": self.step // self.steps_per_epoch,
            "steps_per_epoch": self.steps_per_epoch,
            "config": self.config.to_dict(),
        }

    def save(self) -> Path:
        """Rank 0: save locally; publish to the mirror (checkpoint whole, pointer last); then prune
        locally and, once the pointer has moved past them, on the mirror."""
        path = checkpoints.checkpoint_path(self.run_dir, self.step)
        if self.dist.is_main:
            keep = self.config.train.keep_checkpoints
            checkpoints.save_checkpoint(self.state(), path)
            if self.mirror is not None:
                self.mirror.publish_checkpoint(path, self.step)
            checkpoints.prune(self.run_dir, keep)
            if self.mirror is not None:
                self.mirror.prune(keep)
        return path

    def resume(self) -> Path | None:
        """Continue from the newest checkpoint, if any (older ones may hold an unused "scaler" entry)."""
        path = checkpoints.latest_checkpoint(self.run_dir)
        if path is None:
            return None
        state = checkpoints.read_checkpoint_file(path, map_location=self.device)
        if state["config"]["model"] != self.config.model:
            raise UserError(f"{path} was trained with a different model config; use the same --config/--set or another --out")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        use_adam_implementation(self.optimizer, adam_implementation(list(self.model.parameters())))
        self.scheduler.load_state_dict(state["scheduler"])
        self.objective.load_state_dict(state.get("objective", {}))
        checkpoints.restore_rng_state(state["rng"])
        self.step = int(state["step"])
        self.data_origin = int(state.get("data_origin", self.step))
        return path

    # ---- one step -----------------------------------------------------------------------------
    def train_step(self, batch: dict) -> tuple[float, dict[str, float], bool]:
        """Forward (autocast), gather over ranks, loss, backward, optional clipping, optimiser step.

        The logged numbers are read back in one copy at the end (read_values), so a step waits for the
        device about three times (token counts in the forward, the computed loss terms, the logged values)
        instead of a few times per loss term. Returns (loss, terms, stop): all three agreed by every rank.
        """
        train = self.config.train
        batch = move_batch(model_inputs(batch), self.device)
        self.optimizer.zero_grad(set_to_none=True)
        with autocast_context(self.device, train.amp):
            out = (self.ddp or self.model)(batch)
        out = gather_outputs({k: (v.float() if v.is_floating_point() else v) for k, v in out.items()})
        loss, parts = self.objective(out)
        loss.backward()
        if train.grad_clip > 0:
            nn.utils.clip_grad_norm_(self.model.parameters(), train.grad_clip)
        self.optimizer.step()
        return read_values(loss, parts, self.stop.requested, self.dist.world_size if self.dist.enabled else 1)

    # ---- the loop -----------------------------------------------------------------------------
    def run(self, max_steps: int | None = None) -> TrainResult:
        """Train until the last epoch ends (or `max_steps` more steps); checkpoint every N steps and at the end."""
        per_step_schedule = steps_every_step(self.config.train)
        stop = self.total_steps if max_steps is None else min(self.total_steps, self.step + max_steps)
        result = TrainResult(first_step=self.step, last_step=self.step)
        logger = RunLogger(self.run_dir, self.dist.is_main, self.step, self.total_steps,
                           self.config.train.log_every, desc=self.name)
        try:
            with self.stop.installed():
                if self.hooks is not None and self.step == 0:
                    logger.scalars(self.hooks.before_first_epoch(self), self.step)
                while self.step < stop:
                    epoch_start = self.step // self.steps_per_epoch * self.steps_per_epoch
                    epoch_end = epoch_start + self.steps_per_epoch
                    next_checkpoint = (self.step // self.checkpoint_every + 1) * self.checkpoint_every
                    end = min(epoch_end, next_checkpoint, stop)
                    if not self._run_stretch(end, result, logger):
                        self._stop_here(result)  # inside the stretch: its loader's start is kept
                    self.data_origin = self.step
                    if self.step == epoch_end and not per_step_schedule:
                        self.scheduler.step()
                    if self.step % self.checkpoint_every == 0 or self.step == stop:
                        result.checkpoint = self.save()
                    if self.step == epoch_end and self.hooks is not None:
                        ran = self.step - max(epoch_start, result.first_step)
                        scalars = self.hooks.after_epoch(self, epoch_end // self.steps_per_epoch, result.losses[len(result.losses) - ran:])
                        logger.scalars(scalars, self.step)
                    if self.stop_agreed and self.step < stop:  # agreed at the stretch's last step
                        self._stop_here(result)
        finally:
            logger.close()
        result.last_step = self.step
        return result

    def _stop_here(self, result: TrainResult) -> None:
        """Checkpoint now (every rank waits for it) and stop with exit 130."""
        path = checkpoints.checkpoint_path(self.run_dir, self.step)
        if result.checkpoint != path:  # not saved at this step yet
            path = self.save()
        if self.dist.enabled:
            dist.barrier()  # no rank exits (and makes torchrun kill the others) before the checkpoint is written
        result.last_step, result.checkpoint = self.step, path
        why = self.stop.signal_name or "a stop request on another rank"
        raise Interrupted(f"{why} after step {self.step}; checkpoint {path} written: "
                          "rerun with --resume to continue with the same batches")

    def _run_stretch(self, end: int, result: TrainResult, logger: RunLogger) -> bool:
        """Steps from self.step to `end` on one loader of the batch source, started at the stretch's
        first step (`data_origin`: earlier than self.step after a stop inside the stretch, whose batches
        are then skipped). False when a stop request ended it early."""
        per_step_schedule = steps_every_step(self.config.train)
        origin = min(self.data_origin, self.step)
        batches = itertools.islice(self.source.batches(origin, end - origin), self.step - origin, None)
        tick = time.perf_counter()
        for batch in batches:
            loss, parts, self.stop_agreed = self.train_step(batch)
            lr = self.optimizer.param_groups[0]["lr"]
            self.step += 1
            if not math.isfinite(loss):
                raise Diverged(f"the loss became {loss} at step {self.step} (every rank stops here); "
                                "lower train.lr or check the shards")
            if per_step_schedule:
                self.scheduler.step()
            now = time.perf_counter()
            clips_per_s = self.source.clips_per_step / max(now - tick, 1e-9)
            tick = now
            result.losses.append(loss)
            result.terms.append(parts)
            logger.log(self.step, loss, parts, lr, clips_per_s)
            if self.stop_agreed and self.step < end:
                return False
        if self.step != end:
            raise RuntimeError(f"the data loader ended after step {self.step}, expected {end}")
        return True


def read_values(loss: torch.Tensor, parts: dict[str, torch.Tensor | float], stop_requested: bool = False,
                world_size: int = 1) -> tuple[float, dict[str, float], bool]:
    """The step's loss and terms as Python floats in one device-to-host copy (one synchronisation),
    and whether any rank was asked to stop.

    Under DDP (world_size > 1) the numbers are averaged over ranks and the stop flags summed in one
    all_reduce of a few floats: every rank then reads the same loss (a NaN on any rank is a NaN on all)
    and the same stop decision, so all leave the loop after the same step.
    """
    keys = [key for key, value in parts.items() if torch.is_tensor(value)]
    values = torch.stack([loss.detach().float().reshape(())] + [parts[key].detach().float().reshape(()) for key in keys]
                         + [torch.tensor(float(stop_requested), device=loss.device)])
    if world_size > 1:
        dist.all_reduce(values)
        values[:-1] /= world_size
    numbers = values.tolist()
    read = dict(zip(keys, numbers[1:-1]))
    return numbers[0], {key: read[key] if key in read else float(value) for key, value in parts.items()}, numbers[-1] > 0
