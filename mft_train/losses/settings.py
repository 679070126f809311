"""The `loss` section's settings, without torch: a config is checked before any heavy import.

CombinatorialLossConfig (Everything-at-Once's six terms and the paper's weights) and MCNLossConfig
(the paper's defaults); LOSS_CONFIGS picks one by `loss.name`. The losses themselves live in
combinatorial.py and mcn.py, which import torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from howto_prep.errors import UserError
from mft_train.settings import require_choice, require_non_negative, require_positive, settings_from_dict

KMEANS_INITS = ("k-means++", "random")  # mft_train.losses.kmeans.KMeans's init choices

# term -> (query embedding, target embedding, modalities whose emptiness drops a row)
COMBINATORIAL_TERMS: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "t_v": ("t", "v", ("t", "v")),
    "t_a": ("t", "a", ("t", "a")),
    "v_a": ("v", "a", ("v", "a")),
    "t_va": ("t", "va", ("t", "v", "a")),
    "v_ta": ("v", "ta", ("v", "t", "a")),
    "a_tv": ("a", "tv", ("a", "t", "v")),
}
# The paper's pretraining weights: t-v counts ten times as much as every other term.
PAPER_PRETRAIN_WEIGHTS = {"t_v": 1.0, "t_a": 0.1, "v_a": 0.1, "t_va": 0.1, "v_ta": 0.1, "a_tv": 0.1}


@dataclass(frozen=True)
class CombinatorialLossConfig:
    """The `loss` section for Everything-at-Once; weights left out of a given mapping count as 0."""

    name: str = "combinatorial"
    weights: dict[str, float] = field(default_factory=lambda: dict(PAPER_PRETRAIN_WEIGHTS))
    temperature: float = 0.05

    def __post_init__(self) -> None:
        if self.name != "combinatorial":
            raise UserError(f"loss.name must be combinatorial for the combinatorial loss, not {self.name!r}")
        require_positive(self, "loss", ("temperature",))
        check_weights(self.weights, "loss.weights entry")
        if not any(weight > 0 for weight in self.weights.values()):
            raise UserError("loss.weights needs at least one positive weight")


def check_weights(weights: dict[str, float], what: str) -> None:
    """Every weight names a known term and is not negative; `what` names one weight in messages."""
    unknown = sorted(set(weights) - set(COMBINATORIAL_TERMS))
    if unknown:
        raise UserError(f"unknown {what}(s) {', '.join(unknown)}; known: {', '.join(COMBINATORIAL_TERMS)}")
    for term, weight in weights.items():
        if float(weight) < 0:
            raise UserError(f"{what} {term} must not be negative, got {weight}")


@dataclass(frozen=True)
class MCNLossConfig:
    """The `loss` section of an MCN config; defaults are the paper's."""

    name: str = "mcn"
    margin: float = 0.001
    clusters: int = 256
    queue_size: int = 40_960
    refit_every: int = 20
    kmeans_iters: int = 50
    kmeans_init: str = "k-means++"
    seed: int = 0
    mms_weight: float = 1.0
    cluster_weight: float = 1.0
    recon_weight: float = 50.0

    def __post_init__(self) -> None:
        if self.name != "mcn":
            raise UserError(f"loss.name must be mcn for the MCN loss, not {self.name!r}")
        require_positive(self, "loss", ("clusters", "queue_size", "refit_every", "kmeans_iters"))
        if self.queue_size < self.clusters:
            raise UserError(f"loss.queue_size ({self.queue_size}) must hold at least loss.clusters ({self.clusters}) vectors")
        require_choice(self, "loss", "kmeans_init", KMEANS_INITS)
        require_non_negative(self, "loss", ("margin", "mms_weight", "cluster_weight", "recon_weight"))

    @classmethod
    def from_dict(cls, cfg: dict) -> "MCNLossConfig":
        return settings_from_dict(cls, cfg, "loss", "MCN loss")


LossConfig = CombinatorialLossConfig | MCNLossConfig
LOSS_CONFIGS: dict[str, type[LossConfig]] = {"combinatorial": CombinatorialLossConfig, "mcn": MCNLossConfig}
