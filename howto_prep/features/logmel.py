"""Audio features: the AVLnet log-mel spectrogram used by Everything-at-Once and MCN.

Recipe (docs/recipes.md section 3): 16 kHz mono; DC mean removed; pre-emphasis 0.97; STFT with
n_fft = win = 400 and hop 160 (100 frames/s), symmetric Hamming window (AVLnet's scipy.signal.hamming),
centered with reflect padding (librosa's default, so F = 1 + len // 160); power spectrum; 40 Slaney
mel bins (Slaney norm) from 20 Hz to 8 kHz; power_to_db with ref = max over the clip, amin 1e-10,
top_db 80: values in [-80, 0].
"""

from __future__ import annotations

import numpy as np

from howto_prep import schema
from howto_prep.errors import UserError

N_FFT = 400
HOP = 160
N_MELS = schema.LOGMEL.dim
F_MIN = 20.0
F_MAX = 8000.0
PRE_EMPHASIS = 0.97
AMIN = 1e-10
TOP_DB = 80.0
FRAMES_PER_BLOCK = 6000  # 60 s of frames per STFT call: bounded memory for 2,000 s videos


def logmel(audio: np.ndarray, sample_rate: int = schema.AUDIO_SAMPLE_RATE) -> np.ndarray:
    """Mono 16 kHz float audio -> float16 (40, 1 + len // 160) log-mel in dB, 0 dB = loudest bin.

    *Quirk* (kept from AVLnet, docs/recipes.md section 3): each clip is referenced to its own maximum,
    so 0 dB means "the loudest bin of this clip" and -80 dB is the floor; a consumer that pads with
    zeros therefore pads with "loudest", not with silence.
    """
    return logmel_float32(audio, sample_rate).astype(np.float16)


def logmel_float32(audio: np.ndarray, sample_rate: int = schema.AUDIO_SAMPLE_RATE) -> np.ndarray:
    """Same as `logmel` before the float16 cast (tests compare at this precision).

    The STFT is numpy's (pocketfft, float64, one thread), so the decode task needs no torch (a bare
    `import torch` peaks at 662 MiB RSS against numpy's 25 MiB, `resource.getrusage`): against torch.stft, the same float16 log-mel on
    every soundtrack compared (the synthetic corpora, up to 2,000 s; float32 values within 4e-15 dB;
    tests/test_audio_decode.py). The padded signal is made per block and the dB conversion is done in
    place, so a soundtrack is held once (64 KB per second) besides its float64 mel (32 KB per second)."""
    signal = check_audio(audio, sample_rate)
    padded = emphasised_and_padded(signal) if len(signal) <= N_FFT // 2 else None  # else made block by block
    mean = signal.mean(dtype=np.float64)
    frames = 1 + len(signal) // HOP
    window = hamming_window(N_FFT)
    filterbank_t = mel_filterbank(sample_rate).T
    mel = np.empty((N_MELS, frames), dtype=np.float64)
    for first in range(0, frames, FRAMES_PER_BLOCK):
        last = min(frames, first + FRAMES_PER_BLOCK)
        start, stop = first * HOP, (last - 1) * HOP + N_FFT
        block = padded[start:stop] if padded is not None else padded_block(signal, start, stop, mean)
        block = block.astype(np.float64)
        windows = np.lib.stride_tricks.sliding_window_view(block, N_FFT)[::HOP]  # (frames, N_FFT), a view
        spectrum = np.fft.rfft(windows * window, axis=1)
        power = spectrum.real ** 2 + spectrum.imag ** 2
        mel[:, first:last] = filterbank_t @ power.T
    return power_to_db_in_place(mel).astype(np.float32)


def hamming_window(length: int) -> np.ndarray:
    """Symmetric Hamming window, 0.54 - 0.46 cos(2 pi n / (length - 1)): AVLnet hands librosa
    `scipy.signal.hamming`, which librosa calls as `window(400)`, i.e. with scipy's default sym=True
    (docs/recipes.md section 3). Not torch's default, which is the periodic window."""
    if length == 1:
        return np.ones(1, dtype=np.float64)
    return 0.54 - 0.46 * np.cos(2.0 * np.pi * np.arange(length, dtype=np.float64) / (length - 1))


def check_audio(audio: np.ndarray, sample_rate: int) -> np.ndarray:
    signal = np.asarray(audio)
    if sample_rate != schema.AUDIO_SAMPLE_RATE:
        raise UserError(f"log-mel expects {schema.AUDIO_SAMPLE_RATE} Hz audio, got {sample_rate} Hz")
    if signal.ndim != 1:
        raise UserError(f"log-mel expects mono audio of shape (samples,), got shape {signal.shape}")
    if signal.size == 0:
        raise UserError("the audio track is empty, so no log-mel can be computed")
    return signal.astype(np.float32, copy=False)


