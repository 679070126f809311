"""Render a `VideoPlan` to frames and audio, and write it as a real H.264 + AAC mp4.

Frames are cheap on purpose: the background (gradient + static clutter) and each step's sprite
mask are computed once per video; a frame is a copy of the background with the sprite pasted at
its moving position. Audio is built segment by segment with numpy.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Iterator

import numpy as np

from howto_prep.synthetic.mp4 import howto_encoding, write_mp4
from howto_prep.synthetic.content import COLOURS, STEPS
from howto_prep.synthetic.plans import Segment, VideoPlan

SPRITE_FRACTION = 0.42  # sprite side as a fraction of the frame height
AMPLITUDE = 0.25
BACKGROUND_NOISE = 0.01
FADE_SECONDS = 0.02
# The `howto` encoding's look (plans with a bitrate): footage that needs 400-800 kbit/s, as real video does
PAN_PIXELS = 32  # the camera drifts left and right over this many pixels
PAN_PERIOD_S = 16.0
TEXTURE_LEVELS = 14.0  # std of the static texture (grey levels), half coarse (2x2 blocks), half fine
GRAIN_LEVELS = 6  # sensor grain: uniform 0..6 added per frame, from a small bank of noise frames
GRAIN_FRAMES = 7


@lru_cache(maxsize=64)
def shape_mask(shape: str, size: int) -> np.ndarray:
    """Boolean (size, size) mask of `shape`, centred in its square."""
    y, x = (np.mgrid[:size, :size] + 0.5) / size - 0.5  # coordinates in [-0.5, 0.5)
    radius = np.hypot(x, y)
    if shape == "disc":
        return radius < 0.5
    if shape == "square":
        return np.maximum(abs(x), abs(y)) < 0.42
    if shape == "triangle":
        return (y < 0.45) & (abs(x) < (y + 0.5) * 0.55)
    if shape == "ring":
        return (radius < 0.5) & (radius > 0.3)
    if shape == "cross":
        return ((abs(x) < 0.17) | (abs(y) < 0.17)) & (np.maximum(abs(x), abs(y)) < 0.5)
    if shape == "stripes":
        return (np.floor((y + 0.5) * 5) % 2 == 0) & (np.maximum(abs(x), abs(y)) < 0.5)
    raise ValueError(f"unknown shape {shape!r}")


def background(plan: VideoPlan, width: int | None = None) -> np.ndarray:
    """Vertical gradient between two dark colours, plus a few static dull rectangles (`width`: wider
    than the frame, for a panning camera)."""
    height, width = plan.height, width or plan.width
    top, bottom = (np.array(colour, dtype=np.float32) for colour in plan.background)
    ramp = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None]
    column = (top * (1 - ramp) + bottom * ramp).astype(np.uint8)  # (H, 3)
    frame = np.broadcast_to(column[:, None, :], (height, width, 3)).copy()
    for x, y, w, h, r, g, b in plan.clutter:
        x0, y0 = int(x * width), int(y * height)
        frame[y0:y0 + max(1, int(h * height)), x0:x0 + max(1, int(w * width))] = (r, g, b)
    return frame


def sprite_centre(motion: str, progress: float, t: float, width: int, height: int) -> tuple[float, float]:
    """Where the sprite is: `progress` in [0, 1] through its step, `t` the video time (s)."""
    if motion == "right":
        return width * (0.25 + 0.5 * progress), height * 0.5
    if motion == "left":
        return width * (0.75 - 0.5 * progress), height * 0.5
    if motion == "up":
        return width * 0.5, height * (0.7 - 0.4 * progress)
    if motion == "down":
        return width * 0.5, height * (0.3 + 0.4 * progress)
    if motion == "circle":
        angle = 2 * np.pi * t / 4.0
        return width * 0.5 + 0.25 * height * np.cos(angle), height * 0.5 + 0.2 * height * np.sin(angle)
    if motion == "zigzag":
        phase = (t / 3.0) % 1.0
        tri = 4 * abs(phase - 0.5) - 1  # triangle wave in [-1, 1]
        return width * (0.5 + 0.3 * tri), height * (0.5 + 0.1 * np.sin(2 * np.pi * t / 2.0))
    raise ValueError(f"unknown motion {motion!r}")


def segment_at(plan: VideoPlan, t: float) -> Segment | None:
    for segment in plan.segments:
        if segment.start <= t < segment.end:
            return segment
    return None


@lru_cache(maxsize=64)
def sprite(shape: str, colour: str, size: int) -> tuple[np.ndarray, np.ndarray]:
    """(keep, paint) uint8 (size, size, 3): a pixel becomes pixel * keep + paint (fast in-place paste)."""
    mask = shape_mask(shape, size)[:, :, None]
    keep = np.repeat((~mask).astype(np.uint8), 3, axis=2)
    paint = (mask * np.array(COLOURS[colour], dtype=np.uint8)).astype(np.uint8)
    return keep, paint


def textured_background(plan: VideoPlan) -> tuple[np.ndarray, list[np.ndarray]]:
    """The `howto` look: the background PAN_PIXELS wider with a static texture, levels kept <= 255 -
    GRAIN_LEVELS, and a bank of grain frames (uint8 0..GRAIN_LEVELS) added one per frame."""
    rng = np.random.default_rng([plan.noise_seed, 7])
    height, width = plan.height, plan.width + PAN_PIXELS
    base = background(plan, width).astype(np.float32)
    coarse = rng.standard_normal(((height + 1) // 2, (width + 1) // 2, 3), dtype=np.float32)
    coarse = np.repeat(np.repeat(coarse, 2, axis=0), 2, axis=1)[:height, :width]
    fine = rng.standard_normal((height, width, 3), dtype=np.float32)
    base += (TEXTURE_LEVELS / np.sqrt(2)) * (coarse + fine)
    textured = np.clip(base, 0, 255 - GRAIN_LEVELS).astype(np.uint8)
    grain = [rng.integers(0, GRAIN_LEVELS + 1, (plan.height, plan.width, 3), dtype=np.uint8)
             for _ in range(GRAIN_FRAMES)]
    return textured, grain


def frames(plan: VideoPlan, start: float = 0.0, end: float | None = None) -> Iterator[np.ndarray]:
    """RGB uint8 frames of the plan from `start` to `end` seconds (the whole video by default)."""
    end = plan.duration if end is None else end
    howto = plan.bitrate is not None
    base, grain = textured_background(plan) if howto else (background(plan), [])
    size = int(round(SPRITE_FRACTION * plan.height * plan.sprite_scale))
    count = int(round((end - start) * plan.fps))
    for i in range(count):
        t = start + i / plan.fps
        if howto:  # the camera drifts; the grain changes every frame
            shift = int(round(PAN_PIXELS / 2 * (1 - np.cos(2 * np.pi * t / PAN_PERIOD_S))))
            frame = base[:, shift:shift + plan.width] + grain[(int(round(t * plan.fps))) % GRAIN_FRAMES]
        else:
            frame = base.copy()
        segment = segment_at(plan, t)
        if segment is not None:
            step = STEPS[segment.step]
            progress = (t - segment.start) / max(segment.end - segment.start, 1e-6)
            cx, cy = sprite_centre(step.motion, progress, t, plan.width, plan.height)
            x0 = min(max(int(round(cx - size / 2)), 0), plan.width - size)
            y0 = min(max(int(round(cy - size / 2)), 0), plan.height - size)
            keep, paint = sprite(step.shape, step.colour, size)
            region = frame[y0:y0 + size, x0:x0 + size]
            region *= keep
            region += paint
        yield frame


def step_sound(kind: str, frequency: float, t: np.ndarray, rng: np.random.Generator, sample_rate: int) -> np.ndarray:
    """One step's signature: a tone, a major chord, a noise band or a tone pulsed at 3 Hz."""
    if kind == "tone":
        return np.sin(2 * np.pi * frequency * t)
    if kind == "chord":
        return sum(np.sin(2 * np.pi * frequency * ratio * t) for ratio in (1.0, 1.26, 1.5)) / 3
    if kind == "pulse":
        return np.sin(2 * np.pi * frequency * t) * (np.sin(2 * np.pi * 3.0 * t) > 0)
    if kind == "noise":
        spectrum = np.fft.rfft(rng.standard_normal(t.size))
        freqs = np.fft.rfftfreq(t.size, 1.0 / sample_rate)
        spectrum[(freqs < frequency * 0.85) | (freqs > frequency * 1.15)] = 0
        band = np.fft.irfft(spectrum, t.size)
        return band / (np.abs(band).max() + 1e-9)
    raise ValueError(f"unknown sound {kind!r}")


