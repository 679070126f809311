"""3D motion features: ResNeXt-101 (Kinetics-400) on non-overlapping 16-frame clips at 24 fps.

Recipe (REFERENCE.md section 2): short side resized to 112, center crop 112x112, clips of 16 frames
(1.5 clips per second), the last clip padded with black frames BEFORE the Kinetics mean is
subtracted (so the padding is -mean, as in the reference extractor), RGB 0..255 minus
(110.63, 103.16, 96.29), std 1; 2048-d pooled output, L2-normalised, float16.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from howto_prep import schema
from howto_prep.features import weights as weights_util
from howto_prep.features.resnet2d import check_frames

KINETICS_MEAN = (110.63, 103.16, 96.29)
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
        weights_util.sha256_file(path)


class ResNeXt101Features:
    """Frames (N, H, W, 3) uint8 RGB at 24 fps -> (ceil(N / 16), 2048) float16 L2-normalised rows.

    Callers pass chunks whose length is a multiple of 16, except for the last chunk of a video.
    """

    def __init__(self, weights: str = "random", device: str = "cpu", batch_size: int = 8,
                 half: bool | None = None, channels_last: bool = True) -> None:
        import torch

        self.device = torch.device(device)
        self.batch_size = max(1, int(batch_size))
        self.half = weights_util.resolve_half(half, str(device))
        self.channels_last = channels_last
        state, sha256 = resolve_weights(weights)
        model = weights_util.build_with_weights(build_model, state, OPTION, ignore_prefixes=("fc.",))
        model.fc = None  # never used: the feature is the pooled trunk output
        self.model = weights_util.ready_for_inference(model, self.device,
                                                      torch.channels_last_3d if channels_last else None)
        self.mean = torch.tensor(KINETICS_MEAN, device=self.device).view(1, 3, 1, 1, 1)
        self.info: dict[str, Any] = {"model": MODEL_NAME, "weights": str(weights), "weights_sha256": sha256,
                                     "rate": schema.RESNEXT101.rate, "dim": schema.RESNEXT101.dim}

    def resize_and_crop(self, frames: np.ndarray) -> Any:
        """uint8 (N, H, W, 3) -> uint8 (N, 3, 112, 112): short side 112, then the central square."""
        from torchvision.transforms import InterpolationMode
        from torchvision.transforms.v2 import functional as TF

        batch = weights_util.frames_to_tensor(frames, self.device)
        resized = TF.resize(batch, [schema.SIZE_3D], interpolation=InterpolationMode.BILINEAR, antialias=True)
        return TF.center_crop(resized, [schema.SIZE_3D, schema.SIZE_3D])

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

    def __call__(self, frames: np.ndarray) -> np.ndarray:
        import torch

        frames = check_frames(frames)
        if len(frames) == 0:
            return np.zeros((0, schema.RESNEXT101.dim), dtype=np.float16)
        frames_per_batch = self.batch_size * schema.CLIP_LEN_3D
        outputs = []
        with torch.inference_mode(), weights_util.autocast_for(str(self.device), self.half):
            for start in range(0, len(frames), frames_per_batch):
                batch = self.clips(frames[start:start + frames_per_batch])
                if self.channels_last:
                    batch = batch.contiguous(memory_format=torch.channels_last_3d)
                outputs.append(weights_util.l2_normalised_float16(self.model(batch)))
        return np.concatenate(outputs, axis=0)