def emphasised_and_padded(signal: np.ndarray) -> np.ndarray:
    """DC removed, pre-emphasised, reflect-padded by N_FFT // 2 on each side, written into ONE
    float32 buffer (a 2,000 s soundtrack is 128 MB; numpy temporaries would triple that)."""
    pad = N_FFT // 2
    mean = signal.mean(dtype=np.float64)
    padded = np.empty(len(signal) + 2 * pad, dtype=np.float32)
    middle = padded[pad:pad + len(signal)]
    pre_emphasis(signal, out=middle)
    middle -= np.float32((1.0 - PRE_EMPHASIS) * mean)  # the DC offset, pre-emphasised
    middle[0] -= np.float32(PRE_EMPHASIS * mean)  # y[0] = x[0] - mean
    if len(signal) <= pad:  # too short for one reflection: numpy's repeated one
        return np.pad(middle.copy(), pad, mode="reflect")
    padded[:pad] = middle[pad:0:-1]
    padded[pad + len(signal):] = middle[-2:-pad - 2:-1]
    return padded


def padded_block(signal: np.ndarray, start: int, stop: int, mean: float | None = None) -> np.ndarray:
    """`emphasised_and_padded(signal)[start:stop]`, bit for bit (the same float32 operations on the
    samples it needs), without the whole-soundtrack buffer: a 2,000 s soundtrack keeps 128 MB less.
    Needs len(signal) > N_FFT // 2 (one reflection); `mean`: signal.mean(dtype=float64), if known."""
    pad, count = N_FFT // 2, len(signal)
    if start >= pad and stop - pad <= count:  # every block but the first and last: no reflection
        return _emphasised_span(signal, start - pad, stop - pad, mean)
    positions = np.arange(start, stop) - pad  # index into the emphasised signal, before reflection
    positions = np.where(positions < 0, -positions, positions)
    positions = np.where(positions >= count, 2 * count - 2 - positions, positions)
    low, high = int(positions.min()), int(positions.max()) + 1
    return _emphasised_span(signal, low, high, mean)[positions - low]


def _emphasised_span(signal: np.ndarray, low: int, high: int, mean: float | None) -> np.ndarray:
    """Samples [low, high) of the DC-removed, pre-emphasised signal (before padding), in float32."""
    mean = signal.mean(dtype=np.float64) if mean is None else mean
    middle = np.empty(high - low, dtype=np.float32)
    if low == 0:
        middle[0] = signal[0]
        np.multiply(signal[:high - 1], -PRE_EMPHASIS, out=middle[1:], dtype=np.float32)
        middle[1:] += signal[1:high]
    else:
        np.multiply(signal[low - 1:high - 1], -PRE_EMPHASIS, out=middle, dtype=np.float32)
        middle += signal[low:high]
    middle -= np.float32((1.0 - PRE_EMPHASIS) * mean)
    if low == 0:
        middle[0] -= np.float32(PRE_EMPHASIS * mean)
    return middle


def pre_emphasis(signal: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """y[t] = x[t] - 0.97 x[t-1], y[0] = x[0]."""
    emphasised = np.empty_like(signal, dtype=np.float32) if out is None else out
    emphasised[0] = signal[0]
    np.multiply(signal[:-1], -PRE_EMPHASIS, out=emphasised[1:], dtype=np.float32)
    emphasised[1:] += signal[1:]
    return emphasised


def slaney_mel(hz: np.ndarray) -> np.ndarray:
    """Slaney's mel scale (Auditory Toolbox): 3 mels per 200 Hz below 1 kHz, logarithmic above
    (15 mels at 1 kHz, 27 mels per factor 6.4)."""
    hz = np.asarray(hz, dtype=np.float64)
    log_part = 15.0 + np.log(np.maximum(hz, 1000.0) / 1000.0) * (27.0 / np.log(6.4))
    return np.where(hz < 1000.0, hz * 3.0 / 200.0, log_part)


def slaney_hz(mel: np.ndarray) -> np.ndarray:
    """Inverse of `slaney_mel`."""
    mel = np.asarray(mel, dtype=np.float64)
    log_part = 1000.0 * np.exp((np.maximum(mel, 15.0) - 15.0) * (np.log(6.4) / 27.0))
    return np.where(mel < 15.0, mel * 200.0 / 3.0, log_part)


def mel_filterbank(sample_rate: int) -> np.ndarray:
    """(201, 40) float64 Slaney-scale, Slaney-normalised triangles (librosa's defaults).

    Edges are N_MELS + 2 points equally spaced in mel between F_MIN and F_MAX; triangle m rises from
    edge m to edge m+1, falls to edge m+2 and is scaled by 2 / (edge m+2 - edge m) (equal area).
    Written out here (25 lines) so the log-mel needs no torchaudio: see docs/recipes.md.
    """
    edges = slaney_hz(np.linspace(slaney_mel(F_MIN), slaney_mel(F_MAX), N_MELS + 2))
    bins = np.arange(N_FFT // 2 + 1, dtype=np.float64) * sample_rate / N_FFT
    left, centre, right = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rising = (bins[None, :] - left) / (centre - left)
    falling = (right - bins[None, :]) / (right - centre)
    triangles = np.maximum(0.0, np.minimum(rising, falling)) * (2.0 / (right - left))
    return np.ascontiguousarray(triangles.T)


def power_to_db_in_place(power: np.ndarray) -> np.ndarray:
    """10 log10(power / max), floored at amin and at max - top_db (librosa's power_to_db), computed in
    `power` (float64) itself: no whole-clip temporaries (bit for bit the plain formula, tested)."""
    reference = 10.0 * np.log10(max(AMIN, float(power.max())))
    np.maximum(power, AMIN, out=power)
    np.log10(power, out=power)
    power *= 10.0
    power -= reference
    return np.maximum(power, power.max() - TOP_DB, out=power)
