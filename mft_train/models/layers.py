"""Building blocks shared by the fusion models: gated projections, masked pooling, one fusion block.

Masks follow one convention everywhere in mft_train: bool, True = real token, False = padding.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class GatedEmbeddingUnit(nn.Module):
    """Linear projection followed by context gating: y = h * sigmoid(W h + b), with h = Linear(x).

    This is the GEU of Miech et al. used by MCN and Everything-at-Once. No L2 normalisation happens
    inside: the callers decide (EAO normalises only the final embeddings).
    """

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.fc = nn.Linear(in_dim, out_dim)
        self.gate = nn.Linear(out_dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = self.fc(x)
        return hidden * torch.sigmoid(self.gate(hidden))


def masked_mean(tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of `tokens` (B, L, D) over the positions where `mask` (B, L) is True.

    A row without any True position yields zeros instead of NaN (the caller marks it empty).
    """
    weights = mask.to(tokens.dtype).unsqueeze(-1)
    total = (tokens * weights).sum(dim=1)
    count = weights.sum(dim=1).clamp(min=1.0)
    return total / count


class FusionBlock(nn.Module):
    """One pre-LN transformer block: x + Attn(LN(x)), then x + MLP(LN(x)).

    Attention goes through `torch.nn.functional.scaled_dot_product_attention` (fused kernels on GPU,
    memory-efficient on CPU) with a key-padding mask: padded keys get -inf, so padding content can
    never reach a real token. Every row must hold at least one real token (EAO guarantees this with
    its masking token). No dropout: the paper trains without it.
    """

    def __init__(
        self,
        width: int,
        heads: int,
        mlp_ratio: float = 1.0,
        qkv_bias: bool = True,
        ln_eps: float = 1e-6,
    ) -> None:
        super().__init__()
        if width % heads != 0:
            raise ValueError(f"width {width} is not divisible by heads {heads}")
        self.heads = heads
        self.norm_attn = nn.LayerNorm(width, eps=ln_eps)
        self.qkv = nn.Linear(width, 3 * width, bias=qkv_bias)
        self.proj = nn.Linear(width, width)
        self.norm_mlp = nn.LayerNorm(width, eps=ln_eps)
        hidden = int(width * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, width))
        self.apply(_init_transformer_weights)

    def attention(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.proj(self.attend(self.qkv(x), mask))

    def attend(self, qkv: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Multi-head attention of already projected tokens: qkv (B, L, 3 * width) -> (B, L, width), before `proj`.

        Padded keys (mask False) get -inf; padded queries get some output that callers must ignore.
        """
        batch, length, triple = qkv.shape
        width = triple // 3
        qkv = qkv.view(batch, length, 3, self.heads, width // self.heads)
        query, key, value = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, H, L, W/H)
        key_mask = mask[:, None, None, :]  # (B, 1, 1, L): True = may be attended to
        out = F.scaled_dot_product_attention(query, key, value, attn_mask=key_mask)
        return out.transpose(1, 2).reshape(batch, length, width)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = x + self.attention(self.norm_attn(x), mask)
        return x + self.mlp(self.norm_mlp(x))


def _init_transformer_weights(module: nn.Module) -> None:
    """ViT-style init (trunc-normal 0.02, zero bias, unit LayerNorm), as the EAO code does."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
