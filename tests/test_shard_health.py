"""Damaged shards read the same way by every command: training's stream, evaluation's clip sets
(iterate_records) and `embed` (shard_samples) all go through mft_train.data.reader, so each skips a
tar cut short, a member whose .npy header is garbage and a member of the wrong shape, with a warning
and no sleep (webdataset's warn_and_continue sleeps 0.5 s per error), and counts them the same way.
"""

from __future__ import annotations

import io
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest

from howto_prep import schema
from howto_prep.shards import npy_bytes
from mft_train.data.clips import ClipSpec
from mft_train.data.eval_sets import iterate_records, open_clip_set
from mft_train.data.shards import discover_shards
from mft_train.data.stream import LoaderPlan, make_loader
from mft_train.retrieval.embed import shard_samples
from clip_shard_fixtures import write_clip_set
from shard_fixtures import rewrite_member, write_shard_set

# shard 0 is cut inside its second sample (1 damaged shard + that partial sample); in shard 1 one
# sample has a garbage .npy header and another a member of the wrong shape: 3 unreadable samples.
SUMMARY = "skipped 3 unreadable samples, 1 damaged shard"
ERRORS = 4
PLAN = LoaderPlan(videos_per_rank=2, clips_per_video=1, num_batches=12, seed=0, epoch=0, first_step=0,
                  order="stream", shuffle_buffer=4, half_features=False, pin_memory=False)


def damage(root: Path) -> None:
    """Cut shard 0 halfway through its second sample's 3D features; break two samples of shard 1."""
    tars = sorted(root.glob("shard-*.tar"))
    with tarfile.open(tars[0]) as archive:
        keys = sorted({member.name.split(".", 1)[0] for member in archive})
        cut = archive.getmember(f"{keys[1]}.{schema.RESNEXT101.field}")
    tars[0].write_bytes(tars[0].read_bytes()[: cut.offset_data + cut.size // 2])
    with tarfile.open(tars[1]) as archive:
        keys = sorted({member.name.split(".", 1)[0] for member in archive})
        header = archive.extractfile(f"{keys[0]}.{schema.RESNET152.field}").read()
        rows = len(np.load(io.BytesIO(archive.extractfile(f"{keys[1]}.{schema.RESNEXT101.field}").read())))
    broken_header = header[:10] + b"{'descr': garbage" + header[27:]  # the magic intact, its header not
    rewrite_member(tars[1], f"{keys[0]}.{schema.RESNET152.field}", broken_header)
    rewrite_member(tars[1], f"{keys[1]}.{schema.RESNEXT101.field}", npy_bytes(np.ones((rows, 1024), np.float16)))


def damaged(root: Path, write) -> Path:
    """Nine samples over three shards, written by `write`, then damaged three ways."""
    write(root)
    damage(root)
    return root


@pytest.fixture
def video_set(tmp_path: Path) -> Path:
    return damaged(tmp_path / "videos", lambda root: write_shard_set(root, videos=9, shards=3))


@pytest.fixture
def clip_set(tmp_path: Path) -> Path:
    return damaged(tmp_path / "clips", lambda root: write_clip_set(root, topics=9, shards=3))


def read_stream(root: Path, skips=None) -> list[dict]:
    return list(make_loader(discover_shards(root), ClipSpec(), PLAN, workers=0, **({"skips": skips} if skips else {})))


def read_clips(root: Path, skips=None) -> list:
    return list(iterate_records(open_clip_set(root), **({"skips": skips} if skips else {})))


def read_embed(root: Path, skips=None) -> list:
    return [item for url in discover_shards(root).urls
            for item in shard_samples(url, root, **({"skips": skips} if skips else {}))]


READERS = {"training stream": ("video_set", read_stream), "evaluation": ("clip_set", read_clips),
           "embed": ("video_set", read_embed)}


@pytest.mark.parametrize("reader", READERS)
def test_every_reader_skips_damage_without_sleeping(reader, request, monkeypatch):
    """Works on any version of the readers: no sleep, and well under 0.5 s per error."""
    fixture, read = READERS[reader]
    root = request.getfixturevalue(fixture)
    sleeps: list[float] = []
    monkeypatch.setattr(time, "sleep", lambda seconds: sleeps.append(seconds))
    started = time.perf_counter()
    with pytest.warns(UserWarning):
        items = read(root)
    elapsed = time.perf_counter() - started
    assert items, "the readable samples are still read"
    assert not sleeps, f"{reader} slept {sum(sleeps)} s on {ERRORS} errors"
    assert elapsed < 0.5 * ERRORS / 2, f"{reader}: {elapsed:.2f} s for {ERRORS} errors"


@pytest.mark.parametrize("reader", READERS)
def test_every_reader_counts_the_same_skips_and_says_so_in_one_line(reader, request, caplog):
    from mft_train.data.reader import SkipPolicy

    fixture, read = READERS[reader]
    root = request.getfixturevalue(fixture)
    skips = SkipPolicy()
    with pytest.warns(UserWarning) as caught:
        read(root, skips)
    assert skips.summary() == SUMMARY
    assert len(skips.damaged_shards) == 1 and str(sorted(root.glob("*.tar"))[0]) in skips.damaged_shards
    texts = [str(w.message) for w in caught]
    assert any("unexpected end of data" in text for text in texts), texts
    assert any(schema.RESNET152.field in text for text in texts) and any("1024" in text for text in texts), texts
    caplog.clear()
    skips.report(reader)
    assert [record.getMessage() for record in caplog.records] == [f"{reader}: {SUMMARY} (see the warnings above)"]


def test_evaluation_and_embed_keep_every_readable_sample(video_set, clip_set):
    """The damage costs exactly the damaged samples and what lies beyond the cut: 9 - 2 - 2 = 5 each."""
    with pytest.warns(UserWarning):
        clips, videos = read_clips(clip_set), read_embed(video_set)
    assert len(clips) == 5 and len(videos) == 5
    assert all(record.caption_texts for record in clips)  # the sentences ride along
