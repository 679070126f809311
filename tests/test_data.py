"""Clip sampling (hand-worked caption timelines), shard discovery, the batch stream and its collate."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch

from howto_prep.errors import UserError
from mft_train.data.clips import ClipPlan, ClipSpec, clip_arrays, draw_start, plan_clip, video_token_rows
from mft_train.data.shards import DecodedSample, WordTable, discover_shards
from mft_train.data.batch import collate, collate_blocks, video_clip_block
from mft_train.data.clips import sample_clips
from mft_train.data.reader import decode_sample, tar_samples
from mft_train.data.stream import LoaderPlan, make_loader
from shard_fixtures import add_corrupt_shard, write_shard_set

SPEC = ClipSpec()  # the paper's sizes: 8 s, 12 video tokens, 768 frames, +4 s, 20 words


def timeline(*captions: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
    return np.array([c[0] for c in captions]), np.array([c[1] for c in captions])


def test_span_grows_with_the_neighbour_that_keeps_it_shortest():
    starts, ends = timeline((0, 2), (2.5, 5), (5, 6), (7, 12), (13, 14))
    plan = plan_clip(3.0, starts, ends, SPEC)
    # anchor 1 = [2.5, 5]; previous -> [0, 5] (5 s), next -> [2.5, 6] (3.5 s): take next (2).
    # then previous -> [0, 6] (6 s), next -> [2.5, 12] (9.5 s): take previous (0).
    # then only next -> [0, 12] (12 s >= 8): stop.
    assert plan.caption_order == (1, 2, 0, 3)
    assert plan.video_window == (0.0, 12.0)
    # audio: the span's start + 4 s, in released frames floor(100 t - 1.25): frames 398 .. 1198
    assert plan.audio_window == (3.98, 11.98)


def test_ties_take_the_previous_caption():
    starts, ends = timeline((0, 2), (3, 5), (6, 8))
    plan = plan_clip(3.5, starts, ends, SPEC)
    # anchor 1; previous -> [0, 5] = 5 s, next -> [3, 8] = 5 s: tie, previous; then next -> [0, 8].
    assert plan.caption_order == (1, 0, 2)
    assert plan.video_window == (0.0, 8.0)


def test_anchor_on_the_end_then_stop_when_no_neighbour_is_left():
    starts, ends = timeline((10, 12))
    plan = plan_clip(3.0, starts, ends, SPEC)  # nothing contains 3 s; [10, 12] contains the end 11 s
    assert plan.caption_order == (0,) and plan.video_window == (10.0, 12.0)


def test_clip_without_captions_has_no_text_and_its_own_window():
    starts, ends = timeline((0, 1), (20, 21))
    plan = plan_clip(5.0, starts, ends, ClipSpec(audio_shift_seconds=0.0))
    assert not plan.has_text and plan.caption_order == ()
    # audio: 768 frames from the drawn start's released frame floor(500 - 1.25) = 498
    assert plan.video_window == (5.0, 13.0) and plan.audio_window == (4.98, 12.66)


def test_start_is_uniform_in_the_allowed_range():
    rng = np.random.default_rng(0)
    draws = np.array([draw_start(rng, 20.0, 8.0) for _ in range(2000)])
    assert draws.min() >= 0 and draws.max() <= 12 and abs(draws.mean() - 6) < 0.3
    assert draw_start(rng, 5.0, 8.0) == 0.0


def test_video_tokens_resample_2d_to_the_3d_rate_by_nearest_neighbour():
    rows3d, rows2d = video_token_rows((0.0, 12.0), n3d=30, n2d=20, max_tokens=12)
    assert rows3d.tolist() == list(range(12))  # window covers 3D rows 0..17, first 12 kept
    # centre of 3D row k is (k + 0.5) / 1.5 s; 2D row i covers [i, i + 1)
    assert rows2d.tolist() == [int((k + 0.5) / 1.5) for k in range(12)] == [0, 1, 1, 2, 3, 3, 4, 5, 5, 6, 7, 7]
    rows3d, rows2d = video_token_rows((2.0, 4.0), n3d=5, n2d=3, max_tokens=12)
    assert rows3d.tolist() == [3, 4] and rows2d.tolist() == [2, 2]  # clamped to the last rows


def make_record(with_audio: bool = True) -> DecodedSample:
    rng = np.random.default_rng(1)
    return DecodedSample(
        video_id="abc",
        duration=20.0,
        resnet152=rng.standard_normal((20, 2048)).astype(np.float16),
        resnext101=rng.standard_normal((30, 2048)).astype(np.float16),
        logmel=rng.uniform(-80, 0, (40, 1500)).astype(np.float16) if with_audio else None,
        caption_starts=np.array([0.0, 2.5, 5.0, 7.0]),
        caption_ends=np.array([2.0, 5.0, 6.0, 12.0]),
        tokens=np.array([10, 11, 20, 30, 31, 32, 40], np.int32),
        token_offsets=np.array([0, 2, 3, 6, 7], np.int32),
    )


def test_clip_arrays_words_quirk_video_rows_and_audio_window():
    record = make_record()
    plan = ClipPlan(3.0, (1, 2, 0, 3), (0.0, 12.0), (7.0, 14.68))
    clip = clip_arrays(record, plan, SPEC)
    # caption words in order of addition (anchor 1, then 2, 0, 3), not in time order: the quirk
    assert clip["token_ids"].tolist() == [20, 30, 31, 32, 10, 11, 40]
    assert clip["video_mask"].all()
    expected_2d = record.resnet152[3].astype(np.float32)
    expected_3d = record.resnext101[4].astype(np.float32)
    np.testing.assert_allclose(clip["video"][4, :2048], expected_2d / np.linalg.norm(expected_2d), rtol=1e-6)
    np.testing.assert_allclose(clip["video"][4, 2048:], expected_3d / np.linalg.norm(expected_3d), rtol=1e-6)
    # audio frames 700..1467 of 1500: all real
    assert clip["audio_mask"].all()
    np.testing.assert_array_equal(clip["audio"], record.logmel[:, 700:1468].astype(np.float32))
    late = clip_arrays(record, ClipPlan(10.0, (), (10.0, 18.0), (14.0, 21.68)), SPEC)
    assert late["audio_mask"].sum() == 100 and not late["audio_mask"][100:].any()  # 1400..1499
    assert late["token_ids"].size == 0
    silent = clip_arrays(make_record(with_audio=False), plan, SPEC)
    assert not silent["audio_mask"].any() and not silent["audio"].any()


def test_word_table_maps_token_ids_to_vocab_rows(tmp_path):
    info = write_shard_set(tmp_path, videos=2, shards=1)
    table = WordTable(tmp_path)
    vectors = np.load(tmp_path / "vocab" / "vectors.npy")
    ids = info["w2v_ids"][[3, 0, 7]]
    np.testing.assert_array_equal(table.lookup(ids), vectors[[3, 0, 7]])
    with pytest.raises(ValueError, match="missing"):
        table.lookup(np.array([info["w2v_ids"][0] + 1]))


def test_discover_shards_needs_the_shard_json(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        discover_shards(tmp_path / "missing")
    with pytest.raises(UserError, match="no complete shards"):
        discover_shards(tmp_path)
    write_shard_set(tmp_path, videos=6, shards=2)
    (tmp_path / "index.json").unlink()
    (tmp_path / "shard-000001.json").unlink()  # the tar of an unfinished shard is not read
    found = discover_shards(tmp_path)
    assert [p.rsplit("/", 1)[-1] for p in found.urls] == ["shard-000000.tar"] and found.num_videos == 3


@pytest.fixture(scope="module")
def shard_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("shards")
    write_shard_set(root, videos=8, shards=2)
    return root


def first_batches(shard_dir, plan: LoaderPlan, workers: int = 0) -> list[dict]:
    return list(make_loader(discover_shards(shard_dir), SPEC, plan, workers))


def test_batch_dict_matches_the_agreed_interface(shard_dir):
    plan = LoaderPlan(videos_per_rank=4, clips_per_video=3, num_batches=2, seed=0, epoch=0, first_step=0,
                      order="fixed", half_features=False)
    batch = first_batches(shard_dir, plan)[0]
    n = 12
    assert batch["video"].shape == (n, 12, 4096) and batch["video"].dtype == torch.float32
    assert batch["text"].shape == (n, 20, 300) and batch["text"].dtype == torch.float32
    assert batch["audio"].shape == (n, 40, 768) and batch["audio"].dtype == torch.float32
    for key, shape in (("video_mask", (n, 12)), ("text_mask", (n, 20)), ("audio_mask", (n, 768))):
        assert batch[key].shape == shape and batch[key].dtype == torch.bool
    assert len(batch["video_id"]) == n and batch["video_id"][:3] == ["vid0000xx"] * 3
    # padded slots: zero text vectors and audio frames (the models overwrite padded audio); real words are vocab vectors
    assert not batch["text"][~batch["text_mask"]].any()
    assert (batch["audio"].permute(0, 2, 1)[~batch["audio_mask"]] == 0.0).all()
    vectors = torch.from_numpy(np.load(shard_dir / "vocab" / "vectors.npy"))
    real = batch["text"][batch["text_mask"]]
    assert (real[:, None, :] == vectors[None]).all(dim=2).any(dim=1).all()  # each word is exactly a vocab row
    # video 4 of the fixture (index 4 % 5 == 4) has no audio: its clips are kept, flagged all-False
    second = first_batches(shard_dir, plan)[1]
    assert second["video_id"][0] == "vid0004xx" and not second["audio_mask"][:3].any()
    assert second["audio_mask"][3:].any(dim=1).all()


def test_half_features_are_the_float32_batch_rounded(shard_dir):
    common = dict(videos_per_rank=4, clips_per_video=3, num_batches=1, seed=0, epoch=0, first_step=0, order="fixed")
    (full,) = first_batches(shard_dir, LoaderPlan(**common, half_features=False))
    (half,) = first_batches(shard_dir, LoaderPlan(**common, half_features=True))
    for key in ("video", "audio"):
        assert half[key].dtype == torch.float16 and torch.equal(half[key], full[key].half()), key
    assert torch.equal(half["audio"].float(), full["audio"])  # log-mel is float16 in the shards: exact
    for key in ("text", "text_mask", "video_mask", "audio_mask"):
        assert torch.equal(half[key], full[key]), key


def test_per_video_clip_blocks_equal_per_clip_sampling_then_collate(shard_dir):
    """The loader's fast path (one block per video, zero-copy decode) gives the clips of the plain path."""
    import webdataset as wds

    shards = discover_shards(shard_dir)
    words = WordTable(shard_dir)
    samples = list(wds.DataPipeline(wds.SimpleShardList(shards.urls), wds.tarfile_to_samples()))
    assert samples == list(wds.DataPipeline(wds.SimpleShardList(shards.urls), tar_samples()))  # the fast tar reader
    records = [decode_sample(sample) for sample in samples[:6]]
    expected = collate([sample_clips(r, 4, SPEC, np.random.default_rng(i)) for i, r in enumerate(records)],
                       words, SPEC.max_words)
    for half in (False, True):
        got = collate_blocks([video_clip_block(r, 4, SPEC, np.random.default_rng(i), half)
                              for i, r in enumerate(records)], words, SPEC.max_words)
        assert got["video_id"] == expected["video_id"]
        for key, value in expected.items():
            if torch.is_tensor(value):
                want = value.half() if half and key in ("video", "audio") else value
                assert got[key].dtype == want.dtype and torch.equal(got[key], want), (key, half)


