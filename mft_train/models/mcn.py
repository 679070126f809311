"""MCN, the Multimodal Clustering Network (Chen et al., ICCV 2021; docs/recipes.md section 8).

Three independent branches into one 6,144-d space, compared with raw dot products:
  video (B, Nv, 4096) -> max over the clip's real tokens -> L2 each 2D / 3D half -> GEU 4096 -> 6144
  audio (B, 40, Na)   -> DAVEnet-v1 -> masked mean over time -> GEU 1024 -> 1024 -> Linear 1024 -> 6144
  text  (B, 20, 300)  -> Linear 300 -> 6144 + ReLU per word -> max over real words -> GEU 6144 -> 6144
Reconstruction heads (Linear 6144 -> 1024, ReLU, Linear 1024 -> target) rebuild from each embedding
the pooled feature its branch started from: the max-pooled video vector (4096) and the mean word
vector (300), both fixed inputs (detached), and the pooled DAVEnet features (1024), which stay in the
graph: a detached audio target moves as DAVEnet learns, and with the x50 weight that chase made the
total loss climb during training; kept in the graph, both sides agree and the term falls.

The batch is the shared one of mft_train.data.batch: every "video" token is concat(L2(2D), L2(3D)), so the
max over tokens is the paper's max-pool of the L2-normalised 2D and 3D rows; as in the released MCN
loader, each pooled half is L2-normalised again before the concatenation reaches the GEU.
An empty modality (no real token) yields an embedding from a zero input and a True `*_empty` flag;
the losses drop such rows. Pair keys tv, ta, va are (x + y) / 2 of the raw embeddings, for the
evaluator's fused retrieval (the paper scores text against video + audio).

Parameter count of the paper preset (tests/test_mcn.py recomputes it by hand on the meta device):
  video GEU 4096->6144 62,926,848; DAVEnet-v1 44,670,976; audio GEU 1024->1024 2,099,200 and
  Linear 1024->6144 6,297,600; text Linear 300->6144 1,849,344 and GEU 6144->6144 75,509,760;
  reconstruction heads v 10,490,880, a 7,342,080, t 6,599,980. Total 217,786,668 (BatchNorm running
  statistics are buffers and not counted).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from howto_prep.schema import RESNET152
from mft_train.models.davenet import build_davenet, downsample_mask
from mft_train.models.inputs import SHORT, InputSettings, check_batch
from mft_train.models.layers import GatedEmbeddingUnit, masked_mean
from mft_train.settings import require_positive, settings_from_dict


@dataclass(frozen=True)
class MCNConfig(InputSettings):
    """Sizes of the model; the defaults are the paper preset."""

    davenet: str = "v1"
    embed_dim: int = 6144
    audio_hidden: int = 1024  # GEU width after DAVEnet's pooled output
    recon_hidden: int = 1024

    @classmethod
    def from_dict(cls, cfg: dict) -> "MCNConfig":
        config = settings_from_dict(cls, cfg, "model", "MCN model")
        config.check_inputs()
        require_positive(config, "model", ("embed_dim", "audio_hidden", "recon_hidden"))
        return config


def reconstruction_head(embed_dim: int, hidden: int, target_dim: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(embed_dim, hidden), nn.ReLU(), nn.Linear(hidden, target_dim))


def masked_max(tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Max of `tokens` (B, L, D) over the positions where `mask` (B, L) is True; zeros for empty rows."""
    filled = tokens.masked_fill(~mask[..., None], float("-inf"))
    pooled = filled.max(dim=1).values
    return torch.where(mask.any(dim=1)[:, None], pooled, torch.zeros_like(pooled))


def renormalise_halves(pooled: torch.Tensor, split: int = RESNET152.dim) -> torch.Tensor:
    """concat(L2(pooled[:, :split]), L2(pooled[:, split:])): the released MCN loader normalises the
    max-pooled 2D and 3D features again (a max of unit rows is not a unit vector); zeros stay zeros."""
    first, second = pooled[:, :split], pooled[:, split:]
    return torch.cat((nn.functional.normalize(first, dim=1), nn.functional.normalize(second, dim=1)), dim=1)


class MCN(nn.Module):
    """MCN; forward(batch) -> t, v, a (B, embed_dim) raw embeddings, pairs, *_empty, recon_*/target_*."""

    def __init__(self, config: MCNConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or MCNConfig()
        self.video_head = GatedEmbeddingUnit(config.video_dim, config.embed_dim)
        self.davenet = build_davenet(config.davenet, config.davenet_widths, config.davenet_depths, mels=config.audio_mels)
        self.audio_gate = GatedEmbeddingUnit(self.davenet.out_dim, config.audio_hidden)
        self.audio_head = nn.Linear(config.audio_hidden, config.embed_dim)
        self.word_proj = nn.Linear(config.text_dim, config.embed_dim)
        self.text_head = GatedEmbeddingUnit(config.embed_dim, config.embed_dim)
        targets = {"v": config.video_dim, "a": self.davenet.out_dim, "t": config.text_dim}
        self.recon = nn.ModuleDict(
            {key: reconstruction_head(config.embed_dim, config.recon_hidden, dim) for key, dim in targets.items()}
        )

    def encode_video(self, video: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(embedding, pooled input): max-pool of the clip's real tokens, each half L2-normalised, then GEU."""
        pooled = renormalise_halves(masked_max(video, mask))
        return self.video_head(pooled), pooled

    def encode_audio(self, logmel: torch.Tensor, frame_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(embedding, pooled DAVEnet features): padding frames overwritten, mean over real time steps."""
        pad = torch.full_like(logmel, self.config.audio_pad_value)
        features = self.davenet(torch.where(frame_mask[:, None, :], logmel, pad))  # (B, C, T')
        token_mask = downsample_mask(frame_mask, self.davenet.total_stride)
        pooled = masked_mean(features.transpose(1, 2), token_mask)
        return self.audio_head(self.audio_gate(pooled)), pooled

    def encode_text(self, words: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(embedding, mean word vector): per-word Linear + ReLU, max over real words, GEU.

        After the ReLU every value is >= 0, so zeroing padded slots before the max is a masked max.
        """
        per_word = torch.relu(self.word_proj(words)) * mask[..., None].to(words.dtype)
        embedding = self.text_head(per_word.max(dim=1).values)
        return embedding, masked_mean(words, mask)

    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        check_batch(batch, self.config)  # reads text_dim, video_dim, audio_mels, which MCNConfig shares
        dtype = self.word_proj.weight.dtype  # float16 features straight from the shards are accepted
        masks = {m: batch[f"{m}_mask"].bool() for m in SHORT}
        encoded = {
            "v": self.encode_video(batch["video"].to(dtype), masks["video"]),
            "a": self.encode_audio(batch["audio"].to(dtype), masks["audio"]),
            "t": self.encode_text(batch["text"].to(dtype), masks["text"]),
        }
        out: dict[str, torch.Tensor] = {}
        for modality, key in SHORT.items():
            embedding, target = encoded[key]
            out[key] = embedding
            out[f"{key}_empty"] = ~masks[modality].any(dim=1)
            out[f"recon_{key}"] = self.recon[key](embedding)
            out[f"target_{key}"] = target if key == "a" else target.detach()
        for first, second in (("t", "v"), ("t", "a"), ("v", "a")):
            out[first + second] = (out[first] + out[second]) / 2
        return out


def build_mcn(model_cfg: dict) -> MCN:
    """MCN from a config's model section without its "name" key (what build_model passes on)."""
    return MCN(MCNConfig.from_dict(model_cfg))
