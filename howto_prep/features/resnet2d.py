"""2D appearance features: torchvision ResNet-152 trunk + global average pool at 1 fps.

Recipe (REFERENCE.md section 2): short side resized to 224 with the aspect kept and NO crop (a 16:9
frame becomes 398x224), RGB / 255, ImageNet mean/std, 2048-d output, L2-normalised, float16.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from howto_prep import schema
from howto_prep.errors import UserError
from howto_prep.features import weights as weights_util

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
MODEL_NAME = "torchvision.resnet152 trunk+avgpool"
OPTION = "--weights-2d"


def build_trunk() -> Any:
    """torchvision ResNet-152 with the classifier replaced by identity: outputs the pooled 2048-d."""
    import torch
    import torchvision

    model = torchvision.models.resnet152(weights=None)
    model.fc = torch.nn.Identity()
    return model


def load_imagenet_state() -> tuple[dict[str, Any], str]:
    """IMAGENET1K_V1 through torchvision's cache (downloads once); returns (state, sha256 of file)."""
    import os

    import torch
    from torchvision.models import ResNet152_Weights

    url = ResNet152_Weights.IMAGENET1K_V1.url
    try:
        checkpoint = ResNet152_Weights.IMAGENET1K_V1.get_state_dict(progress=False, weights_only=True)
    except Exception as err:  # URLError, timeouts, SSL errors, truncated downloads...
        raise UserError(f"cannot get the ImageNet ResNet-152 weights from {url} ({type(err).__name__}); "
                        f"pass {OPTION} PATH to a downloaded resnet152 .pth file, or {OPTION} random") from err
    cached = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)
    state = weights_util.strip_module_prefix(weights_util.unwrap_state_dict(checkpoint, cached, OPTION))
    return state, weights_util.sha256_file(cached)


def resolve_weights(spec: str) -> tuple[weights_util.NamedState | None, str | None]:
    """imagenet | PATH | random -> (state to load or None for random init, sha256 of the file)."""
    if weights_util.is_random(spec):
        weights_util.warn_random_weights("ResNet-152 (2D)")
        return None, None
    if str(spec).strip().lower() == "imagenet":
        state, sha256 = load_imagenet_state()
        return weights_util.NamedState("IMAGENET1K_V1", state), sha256
    path = weights_util.existing_weights_file(spec, OPTION)
    return weights_util.NamedState(str(path), weights_util.load_state_dict_file(path, OPTION)), \
        weights_util.sha256_file(path)


class ResNet152Features:
    """Frames (N, H, W, 3) uint8 RGB, one per second -> (N, 2048) float16 L2-normalised rows."""

    def __init__(self, weights: str = "imagenet", device: str = "cpu", batch_size: int = 16,
                 half: bool | None = None, channels_last: bool = True) -> None:
        import torch

        self.device = torch.device(device)
        self.batch_size = max(1, int(batch_size))
        self.half = weights_util.resolve_half(half, str(device))
        self.channels_last = channels_last
        state, sha256 = resolve_weights(weights)
        model = weights_util.build_with_weights(build_trunk, state, OPTION, ignore_prefixes=("fc.",))
        self.model = weights_util.ready_for_inference(model, self.device,
                                                      torch.channels_last if channels_last else None)
        self.mean = torch.tensor(IMAGENET_MEAN, device=self.device).view(1, 3, 1, 1)
        self.std = torch.tensor(IMAGENET_STD, device=self.device).view(1, 3, 1, 1)
        self.info: dict[str, Any] = {"model": MODEL_NAME, "weights": str(weights), "weights_sha256": sha256,
                                     "rate": schema.RESNET152.rate, "dim": schema.RESNET152.dim}

    def preprocess(self, frames: np.ndarray) -> Any:
        """uint8 (N, H, W, 3) -> float (N, 3, h, w): short side 224, no crop, ImageNet-normalised."""
        from torchvision.transforms import InterpolationMode
        from torchvision.transforms.v2 import functional as TF

        batch = weights_util.frames_to_tensor(frames, self.device)
        resized = TF.resize(batch, [schema.SHORT_SIDE_2D], interpolation=InterpolationMode.BILINEAR, antialias=True)
        pixels = resized.float().div_(255.0)
        return (pixels - self.mean) / self.std

    def __call__(self, frames: np.ndarray) -> np.ndarray:
        import torch

        frames = check_frames(frames)
        if len(frames) == 0:
            return np.zeros((0, schema.RESNET152.dim), dtype=np.float16)
        outputs = []
        with torch.inference_mode(), weights_util.autocast_for(str(self.device), self.half):
            for start in range(0, len(frames), self.batch_size):
                batch = self.preprocess(frames[start:start + self.batch_size])
                if self.channels_last:
                    batch = batch.contiguous(memory_format=torch.channels_last)
                outputs.append(weights_util.l2_normalised_float16(self.model(batch)))
        return np.concatenate(outputs, axis=0)


def check_frames(frames: np.ndarray) -> np.ndarray:
    """A clear error for anything but uint8 RGB (N, H, W, 3)."""
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise UserError(f"expected uint8 RGB frames of shape (N, H, W, 3), got {frames.dtype} {frames.shape}")
    return frames