def test_fixed_order_splits_each_global_batch_across_ranks(shard_dir):
    common = dict(clips_per_video=2, num_batches=2, seed=3, epoch=1, first_step=0, order="fixed")
    single = first_batches(shard_dir, LoaderPlan(videos_per_rank=4, **common))
    ranks = [first_batches(shard_dir, LoaderPlan(videos_per_rank=2, rank=r, world_size=2, **common), workers=2)
             for r in (0, 1)]
    for step in range(2):
        joined = {k: torch.cat([ranks[0][step][k], ranks[1][step][k]]) for k in ("video", "text", "audio_mask")}
        for key, value in joined.items():
            assert torch.equal(value, single[step][key])
        assert ranks[0][step]["video_id"] + ranks[1][step]["video_id"] == single[step]["video_id"]


def test_stream_is_reproducible_from_its_seed_and_step(shard_dir):
    plan = LoaderPlan(videos_per_rank=2, clips_per_video=2, num_batches=4, seed=5, epoch=0, first_step=0, shuffle_buffer=8)
    one, two = first_batches(shard_dir, plan, workers=2), first_batches(shard_dir, plan, workers=2)
    assert len(one) == 4
    assert all(torch.equal(a["video"], b["video"]) and a["video_id"] == b["video_id"] for a, b in zip(one, two))
    later = first_batches(shard_dir, LoaderPlan(**{**plan.__dict__, "first_step": 4}), workers=2)
    assert [b["video_id"] for b in later] != [b["video_id"] for b in one]


def test_a_corrupted_shard_is_skipped_with_a_warning(tmp_path):
    write_shard_set(tmp_path, videos=4, shards=1)
    add_corrupt_shard(tmp_path, index=1)
    plan = LoaderPlan(videos_per_rank=2, clips_per_video=1, num_batches=6, seed=0, epoch=0, first_step=0, shuffle_buffer=4)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        batches = first_batches(tmp_path, plan)
    assert len(batches) == 6
    assert any("shard-000001.tar" in str(w.message) for w in caught)
    assert all(vid.startswith("vid") for b in batches for vid in b["video_id"])


def test_decode_sample_reads_the_shard_fields(tmp_path):
    import webdataset as wds

    write_shard_set(tmp_path, videos=2, shards=1)
    sample = next(iter(wds.WebDataset(str(tmp_path / "shard-000000.tar"), shardshuffle=False)))
    record = decode_sample(sample)
    meta = json.loads(sample["meta.json"])
    assert record.video_id == sample["__key__"] == meta["video_id"] and record.duration == meta["duration"]
    assert record.resnext101.shape[1] == 2048 and record.token_offsets[-1] == len(record.tokens)
    assert record.caption_texts == tuple(json.loads(sample["captions.json"])["text"]) and record.caption_texts
