"""The batch dict every model reads, built from per-clip arrays.

Layout (agreed with mft_train.models): video (B, Nv, 4096) float32 + video_mask (B, Nv) bool,
text (B, max_words, 300) word2vec vectors + text_mask, audio (B, 40, Na) log-mel + audio_mask (B, Na);
True = real token. Clips of one video are adjacent. Bookkeeping entries ride along and never reach
the model: video_id (list of str), and for clip-level sets clip_id and clip_index.
"""

from __future__ import annotations

import numpy as np
import torch

from howto_prep.schema import WORD_DIM
from mft_train.data.shards import WordTable

BOOKKEEPING_KEYS = ("video_id", "clip_id", "clip_index")


def collate(videos: list[list[dict]], words: WordTable, max_words: int, audio_pad_value: float) -> dict:
    """Per-video clip lists -> the batch dict; padded word slots are zeros, padded audio frames `audio_pad_value`."""
    clips = [clip for video in videos for clip in video]
    text = np.zeros((len(clips), max_words, WORD_DIM), np.float32)
    text_mask = np.zeros((len(clips), max_words), bool)
    for i, clip in enumerate(clips):
        count = len(clip["token_ids"])
        text[i, :count] = words.lookup(clip["token_ids"])
        text_mask[i, :count] = True
    audio = np.stack([clip["audio"] for clip in clips])
    audio_mask = np.stack([clip["audio_mask"] for clip in clips])
    audio = np.where(audio_mask[:, None, :], audio, np.float32(audio_pad_value))
    return {
        "video": torch.from_numpy(np.stack([clip["video"] for clip in clips])),
        "video_mask": torch.from_numpy(np.stack([clip["video_mask"] for clip in clips])),
        "text": torch.from_numpy(text),
        "text_mask": torch.from_numpy(text_mask),
        "audio": torch.from_numpy(np.ascontiguousarray(audio, dtype=np.float32)),
        "audio_mask": torch.from_numpy(audio_mask),
        "video_id": [clip["video_id"] for clip in clips],
    }


def model_inputs(batch: dict) -> dict:
    """The entries a model reads (bookkeeping such as ids and clip indices left out)."""
    return {key: value for key, value in batch.items() if key not in BOOKKEEPING_KEYS}
