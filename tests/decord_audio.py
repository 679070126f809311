"""The independent reference for the soundtrack: decord's AudioReader (16 kHz mono float32).

The product reads audio with PyAV (howto_prep.features.audio) so that decode workers never import
decord; decord, the library the recipes were first run with, stays here as what the tests compare to."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from howto_prep import schema
from howto_prep.decode import MediaError, import_decord
from howto_prep.errors import FailureKind


def decord_audio(path: Path) -> np.ndarray | None:
    """16 kHz mono float32 samples, or None when the file has no audio stream."""
    decord = import_decord()
    try:
        reader = decord.AudioReader(str(path), sample_rate=schema.AUDIO_SAMPLE_RATE, mono=True)
    except Exception as err:
        if "audio stream" in str(err).lower():
            return None
        raise MediaError(FailureKind.BAD_MEDIA, f"cannot decode the audio of {Path(path).name}: "
                         f"{' '.join(str(err).split())[:300]}") from None
    samples = np.asarray(reader._array if hasattr(reader, "_array") else reader[:].asnumpy(), dtype=np.float32)
    return np.ascontiguousarray(samples.reshape(-1) if samples.shape[0] == 1 else samples.mean(axis=0))
