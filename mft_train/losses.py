"""Contrastive losses: NormSoftmax (symmetric InfoNCE) and Everything-at-Once's combinatorial loss.

The losses are rank-agnostic: under DDP the engine gathers embeddings and emptiness flags from all
ranks (with gradients) before calling them, so the negatives span the global batch. MCN's MMS and
clustering losses live in `mft_train.mcn_losses` (re-exported here as `mms_loss`), sharing the same
(N, N) similarity convention: row i = query i, column j = target j, the diagonal holds the positives.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from howto_prep.errors import UserError

# term -> (query embedding, target embedding, modalities whose emptiness drops a row)
COMBINATORIAL_TERMS: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "t_v": ("t", "v", ("t", "v")),
    "t_a": ("t", "a", ("t", "a")),
    "v_a": ("v", "a", ("v", "a")),
    "t_va": ("t", "va", ("t", "v", "a")),
    "v_ta": ("v", "ta", ("v", "t", "a")),
    "a_tv": ("a", "tv", ("a", "t", "v")),
}
PRETRAIN_WEIGHTS = {"t_v": 1.0, "t_a": 0.1, "v_a": 0.1, "t_va": 0.1, "v_ta": 0.1, "a_tv": 0.1}


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
    similarity matrix (they are neither positives nor negatives). total = sum(w_k L_k) / sum(w_k) over
    the terms with a non-zero weight and at least one valid row; missing weight keys count as 0.
    Returns (total, {term: detached loss}) with only the terms that were computed. When no term has
    a valid row, the total is a zero that still depends on every embedding (so DDP sees gradients).
    """
    unknown = sorted(set(weights) - set(COMBINATORIAL_TERMS))
    if unknown:
        raise UserError(f"unknown loss weight(s) {', '.join(unknown)}; known: {', '.join(COMBINATORIAL_TERMS)}")
    weighted_sum: torch.Tensor | None = None
    weight_total = 0.0
    parts: dict[str, torch.Tensor] = {}
    for term, (query_key, target_key, involved) in COMBINATORIAL_TERMS.items():
        weight = float(weights.get(term, 0.0))
        if weight < 0.0:
            raise UserError(f"loss weight {term} must not be negative, got {weight}")
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
    if weighted_sum is None:
        zero = sum(out[key].float().sum() for key in ("t", "v", "a", "tv", "ta", "va") if key in out)
        return zero * 0.0, parts
    return weighted_sum / weight_total, parts


from mft_train.mcn_losses import mms_loss  # noqa: E402  (MCN's loss, exposed where the paper API names it)

__all__ = ["COMBINATORIAL_TERMS", "PRETRAIN_WEIGHTS", "norm_softmax_loss", "cosine_similarity_matrix",
           "combinatorial_loss", "mms_loss"]
