"""torch.distributed plumbing: init from the torchrun environment, gather embeddings with gradients.

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
    use_cuda = torch.cuda.is_available() and not force_cpu
    device = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(device)
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
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


class GlobalBatchNorm(nn.Module):
    """BatchNorm whose batch statistics span all ranks (autograd through all_reduce); any backend.

    torch.nn.SyncBatchNorm only runs on GPU; this one also runs under gloo on CPU, so a DDP run
    normalises exactly like one process on the global batch. Running statistics are updated with the
    unbiased global variance, as nn.BatchNorm does.
    """

    def __init__(self, source: nn.modules.batchnorm._BatchNorm) -> None:
        super().__init__()
        self.eps, self.momentum, self.affine = source.eps, source.momentum, source.affine
        self.weight, self.bias = source.weight, source.bias
        self.register_buffer("running_mean", source.running_mean)
        self.register_buffer("running_var", source.running_var)
        self.register_buffer("num_batches_tracked", source.num_batches_tracked)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return nn.functional.batch_norm(
                x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps
            )
        dims = [d for d in range(x.ndim) if d != 1]
        shape = [1, -1] + [1] * (x.ndim - 2)
        xf = x.float()
        count = torch.tensor([float(x.numel() // x.shape[1])], device=x.device)
        moments = torch.cat([xf.sum(dim=dims), (xf * xf).sum(dim=dims), count])
        if dist.is_initialized() and dist.get_world_size() > 1:
            moments = dist_fn.all_reduce(moments)
        channels = x.shape[1]
        total = moments[-1]
        mean = moments[:channels] / total
        var = (moments[channels : 2 * channels] / total - mean * mean).clamp(min=0.0)
        with torch.no_grad():
            self.num_batches_tracked += 1
            unbiased = var * total / (total - 1).clamp(min=1.0)
            self.running_mean.lerp_(mean.to(self.running_mean.dtype), self.momentum)
            self.running_var.lerp_(unbiased.to(self.running_var.dtype), self.momentum)
        out = (xf - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            out = out * self.weight.view(shape) + self.bias.view(shape)
        return out.to(x.dtype)


def convert_batchnorm(module: nn.Module, device: torch.device) -> nn.Module:
    """Make every BatchNorm use global-batch statistics: SyncBatchNorm on GPU, GlobalBatchNorm elsewhere."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    for name, child in module.named_children():
        if isinstance(child, nn.modules.batchnorm._BatchNorm):
            setattr(module, name, GlobalBatchNorm(child))
        else:
            convert_batchnorm(child, device)
    return module
