"""Retrieval metrics (docs/recipes.md section 7): R@1/5/10/50, MedR, MeanR with ties averaged.

Convention: sim[i, j] = similarity of query i to target j; by default the ground truth of query i is
target i (a square matrix). `positives` (a bool matrix of sim's shape) names other ground truths:
one target per query for every sentence of MSR-VTT's full protocol, or several (a video retrieving
any of its 20 sentences). The zero-based rank of a query is that of its best-scoring positive: the
targets scoring strictly higher, plus half of the other targets scoring exactly the same (ties
averaged: a two-way tie for first place is rank 0.5).

R@1 = 100 * #(rank == 0) / N and R@K = 100 * #(rank < K) / N for K = 5, 10, 50: the released EAO code's
rule (its `cols2metrics`, with ties averaged), so a tie at the top is not a hit for R@1 while it is one
for R@5. (The same rank under "< 1" would count a tie at the top, rank 0.5, as a hit.)

N = num_expected (the benchmark's size, e.g. 1,000 for MSR-VTT 1k-A) or Q. The N - Q missing
queries are misses for every R@K, even when K > N. For MedR and MeanR each gets the zero-based rank
N, one place behind the last place of a complete N-target gallery, so both stay finite and every
missing query ranks worse than any present one. MedR = median(zero-based ranks of all N queries) + 1;
MeanR = mean(...) + 1.
"""

from __future__ import annotations

import numpy as np
import torch

from howto_prep.errors import UserError

RECALL_AT = (1, 5, 10, 50)


def query_ranks(sim: np.ndarray, positives: np.ndarray | None = None) -> np.ndarray:
    """Zero-based rank of each query's best-scoring positive (default: the diagonal), ties averaged."""
    if positives is None:
        best = np.diag(sim)[:, None]
    else:
        if not positives.any(axis=1).all():
            raise UserError("every query needs at least one positive target")
        best = np.where(positives, sim, -np.inf).max(axis=1, keepdims=True)
    higher = (sim > best).sum(axis=1)
    ties = (sim == best).sum(axis=1) - 1  # other targets with exactly the best positive's score
    return higher + ties / 2.0


def recall_at(ranks: np.ndarray, k: int) -> np.ndarray:
    """Which ranks are hits for R@k: rank 0 exactly for R@1 (the released rule), rank < k otherwise."""
    return ranks == 0 if k == 1 else ranks < k


def metrics_from_ranks(present: np.ndarray, total: int) -> dict[str, float]:
    """R@K (percent), MedR and MeanR (one-based) of the present queries' ranks, with total - Q misses."""
    queries = len(present)
    if total < queries:
        raise UserError(f"num_expected ({total}) is smaller than the number of queries ({queries})")
    metrics = {f"R{k}": 100.0 * float(recall_at(present, k).sum()) / total for k in RECALL_AT}
    ranks = np.concatenate([present, np.full(total - queries, float(total))])
    metrics["MedR"] = float(np.median(ranks)) + 1.0
    metrics["MeanR"] = float(np.mean(ranks)) + 1.0
    return metrics


def retrieval_metrics(sim: np.ndarray | torch.Tensor, num_expected: int | None = None,
                      positives: np.ndarray | None = None) -> dict[str, float]:
    """R1, R5, R10, R50 (percent), MedR and MeanR (one-based) of a query x target similarity matrix."""
    if isinstance(sim, torch.Tensor):
        sim = sim.detach().to(torch.float64).cpu().numpy()
    sim = np.asarray(sim, dtype=np.float64)
    if sim.ndim != 2 or sim.shape[0] == 0 or (positives is None and sim.shape[0] != sim.shape[1]):
        raise UserError(f"retrieval metrics need a non-empty square similarity matrix, got shape {sim.shape}")
    if positives is not None and positives.shape != sim.shape:
        raise UserError(f"positives {positives.shape} do not match the similarity matrix {sim.shape}")
    if not np.isfinite(sim).all():
        raise UserError("the similarity matrix holds NaN or infinite values; check the embeddings")
    total = sim.shape[0] if num_expected is None else int(num_expected)
    return metrics_from_ranks(query_ranks(sim, positives), total)
