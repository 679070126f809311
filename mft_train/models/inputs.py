"""What every model reads: the batch layout it checks, its input sizes, and its audio encoder's settings.

EAOConfig and MCNConfig both extend InputSettings, so the input sizes, the DAVEnet choice and the
audio padding value mean the same in both models and are checked once.
"""

from __future__ import annotations

from dataclasses import dataclass

from howto_prep.errors import UserError
from howto_prep.schema import LOGMEL, RESNET152, RESNEXT101, WORD_DIM
from mft_train.models.davenet import DAVENET_PRESETS

MODALITIES = ("text", "video", "audio")
SHORT = {"text": "t", "video": "v", "audio": "a"}


@dataclass(frozen=True)
class InputSettings:
    """Input feature sizes and the audio encoder; the defaults are the papers'."""

    video_dim: int = RESNET152.dim + RESNEXT101.dim
    text_dim: int = WORD_DIM
    audio_mels: int = LOGMEL.dim
    davenet: str = "v2"
    davenet_widths: list[int] | None = None
    davenet_depths: list[int] | None = None
    # Padded audio frames are overwritten with this value before DAVEnet, so padding content never
    # matters. The papers pad with 0 (the loudest value in [-80, 0] dB: a documented quirk).
    audio_pad_value: float = 0.0

    def check_inputs(self) -> None:
        """Positive sizes and a DAVEnet whose width and depth lists have one entry per stage."""
        for key in ("video_dim", "text_dim", "audio_mels"):
            if getattr(self, key) <= 0:
                raise UserError(f"model.{key} must be positive, got {getattr(self, key)}")
        if self.davenet not in DAVENET_PRESETS:
            raise UserError(f"model.davenet must be one of {sorted(DAVENET_PRESETS)}, not {self.davenet!r}")
        preset_widths, preset_depths = DAVENET_PRESETS[self.davenet]
        widths, depths = self.davenet_widths or preset_widths, self.davenet_depths or preset_depths
        if len(widths) != len(depths):
            raise UserError(f"model.davenet_widths has {len(widths)} stages but model.davenet_depths has {len(depths)}")


def check_batch(batch: dict, config: InputSettings) -> None:
    """Fail with one clear sentence when a batch does not follow the agreed layout (mft_train.data.batch)."""
    feature_dims = {"text": config.text_dim, "video": config.video_dim, "audio": config.audio_mels}
    for modality in MODALITIES:
        if modality not in batch or f"{modality}_mask" not in batch:
            raise UserError(f"the batch lacks {modality!r} or {modality + '_mask'!r}; every modality must be present")
        features, mask = batch[modality], batch[f"{modality}_mask"]
        length = features.shape[-1] if modality == "audio" else features.shape[1]
        if mask.shape != (features.shape[0], length):
            raise UserError(f"{modality}_mask has shape {tuple(mask.shape)} but {modality} has {tuple(features.shape)}")
        if length == 0:
            raise UserError(f"the {modality} input has no token slots; pad it to at least one")
        dim = features.shape[1] if modality == "audio" else features.shape[-1]
        if dim != feature_dims[modality]:
            raise UserError(f"{modality} features have size {dim} but the model expects {feature_dims[modality]}")
