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
    """Adam over the model's parameters (built after the model moved to its device), fused where possible."""
    params = list(model.parameters())
    return torch.optim.Adam(params, lr=train.lr, weight_decay=train.weight_decay, **adam_implementation(params))


def adam_implementation(params: list[torch.Tensor]) -> dict[str, bool]:
    """{"fused": True} when every parameter is a floating tensor on a device with a fused Adam kernel.

    The fused kernel updates all parameters in a few launches on CUDA (one per tensor list chunk
    instead of several per parameter) and is about 3x faster than the default on CPU (the Adam row of
    `python bench/bench_fused.py`); it computes
    the same update up to float rounding. Otherwise {} (torch's default: foreach on CUDA, a loop on CPU).
    """
    fused_devices = {"cuda", "cpu"}
    if params and all(p.is_floating_point() and p.device.type in fused_devices for p in params):
        return {"fused": True}
    return {}


def use_adam_implementation(optimizer: torch.optim.Optimizer, implementation: dict[str, bool]) -> None:
    """Re-apply the implementation after `load_state_dict` (a checkpoint's param groups carry the old one)."""
    for group in optimizer.param_groups:
        for key in ("fused", "foreach"):
            group[key] = implementation.get(key)
    if implementation.get("fused"):  # the fused kernel reads float32 step counts on the parameter's device
        for param, state in optimizer.state.items():
            if torch.is_tensor(state.get("step")):
                state["step"] = state["step"].to(device=param.device, dtype=torch.float32)


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
