"""Four places where our defaults now follow the authors' released code (docs/recipes.md sections 3, 6, 8).

Each test writes the released formula out independently (hand values or a few lines of numpy/torch)
and checks our code against it:
  a. AVLnet's log-mel window is scipy.signal.hamming(400): the symmetric Hamming window.
  b. EAO's training audio starts 4 s after the caption span's start, in frames of librosa's
     time_to_frames(n_fft=400), and at most 768 frames are kept, zero-padded at the end of the file.
  c. EAO fine-tuning keeps ExponentialLR(gamma 0.9), stepped once per epoch.
  e. MCN draws one caption per clip (uniformly, with replacement) and grows it to >= 10 s, hears the
     span's audio, and L2-normalises the max-pooled 2D and 3D features again.
"""

from __future__ import annotations

import contextlib
import io
import json
import math

import numpy as np
import pytest
import torch

from howto_prep.features.logmel import emphasised_and_padded, hamming_window, logmel_float32, mel_filterbank
from mft_train.data.clips import ClipPlan, clip_arrays, clip_spec, plan_clip, sample_clips
from mft_train.data.shards import DecodedSample
from mft_train.presets import load_config


# ---------------------------------------------------------------- a. the symmetric Hamming window

def test_hamming_window_is_scipys_symmetric_one() -> None:
    """AVLnet passes scipy.signal.hamming to librosa, which calls it as window(400): sym=True."""
    window = hamming_window(400)
    assert window[0] == pytest.approx(0.08) and window[399] == pytest.approx(0.08)  # both ends: 0.54 - 0.46
    np.testing.assert_allclose(window, window[::-1], rtol=0, atol=1e-15)  # symmetric: w[n] = w[N-1-n]
    assert window[200] == pytest.approx(0.54 - 0.46 * math.cos(2 * math.pi * 200 / 399), abs=1e-15)
    from scipy.signal import windows

    np.testing.assert_allclose(window, windows.hamming(400, sym=True), rtol=0, atol=1e-15)
    np.testing.assert_allclose(window, np.hamming(400), rtol=0, atol=1e-15)


def test_log_mel_uses_the_symmetric_window() -> None:
    """The whole log-mel against the same STFT written with numpy's (symmetric) np.hamming."""
    rng = np.random.default_rng(3)
    t = np.arange(16_000 * 2) / 16_000
    audio = (0.4 * np.sin(2 * np.pi * 440 * t) + 0.05 * rng.standard_normal(t.size)).astype(np.float32)
    padded = emphasised_and_padded(audio).astype(np.float64)
    frames = 1 + len(audio) // 160
    stacked = np.stack([padded[f * 160 : f * 160 + 400] for f in range(frames)]) * np.hamming(400)
    spectrum = np.fft.rfft(stacked, axis=1)
    mel = mel_filterbank(16_000).T @ (np.abs(spectrum) ** 2).T
    db = 10 * np.log10(np.maximum(mel, 1e-10)) - 10 * np.log10(max(1e-10, mel.max()))
    expected = np.maximum(db, db.max() - 80.0)
    np.testing.assert_allclose(logmel_float32(audio), expected, rtol=0, atol=1e-4)


# ---------------------------------------------------------------- b. EAO's training audio window

