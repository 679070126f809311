"""Shard schema version 1: the one place where field names, rates and file names live.

Both `howto_prep` (writer) and `mft_train` (reader) import these constants, so the data
contract cannot drift between the two tools. See shards/README.md for the prose version.
"""

from __future__ import annotations

from dataclasses import dataclass

SCHEMA_VERSION = 1
EXTRACTOR_VERSION = "howto-mft-0.1.0"


@dataclass(frozen=True)
class FeatureSpec:
    """A per-video feature array stored as one `.npy` field of a sample."""

    name: str  # name used on the command line (--features)
    field: str  # WebDataset field (file extension inside the tar)
    dim: int  # feature size (rows for logmel)
    rate: float  # rows (or frames) per second of video


RESNET152 = FeatureSpec("resnet152", "resnet152.npy", 2048, 1.0)
RESNEXT101 = FeatureSpec("resnext101", "resnext101.npy", 2048, 1.5)
LOGMEL = FeatureSpec("logmel", "logmel.npy", 40, 100.0)
VISUAL_FEATURES = (RESNET152, RESNEXT101)
FEATURES = {spec.name: spec for spec in (RESNET152, RESNEXT101, LOGMEL)}
TOKENS_FEATURE = "tokens"  # text: token ids + offsets, not a FeatureSpec
ALL_FEATURE_NAMES = ("resnet152", "resnext101", "logmel", "tokens")

META_FIELD = "meta.json"
CAPTIONS_FIELD = "captions.json"
TOKENS_FIELD = "tokens.npy"
TOKEN_OFFSETS_FIELD = "token_offsets.npy"

# Recipe constants (docs/recipes.md sections 2-4).
FPS_2D = 1.0
SHORT_SIDE_2D = 224
FPS_3D = 24.0
SIZE_3D = 112
CLIP_LEN_3D = 16
AUDIO_SAMPLE_RATE = 16_000
MAX_WORDS = 20
WORD_DIM = 300

# Shard-set layout.
DEFAULT_PREFIX = "shard"
SHARD_NAME = "{prefix}-{index:06d}.tar"
SHARD_JSON = "{prefix}-{index:06d}.json"
INDEX_FILE = "index.json"
VOCAB_DIR = "vocab"
VOCAB_WORDS = "words.txt"
VOCAB_VECTORS = "vectors.npy"
VOCAB_W2V_IDS = "w2v_ids.npy"
VOCAB_PARTS_DIR = "parts"  # vocab/parts/<shard>.w2v_ids.npy + .vectors.npy: words first used by that shard
FAILURES_FILE = "failures.jsonl"
CLIPS_FILE = "clips.json"  # a clip-level set's list of clips (benchmark, clip ids, num_expected)
DEFAULT_SHARD_BYTES = 1_000_000_000

# HowTo100M_v1.csv: its columns, and those every sample's meta.json copies from it.
HOWTO100M_CSV_COLUMNS = ("video_id", "category_1", "category_2", "rank", "task_id")
CSV_META_COLUMNS = HOWTO100M_CSV_COLUMNS[1:]

# Download layout.
MANIFEST_FILE = "manifest.sqlite"
