"""Everything-at-Once's loss: six NormSoftmax (symmetric InfoNCE) terms, weighted, and its config section.

total = sum(w_k L_k) / sum(w_k) over the terms t-v, t-a, v-a, t-va, v-ta, a-tv that have a non-zero
weight and at least one row where none of their modalities is empty (docs/recipes.md section 5).
"""

from __future__ import annotations


import torch
import torch.nn.functional as F

from mft_train.losses.graph import zero_through_every_embedding
from mft_train.losses.settings import COMBINATORIAL_TERMS, PAPER_PRETRAIN_WEIGHTS, CombinatorialLossConfig, check_weights  # noqa: F401

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


def masked_norm_softmax_loss(sim: torch.Tensor, valid: torch.Tensor, temperature: float = 0.05) -> tuple[torch.Tensor, torch.Tensor]:
    """norm_softmax_loss of the rows and columns where `valid` is True, without cutting them out.

    Equal to `norm_softmax_loss(sim[valid][:, valid])`, but invalid rows and columns are masked
    instead of indexed away, so no host synchronisation is needed (boolean indexing needs one to
    learn the size). Returns (loss, number of valid rows as a float tensor); the loss is exactly 0,
    with exactly zero gradient everywhere, when no row is valid. Invalid rows and columns always get
    exactly zero gradient.
    """
    logits = sim.float() / temperature
    pair = valid[:, None] & valid[None, :]
    masked = torch.where(pair, logits, torch.full_like(logits, float("-inf")))
    zeros = torch.zeros_like(logits)  # stands in for the rows (columns) left out: finite, then discarded
    rows = torch.log_softmax(torch.where(valid[:, None], masked, zeros), dim=1).diagonal()
    cols = torch.log_softmax(torch.where(valid[None, :], masked, zeros), dim=0).diagonal()
    per_row = torch.where(valid, -(rows + cols), torch.zeros_like(rows))
    count = valid.sum().to(per_row.dtype)
    return per_row.sum() / count.clamp(min=1.0), count


def combinatorial_loss(
    out: dict[str, torch.Tensor], weights: dict[str, float], temperature: float = 0.05
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Weighted mean of the six NormSoftmax terms t-v, t-a, v-a, t-va, v-ta, a-tv.

    For each term, rows where any involved modality is empty are dropped before building the
    similarity matrix (they are neither positives nor negatives). Missing weight keys count as 0.
    Returns (total, {term: detached loss}) with only the terms that were computed. The total always
    depends on every embedding (zero gradients for dropped terms), so DDP sees every parameter.

    The dropped rows are masked rather than indexed away and the normalisation by the weights of
    the computed terms happens on the device, so the whole loss needs one host synchronisation (to
    know which terms to report), not two or more per term.
    """
    check_weights(weights, "loss weight")
    active = [(term, spec, float(weights.get(term, 0.0))) for term, spec in COMBINATORIAL_TERMS.items()
              if float(weights.get(term, 0.0)) != 0.0]
    anchor = zero_through_every_embedding(out)
    if not active:
        return anchor, {}
    empty = {modality: out[f"{modality}_empty"].bool() for modality in ("t", "v", "a")}
    losses, counts = [], []
    for _, (query_key, target_key, involved), _ in active:
        valid = ~empty[involved[0]]
        for modality in involved[1:]:
            valid = valid & ~empty[modality]
        sim = cosine_similarity_matrix(out[query_key], out[target_key])
        loss, count = masked_norm_softmax_loss(sim, valid, temperature)
        losses.append(loss)
        counts.append(count)
    loss_values = torch.stack(losses)
    computed = torch.stack(counts) > 0
    weight_values = torch.tensor([weight for _, _, weight in active], dtype=loss_values.dtype, device=loss_values.device)
    weight_total = (weight_values * computed).sum()
    total = (weight_values * loss_values).sum() / torch.where(weight_total > 0, weight_total, torch.ones_like(weight_total))
    parts = {term: loss.detach() for (term, _, _), loss, flag in zip(active, losses, computed.tolist()) if flag}
    return total + anchor, parts
