"""3D motion features: ResNeXt-101 (Kinetics-400) on non-overlapping 16-frame clips at 24 fps.

Recipe (docs/recipes.md section 2): short side resized to 112 (long side truncated), crop 112x112
at x = int((W - 112) / 2), y = int((H - 112) / 2) (truncation: a 199-wide frame is cropped at 43),
clips of 16 frames (1.5 clips per second), the last clip padded with black frames BEFORE the mean is
subtracted (so the padding is -mean, as in the reference extractor), RGB 0..255 minus exactly
(110.6, 103.2, 96.3), std 1; 2048-d pooled output, L2-normalised, float16.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from howto_prep import schema
from howto_prep.features import weights as weights_util
from howto_prep.features.frame_model import FrameFeatureModel, frames_to_tensor, resize_short_side
from howto_prep.files import file_sha256

KINETICS_MEAN = (110.6, 103.2, 96.3)  # the reference extractor's preprocessing, exactly
MODEL_NAME = "resnext101-3d (Hara et al., Kinetics-400) trunk+avgpool"
OPTION = "--weights-3d"


def build_model() -> Any:
    from howto_prep.features.resnext3d_arch import ResNeXt3d

    return ResNeXt3d()


def resolve_weights(spec: str) -> tuple[weights_util.NamedState | None, str | None]:
    """PATH | random -> (state to load or None for random init, sha256 of the file)."""
    if weights_util.is_random(spec):
        weights_util.warn_random_weights("ResNeXt-101 (3D)")
        return None, None
    path = weights_util.existing_weights_file(spec, OPTION)
    return weights_util.NamedState(str(path), weights_util.load_state_dict_file(path, OPTION)), \
        file_sha256(path)


class ResNeXt101Features(FrameFeatureModel):
    """Frames (N, H, W, 3) uint8 RGB at 24 fps -> (ceil(N / 16), 2048) float16 L2-normalised rows.

    Callers pass chunks whose length is a multiple of 16, except for the last chunk of a video.
    """

    dim = schema.RESNEXT101.dim

    def __init__(self, weights: str = "random", device: str = "cpu", batch_size: int = 8,
                 half: bool | None = None, channels_last: bool = True) -> None:
        import torch

        state, sha256 = resolve_weights(weights)
        model = weights_util.build_with_weights(build_model, state, OPTION, ignore_prefixes=("fc.",))
        model.fc = None  # never used: the feature is the pooled trunk output
        super().__init__(model, device, batch_size, half, torch.channels_last_3d if channels_last else None,
                         {"model": MODEL_NAME, "weights": str(weights), "weights_sha256": sha256,
                          "rate": schema.RESNEXT101.rate, "dim": schema.RESNEXT101.dim})
        self.mean = torch.tensor(KINETICS_MEAN, device=self.device).view(1, 3, 1, 1, 1)

    @property
    def frames_per_batch(self) -> int:
        return self.batch_size * schema.CLIP_LEN_3D

    def prepare(self, frames: np.ndarray) -> Any:
        return self.clips(frames)

    def resize_and_crop(self, frames: np.ndarray) -> Any:
        """uint8 (N, H, W, 3) -> uint8 (N, 3, 112, 112): short side 112, then the reference's crop.

        The decoder already delivers 112x112 frames scaled by ffmpeg and cropped (howto_prep.decode);
        other sizes are resized here (bicubic, antialiased: close to ffmpeg's scaler) and cropped at
        the reference's truncated offsets."""
        from howto_prep.decode import crop_origin

        resized = resize_short_side(frames_to_tensor(frames, self.device), schema.SIZE_3D)
        height, width = resized.shape[-2:]
        top, left = crop_origin(height), crop_origin(width)
        return resized[..., top:top + schema.SIZE_3D, left:left + schema.SIZE_3D]

    def clips(self, frames: np.ndarray) -> Any:
        """uint8 frames -> float (B, 3, 16, 112, 112), black-padded to whole clips, mean subtracted."""
        import torch

        pixels = self.resize_and_crop(frames)
        length = schema.CLIP_LEN_3D
        count = math.ceil(len(frames) / length)
        missing = count * length - len(frames)
        if missing:
            pixels = torch.cat([pixels, pixels.new_zeros((missing, *pixels.shape[1:]))])
        grouped = pixels.view(count, length, 3, schema.SIZE_3D, schema.SIZE_3D).permute(0, 2, 1, 3, 4)
        return grouped.float() - self.mean
