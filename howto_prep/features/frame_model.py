"""Batched inference shared by the 2D and 3D visual models: device, precision, memory format, and
frames -> unit-length float16 rows. Each model only says how a slice of frames becomes its input."""

from __future__ import annotations

import contextlib
from typing import Any

import numpy as np

from howto_prep.errors import UserError


class FrameFeatureModel:
    """uint8 RGB frames (N, H, W, 3) -> (rows, dim) float16 L2-normalised rows.

    Subclasses set `dim` and `frames_per_batch` and implement `prepare` (a slice of frames -> the
    model's float input batch, already on the device).
    """

    dim: int

    def __init__(self, model: Any, device: str, batch_size: int, half: bool | None, memory_format: Any | None,
                 info: dict[str, Any]) -> None:
        import torch

        self.device = torch.device(device)
        self.batch_size = max(1, int(batch_size))
        self.half = resolve_half(half, str(device))
        self.memory_format = memory_format
        self.model = ready_for_inference(model, self.device, memory_format)
        self.info = info

    @property
    def frames_per_batch(self) -> int:
        return self.batch_size

    def prepare(self, frames: np.ndarray) -> Any:
        raise NotImplementedError

    def __call__(self, frames: np.ndarray) -> np.ndarray:
        import torch

        frames = check_frames(frames)
        if len(frames) == 0:
            return np.zeros((0, self.dim), dtype=np.float16)
        step = self.frames_per_batch
        outputs = []
        with torch.inference_mode(), autocast_for(str(self.device), self.half):
            for start in range(0, len(frames), step):
                batch = self.prepare(frames[start:start + step])
                if self.memory_format is not None:
                    batch = batch.contiguous(memory_format=self.memory_format)
                outputs.append(l2_normalised_float16(self.model(batch)))
        return np.concatenate(outputs, axis=0)


def check_frames(frames: np.ndarray) -> np.ndarray:
    """A clear error for anything but uint8 RGB (N, H, W, 3)."""
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise UserError(f"expected uint8 RGB frames of shape (N, H, W, 3), got {frames.dtype} {frames.shape}")
    return frames


def ready_for_inference(model: Any, device: Any, memory_format: Any | None) -> Any:
    """Eval mode on `device`, in `memory_format` (channels_last / channels_last_3d) when given."""
    model.eval().to(device)
    return model if memory_format is None else model.to(memory_format=memory_format)


def frames_to_tensor(frames: np.ndarray, device: Any) -> Any:
    """uint8 (N, H, W, 3) -> uint8 tensor (N, 3, H, W) on `device`; Ray hands read-only arrays, so
    an unwritable array is copied once rather than shared with torch."""
    import torch

    return torch.from_numpy(np.require(frames, requirements=["C", "W"])).to(device).permute(0, 3, 1, 2)


def resolve_half(half: bool | None, device: str) -> bool:
    """Default: reduced precision on CUDA (fp16 autocast), full float32 on CPU."""
    return str(device).startswith("cuda") if half is None else bool(half)


def autocast_for(device: str, half: bool) -> contextlib.AbstractContextManager:
    """fp16 autocast on CUDA, bf16 on CPU (only when asked), or nothing."""
    import torch

    if not half:
        return contextlib.nullcontext()
    device_type = "cuda" if str(device).startswith("cuda") else "cpu"
    dtype = torch.float16 if device_type == "cuda" else torch.bfloat16
    return torch.autocast(device_type=device_type, dtype=dtype)


def l2_normalised_float16(features: Any) -> Any:
    """Rows scaled to unit length in float32, then cast to float16 (the shard dtype)."""
    import torch

    rows = torch.nn.functional.normalize(features.float(), dim=1)
    return rows.to(torch.float16).cpu().numpy()


def resize_short_side(batch: Any, short_side: int) -> Any:
    """uint8 (N, 3, H, W) with the short side set to `short_side` and the long side truncated as
    the reference computes it; a no-op for frames the decoder already scaled."""
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms.v2 import functional as TF

    from howto_prep.decode import scaled_size

    height, width = batch.shape[-2:]
    new_width, new_height = scaled_size(width, height, short_side)
    if (new_width, new_height) == (width, height):
        return batch
    return TF.resize(batch, [new_height, new_width], interpolation=InterpolationMode.BICUBIC, antialias=True)
