"""Fixtures of the mft-train object-store tests: one tiny set of each kind, a pretraining run on
the video set's folder (the reference), and a local cache folder.

Import them into a test module (`from train_store_fixtures import sets, store_cache`)."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import pytest

from clip_shard_fixtures import TINY_MODEL, pretrained_checkpoint, write_clip_set
from shard_fixtures import write_shard_set

PRETRAIN = TINY_MODEL + ["model.davenet_depths=[1, 1, 1, 1, 1, 1]", "data.clips_per_video=2", "data.workers=1",
                         "data.shuffle_buffer=4", "train.batch=2", "train.device=cpu", "train.cpu_threads=1",
                         "train.epochs=1", "train.steps_per_epoch=3", "train.checkpoint_every=3", "train.seed=7"]


def settings(items: list[str]) -> list[str]:
    return [arg for item in items for arg in ("--set", item)]


def pretrain_quietly(shards: str, out: Path) -> tuple[int, str]:
    """`mft-train pretrain` with PRETRAIN on `shards` into `out`: (exit code, what it wrote on stderr)."""
    from mft_train.cli import main

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main(["pretrain", "--shards", shards, "--out", str(out), "--config", "eao_small"] + settings(PRETRAIN))
    return code, err.getvalue()


@pytest.fixture(scope="session")
def sets(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A tiny video-level set (2 shards), a clip-level set and a tiny pretrained checkpoint."""
    root = tmp_path_factory.mktemp("store-sets")
    write_shard_set(root / "videos", videos=6, shards=2, topics=2)
    write_clip_set(root / "clips", clips_per_topic=1, topics=6, seed=2, length=(4.0, 9.0), missing=1)
    return {"videos": root / "videos", "clips": root / "clips", "checkpoint": pretrained_checkpoint(root)}


@pytest.fixture(scope="session")
def disk_pretrain(sets: dict, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    """The reference the store tests compare with: pretraining on the video set's folder, once per
    session (its stderr, its run folder). Read it only."""
    out = tmp_path_factory.mktemp("disk-pretrain") / "run"
    code, err = pretrain_quietly(str(sets["videos"]), out)
    assert code == 0, err
    return err, out


@pytest.fixture
def store_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Local copies of store files (vocabulary, checkpoints) go to this test's folder, not ~/.cache."""
    monkeypatch.setenv("HOWTO_MFT_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"