def audio(plan: VideoPlan) -> np.ndarray | None:
    """Float32 (channels, samples) in [-1, 1], or None for a video without audio."""
    if plan.sample_rate is None:
        return None
    rate = plan.sample_rate
    total = int(round(plan.duration * rate))
    rng = np.random.default_rng(plan.noise_seed)
    signal = BACKGROUND_NOISE * rng.standard_normal(total)
    fade = int(FADE_SECONDS * rate)
    for segment in plan.segments:
        first, last = int(round(segment.start * rate)), min(total, int(round(segment.end * rate)))
        if last - first <= 2 * fade:
            continue
        step = STEPS[segment.step]
        t = np.arange(first, last) / rate
        sound = AMPLITUDE * step_sound(step.sound, step.frequency, t, rng, rate)
        ramp = np.linspace(0.0, 1.0, fade)
        sound[:fade] *= ramp
        sound[-fade:] *= ramp[::-1]
        signal[first:last] += sound
    signal = np.clip(signal, -1.0, 1.0).astype(np.float32)
    if plan.channels == 1:
        return signal[None, :]
    gains = np.array([[1.0 - max(plan.pan, 0.0)], [1.0 + min(plan.pan, 0.0)]], dtype=np.float32)
    return gains * signal[None, :]


def write_video(plan: VideoPlan, path: Path, start: float = 0.0, end: float | None = None) -> Path:
    """Encode the plan (or its [start, end) part, e.g. an MSR-VTT clip) to `path` atomically."""
    sound = audio(plan)
    if sound is not None:
        first = int(round(start * plan.sample_rate))
        last = sound.shape[1] if end is None else int(round(end * plan.sample_rate))
        sound = sound[:, first:last]
    encoding = howto_encoding(plan.bitrate) if plan.bitrate is not None else None
    return write_mp4(path, frames(plan, start, end), plan.fps, sound, plan.sample_rate or 44_100, encoding=encoding)
