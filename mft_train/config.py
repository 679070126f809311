"""The typed run configuration: four sections, each checked when it is read.

- model: a mapping passed as is to mft_train.models.build_model, whose settings dataclasses check it
  (the architecture of a checkpoint is this mapping, compared as is on resume).
- data (DataSettings), train (TrainSettings): frozen dataclasses below.
- loss: the dataclass of the loss its `name` picks (mft_train.losses.settings.LOSS_CONFIGS).
A missing section or key takes the default; an unknown key or a value of the wrong type is a
one-sentence UserError (mft_train.settings), except retired keys (RETIRED_KEYS), which old run
folders' config.yaml still hold and which are dropped. Presets and `--set` overrides: mft_train.presets.

Importing this module imports neither torch nor webdataset (commands check their config before
the heavy imports): the loss settings come from the torch-free mft_train.losses.settings.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from howto_prep import schema
from howto_prep.errors import UserError
from mft_train.data.clips import CLIP_ANCHORS
from mft_train.losses.settings import LOSS_CONFIGS, CombinatorialLossConfig, LossConfig
from mft_train.settings import require_choice, require_non_negative, require_positive, settings_from_dict

SECTIONS = ("model", "data", "loss", "train")
ORDERS = ("stream", "fixed")  # data.order: the pretraining stream's orders (mft_train.data.stream)
# Keys that once existed and no longer do, dropped when read so old config.yaml files still load.
# data.audio_pad_value: both models overwrite padded log-mel frames with model.audio_pad_value, so the
# data side's value never reached a model.
RETIRED_KEYS = {"data": ("audio_pad_value",)}


@dataclass(frozen=True)
class DataSettings:
    """How clips are cut and batched; the defaults are the paper preset."""

    clips_per_video: int = 10
    clip_seconds: float = 8.0
    video_tokens: int = 12
    audio_frames: int = 768
    audio_shift: bool = True  # the paper's +4 s audio shift (quirk), on in the paper preset
    audio_shift_seconds: float = 4.0
    max_words: int = schema.MAX_WORDS
    clip_anchor: str = "random_start"  # EAO: a uniform start; "random_caption": MCN's drawn caption
    shuffle_buffer: int = 1000
    workers: int = 4
    order: str = "stream"  # "fixed": deterministic rank-split order (tests, debugging)

    def __post_init__(self) -> None:
        require_positive(self, "data", ("clips_per_video", "clip_seconds", "video_tokens", "audio_frames",
                                        "max_words", "shuffle_buffer"))
        require_non_negative(self, "data", ("workers", "audio_shift_seconds"))
        require_choice(self, "data", "order", ORDERS)
        require_choice(self, "data", "clip_anchor", CLIP_ANCHORS)


@dataclass(frozen=True)
class TrainSettings:
    """Optimiser, schedule, length and bookkeeping of a run; the defaults are the paper preset."""

    optimizer: str = "adam"
    lr: float = 5e-5
    weight_decay: float = 0.0
    schedule: str = "exponential"  # exponential: lr * lr_gamma ** epoch (EAO); cosine: per step (MCN)
    lr_gamma: float = 0.9  # ExponentialLR, stepped once per epoch
    warmup_steps: int = 0  # cosine schedule only: linear warm-up steps
    epochs: int = 15
    steps_per_epoch: int = 0  # 0: one pass over the shard set's videos
    batch: int = 224  # videos per step over all ranks; clips per step = batch * data.clips_per_video
    amp: bool = True  # bf16 autocast on GPU; CPU always trains in fp32
    sync_batchnorm: bool = False  # BatchNorm statistics over the global batch instead of per rank (GPU)
    checkpoint_every: int = 1000  # steps; a checkpoint is also written at the end
    keep_checkpoints: int = 3
    log_every: int = 10  # TensorBoard scalars every N steps (metrics.jsonl gets every step)
    seed: int = 0
    grad_clip: float = 0.0  # 0: off (the paper does not clip)
    device: str = "auto"  # auto | cpu | cuda
    cpu_threads: int = 0  # torch intra-op threads per process; 0 = torch's default
    compile: bool = False  # torch.compile the model in place (bench/bench_fused.py measures whether it pays)

    def __post_init__(self) -> None:
        require_positive(self, "train", ("lr", "epochs", "batch", "checkpoint_every", "log_every", "keep_checkpoints"))
        require_non_negative(self, "train", ("cpu_threads", "steps_per_epoch", "weight_decay", "grad_clip", "warmup_steps"))
        if not 0 < self.lr_gamma <= 1:
            raise UserError(f"train.lr_gamma must lie in (0, 1], got {self.lr_gamma}")
        require_choice(self, "train", "optimizer", ("adam",))
        require_choice(self, "train", "device", ("auto", "cpu", "cuda"))
        require_choice(self, "train", "schedule", ("exponential", "cosine"))


@dataclass(frozen=True)
class RunConfig:
    """A whole run's configuration; `to_dict()` is what config.yaml and checkpoints hold."""

    model: dict[str, Any] = field(default_factory=dict)
    data: DataSettings = field(default_factory=DataSettings)
    loss: LossConfig = field(default_factory=CombinatorialLossConfig)
    train: TrainSettings = field(default_factory=TrainSettings)

    @classmethod
    def from_dict(cls, raw: dict, where: str = "the config") -> "RunConfig":
        """Sections from a mapping (a YAML file, a checkpoint's "config"); `where` names it in messages."""
        if not isinstance(raw, dict):
            raise UserError(f"{where} must hold a mapping with sections {', '.join(SECTIONS)}")
        unknown = sorted(set(raw) - set(SECTIONS))
        if unknown:
            raise UserError(f"unknown config section(s) {', '.join(unknown)} in {where}; known: {', '.join(SECTIONS)}")
        sections = {name: _without_retired(name, raw.get(name) or {}) for name in SECTIONS}
        if not isinstance(sections["model"], dict):
            raise UserError(f"the model section of {where} must be a mapping")
        loss_name = sections["loss"].get("name", "combinatorial") if isinstance(sections["loss"], dict) else None
        if loss_name not in LOSS_CONFIGS:
            raise UserError(f"unknown loss.name {loss_name!r} in {where}; expected one of {', '.join(LOSS_CONFIGS)}")
        return cls(
            model=dict(sections["model"]),
            data=settings_from_dict(DataSettings, sections["data"], "data", where=where),
            loss=settings_from_dict(LOSS_CONFIGS[loss_name], sections["loss"], "loss", where=where),
            train=settings_from_dict(TrainSettings, sections["train"], "train", where=where),
        )

    def to_dict(self) -> dict:
        return {"model": dict(self.model), **{name: dataclasses.asdict(getattr(self, name)) for name in SECTIONS[1:]}}

    def with_model(self, model: dict[str, Any]) -> "RunConfig":
        return dataclasses.replace(self, model=dict(model))


def _without_retired(section: str, values: Any) -> Any:
    """The section's mapping less its retired keys (anything else is left for the checks)."""
    retired = RETIRED_KEYS.get(section, ())
    if not isinstance(values, dict) or not any(key in values for key in retired):
        return values
    return {key: value for key, value in values.items() if key not in retired}

