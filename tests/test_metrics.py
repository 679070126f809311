"""Retrieval metrics against ranks worked out by hand (ties averaged, missing queries as misses)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from howto_prep.errors import UserError
from mft_train.evaluation.metrics import retrieval_metrics

# Row i = query i, ground truth on the diagonal. Zero-based ranks, worked out by hand:
#   q0: 0.9 beats all                                   -> 0
#   q1: 0.5 ties with columns 0 and 2, nothing higher   -> 0 + 2/2 = 1.0
#   q2: 0.6 is beaten by 0.8, 0.7, 0.9                  -> 3
#   q3: 0.4 ties with columns 0 and 2, nothing higher   -> 1.0
SIM = [
    [0.9, 0.1, 0.2, 0.3],
    [0.5, 0.5, 0.5, 0.1],
    [0.8, 0.7, 0.6, 0.9],
    [0.4, 0.2, 0.4, 0.4],
]


def test_metrics_with_ties_match_hand_ranks() -> None:
    got = retrieval_metrics(np.array(SIM))
    # ranks [0, 1, 3, 1]: one below 1, all below 5; median 1 -> MedR 2; mean 5/4 -> MeanR 2.25.
    assert got == pytest.approx({"R1": 25.0, "R5": 100.0, "R10": 100.0, "R50": 100.0, "MedR": 2.0, "MeanR": 2.25})


def test_two_way_tie_for_first_place_is_rank_half_and_not_an_r1_hit() -> None:
    # q0: tie with one other target at the top -> rank 0.5; q1: 0.3 > 0.1 -> rank 0. The released R@1
    # counts rank == 0 only, so q0 is a miss for R@1 and a hit for R@5.
    got = retrieval_metrics(np.array([[0.5, 0.5], [0.1, 0.3]]))
    assert got == pytest.approx({"R1": 50.0, "R5": 100.0, "R10": 100.0, "R50": 100.0, "MedR": 1.25, "MeanR": 1.25})


def released_rule(sims: np.ndarray) -> dict[str, float]:
    """The released EAO code's metric, written out: sort the negated row, average the positions equal to
    the diagonal's, then R1 = share of positions == 0 and R@K = share < K."""
    cols = []
    for row, positive in zip(-sims, -np.diag(sims)):
        positions = np.flatnonzero(np.sort(row) == positive)
        cols.append(positions.mean())
    cols = np.array(cols)
    out = {"R1": 100.0 * np.mean(cols == 0)}
    out.update({f"R{k}": 100.0 * np.mean(cols < k) for k in (5, 10, 50)})
    out.update(MedR=np.median(cols) + 1, MeanR=np.mean(cols) + 1)
    return out


def test_matches_the_released_rule_on_matrices_with_ties() -> None:
    rng = np.random.default_rng(3)
    for size in (2, 7, 60):
        sims = rng.integers(0, 4, (size, size)).astype(float)  # four levels: many ties, often at the top
        assert retrieval_metrics(sims) == pytest.approx(released_rule(sims))


def test_several_positives_rank_the_best_one() -> None:
    # Query 0's positives are targets 1 and 3 (0.4 and 0.8): its best, 0.8, is beaten by 0.9 -> rank 1.
    # Query 1's one positive is target 0 (0.2), tied with target 2 and beaten by 0.7 -> rank 1 + 1/2.
    sim = np.array([[0.9, 0.4, 0.1, 0.8], [0.2, 0.7, 0.2, 0.1]])
    positives = np.array([[False, True, False, True], [True, False, False, False]])
    got = retrieval_metrics(sim, positives=positives)
    assert got == pytest.approx({"R1": 0.0, "R5": 100.0, "R10": 100.0, "R50": 100.0, "MedR": 2.25, "MeanR": 2.25})


def test_missing_queries_count_as_misses() -> None:
    # N = 10: 6 missing queries get rank 10 (behind a full gallery). Ranks: 0, 1, 3, 1, 10 x 6.
    got = retrieval_metrics(np.array(SIM), num_expected=10)
    assert got["R1"] == pytest.approx(10.0)
    assert got["R5"] == pytest.approx(40.0)
    assert got["R10"] == pytest.approx(40.0)
    assert got["R50"] == pytest.approx(40.0)  # rank 10 < 50, yet a missing clip is never a hit
    assert got["MedR"] == pytest.approx(11.0)  # sorted ranks 0 1 1 3 10 10 ...: median 10
    assert got["MeanR"] == pytest.approx((0 + 1 + 3 + 1 + 60) / 10 + 1)


def test_rank_past_ten_and_tensor_input() -> None:
    # 12 targets; q0's positive is beaten by 11 others -> rank 11 (a miss for R10, a hit for R50).
    sim = torch.eye(12)
    sim[0, 1:] = 2.0
    got = retrieval_metrics(sim)
    assert got["R10"] == pytest.approx(100.0 * 11 / 12)
    assert got["R1"] == pytest.approx(100.0 * 11 / 12)
    assert got["R50"] == pytest.approx(100.0)
    assert got["MeanR"] == pytest.approx(11 / 12 + 1)


@pytest.mark.parametrize(
    ("sim", "num_expected", "message"),
    [
        (np.ones((2, 3)), None, "square"),
        (np.array([[np.nan, 0.0], [0.0, 1.0]]), None, "NaN"),
        (np.eye(3), 2, "smaller than the number of queries"),
    ],
)
def test_bad_input_is_a_user_error(sim: np.ndarray, num_expected: int | None, message: str) -> None:
    with pytest.raises(UserError, match=message):
        retrieval_metrics(sim, num_expected)
