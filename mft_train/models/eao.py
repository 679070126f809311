"""Everything-at-Once (Shvetsova et al., CVPR 2022): one shared fusion block over every modality combination.

Pipeline per batch (docs/recipes.md section 5):
  text (B, 20, 300), video (B, Nv, 4096)    -> GEU(in -> width) -> LayerNorm(eps 1e-6)
  audio (B, 40, Na) -> DAVEnet -> (B, Na/64, C) -> GEU(C -> width) -> LayerNorm(eps 1e-6)
  an empty modality (all-False mask): token 0 := shared learned masking token, mask[0] := True
  ONE shared FusionBlock on t, v, a alone and on [t;v], [t;a], [v;a] (concatenated in that order),
  outputs split back per modality, masked-mean-pooled, per-modality GEU head (width -> embed_dim).
Single embeddings are L2-normalised. A pair embedding is normalize((n(x) + n(y)) / 2) where n(x), n(y)
are the two L2-normalised projected embeddings taken from the pair's fused pass: the paper's mean,
then L2-normalised again so every output lies on the unit sphere (cosine = dot product). The second
normalisation changes no cosine similarity, so the losses and metrics equal the paper's.

Two forwards with the same mathematics: `forward` runs the fused one (mft_train.models.fused: each
modality's LN + QKV once, attention per pass, projection/MLP/heads once over all passes, padded
tokens never computed); `forward_reference` is the straightforward six-pass forward, built exactly
like the authors' code, kept as the test oracle (tests/test_fused_forward.py; the two agree to about
1e-7 in fp32). `model.fused_forward: false` makes `forward` run the reference. Parameter names and
`tokens(batch)` are the same either way.

Parameter count of the paper preset (tests/test_models.py recomputes it by hand):
  DAVEnet-v2 314,710,016 (convs 314,659,840 + BatchNorm 50,176; the paper: "about 315 M")
  token projections 85,139,456 (GEU 300->4096: 18,014,208; GEU 4096->4096 for video and audio:
  33,562,624 each) + their LayerNorms 24,576; fusion block 100,704,256 (qkv 50,343,936, proj
  16,781,312, MLP 33,562,624, two LayerNorms 16,384); output heads 188,780,544 (3 x GEU 4096->6144:
  62,926,848); masking token 4,096. Total 689,362,944, matching the paper's "about 689 M".
  BatchNorm running statistics are buffers, not parameters, and are not counted.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from howto_prep.errors import UserError
from mft_train.models.davenet import build_davenet, downsample_mask
from mft_train.models.fused import MODALITY_PASSES, PASSES, fused_block, token_layouts
from mft_train.models.inputs import MODALITIES, SHORT, InputSettings, check_batch
from mft_train.models.layers import FusionBlock, GatedEmbeddingUnit, masked_mean
from mft_train.settings import settings_from_dict

PAIRS = (("text", "video"), ("text", "audio"), ("video", "audio"))


@dataclass(frozen=True)
class EAOConfig(InputSettings):
    """Sizes of the model; the defaults are the paper preset."""

    width: int = 4096
    heads: int = 64
    mlp_ratio: float = 1.0
    qkv_bias: bool = True
    ln_eps: float = 1e-6
    embed_dim: int = 6144
    fused_forward: bool = True  # False: forward() runs the six-pass reference (same results, slower)

    @classmethod
    def from_dict(cls, cfg: dict) -> "EAOConfig":
        config = settings_from_dict(cls, cfg, "model", "EAO model")
        config.check_inputs()
        if config.width % config.heads != 0:
            raise UserError(f"model.width {config.width} must be divisible by model.heads {config.heads}")
        return config


class EverythingAtOnce(nn.Module):
    """Everything-at-Once fusion model; forward(batch) -> embeddings t, v, a, tv, ta, va and *_empty flags."""

    def __init__(self, config: EAOConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or EAOConfig()
        self.davenet = build_davenet(
            config.davenet, config.davenet_widths, config.davenet_depths, mels=config.audio_mels
        )
        in_dims = {"text": config.text_dim, "video": config.video_dim, "audio": self.davenet.out_dim}
        self.token_proj = nn.ModuleDict({m: GatedEmbeddingUnit(in_dims[m], config.width) for m in MODALITIES})
        self.token_norm = nn.ModuleDict({m: nn.LayerNorm(config.width, eps=config.ln_eps) for m in MODALITIES})
        self.masking_token = nn.Parameter(torch.empty(config.width))
        nn.init.trunc_normal_(self.masking_token, std=0.02)
        self.fusion = FusionBlock(config.width, config.heads, config.mlp_ratio, config.qkv_bias, config.ln_eps)
        self.heads = nn.ModuleDict({m: GatedEmbeddingUnit(config.width, config.embed_dim) for m in MODALITIES})

    def tokens(self, batch: dict) -> dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Per modality: (tokens (B, L, width), mask (B, L), empty (B,)) after projection and masking token."""
        check_batch(batch, self.config)
        dtype = self.masking_token.dtype  # float16 features straight from the shards are accepted too
        audio_tokens, audio_mask = self._audio_features(batch["audio"].to(dtype), batch["audio_mask"].bool())
        raw = {
            "text": (batch["text"].to(dtype), batch["text_mask"].bool()),
            "video": (batch["video"].to(dtype), batch["video_mask"].bool()),
            "audio": (audio_tokens, audio_mask),
        }
        out = {}
        for modality, (features, mask) in raw.items():
            projected = self.token_norm[modality](self.token_proj[modality](features))
            out[modality] = self._fill_empty(projected, mask)
        return out

    def _audio_features(self, logmel: torch.Tensor, frame_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logmel = torch.where(frame_mask[:, None, :], logmel, torch.full_like(logmel, self.config.audio_pad_value))
        features = self.davenet(logmel).transpose(1, 2)  # (B, T', C)
        token_mask = downsample_mask(frame_mask, self.davenet.total_stride)
        return features, token_mask

    def _fill_empty(self, tokens: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Put the masking token in slot 0 of every row without a real token, and mark that slot real."""
        empty = ~mask.any(dim=1)
        slot0 = torch.zeros_like(mask)
        slot0[:, 0] = True
        replace = slot0 & empty[:, None]
        tokens = torch.where(replace[..., None], self.masking_token.to(tokens.dtype), tokens)
        return tokens, mask | replace, empty

    def _fuse(self, parts: list[tuple[torch.Tensor, torch.Tensor]]) -> list[torch.Tensor]:
        """Run the shared block on the concatenated parts; return each part's masked-mean pooled output."""
        tokens = torch.cat([t for t, _ in parts], dim=1)
        mask = torch.cat([m for _, m in parts], dim=1)
        fused = self.fusion(tokens, mask)
        pooled, start = [], 0
        for part_tokens, part_mask in parts:
            length = part_tokens.shape[1]
            pooled.append(masked_mean(fused[:, start : start + length], part_mask))
            start += length
        return pooled

    def _embed(self, modality: str, pooled: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.heads[modality](pooled), dim=-1)

    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        """Embeddings t, v, a, tv, ta, va (unit rows) and the flags t_empty, v_empty, a_empty."""
        if self.config.fused_forward:
            return self._forward_fused(batch)
        return self.forward_reference(batch)

    def _forward_fused(self, batch: dict) -> dict[str, torch.Tensor]:
        """forward_reference's results with each piece of work done once (mft_train.models.fused)."""
        check_batch(batch, self.config)
        dtype = self.masking_token.dtype
        frame_mask = batch["audio_mask"].bool()
        masks = {
            "text": batch["text_mask"].bool(),
            "video": batch["video_mask"].bool(),
            "audio": downsample_mask(frame_mask, self.davenet.total_stride),
        }
        layouts = token_layouts(masks)
        logmel = batch["audio"].to(dtype)
        logmel = torch.where(frame_mask[:, None, :], logmel, torch.full_like(logmel, self.config.audio_pad_value))
        audio = self.davenet(logmel)  # (B, C, T'): token l of row b is audio[b, :, l]
        tokens = {}
        for modality in MODALITIES:
            layout = layouts[modality]
            if modality == "audio":
                features = audio[layout.rows, :, layout.cols]  # (N, C)
            else:
                features = batch[modality][layout.rows, layout.cols].to(dtype)  # (N, dim)
            projected = self.token_norm[modality](self.token_proj[modality](features))
            tokens[modality] = torch.where(layout.replaced[:, None], self.masking_token.to(projected.dtype), projected)
        batch_size = frame_mask.shape[0]
        pooled = fused_block(self.fusion, tokens, layouts, batch_size)
        embedded = {  # per modality (3, B, embed_dim): alone, then its two pairs (MODALITY_PASSES order)
            modality: F.normalize(self.heads[modality](pooled[modality].flatten(0, 1)), dim=-1).unflatten(0, (-1, batch_size))
            for modality in MODALITIES
        }
        out: dict[str, torch.Tensor] = {}
        for modality in MODALITIES:
            out[SHORT[modality]] = embedded[modality][0]
            out[f"{SHORT[modality]}_empty"] = layouts[modality].empty
        for first, second in PAIRS:
            pass_index = PASSES.index((first, second))
            mean = (embedded[first][MODALITY_PASSES[first].index(pass_index)]
                    + embedded[second][MODALITY_PASSES[second].index(pass_index)]) / 2
            out[SHORT[first] + SHORT[second]] = F.normalize(mean, dim=-1)
        return out

    def forward_reference(self, batch: dict) -> dict[str, torch.Tensor]:
        """The six-pass forward, built like the authors' code: the oracle of the fused forward."""
        tokens = self.tokens(batch)
        out: dict[str, torch.Tensor] = {}
        for modality in MODALITIES:
            token_seq, mask, empty = tokens[modality]
            (pooled,) = self._fuse([(token_seq, mask)])
            out[SHORT[modality]] = self._embed(modality, pooled)
            out[f"{SHORT[modality]}_empty"] = empty
        for first, second in PAIRS:
            pooled_first, pooled_second = self._fuse([tokens[first][:2], tokens[second][:2]])
            mean = (self._embed(first, pooled_first) + self._embed(second, pooled_second)) / 2
            out[SHORT[first] + SHORT[second]] = F.normalize(mean, dim=-1)
        return out
