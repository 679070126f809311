"""Every clip of a clip-level set through the model once -> per-clip embeddings (float32, CPU).

Clips with an empty modality (no in-vocabulary word, no audio track) keep their place: the model
still embeds them (EAO: its learned masking token; MCN: a zero input), so they are queries and
gallery items like any other clip. With the "clips" strategy a clip is several windows, averaged.
"""

from __future__ import annotations

from typing import Iterable

import torch
from torch import nn

from howto_prep.errors import UserError
from mft_train.data.batch import model_inputs
from mft_train.losses.graph import EMBEDDING_KEYS
from mft_train.training.device import autocast_context, move_batch


def average_windows(out: dict[str, torch.Tensor], clip_index: torch.Tensor, clips: int) -> dict[str, torch.Tensor]:
    """Per clip, the mean of its windows' embeddings, counting only windows whose modalities are not empty.

    With one row per clip (strategy at_once) this returns the embeddings unchanged. A clip whose
    windows are all empty in a modality keeps the mean over all its windows (the masking embedding).
    """
    empty = {m: out[f"{m}_empty"].bool() for m in "tva"}
    result: dict[str, torch.Tensor] = {}
    for key in EMBEDDING_KEYS:  # "va" depends on v and a: a window counts when neither is empty
        if key not in out:
            continue
        usable = torch.ones_like(empty["t"])
        for modality in key:
            usable = usable & ~empty[modality]
        weights = usable.float()
        per_clip = torch.zeros(clips).index_add_(0, clip_index, weights)
        weights = torch.where(per_clip[clip_index] > 0, weights, torch.ones_like(weights))
        total = torch.zeros(clips, out[key].shape[1]).index_add_(0, clip_index, out[key].float() * weights[:, None])
        count = torch.zeros(clips).index_add_(0, clip_index, weights)
        result[key] = total / count[:, None]
    for modality in "tva":
        rows_empty = torch.zeros(clips).index_add_(0, clip_index, (~empty[modality]).float())
        result[f"{modality}_empty"] = rows_empty == 0
    return result


@torch.inference_mode()
def encode_clips(model: nn.Module, batches: Iterable[dict], device: torch.device | None = None,
                 amp: bool = False) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Embeddings of every clip (float32, CPU) and the clip ids, in loader order; the model is put in eval mode."""
    device = device or next(model.parameters()).device
    was_training = model.training
    model.eval()
    parts: dict[str, list[torch.Tensor]] = {}
    clip_ids: list[str] = []
    try:
        for batch in batches:
            clip_index = batch["clip_index"].long().cpu() if "clip_index" in batch else torch.arange(batch["video"].shape[0])
            clips = int(clip_index.max()) + 1
            inputs = move_batch(model_inputs(batch), device)
            with autocast_context(device, amp):
                out = model(inputs)
            out = {k: v.detach().float().cpu() if v.is_floating_point() else v.detach().cpu() for k, v in out.items()}
            for key, value in average_windows(out, clip_index, clips).items():
                parts.setdefault(key, []).append(value)
            clip_ids.extend(batch.get("clip_id") or batch.get("video_id") or [str(len(clip_ids) + i) for i in range(clips)])
    finally:
        model.train(was_training)
    if not parts:
        raise UserError("the shard set yielded no readable clip to evaluate")
    return {key: torch.cat(values) for key, values in parts.items()}, clip_ids
