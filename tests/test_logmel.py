"""Log-mel against an independent plain-numpy AVLnet implementation (own framing, FFT, Slaney mel)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from howto_prep.errors import UserError
from howto_prep.features.logmel import emphasised_and_padded, logmel, logmel_float32

SR = 16000


def slaney_hz_to_mel(hz: float) -> float:
    """Slaney/Auditory Toolbox: linear below 1 kHz (3 mels per 200 Hz), logarithmic above."""
    if hz < 1000.0:
        return hz * 3.0 / 200.0
    return 15.0 + math.log(hz / 1000.0) / (math.log(6.4) / 27.0)


def slaney_mel_to_hz(mel: float) -> float:
    if mel < 15.0:
        return mel * 200.0 / 3.0
    return 1000.0 * math.exp((mel - 15.0) * math.log(6.4) / 27.0)


def reference_filterbank(n_fft=400, n_mels=40, fmin=20.0, fmax=8000.0) -> np.ndarray:
    """(n_mels, n_fft // 2 + 1) triangles between mel-spaced edges, each scaled by 2 / bandwidth."""
    low, high = slaney_hz_to_mel(fmin), slaney_hz_to_mel(fmax)
    edges = [slaney_mel_to_hz(low + (high - low) * i / (n_mels + 1)) for i in range(n_mels + 2)]
    bins = [k * SR / n_fft for k in range(n_fft // 2 + 1)]
    bank = np.zeros((n_mels, len(bins)))
    for m in range(n_mels):
        left, centre, right = edges[m], edges[m + 1], edges[m + 2]
        for k, f in enumerate(bins):
            rising = (f - left) / (centre - left)
            falling = (right - f) / (right - centre)
            bank[m, k] = max(0.0, min(rising, falling)) * 2.0 / (right - left)
    return bank


def reference_logmel(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    x = x - x.mean()
    y = np.empty_like(x)
    y[0] = x[0]
    for t in range(1, len(x)):
        y[t] = x[t] - 0.97 * x[t - 1]
    # Reflect padding by hand: sample -k mirrors sample k (the edge itself is not repeated).
    padded = np.concatenate([y[1:201][::-1], y, y[-201:-1][::-1]])
    # AVLnet's window: scipy.signal.hamming(400), symmetric (denominator N - 1 = 399).
    window = np.array([0.54 - 0.46 * math.cos(2 * math.pi * n / 399) for n in range(400)])
    n_frames = 1 + len(x) // 160
    power = np.zeros((201, n_frames))
    for f in range(n_frames):
        spectrum = np.fft.rfft(padded[f * 160:f * 160 + 400] * window)
        power[:, f] = spectrum.real ** 2 + spectrum.imag ** 2
    mel = reference_filterbank() @ power
    db = 10 * np.log10(np.maximum(1e-10, mel)) - 10 * np.log10(max(1e-10, mel.max()))
    return np.maximum(db, db.max() - 80.0)


def tone_and_noise(seconds: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    tone = 0.5 * np.sin(2 * np.pi * 440 * t) + 0.2 * np.sin(2 * np.pi * 3000 * t) * (t > seconds / 2)
    return (tone + 0.05 * rng.standard_normal(t.size) + 0.1).astype(np.float32)  # + DC offset


def test_matches_independent_numpy_implementation():
    audio = tone_and_noise(1.337)
    ours = logmel_float32(audio)
    expected = reference_logmel(audio)
    assert ours.dtype == np.float32 and ours.shape == expected.shape == (40, 1 + len(audio) // 160)
    np.testing.assert_allclose(ours, expected, atol=0.01, rtol=0)
    # The spectrum carries the signal: the 3 kHz tone appears in the second half only.
    assert ours.std() > 5.0


def test_float16_output_shape_and_range():
    audio = tone_and_noise(2.0, seed=1)
    out = logmel(audio)
    assert out.dtype == np.float16 and out.shape == (40, 201)
    assert out.max() == 0.0 and out.min() >= -80.0


def test_top_db_floor_is_reached_for_a_silent_half():
    audio = tone_and_noise(1.0, seed=2)
    audio[: SR // 2] = 0.0  # digital silence, then a loud tone
    out = logmel_float32(audio)
    assert out.min() == pytest.approx(-80.0) and out.max() == 0.0


@pytest.mark.parametrize("length", [1, 159, 160, 161, 16001])
def test_frame_count_is_one_plus_len_over_hop(length):
    audio = np.random.default_rng(length).standard_normal(length).astype(np.float32)
    assert logmel(audio).shape == (40, 1 + length // 160)


def test_bad_audio_is_a_user_error():
    with pytest.raises(UserError, match="empty"):
        logmel(np.zeros(0, dtype=np.float32))
    with pytest.raises(UserError, match="mono"):
        logmel(np.zeros((2, 1600), dtype=np.float32))
    with pytest.raises(UserError, match="16000 Hz"):
        logmel(np.zeros(1600, dtype=np.float32), sample_rate=44100)


@pytest.mark.parametrize("length", [1, 150, 200, 201, 1000, 16_003])
def test_one_buffer_preparation_equals_the_step_by_step_numpy_one(length: int) -> None:
    """DC removal, pre-emphasis and reflect padding in one buffer = the three numpy steps, also for
    signals shorter than the 200-sample pad (where numpy reflects repeatedly)."""
    signal = (0.3 * np.random.default_rng(length).standard_normal(length) + 0.1).astype(np.float32)
    centred = signal - np.float32(signal.mean(dtype=np.float64))
    emphasised = np.concatenate([centred[:1], centred[1:] - np.float32(0.97) * centred[:-1]])
    expected = np.pad(emphasised, 200, mode="reflect")
    np.testing.assert_allclose(emphasised_and_padded(signal), expected, rtol=0, atol=1e-6)


def test_slaney_mel_scale_hand_values():
    from howto_prep.features.logmel import slaney_hz, slaney_mel

    # 3 mels per 200 Hz below 1 kHz; 15 mels at 1 kHz; +27 mels per factor 6.4 above.
    np.testing.assert_allclose(slaney_mel(np.array([0.0, 500.0, 1000.0, 6400.0])), [0.0, 7.5, 15.0, 42.0],
                               rtol=0, atol=1e-12)
    np.testing.assert_allclose(slaney_hz(np.array([7.5, 15.0, 42.0])), [500.0, 1000.0, 6400.0], rtol=1e-12)


def test_mel_filterbank_matches_the_per_bin_construction():
    from howto_prep.features.logmel import mel_filterbank

    ours = mel_filterbank(SR)
    assert ours.shape == (201, 40) and ours.dtype == np.float64
    np.testing.assert_allclose(ours.T, reference_filterbank(), rtol=0, atol=1e-12)
    # Slaney normalisation: each triangle has area 1 in Hz (peak 2 / bandwidth), up to bin sampling.
    areas = ours.sum(axis=0) * (SR / 400)
    assert np.all(np.abs(areas - 1.0) < 0.35)
