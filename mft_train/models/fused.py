"""The fused Everything-at-Once forward: every piece of work done once, padded tokens never computed.

Same mathematics as `EverythingAtOnce.forward_reference` (the paper's six separate passes of the
shared block over t, v, a, [t;v], [t;a], [v;a]), reorganised around three facts:
- LayerNorm, every Linear, GELU and the residual additions act on each token alone, so only
  attention needs to know which pass a token belongs to;
- a token's LN1 + QKV depends only on the token, so each modality's Q, K, V serve all three passes
  that contain it (computed once instead of three times);
- padded tokens never reach a real output (padded keys get -inf, padded queries are not pooled), so
  they need not be computed at all.

The steps (`EverythingAtOnce._forward_fused`):
1. layout: from the input masks, each modality's real token positions (the masking-token slot of an
   empty row counts as real); the forward's one host synchronisation reads the three token counts;
2. token projection (GEU + LayerNorm) of the real tokens only, packed as (N_m, width); masking token;
3. `fused_block`: LN1 + QKV once per modality; per pass one SDPA call with the key-padding mask on
   the pass's Q, K, V scattered into a padded (B, L_pass) grid, real query rows gathered back; then
   the output projection, residual, LN2 and MLP in one call over the real tokens of all six passes;
   masked mean per (pass, modality);
4. each modality's gated head once, on its 3 B pooled rows (alone, then its two pairs).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mft_train.models.inputs import MODALITIES
from mft_train.models.layers import FusionBlock

PASSES: tuple[tuple[str, ...], ...] = (
    ("text",), ("video",), ("audio",), ("text", "video"), ("text", "audio"), ("video", "audio"),
)
# Per modality, the passes that hold it, in the order of its pooled rows: alone, then its two pairs.
MODALITY_PASSES: dict[str, tuple[int, ...]] = {
    modality: tuple(i for i, members in enumerate(PASSES) if modality in members) for modality in MODALITIES
}


@dataclass(frozen=True)
class TokenLayout:
    """Where one modality's real tokens sit in its padded (B, L) grid."""

    mask: torch.Tensor  # (B, L) bool: real tokens, the masking-token slot of an empty row included
    index: torch.Tensor  # (N,) int64: flat positions b * L + l of those tokens, ascending
    rows: torch.Tensor  # (N,) int64: b of each token
    cols: torch.Tensor  # (N,) int64: l of each token
    count: torch.Tensor  # (B, 1) int64: real tokens per row (>= 1)
    replaced: torch.Tensor  # (N,) bool: the tokens that are masking-token slots
    empty: torch.Tensor  # (B,) bool: rows without any real token

    @property
    def length(self) -> int:
        return self.mask.shape[1]


def fill_empty_mask(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(filled mask, replaced slots, empty rows): slot 0 of a row without a real token becomes real."""
    empty = ~mask.any(dim=1)
    replace = torch.zeros_like(mask)
    replace[:, 0] = empty
    return mask | replace, replace, empty


def true_positions(flat: torch.Tensor, total: int) -> torch.Tensor:
    """Ascending positions of the True entries of a 1-D bool tensor holding `total` of them.

    Unlike `nonzero`, this needs no host synchronisation: every True entry is scattered to its rank
    (cumulative count - 1), every False one to a spare last slot that is dropped.
    """
    slot = torch.where(flat, torch.cumsum(flat, 0) - 1, total)
    positions = torch.arange(flat.numel(), device=flat.device)
    return torch.empty(total + 1, dtype=torch.long, device=flat.device).scatter_(0, slot, positions)[:total]


def token_layouts(masks: dict[str, torch.Tensor]) -> dict[str, TokenLayout]:
    """Per modality, its TokenLayout; one host synchronisation for all modalities together."""
    filled = {modality: fill_empty_mask(mask) for modality, mask in masks.items()}
    if any(mask.is_meta for mask, _, _ in filled.values()):  # shapes only (the meta device): all slots
        totals = [mask.numel() for mask, _, _ in filled.values()]
    else:
        totals = torch.stack([mask.sum() for mask, _, _ in filled.values()]).tolist()
    layouts = {}
    for (modality, (mask, replace, empty)), total in zip(filled.items(), totals):
        index = true_positions(mask.reshape(-1), int(total))
        length = mask.shape[1]
        layouts[modality] = TokenLayout(
            mask=mask, index=index, rows=torch.div(index, length, rounding_mode="floor"), cols=index % length,
            count=mask.sum(dim=1, keepdim=True), replaced=replace.reshape(-1)[index], empty=empty,
        )
    return layouts


def fused_block(block: FusionBlock, tokens: dict[str, torch.Tensor], layouts: dict[str, TokenLayout],
                batch: int) -> dict[str, torch.Tensor]:
    """The shared block over all six passes at once, on packed real tokens.

    tokens[m]: (N_m, width), the real tokens of modality m in `layouts[m].index` order. Returns per
    modality its masked-mean pooled block outputs, (3, B, width): alone, then its two pairs
    (MODALITY_PASSES order), equal to FusionBlock + masked_mean on each padded pass.
    """
    width = next(iter(tokens.values())).shape[-1]
    # LN1 + QKV once per modality, scattered into the padded grid that every pass reads from.
    grids = {}
    for modality, x in tokens.items():
        layout = layouts[modality]
        qkv = block.qkv(block.norm_attn(x))
        grid = qkv.new_zeros(batch * layout.length, qkv.shape[-1]).index_copy(0, layout.index, qkv)
        grids[modality] = grid.view(batch, layout.length, qkv.shape[-1])
    # Attention per pass (keys and values of the pass's concatenation), real query rows gathered back.
    attended: dict[str, list[torch.Tensor]] = {modality: [] for modality in tokens}
    for members in PASSES:
        qkv = torch.cat([grids[m] for m in members], dim=1) if len(members) > 1 else grids[members[0]]
        mask = torch.cat([layouts[m].mask for m in members], dim=1) if len(members) > 1 else layouts[members[0]].mask
        out = block.attend(qkv, mask)  # (B, L_pass, width)
        offset = 0
        for modality in members:
            layout = layouts[modality]
            attended[modality].append(out[layout.rows, layout.cols + offset])  # (N_m, width)
            offset += layout.length
    # Everything after attention acts per token: once over the real tokens of all passes, modality-major.
    residual = torch.cat([tokens[m] for m in tokens for _ in MODALITY_PASSES[m]])
    y = residual + block.proj(torch.cat([part for m in tokens for part in attended[m]]))
    z = y + block.mlp(block.norm_mlp(y))
    pooled, start = {}, 0
    for modality in tokens:
        layout = layouts[modality]
        count = layout.index.numel()
        passes = len(MODALITY_PASSES[modality])
        part = z[start : start + passes * count].view(passes, count, width)
        start += passes * count
        grid = part.new_zeros(passes, batch * layout.length, width).index_copy(1, layout.index, part)
        summed = grid.view(passes, batch, layout.length, width).sum(dim=2)
        pooled[modality] = summed / layout.count.to(summed.dtype)
    return pooled
