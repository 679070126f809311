"""Retrieval metrics (docs/recipes.md section 7): R@1/5/10/50, MedR, MeanR with ties averaged.

Convention: sim[i, j] = similarity of query i to target j; the ground truth of query i is target i.
The zero-based rank of query i counts the targets scoring strictly higher than target i, plus half of
the other targets scoring exactly the same (ties averaged: a two-way tie for first place is rank 0.5).

R@K = 100 * #(rank < K) / N, applied uniformly for every K. (The EAO code tests R@1 as rank == 0;
with averaged ties the two differ only for a tie at the top, which this module counts as a hit.)

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


def query_ranks(sim: np.ndarray) -> np.ndarray:
    """Zero-based rank of each query's ground-truth target (the diagonal), ties averaged."""
    positives = np.diag(sim)[:, None]
    higher = (sim > positives).sum(axis=1)
    ties = (sim == positives).sum(axis=1) - 1  # other targets with exactly the positive's score
    return higher + ties / 2.0


def retrieval_metrics(sim: np.ndarray | torch.Tensor, num_expected: int | None = None) -> dict[str, float]:
    """R1, R5, R10, R50 (percent), MedR and MeanR (one-based) of a (Q, Q) query x target similarity matrix."""
    if isinstance(sim, torch.Tensor):
        sim = sim.detach().to(torch.float64).cpu().numpy()
    sim = np.asarray(sim, dtype=np.float64)
    if sim.ndim != 2 or sim.shape[0] != sim.shape[1] or sim.shape[0] == 0:
        raise UserError(f"retrieval metrics need a non-empty square similarity matrix, got shape {sim.shape}")
    if not np.isfinite(sim).all():
        raise UserError("the similarity matrix holds NaN or infinite values; check the embeddings")
    queries = sim.shape[0]
    total = queries if num_expected is None else int(num_expected)
    if total < queries:
        raise UserError(f"num_expected ({total}) is smaller than the number of queries ({queries})")
    present = query_ranks(sim)
    metrics = {f"R{k}": 100.0 * float((present < k).sum()) / total for k in RECALL_AT}
    ranks = np.concatenate([present, np.full(total - queries, float(total))])
    metrics["MedR"] = float(np.median(ranks)) + 1.0
    metrics["MeanR"] = float(np.mean(ranks)) + 1.0
    return metrics
