"""2D appearance features: torchvision ResNet-152 trunk + global average pool at 1 fps.

Recipe (docs/recipes.md section 2): short side resized to 224 with the aspect kept, the long side
truncated, and NO crop (a 16:9 frame becomes 398x224), RGB / 255, ImageNet mean/std, 2048-d output,
L2-normalised, float16.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from howto_prep import schema
from howto_prep.errors import UserError
from howto_prep.features import weights as weights_util
from howto_prep.features.frame_model import FrameFeatureModel, frames_to_tensor, resize_short_side
from howto_prep.files import file_sha256

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
    return state, file_sha256(cached)


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
        file_sha256(path)


class ResNet152Features(FrameFeatureModel):
    """Frames (N, H, W, 3) uint8 RGB, one per second -> (N, 2048) float16 L2-normalised rows."""

    dim = schema.RESNET152.dim

    def __init__(self, weights: str = "imagenet", device: str = "cpu", batch_size: int = 16,
                 half: bool | None = None, channels_last: bool = True) -> None:
        import torch

        state, sha256 = resolve_weights(weights)
        model = weights_util.build_with_weights(build_trunk, state, OPTION, ignore_prefixes=("fc.",))
        super().__init__(model, device, batch_size, half, torch.channels_last if channels_last else None,
                         {"model": MODEL_NAME, "weights": str(weights), "weights_sha256": sha256,
                          "rate": schema.RESNET152.rate, "dim": schema.RESNET152.dim})
        self.mean = torch.tensor(IMAGENET_MEAN, device=self.device).view(1, 3, 1, 1)
        self.std = torch.tensor(IMAGENET_STD, device=self.device).view(1, 3, 1, 1)

    def prepare(self, frames: np.ndarray) -> Any:
        """uint8 (N, H, W, 3) -> float (N, 3, h, w): short side 224, no crop, ImageNet-normalised.

        The decoder already delivers frames at short side 224, scaled by ffmpeg exactly as the
        reference does (howto_prep.decode); other sizes are resized here (bicubic, antialiased:
        close to, not identical with, ffmpeg's scaler)."""
        batch = frames_to_tensor(frames, self.device)
        resized = resize_short_side(batch, schema.SHORT_SIDE_2D)
        pixels = resized.float().div_(255.0)
        return (pixels - self.mean) / self.std
