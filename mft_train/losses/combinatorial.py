"""Everything-at-Once's loss: six NormSoftmax (symmetric InfoNCE) terms, weighted, and its config section.

total = sum(w_k L_k) / sum(w_k) over the terms t-v, t-a, v-a, t-va, v-ta, a-tv that have a non-zero
weight and at least one row where none of their modalities is empty (docs/recipes.md section 5).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from howto_prep.errors import UserError
from mft_train.losses.graph import zero_through_every_embedding
from mft_train.settings import require_positive

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


def norm_softmax_loss(sim: torch.Tensor, temperature: float = 0.05) -> torch.Tensor:
    """Symmetric InfoNCE on a (N, N) similarity matrix: CE(rows) + CE(columns), each a mean over N.

    The two directions are summed, not averaged, as in the paper's code. Computed in float32 so bf16
    autocast cannot saturate the exp at temperature 0.05.
    """
    if sim.ndim != 2 or sim.shape[0] != sim.shape[1]:
        raise ValueError(f"norm_softmax_loss needs a square similarity matrix, got shape {tuple(sim.shape)}")
    logits = sim.float() / temperature
    targets = torch.arange(sim.shape[0], device=sim.device)
    return F.cross_entropy(logits, targets) + F.cross_entropy(logits.t(), targets)


def cosine_similarity_matrix(queries: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """(N, D) x (M, D) -> (N, M) cosine similarities, in float32."""
    return F.normalize(queries.float(), dim=-1) @ F.normalize(targets.float(), dim=-1).t()


def combinatorial_loss(
    out: dict[str, torch.Tensor], weights: dict[str, float], temperature: float = 0.05
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Weighted mean of the six NormSoftmax terms t-v, t-a, v-a, t-va, v-ta, a-tv.

    For each term, rows where any involved modality is empty are dropped before building the
    similarity matrix (they are neither positives nor negatives). Missing weight keys count as 0.
    Returns (total, {term: detached loss}) with only the terms that were computed. The total always
    depends on every embedding (zero gradients for dropped terms), so DDP sees every parameter.
    """
    check_weights(weights, "loss weight")
    weighted_sum: torch.Tensor | None = None
    weight_total = 0.0
    parts: dict[str, torch.Tensor] = {}
    for term, (query_key, target_key, involved) in COMBINATORIAL_TERMS.items():
        weight = float(weights.get(term, 0.0))
        if weight == 0.0:
            continue
        valid = torch.ones_like(out[f"{involved[0]}_empty"], dtype=torch.bool)
        for modality in involved:
            valid = valid & ~out[f"{modality}_empty"].bool()
        if not bool(valid.any()):
            continue
        sim = cosine_similarity_matrix(out[query_key][valid], out[target_key][valid])
        loss = norm_softmax_loss(sim, temperature)
        parts[term] = loss.detach()
        weighted_sum = weight * loss if weighted_sum is None else weighted_sum + weight * loss
        weight_total += weight
    anchor = zero_through_every_embedding(out)
    if weighted_sum is None:
        return anchor, parts
    return weighted_sum / weight_total + anchor, parts