def librosa_time_to_frames(seconds: float) -> int:
    """librosa.time_to_frames(t, sr=16000, hop_length=160, n_fft=400) as librosa 0.8 computes it:
    time_to_samples truncates (astype(int)), samples_to_frames subtracts n_fft // 2, floor-divides by the hop."""
    samples = int(np.asarray(seconds * 16000).astype(int))
    return int(np.floor((samples - 400 // 2) // 160))


def released_eao_audio(logmel: np.ndarray, span_start: float, frames: int = 768, shift: float = 4.0,
                       clip_seconds: float = 8.0) -> tuple[np.ndarray, np.ndarray]:
    """The released HowTo100M loader's audio of a clip with text (flag_text_audio_misaligned on:
    `rand() > 0` always holds): crop [start + 4, start + 12] s of the caption span's start, keep the
    first `frames`, zero-pad with a 0 mask."""
    first = max(0, librosa_time_to_frames(span_start + shift))
    stop = librosa_time_to_frames(span_start + shift + clip_seconds)
    crop = logmel[:, first:stop][:, :frames]
    audio = np.zeros((logmel.shape[0], frames), np.float32)
    audio[:, : crop.shape[1]] = crop
    mask = np.zeros(frames, bool)
    mask[: crop.shape[1]] = True
    return audio, mask


def record_with(starts: list[float], ends: list[float], duration: float = 20.0, logmel_frames: int = 1500,
                seed: int = 1) -> DecodedSample:
    """A video with given captions (one token each), random features and a random log-mel."""
    rng = np.random.default_rng(seed)
    count = len(starts)
    return DecodedSample(
        video_id="vid", duration=duration,
        resnet152=rng.standard_normal((int(math.ceil(duration)), 2048)).astype(np.float16),
        resnext101=rng.standard_normal((int(math.ceil(duration * 1.5)), 2048)).astype(np.float16),
        logmel=rng.uniform(-80, 0, (40, logmel_frames)).astype(np.float16),
        caption_starts=np.array(starts, np.float64), caption_ends=np.array(ends, np.float64),
        tokens=np.arange(10, 10 + count, dtype=np.int32), token_offsets=np.arange(count + 1, dtype=np.int32),
    )


def test_librosa_frame_convention_by_hand() -> None:
    """floor(100 t - 1.25): a frame is centred at its index x 10 ms, so the instant 4 s lies in frame 398."""
    assert [librosa_time_to_frames(t) for t in (0.0, 0.0125, 4.0, 4.005, 7.0, 12.0)] == [-2, 0, 398, 399, 698, 1198]


def test_eao_audio_starts_four_seconds_after_the_caption_span() -> None:
    # Span grows from caption 1 to [0, 12] s (tests/test_data.py works it out); the drawn start 3 s is
    # not where the audio starts: the span's start 0 s is, plus 4 s -> frames 398 .. 398 + 767.
    record = record_with([0, 2.5, 5, 7, 13], [2, 5, 6, 12, 14])
    spec = clip_spec(load_config("eao_howto100m").data)
    plan = plan_clip(3.0, record.caption_starts, record.caption_ends, spec)
    assert plan.video_window == (0.0, 12.0)
    clip = clip_arrays(record, plan, spec)
    audio, mask = released_eao_audio(record.logmel, span_start=0.0)
    np.testing.assert_array_equal(clip["audio_mask"], mask)
    np.testing.assert_array_equal(clip["audio"], audio)
    np.testing.assert_array_equal(clip["audio"], record.logmel[:, 398:1166].astype(np.float32))


@pytest.mark.parametrize("drawn_start", [2.3, 6.77, 9.41, 11.0])
def test_eao_audio_runs_out_at_the_end_of_the_file(drawn_start: float) -> None:
    """Span [7.3, 15.9]: audio from 11.3 s, frame 1128; the 1,500-frame file ends after 372 frames."""
    record = record_with([1.0, 7.3, 10.2], [2.0, 9.9, 15.9])
    spec = clip_spec(load_config("eao_howto100m").data)
    plan = plan_clip(drawn_start, record.caption_starts, record.caption_ends, spec)
    clip = clip_arrays(record, plan, spec)
    audio, mask = released_eao_audio(record.logmel, span_start=float(record.caption_starts[min(plan.caption_order)]))
    assert min(plan.caption_order) == 1 and mask.sum() == 1500 - 1128
    np.testing.assert_array_equal(clip["audio_mask"], mask)
    np.testing.assert_array_equal(clip["audio"], audio)


def test_eao_clip_without_text_hears_its_drawn_start_unshifted() -> None:
    """No caption at 5 s or 13 s: the released loader crops 768 frames from time_to_frames(5.0) = 498."""
    record = record_with([0.0, 20.0], [1.0, 21.0], duration=25.0, logmel_frames=2500)
    spec = clip_spec(load_config("eao_howto100m").data)
    plan = plan_clip(5.0, record.caption_starts, record.caption_ends, spec)
    clip = clip_arrays(record, plan, spec)
    assert not plan.caption_order and clip["audio_mask"].all()
    np.testing.assert_array_equal(clip["audio"], record.logmel[:, 498:498 + 768].astype(np.float32))


def test_eao_pretraining_stream_takes_the_same_audio() -> None:
    """The loader's per-video block (mft_train.data.batch) hears the released window too."""
    from mft_train.data.batch import video_clip_block

    record = record_with([0.4, 3.1, 6.6, 9.0, 12.5], [2.9, 6.0, 8.8, 12.0, 16.2], duration=22.0, logmel_frames=2200)
    spec = clip_spec(load_config("eao_howto100m").data)
    block = video_clip_block(record, 6, spec, np.random.default_rng(5))
    with_text = 0
    for i, token_ids in enumerate(block["token_ids"]):
        if token_ids.size:  # caption i holds token 10 + i; the span starts at its first caption
            span_start = float(record.caption_starts[int(token_ids.min()) - 10])
            audio, mask = released_eao_audio(record.logmel, span_start)
            np.testing.assert_array_equal(block["audio"][i], audio)
            np.testing.assert_array_equal(block["audio_mask"][i], mask)
            with_text += 1
    assert with_text >= 4


# ---------------------------------------------------------------- c. the fine-tuning schedule

@pytest.mark.parametrize("preset, lr", [("eao_finetune_youcook2", 1e-5), ("eao_finetune_msrvtt", 5e-5)])
def test_finetune_presets_keep_exponential_lr_0_9(preset: str, lr: float) -> None:
    train = load_config(preset).train
    assert (train.schedule, train.lr_gamma, train.lr) == ("exponential", 0.9, lr)


def test_finetune_run_decays_the_learning_rate_by_0_9_per_epoch(tmp_path) -> None:
    """A real `mft-train finetune` with the YouCook2 preset: every step of epoch e runs at 1e-5 * 0.9 ** e."""
    from clip_shard_fixtures import pretrained_checkpoint, write_clip_set
    from mft_train.cli import main

    checkpoint = pretrained_checkpoint(tmp_path)
    for name, seed in (("train", 1), ("val", 2)):
        write_clip_set(tmp_path / name, clips_per_topic=2, topics=4, seed=seed, benchmark="youcook2",
                       length=(4.0, 6.0), sentences=1, world_seed=7)
    out = tmp_path / "run"
    with contextlib.redirect_stdout(io.StringIO()):
        code = main(["finetune", "--init", str(checkpoint), "--shards", str(tmp_path / "train"),
                     "--eval-shards", str(tmp_path / "val"), "--out", str(out), "--config", "eao_finetune_youcook2",
                     "--set", "train.device=cpu", "--set", "train.epochs=3", "--set", "train.batch=4",
                     "--set", "data.video_tokens=9", "--set", "data.audio_frames=640"])
    assert code == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    per_epoch = len(rows) // 3
    assert per_epoch == 2 and len(rows) == 6  # 8 clips / batch 4
    expected = [1e-5, 1e-5, 9e-6, 9e-6, 8.1e-6, 8.1e-6]
    assert [row["lr"] for row in rows] == pytest.approx(expected, rel=1e-9)


# ---------------------------------------------------------------- e. MCN's data path

def mcn_spec():
    return clip_spec(load_config("mcn_howto100m").data)


def test_mcn_presets_draw_a_caption_per_clip() -> None:
    for preset in ("mcn_howto100m", "mcn_small"):
        assert load_config(preset).data.clip_anchor == "random_caption"
    assert load_config("eao_howto100m").data.clip_anchor == "random_start"


def test_mcn_anchors_are_uniform_over_captions_and_every_clip_has_text() -> None:
    """Released: np.random.choice(range(n_caption), k, replace=True), then grow to >= 10 s.

    Captions (0, 1), (1, 2) and (30, 45) in a 50 s video: a uniform start would anchor on the long
    caption or on none most of the time; a drawn caption anchors on each a third of the time."""
    record = record_with([0.0, 1.0, 30.0], [1.0, 2.0, 45.0], duration=50.0, logmel_frames=5000)
    clips = sample_clips(record, 600, mcn_spec(), np.random.default_rng(0))
    assert all(clip["token_ids"].size for clip in clips)
    anchors = np.array([int(clip["token_ids"][0]) - 10 for clip in clips])  # caption i holds token 10 + i
    counts = np.bincount(anchors, minlength=3)
    assert (np.abs(counts / 600 - 1 / 3) < 0.07).all(), counts


def test_mcn_clip_grows_from_the_drawn_caption_and_hears_its_span() -> None:
    """Hand-worked: the rng draws caption 1 of (0, 2), (3, 5), (6, 8), (20, 32). Grow: previous -> [0, 5]
    (5 s) ties next -> [3, 8] (5 s): previous; then only next: [0, 8], then [0, 32] >= 10 s.
    Audio: frames time_to_frames(0) = -2 -> 0 up to time_to_frames(32) = 3198, the first 1,000 kept."""
    record = record_with([0.0, 3.0, 6.0, 20.0], [2.0, 5.0, 8.0, 32.0], duration=40.0, logmel_frames=4000)
    seed = next(s for s in range(100) if np.random.default_rng(s).integers(4) == 1)
    (clip,) = sample_clips(record, 1, mcn_spec(), np.random.default_rng(seed))
    assert clip["token_ids"].tolist() == [11, 10, 12, 13]
    assert clip["audio_mask"].all()
    np.testing.assert_array_equal(clip["audio"], record.logmel[:, :1000].astype(np.float32))


def test_mcn_audio_stops_at_the_end_of_a_short_span() -> None:
    """A lone caption [0.5, 4.0] cannot grow: the released crop is frames 48 .. 397, zero-padded to 1,000."""
    record = record_with([0.5], [4.0], duration=30.0, logmel_frames=3000)
    (clip,) = sample_clips(record, 1, mcn_spec(), np.random.default_rng(0))
    first, stop = librosa_time_to_frames(0.5), librosa_time_to_frames(4.0)
    assert (first, stop) == (48, 398)
    assert clip["audio_mask"].sum() == 350 and clip["audio_mask"][:350].all()
    np.testing.assert_array_equal(clip["audio"][:, :350], record.logmel[:, 48:398].astype(np.float32))
    assert not clip["audio"][:, 350:].any()


def test_mcn_pretraining_stream_draws_captions_too() -> None:
    from mft_train.data.batch import video_clip_block

    record = record_with([0.0, 1.0, 30.0], [1.0, 2.0, 45.0], duration=50.0, logmel_frames=5000)
    block = video_clip_block(record, 8, mcn_spec(), np.random.default_rng(4))
    expected = sample_clips(record, 8, mcn_spec(), np.random.default_rng(4))
    assert [ids.tolist() for ids in block["token_ids"]] == [clip["token_ids"].tolist() for clip in expected]


def test_mcn_video_is_renormalised_after_the_max_pool() -> None:
    """Released: F.normalize(max(2D rows)) and F.normalize(max(3D rows)), concatenated, feed the GEU."""
    from mft_train.models.mcn import build_mcn

    torch.manual_seed(0)
    model = build_mcn({"embed_dim": 8, "audio_hidden": 8, "recon_hidden": 8,
                       "davenet_widths": [8, 8, 8, 8], "davenet_depths": [1, 1, 1, 1]})
    gen = torch.Generator().manual_seed(1)
    rows2d = torch.nn.functional.normalize(torch.randn(2, 5, 2048, generator=gen), dim=2)
    rows3d = torch.nn.functional.normalize(torch.randn(2, 5, 2048, generator=gen), dim=2)
    lengths = torch.tensor([5, 3])
    batch = {"video": torch.cat((rows2d, rows3d), dim=2), "video_mask": torch.arange(5)[None] < lengths[:, None],
             "text": torch.randn(2, 20, 300, generator=gen), "text_mask": torch.ones(2, 20, dtype=torch.bool),
             "audio": torch.rand(2, 40, 64, generator=gen) * -80, "audio_mask": torch.ones(2, 64, dtype=torch.bool)}
    expected = []
    for i, n in enumerate(lengths.tolist()):
        pooled2d, pooled3d = rows2d[i, :n].max(0).values, rows3d[i, :n].max(0).values
        expected.append(torch.cat((pooled2d / pooled2d.norm(), pooled3d / pooled3d.norm())))
    model.eval()
    with torch.no_grad():
        out = model(batch)
        assert torch.allclose(out["target_v"], torch.stack(expected), atol=1e-6)
        assert torch.allclose(out["v"], model.video_head(torch.stack(expected)), atol=1e-6)


def test_plan_audio_window_is_in_whole_frames() -> None:
    """The plans the loaders share hold frame boundaries (so the stream and `clip_arrays` agree)."""
    plan = plan_clip(3.0, np.array([0.0, 2.5]), np.array([2.0, 9.0]), clip_spec(load_config("eao_howto100m").data))
    assert isinstance(plan, ClipPlan)
    assert [round(edge * 100, 6) for edge in plan.audio_window] == [398.0, 1198.0]
