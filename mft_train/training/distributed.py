"""torch.distributed plumbing: init from the torchrun environment, gather embeddings with gradients, SyncBatchNorm.

Under `torchrun` (RANK, WORLD_SIZE, LOCAL_RANK set) the process group uses nccl on GPU and gloo on
CPU; without those variables everything runs as a single process and the helpers are no-ops.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_fn
from torch import nn

from howto_prep.errors import UserError
from mft_train.training.device import available_device


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits: rank among world_size, and the device it trains on."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(force_cpu: bool = False) -> DistInfo:
    """Join the torchrun process group if there is one; choose the device (cuda:LOCAL_RANK or cpu)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device("cpu") if force_cpu else available_device(local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return DistInfo(rank, world_size, local_rank, device)


def shutdown_distributed() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def gather_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate `tensor` from all ranks along dim 0 (rank order), keeping gradients to every rank.

    The backward of torch.distributed.nn's all_gather sums the incoming gradients across ranks, so
    after DDP averages the parameter gradients they equal those of one process on the global batch.
    """
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return tensor
    return torch.cat(dist_fn.all_gather(tensor), dim=0)


def gather_outputs(out: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Gather every model output (embeddings and emptiness flags) so the loss sees the global batch."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return out
    gathered = {}
    for key, value in out.items():
        if value.dtype == torch.bool:  # flags carry no gradient; all_gather of bytes is enough
            parts = [torch.empty_like(value, dtype=torch.uint8) for _ in range(dist.get_world_size())]
            dist.all_gather(parts, value.to(torch.uint8))
            gathered[key] = torch.cat(parts).bool()
        else:
            gathered[key] = gather_with_grad(value.contiguous())
    return gathered


def all_reduce_mean(value: float, device: torch.device) -> float:
    """Mean of a Python number over ranks (for logging)."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return value
    tensor = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return float(tensor.item()) / dist.get_world_size()


def sync_batchnorm(module: nn.Module, device: torch.device) -> nn.Module:
    """BatchNorm statistics over the global batch: torch's SyncBatchNorm, which runs on GPUs only.

    In a single process the local batch is the global batch, so nothing changes.
    """
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return module
    if device.type != "cuda":
        raise UserError("train.sync_batchnorm needs GPUs (torch.nn.SyncBatchNorm); set it false on CPU")
    return nn.SyncBatchNorm.convert_sync_batchnorm(module)


def share_per_rank(global_count: int, world_size: int, what: str = "train.batch") -> int:
    """Each rank's equal share of a global batch; UserError when it does not divide evenly."""
    if global_count % world_size:
        raise UserError(f"{what} {global_count} must be divisible by the number of processes {world_size}")
    return global_count // world_size
