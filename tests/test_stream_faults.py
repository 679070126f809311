"""Damaged data in the pretraining stream: a tar cut short and a sample with a broken feature member
are skipped with a warning naming them; the stream still yields every batch, the damaged video is in
none of them, and every other video's clips hold exactly its own features (nothing garbled, nothing
of the damaged member leaking in).

Only order "stream" (training) promises to skip damaged data (mft_train/data/stream.py); "fixed"
(tests, debugging) stops at it.
"""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
import webdataset as wds

from howto_prep import schema
from howto_prep.shards import npy_bytes
from mft_train.data.clips import ClipSpec
from mft_train.data.reader import decode_sample
from mft_train.data.shards import DecodedSample, WordTable, discover_shards
from mft_train.data.stream import LoaderPlan, make_loader
from shard_fixtures import rewrite_member, write_shard_set

SPEC = ClipSpec()
PLAN = LoaderPlan(videos_per_rank=2, clips_per_video=2, num_batches=4, seed=0, epoch=0, first_step=0,
                  order="stream", shuffle_buffer=4, half_features=False, pin_memory=False)
DAMAGED = "vid0001xx"  # the middle video of shard-000000 (vid0000xx, vid0001xx, vid0002xx)


@pytest.fixture
def shard_set(tmp_path: Path) -> tuple[Path, dict[str, DecodedSample]]:
    """6 videos over 2 shards, and every video decoded (with copies) before any damage is done."""
    root = tmp_path / "shards"
    write_shard_set(root, videos=6, shards=2)
    samples = wds.DataPipeline(wds.SimpleShardList(discover_shards(root).urls), wds.tarfile_to_samples())
    return root, {sample["__key__"]: decode_sample(sample) for sample in samples}


def stream_batches(root: Path, recwarn) -> tuple[list[dict], list[str]]:
    """The training loader's batches (one process, so its warnings reach recwarn) and the warnings' texts."""
    recwarn.clear()
    batches = list(make_loader(discover_shards(root), SPEC, PLAN, workers=0))
    return batches, [str(warning.message) for warning in recwarn]


def unit_rows(rows: np.ndarray) -> torch.Tensor:
    rows = rows.astype(np.float32)
    return torch.from_numpy(rows / np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-12))


def assert_each_clip_holds_its_videos_data(batch: dict, videos: dict[str, DecodedSample], words: WordTable) -> None:
    """Every real video token is one of its video's (normalised) 2D and 3D rows, the real audio a
    contiguous window of its log-mel, every real word one of its captions' words."""
    for clip, video_id in enumerate(batch["video_id"]):
        video = videos[video_id]
        mask = batch["video_mask"][clip]
        assert mask.any(), video_id
        tokens = batch["video"][clip][mask].float()
        for part, rows in ((slice(0, schema.RESNET152.dim), video.resnet152),
                           (slice(schema.RESNET152.dim, None), video.resnext101)):
            found = (tokens[:, None, part] == unit_rows(rows)[None]).all(dim=2).any(dim=1)
            assert found.all(), f"{video_id}: video tokens that are not its own rows"
        assert not batch["video"][clip][~mask].any()
        audio_mask = batch["audio_mask"][clip]
        if video.logmel is None:
            assert not audio_mask.any(), video_id
        else:
            frames = batch["audio"][clip][:, audio_mask].numpy()
            logmel = video.logmel.astype(np.float32)
            starts = np.flatnonzero((logmel == frames[:, :1]).all(axis=0))
            assert any(np.array_equal(logmel[:, s : s + frames.shape[1]], frames) for s in starts), \
                f"{video_id}: audio that is not a window of its log-mel"
        own_words = torch.from_numpy(words.lookup(video.tokens.astype(np.int64)))
        text = batch["text"][clip][batch["text_mask"][clip]]
        assert (text[:, None, :] == own_words[None]).all(dim=2).any(dim=1).all(), f"{video_id}: foreign words"


def check_stream(root: Path, videos: dict[str, DecodedSample], batches: list[dict], expected_ids: set[str]) -> None:
    assert len(batches) == PLAN.num_batches
    words = WordTable(root)
    for batch in batches:
        assert len(batch["video_id"]) == PLAN.videos_per_rank * PLAN.clips_per_video
        assert set(batch["video_id"]) <= expected_ids, "a damaged (or lost) video reached a batch"
        assert_each_clip_holds_its_videos_data(batch, videos, words)


