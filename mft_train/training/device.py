"""Where a run executes: the device it asks for, bf16 autocast, backend settings, and moving batches there.

Training, fine-tuning and evaluation all go through these functions, so "train.device",
"train.amp" and non-blocking copies mean the same in every command.
"""

from __future__ import annotations

import contextlib

import torch

from howto_prep.errors import UserError


def available_device(local_rank: int = 0) -> torch.device:
    """This process's GPU when there is one, else the CPU."""
    return torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")


def choose_device(wanted: str, available: torch.device) -> torch.device:
    """train.device ("auto", "cpu" or "cuda") against the device this process could use."""
    if wanted == "cuda" and available.type != "cuda":
        raise UserError("train.device=cuda but no GPU is visible")
    return torch.device("cpu") if wanted == "cpu" else available


def autocast_context(device: torch.device, amp: bool) -> contextlib.AbstractContextManager:
    """bf16 autocast on GPU when AMP is on; CPU runs in fp32 (bf16 on CPU is slow and lossy).

    bf16 keeps fp32's exponent range, so no loss scaling (GradScaler) is needed.
    """
    if amp and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def configure_backends(device: torch.device) -> None:
    """Backend settings for training on `device`: cuDNN autotuning of DAVEnet's convolutions on GPU.

    Training shapes are fixed (the same clip lengths every step), so cuDNN's benchmark mode picks the
    fastest convolution algorithm once per shape and reuses it. Nothing changes on the CPU.
    """
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True


def move_batch(batch: dict, device: torch.device) -> dict:
    """Tensors to `device` (non-blocking); other entries (ids) as they are.

    The copies overlap with compute only from pinned host memory (the pretraining loader pins its
    batches when a GPU is present, mft_train.data.stream); float16 features stay float16 on the way
    and the model widens them on the device.
    """
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}
