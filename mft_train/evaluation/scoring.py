"""Per-clip embeddings -> similarity matrices of the nine combinations -> metrics and ranks.

Combinations: t->v, v->t, t->a, a->t, v->a, a->v, t->va, va->t (the model's fused pair embedding),
and the late fusion t->v+a (mean of the L2-normalised v and a embeddings). Only "t", "v", "a" are
required; without "va" (or for t->v+a) the fused side is built from v and a.

Similarity: "cosine" (the EAO protocol) or "dot" (MCN's paper: raw dot products, with t scored
against v + a). MCN is reported with both; EAO's embeddings are unit vectors so the two agree.

Under a protocol whose queries are every sentence (MSR-VTT full), `SentenceQueries` replaces the
clips' "t" side: t->x ranks each sentence's own clip among the clips (N = all listed sentences), and
x->t ranks a clip's best-scoring sentence among all sentences (N = the listed clips).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from howto_prep.errors import UserError
from mft_train.evaluation.metrics import query_ranks, retrieval_metrics

COMBINATIONS: tuple[tuple[str, str], ...] = (
    ("t", "v"), ("v", "t"), ("t", "a"), ("a", "t"), ("v", "a"), ("a", "v"),
    ("t", "va"), ("va", "t"), ("t", "v+a"),
)
SIMILARITIES = ("cosine", "dot")


def combo_name(query: str, target: str) -> str:
    return f"{query}->{target}"


def similarities_for(model_cfg: dict) -> tuple[str, ...]:
    """Headline similarity first: MCN is scored with dot products (its paper) and with cosine."""
    return ("dot", "cosine") if model_cfg.get("name") == "mcn" else ("cosine",)


def side_matrix(embeddings: dict[str, torch.Tensor], name: str, similarity: str) -> torch.Tensor:
    """The embedding matrix of one side of a combination ("v+a": late fusion of v and a)."""
    if name == "v+a" or (name == "va" and "va" not in embeddings):
        video, audio = embeddings["v"].double(), embeddings["a"].double()
        if similarity == "cosine":
            return F.normalize(F.normalize(video, dim=-1) + F.normalize(audio, dim=-1), dim=-1)
        return video + audio  # MCN's paper: t against v + a
    return embeddings[name].double()


def similarity_matrix(queries: torch.Tensor, targets: torch.Tensor, similarity: str = "cosine") -> np.ndarray:
    """(Q, D) x (T, D) -> (Q, T) float64 cosine or dot-product similarities."""
    if similarity not in SIMILARITIES:
        raise UserError(f"similarity must be one of {', '.join(SIMILARITIES)}, not {similarity!r}")
    queries, targets = queries.double(), targets.double()
    if similarity == "cosine":
        queries, targets = F.normalize(queries, dim=-1), F.normalize(targets, dim=-1)
    return (queries @ targets.t()).numpy()


@dataclass(frozen=True)
class SentenceQueries:
    """Every sentence of every present clip as its own text query: its embedding and its clip."""

    embeddings: torch.Tensor  # (S, D) text embeddings, one row per sentence
    owners: np.ndarray  # (S,) row of the sentence's clip in the clip embeddings
    num_expected: int  # sentences of every listed clip, present or not (the t->x denominator)

    def positives(self, clips: int) -> np.ndarray:
        """(S, clips) bool: sentence s's one ground truth is its own clip."""
        mask = np.zeros((len(self.owners), clips), bool)
        mask[np.arange(len(self.owners)), self.owners] = True
        return mask


def score_embeddings(embeddings: dict[str, torch.Tensor], num_expected: int | None = None,
                     similarity: str = "cosine", sentences: SentenceQueries | None = None,
                     ) -> tuple[dict[str, dict[str, float]], dict[str, np.ndarray]]:
    """Metrics and zero-based ranks of every combination from per-clip embeddings (row i = clip i)."""
    metrics: dict[str, dict[str, float]] = {}
    ranks: dict[str, np.ndarray] = {}
    clips = embeddings["v"].shape[0]
    for query, target in COMBINATIONS:
        query_side, target_side = side_matrix(embeddings, query, similarity), side_matrix(embeddings, target, similarity)
        positives, expected = None, num_expected
        if sentences is not None and query == "t":
            query_side, positives, expected = sentences.embeddings, sentences.positives(clips), sentences.num_expected
        elif sentences is not None and target == "t":
            target_side, positives = sentences.embeddings, sentences.positives(clips).T
        sim = similarity_matrix(query_side, target_side, similarity)
        name = combo_name(query, target)
        metrics[name] = retrieval_metrics(sim, expected, positives)
        ranks[name] = query_ranks(sim, positives)
    return metrics, ranks