def test_a_tar_cut_short_inside_a_member_is_skipped_with_a_warning(shard_set, recwarn):
    """A crashed copy: shard-000000.tar ends halfway through vid0001xx's 3D features. vid0000xx
    (before the cut) and shard-000001's videos stream intact; vid0001xx (its last members gone) and
    vid0002xx (beyond the cut) never appear, and the warnings name the shard and the sample."""
    root, videos = shard_set
    tar = root / "shard-000000.tar"
    with tarfile.open(tar) as archive:
        cut_member = archive.getmember(f"{DAMAGED}.{schema.RESNEXT101.field}")
    size = tar.stat().st_size
    tar.write_bytes(tar.read_bytes()[: cut_member.offset_data + cut_member.size // 2])
    assert tar.stat().st_size < size and discover_shards(root).num_videos == 6  # the index still claims 3

    batches, warnings = stream_batches(root, recwarn)
    check_stream(root, videos, batches, expected_ids={"vid0000xx", "vid0003xx", "vid0004xx", "vid0005xx"})
    assert "vid0000xx" in {video_id for batch in batches for video_id in batch["video_id"]}  # the cut tar serves
    assert any("unexpected end of data" in text and str(tar) in text for text in warnings), warnings
    assert any(DAMAGED in text and schema.RESNEXT101.field in text for text in warnings), warnings


def bad_member(kind: str, rows: int) -> bytes:
    good = npy_bytes(np.zeros((rows, schema.RESNET152.dim), np.float16))
    return {
        "not-npy": b"PK\x03\x04 this is a zip, not an npy file" * 20,
        "npy-cut-short": good[: len(good) // 2],  # a whole header, half the data
        "wrong-shape": npy_bytes(np.ones((rows, 1024), np.float16)),
        "wrong-dtype": npy_bytes(np.arange(rows * schema.RESNET152.dim, dtype=np.int16).reshape(rows, -1)),
    }[kind]


@pytest.mark.parametrize("kind", ["not-npy", "npy-cut-short", "wrong-shape", "wrong-dtype"])
def test_a_sample_with_a_broken_feature_member_is_skipped_with_a_warning(shard_set, recwarn, kind):
    """vid0001xx's resnet152.npy replaced inside an otherwise valid tar: that video is skipped with a
    warning naming it and the member; both its neighbours in the shard and the other shard stream intact."""
    root, videos = shard_set
    field = schema.RESNET152.field
    rewrite_member(root / "shard-000000.tar", f"{DAMAGED}.{field}", bad_member(kind, len(videos[DAMAGED].resnet152)))

    batches, warnings = stream_batches(root, recwarn)
    check_stream(root, videos, batches, expected_ids=set(videos) - {DAMAGED})
    seen = {video_id for batch in batches for video_id in batch["video_id"]}
    assert {"vid0000xx", "vid0002xx"} <= seen  # the damaged video's neighbours in its shard
    assert any(DAMAGED in text and field in text for text in warnings), warnings


def drop_members(tar: Path, suffix: str) -> None:
    """The tar again without its `suffix` members (a set extracted without that feature)."""
    with tarfile.open(tar) as archive:
        members = [(member, archive.extractfile(member).read()) for member in archive
                   if not member.name.endswith(suffix)]
    with tarfile.open(tar, "w") as archive:
        for member, payload in members:
            archive.addfile(member, io.BytesIO(payload))


def test_a_set_none_of_whose_samples_the_model_can_read_stops_with_one_line_not_forever(shard_set, recwarn):
    """A set extracted with --features logmel,tokens has no resnet152.npy: every sample was skipped
    and the resampled stream drew them again, forever."""
    from howto_prep.errors import UserError

    root, _ = shard_set
    for tar in sorted(root.glob("*.tar")):
        drop_members(tar, schema.RESNET152.field)
    with pytest.raises(UserError, match=r"1000 samples or shards in a row could not be read.*resnet152.npy: "
                                        r"member missing"):
        stream_batches(root, recwarn)
