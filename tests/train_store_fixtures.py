"""Fixtures of the mft-train object-store tests: one tiny set of each kind and a local cache folder.

Import them into a test module (`from train_store_fixtures import sets, store_cache`)."""

from __future__ import annotations

from pathlib import Path

import pytest

from clip_shard_fixtures import pretrained_checkpoint, write_clip_set
from shard_fixtures import write_shard_set


@pytest.fixture(scope="module")
def sets(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A tiny video-level set (2 shards), a clip-level set and a tiny pretrained checkpoint."""
    root = tmp_path_factory.mktemp("store-sets")
    write_shard_set(root / "videos", videos=6, shards=2, topics=2)
    write_clip_set(root / "clips", clips_per_topic=1, topics=6, seed=2, length=(4.0, 9.0), missing=1)
    return {"videos": root / "videos", "clips": root / "clips", "checkpoint": pretrained_checkpoint(root)}


@pytest.fixture
def store_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Local copies of store files (vocabulary, checkpoints) go to this test's folder, not ~/.cache."""
    monkeypatch.setenv("HOWTO_MFT_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"
