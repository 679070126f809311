"""The decode task's soundtrack and log-mel without decord and torch (features.audio, features.logmel):
the same samples as decord's AudioReader (tests/decord_audio.py), the same log-mel as torch.stft, and a decode worker
that imports neither library (each costs hundreds of MB per worker)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from howto_prep import decode
from howto_prep.features import audio as audio_reader
from decord_audio import decord_audio
from howto_prep.features.logmel import AMIN, HOP, N_FFT, TOP_DB, emphasised_and_padded, logmel_float32, mel_filterbank
from howto_prep.synthetic.mp4 import howto_encoding, write_mp4

FORMATS = [(16_000, 1), (44_100, 2), (48_000, 1), (44_100, 1), (48_000, 2), (16_000, 2), (22_050, 2)]


def frames(count: int, width: int = 64, height: int = 48):
    for i in range(count):
        yield np.full((height, width, 3), (7 * i) % 256, np.uint8)


def soundtrack(rate: int, channels: int, seconds: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(rate * seconds)) / rate
    left = 0.4 * np.sin(2 * np.pi * 440 * t) + 0.05 * rng.standard_normal(t.size)
    tracks = [left, 0.3 * np.sin(2 * np.pi * 1250 * t) + 0.05 * rng.standard_normal(t.size)][:channels]
    return np.stack(tracks).astype(np.float32)


@pytest.mark.parametrize("rate,channels", FORMATS)
def test_pyav_soundtrack_equals_decords_sample_for_sample(tmp_path, rate, channels):
    path = write_mp4(tmp_path / "a.mp4", frames(45), 30.0, soundtrack(rate, channels, 1.5, rate + channels), rate)
    ours, decords = audio_reader.read_audio(path), decord_audio(path)
    assert ours.dtype == np.float32 and ours.shape == decords.shape
    np.testing.assert_array_equal(ours, decords)


def test_howto_encoded_soundtrack_and_missing_audio(tmp_path):
    sound = soundtrack(44_100, 2, 2.0, 3)
    path = write_mp4(tmp_path / "howto.mp4", frames(60, 160, 96), 30.0, sound, 44_100,
                     encoding=howto_encoding(500_000))
    np.testing.assert_array_equal(audio_reader.read_audio(path), decord_audio(path))
    silent = write_mp4(tmp_path / "silent.mp4", frames(30), 30.0)
    assert audio_reader.read_audio(silent) is None and decord_audio(silent) is None
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(path.read_bytes()[:2000])
    with pytest.raises(decode.MediaError) as caught:
        audio_reader.read_audio(broken)
    assert caught.value.kind == decode.FailureKind.BAD_MEDIA


def power_to_db(power: np.ndarray) -> np.ndarray:
    """librosa's power_to_db written plainly (ref = max, amin, top_db): what the in-place version must give."""
    db = 10.0 * np.log10(np.maximum(AMIN, power))
    db -= 10.0 * np.log10(max(AMIN, float(power.max())))
    return np.maximum(db, db.max() - TOP_DB)


def torch_logmel(audio: np.ndarray) -> np.ndarray:
    """The same recipe with torch.stft (the implementation the numpy STFT replaced)."""
    import torch

    padded = torch.from_numpy(emphasised_and_padded(audio).astype(np.float64))
    window = torch.hamming_window(N_FFT, periodic=False, dtype=torch.float64)  # AVLnet's symmetric window
    spectrum = torch.stft(padded, N_FFT, hop_length=HOP, win_length=N_FFT, window=window, center=False,
                          return_complex=True)
    power = (spectrum.real.square() + spectrum.imag.square()).numpy()
    return power_to_db(mel_filterbank(16_000).T @ power).astype(np.float32)


def test_numpy_stft_log_mel_equals_torch_stft():
    rng = np.random.default_rng(0)
    t = np.arange(16_000 * 7) / 16_000
    audio = (0.3 * np.sin(2 * np.pi * 300 * t * (1 + t / 7)) + 0.02 * rng.standard_normal(t.size)).astype(np.float32)
    ours, theirs = logmel_float32(audio), torch_logmel(audio)
    assert ours.shape == theirs.shape == (40, 1 + len(audio) // HOP)
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-4)
    assert (ours.astype(np.float16) != theirs.astype(np.float16)).mean() < 1e-4


def test_decode_worker_imports_neither_torch_nor_decord(tmp_path):
    path = write_mp4(tmp_path / "v.mp4", frames(60, 160, 96), 30.0, soundtrack(44_100, 2, 2.0, 1), 44_100)
    code = ("import json, sys\n"
            "from howto_prep.extract.ray_tasks import decode_stream\n"
            f"items = list(decode_stream({str(path)!r}, True, True, True))\n"
            "print(json.dumps({'logmel': items[1]['logmel'].shape[1], 'chunks': len(items) - 2,\n"
            "                  'torch': 'torch' in sys.modules, 'decord': 'decord' in sys.modules}))\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-1000:]
    found = json.loads(result.stdout.strip().splitlines()[-1])
    assert found == {"logmel": 1 + len(decord_audio(path)) // HOP, "chunks": 1, "torch": False, "decord": False}


@pytest.mark.parametrize("length", [201, 202, 400, 401, 16_000 * 3 + 17])
def test_log_mel_blocks_equal_the_whole_soundtrack_buffer_bit_for_bit(length):
    from howto_prep.features.logmel import padded_block, power_to_db_in_place

    signal = np.random.default_rng(length).standard_normal(length).astype(np.float32) + 0.1
    whole = emphasised_and_padded(signal)
    middle = [(1_000, 40_000)] if length > 40_000 else []  # no reflection: the span of the signal itself
    for start, stop in [(0, len(whole)), (0, 7), (150, 650), (len(whole) - 450, len(whole)), (199, 203)] + middle:
        start, stop = max(0, start), min(stop, len(whole))
        np.testing.assert_array_equal(padded_block(signal, start, stop), whole[start:stop])
    power = np.random.default_rng(1).random((40, 300)) ** 8
    np.testing.assert_array_equal(power_to_db_in_place(power.copy()), power_to_db(power))
