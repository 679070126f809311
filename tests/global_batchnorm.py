"""BatchNorm over the global batch on CPU (gloo), for the DDP test only.

torch.nn.SyncBatchNorm runs on GPUs only, so mft_train's `train.sync_batchnorm` needs GPUs. To
check on a CPU that two gloo ranks train exactly like one process, the test swaps in this module
(autograd through all_reduce), in process with `install()` and under torchrun by running this file:
    python -m torch.distributed.run --nproc_per_node 2 tests/global_batchnorm.py pretrain ...
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_fn
from torch import nn


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


def convert_to_global_batchnorm(module: nn.Module, device: torch.device) -> nn.Module:
    """Replace every BatchNorm of `module` (in place) by a GlobalBatchNorm sharing its parameters and buffers."""
    for name, child in module.named_children():
        if isinstance(child, nn.modules.batchnorm._BatchNorm):
            setattr(module, name, GlobalBatchNorm(child))
        else:
            convert_to_global_batchnorm(child, device)
    return module


def install() -> None:
    """Make `train.sync_batchnorm` use GlobalBatchNorm (in one process too, so both runs normalise alike)."""
    from mft_train.training import distributed

    distributed.sync_batchnorm = convert_to_global_batchnorm


if __name__ == "__main__":
    install()
    from mft_train.cli import main

    raise SystemExit(main())
