"""BENCH ONLY: a zero-cost stand-in for the visual models, so a benchmark can time everything else.

`bench/bench_decode_limit.py` runs the whole `howto-prep extract` command with the 2D and 3D models
replaced by this stand-in, to see every loss that is not the models (decode tasks, Ray transfers,
log-mel, shard writing) against the box's decode limit. It returns correctly shaped rows of zeros
(float16; not unit rows) without looking at the frames: the shards it writes are useless.

Two keys, so that a real run can never use it by accident: the weights value `bench-zero`
(`--weights-2d bench-zero` / `--weights-3d bench-zero`) AND the environment variable
HOWTO_PREP_BENCH_ONLY=1, checked both when the options are read and again when the model actor
builds the stand-in. meta.json records `bench-zero` as the weights and the run warns on stderr.
"""

from __future__ import annotations

import logging
import math
import os

import numpy as np

from howto_prep import schema
from howto_prep.errors import UserError

logger = logging.getLogger(__name__)

STANDIN = "bench-zero"
ENABLE_VARIABLE = "HOWTO_PREP_BENCH_ONLY"
MODEL_NAME = "ZERO STAND-IN (bench only: all-zero rows, no model)"


def is_standin(spec: str | None) -> bool:
    return str(spec).strip().lower() == STANDIN


def require_bench_only(option: str) -> None:
    """A UserError unless the benchmark's second key is set; a loud warning when it is."""
    if os.environ.get(ENABLE_VARIABLE) != "1":
        raise UserError(f"{option} {STANDIN} is a benchmark-only stand-in that writes all-zero features; "
                        f"it needs {ENABLE_VARIABLE}=1 in the environment (bench/ scripts set it)")
    logger.warning("WARNING: %s %s: the visual features are ALL ZEROS (benchmark stand-in, no model); "
                   "these shards are useless for training", option, STANDIN)


class ZeroFeatures:
    """Frames -> zero rows of the model it stands for: 2D one row per frame, 3D one per 16 frames."""

    def __init__(self, spec: schema.FeatureSpec, option: str) -> None:
        require_bench_only(option)  # again in the actor: the driver's check is not the only key
        self.dim = spec.dim
        self.frames_per_row = schema.CLIP_LEN_3D if spec.name == schema.RESNEXT101.name else 1
        self.info = {"model": MODEL_NAME, "weights": STANDIN, "weights_sha256": None, "rate": spec.rate,
                     "dim": spec.dim}

    def __call__(self, frames: np.ndarray) -> np.ndarray:
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
            raise UserError(f"expected uint8 RGB frames of shape (N, H, W, 3), got {frames.dtype} {frames.shape}")
        return np.zeros((math.ceil(len(frames) / self.frames_per_row), self.dim), dtype=np.float16)
