"""Adam and the two learning-rate schedules of the presets.

exponential (EAO): lr * lr_gamma ** epoch, stepped once per epoch.
cosine (MCN): linear warm-up over warmup_steps, then cosine decay to 0 at the last step, stepped every step.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from mft_train.config import TrainSettings

PER_STEP_SCHEDULES = ("cosine",)


def make_optimizer(model: nn.Module, train: TrainSettings) -> torch.optim.Optimizer:
    return torch.optim.Adam(model.parameters(), lr=train.lr, weight_decay=train.weight_decay)


def make_scheduler(optimizer: torch.optim.Optimizer, train: TrainSettings, total_steps: int) -> torch.optim.lr_scheduler.LRScheduler:
    if train.schedule == "exponential":
        return torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=train.lr_gamma)
    warmup = train.warmup_steps

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total_steps - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def steps_every_step(train: TrainSettings) -> bool:
    """True when the schedule advances after every optimiser step (else after every epoch)."""
    return train.schedule in PER_STEP_SCHEDULES
