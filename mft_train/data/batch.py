"""The batch dict every model reads, built from per-clip arrays.

Layout (agreed with mft_train.models): video (B, Nv, 4096) + video_mask (B, Nv) bool, text (B, max_words,
300) word2vec vectors + text_mask, audio (B, 40, Na) log-mel + audio_mask (B, Na); features float32, or
video and audio float16 with `half_features` (the pretraining loader on a GPU machine);
True = real token; padded audio frames are zeros (both models overwrite them with their own
model.audio_pad_value, so the data side never needs it). Clips of one video are adjacent.
Bookkeeping entries ride along and never reach the model: video_id (list of str), and for
clip-level sets clip_id and clip_index.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import get_worker_info

from howto_prep.schema import LOGMEL, RESNET152, RESNEXT101, WORD_DIM
from mft_train.data.clips import ClipSpec, clip_token_ids, draw_clip_plan, video_token_rows
from mft_train.data.shards import DecodedSample, WordTable

BOOKKEEPING_KEYS = ("video_id", "clip_id", "clip_index", "query_text")


def collate(videos: list[list[dict]], words: WordTable, max_words: int) -> dict:
    """Per-video clip lists -> the float32 batch dict; padded word slots and audio frames are zeros.
    (The training stream collates with collate_blocks, float16 on a GPU.)"""
    clips = [clip for video in videos for clip in video]
    count = len(clips)
    text = np.zeros((count, max_words, WORD_DIM), np.float32)
    text_mask = np.zeros((count, max_words), bool)
    for i, clip in enumerate(clips):
        words_in_clip = len(clip["token_ids"])
        text[i, :words_in_clip] = words.lookup(clip["token_ids"])
        text_mask[i, :words_in_clip] = True
    audio_mask = np.stack([clip["audio_mask"] for clip in clips])
    # Filled in place: one pass per clip that also converts, instead of stack + astype.
    video = np.empty((count, *clips[0]["video"].shape), np.float32)
    audio = np.empty((count, *clips[0]["audio"].shape), np.float32)
    for i, clip in enumerate(clips):
        video[i] = clip["video"]
        audio[i] = clip["audio"]  # clip_arrays pads with zeros
    return {
        "video": torch.from_numpy(video),
        "video_mask": torch.from_numpy(np.stack([clip["video_mask"] for clip in clips])),
        "text": torch.from_numpy(text),
        "text_mask": torch.from_numpy(text_mask),
        "audio": torch.from_numpy(audio),
        "audio_mask": torch.from_numpy(audio_mask),
        "video_id": [clip["video_id"] for clip in clips],
    }


def model_inputs(batch: dict) -> dict:
    """The entries a model reads (bookkeeping such as ids and clip indices left out)."""
    return {key: value for key, value in batch.items() if key not in BOOKKEEPING_KEYS}


def feature_dtype(half_features: bool) -> type:
    """float16 with half_features (log-mel is float16 in the shards and padding is 0: both exact), else float32."""
    return np.float16 if half_features else np.float32


def _unit_rows(rows: np.ndarray) -> np.ndarray:
    """Rows L2-normalised in float32: the arithmetic of mft_train.data.clips.clip_arrays, bit for bit.

    The float16 -> float32 widening goes through torch: numpy's float16 conversion is several
    times slower, and both are exact.
    """
    rows = torch.from_numpy(rows).float().numpy() if rows.dtype == np.float16 else rows.astype(np.float32)
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    return rows / np.maximum(norms, 1e-12)


def video_clip_block(record: DecodedSample, count: int, spec: ClipSpec, rng: np.random.Generator,
                     half_features: bool = False) -> dict:
    """`count` random clips of one video as stacked arrays: the pretraining loader's unit of work.

    Same clips and values as `sample_clips(record, count, spec, rng)` followed by `collate` (the same
    random draws, the same float32 arithmetic; with half_features video and audio are then rounded to
    float16), but written straight into one block per video: the video's rows are gathered and
    normalised once for all its clips, the audio is copied once in its final dtype, and the text
    stays as token ids until `collate_blocks` looks the words up.
    """
    plans = [draw_clip_plan(rng, record.duration, record.caption_starts, record.caption_ends, spec)
             for _ in range(count)]
    video_dtype = audio_dtype = feature_dtype(half_features)
    video = np.zeros((count, spec.video_tokens, RESNET152.dim + RESNEXT101.dim), video_dtype)
    video_mask = np.zeros((count, spec.video_tokens), bool)
    audio = np.zeros((count, LOGMEL.dim, spec.audio_frames), audio_dtype)
    audio_mask = np.zeros((count, spec.audio_frames), bool)
    n3d, n2d = len(record.resnext101), len(record.resnet152)
    if n3d and n2d:
        rows3d, rows2d = [], []
        for i, plan in enumerate(plans):
            rows3, rows2 = video_token_rows(plan.video_window, n3d, n2d, spec.video_tokens)
            video_mask[i, : len(rows3)] = True
            rows3d.append(rows3)
            rows2d.append(rows2)
        # Clip i's real tokens are a prefix of its slots, so the mask's row-major order is the rows' order.
        for part, rows in ((slice(0, RESNET152.dim), _unit_rows(record.resnet152[np.concatenate(rows2d)])),
                           (slice(RESNET152.dim, None), _unit_rows(record.resnext101[np.concatenate(rows3d)]))):
            if video_dtype == np.float16:  # torch rounds float32 -> float16 as numpy does, several times faster
                rows = torch.from_numpy(rows).half().numpy()
            video[video_mask, part] = rows
    if record.logmel is not None:
        for i, plan in enumerate(plans):
            first = int(round(plan.audio_window[0] * LOGMEL.rate))
            stop = min(first + spec.audio_frames, int(round(plan.audio_window[1] * LOGMEL.rate)))
            frames = record.logmel[:, first : max(first, stop)]  # an MCN span shorter than 10 s stops at its end
            audio[i, :, : frames.shape[1]] = frames
            audio_mask[i, : frames.shape[1]] = True
    return {
        "video": video,
        "video_mask": video_mask,
        "token_ids": [clip_token_ids(record, plan.caption_order, spec.max_words) for plan in plans],
        "audio": audio,
        "audio_mask": audio_mask,
        "video_id": [record.video_id] * count,
    }


def _batch_tensor(shape: tuple[int, ...], dtype: np.dtype) -> torch.Tensor:
    """An uninitialised tensor for a batch entry; in a DataLoader worker, allocated in shared memory.

    A worker hands its batches to the main process through shared memory: a tensor already there
    is passed as is, any other one is first copied into a new shared segment (torch's own
    default_collate avoids that copy the same way).
    """
    dtype = torch.from_numpy(np.empty(0, dtype)).dtype
    if get_worker_info() is None:
        return torch.empty(shape, dtype=dtype)
    numel = int(np.prod(shape))
    storage = torch.empty(0, dtype=dtype)._typed_storage()._new_shared(numel)
    return torch.empty(0, dtype=dtype).set_(storage).view(shape)


def _concatenate(parts: list[np.ndarray]) -> torch.Tensor:
    out = _batch_tensor((sum(len(part) for part in parts), *parts[0].shape[1:]), parts[0].dtype)
    np.concatenate(parts, out=out.numpy())
    return out


def collate_blocks(blocks: list[dict], words: WordTable, max_words: int) -> dict:
    """Per-video blocks (video_clip_block) -> the batch dict, clips of one video adjacent."""
    token_ids = [ids for block in blocks for ids in block["token_ids"]]
    lengths = np.array([len(ids) for ids in token_ids], np.int64)
    text_mask = np.arange(max_words)[None, :] < lengths[:, None]
    text = _batch_tensor((len(token_ids), max_words, WORD_DIM), np.float32)
    text_view = text.numpy()
    text_view.fill(0.0)
    if lengths.sum():
        text_view[text_mask] = words.lookup(np.concatenate(token_ids))
    return {
        "video": _concatenate([block["video"] for block in blocks]),
        "video_mask": torch.from_numpy(np.concatenate([block["video_mask"] for block in blocks])),
        "text": text,
        "text_mask": torch.from_numpy(text_mask),
        "audio": _concatenate([block["audio"] for block in blocks]),
        "audio_mask": torch.from_numpy(np.concatenate([block["audio_mask"] for block in blocks])),
        "video_id": [video_id for block in blocks for video_id in block["video_id"]],
    }
