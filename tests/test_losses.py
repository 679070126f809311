"""NormSoftmax and the combinatorial loss against values computed independently with plain loops."""

from __future__ import annotations

import math

import pytest
import torch

from howto_prep.errors import UserError
from mft_train.losses.combinatorial import PAPER_PRETRAIN_WEIGHTS, combinatorial_loss, norm_softmax_loss


def loop_norm_softmax(sim: list[list[float]], temperature: float) -> float:
    """Symmetric InfoNCE by hand: mean row cross-entropy + mean column cross-entropy."""
    n = len(sim)
    rows = 0.0
    cols = 0.0
    for i in range(n):
        rows += -sim[i][i] / temperature + math.log(sum(math.exp(sim[i][j] / temperature) for j in range(n)))
        cols += -sim[i][i] / temperature + math.log(sum(math.exp(sim[j][i] / temperature) for j in range(n)))
    return rows / n + cols / n


def loop_cosine(x: list[float], y: list[float]) -> float:
    dot = sum(a * b for a, b in zip(x, y))
    return dot / (math.sqrt(sum(a * a for a in x)) * math.sqrt(sum(b * b for b in y)))


@pytest.mark.parametrize("temperature", [0.05, 1.0])
def test_norm_softmax_matches_hand_computation(temperature: float) -> None:
    sim = [[0.9, 0.1, -0.3], [0.2, 0.5, 0.4], [-0.7, 0.6, 0.8]]
    got = norm_softmax_loss(torch.tensor(sim, dtype=torch.float64), temperature)
    assert got.item() == pytest.approx(loop_norm_softmax(sim, temperature), rel=1e-6)


def test_norm_softmax_two_by_two_closed_form() -> None:
    # sim = [[1, 0], [0, 1]], T = 1: every row and column is CE = log(1 + e^-1), summed over 2 directions.
    got = norm_softmax_loss(torch.eye(2), temperature=1.0)
    assert got.item() == pytest.approx(2 * math.log(1 + math.exp(-1)), rel=1e-6)


def make_out(batch: int, dim: int, empties: dict[str, list[int]], seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    out = {}
    for key in ("t", "v", "a", "tv", "ta", "va"):
        out[key] = torch.nn.functional.normalize(torch.randn(batch, dim, generator=generator, dtype=torch.float64), dim=-1)
        out[key].requires_grad_(True)
    for modality in ("t", "v", "a"):
        flags = torch.zeros(batch, dtype=torch.bool)
        flags[empties.get(modality, [])] = True
        out[f"{modality}_empty"] = flags
    return out


def loop_term(out: dict[str, torch.Tensor], query: str, target: str, involved: str, temperature: float) -> float | None:
    rows = [i for i in range(out["t"].shape[0]) if not any(bool(out[f"{m}_empty"][i]) for m in involved)]
    if not rows:
        return None
    q = out[query].detach().tolist()
    g = out[target].detach().tolist()
    sim = [[loop_cosine(q[i], g[j]) for j in rows] for i in rows]
    return loop_norm_softmax(sim, temperature)


TERMS = {"t_v": ("t", "v", "tv"), "t_a": ("t", "a", "ta"), "v_a": ("v", "a", "va"),
         "t_va": ("t", "va", "tva"), "v_ta": ("v", "ta", "tva"), "a_tv": ("a", "tv", "tva")}


def test_combinatorial_loss_with_empty_rows_matches_hand_computation() -> None:
    out = make_out(batch=6, dim=5, empties={"t": [1], "a": [3, 4]})
    total, parts = combinatorial_loss(out, PAPER_PRETRAIN_WEIGHTS, temperature=0.05)
    numerator = 0.0
    denominator = 0.0
    for term, (query, target, involved) in TERMS.items():
        expected = loop_term(out, query, target, involved, 0.05)
        assert parts[term].item() == pytest.approx(expected, rel=1e-6), term
        numerator += PAPER_PRETRAIN_WEIGHTS[term] * expected
        denominator += PAPER_PRETRAIN_WEIGHTS[term]
    assert total.item() == pytest.approx(numerator / denominator, rel=1e-6)


def test_dropped_rows_receive_no_gradient() -> None:
    out = make_out(batch=5, dim=4, empties={"t": [2]})
    total, _ = combinatorial_loss(out, PAPER_PRETRAIN_WEIGHTS)
    total.backward()
    # Row 2 has no text: every term with t (t_v, t_a, t_va, and the tv / ta pair targets) drops it.
    for key in ("t", "tv", "ta"):
        assert torch.count_nonzero(out[key].grad[2]) == 0, key
        assert torch.count_nonzero(out[key].grad[0]) > 0, key
    # v_a still uses row 2; va only appears in t_va, which needs the text.
    assert torch.count_nonzero(out["v"].grad[2]) > 0 and torch.count_nonzero(out["a"].grad[2]) > 0
    assert torch.count_nonzero(out["va"].grad[2]) == 0


def test_terms_without_valid_rows_leave_the_normalisation() -> None:
    out = make_out(batch=4, dim=3, empties={"a": [0, 1, 2, 3]})
    total, parts = combinatorial_loss(out, PAPER_PRETRAIN_WEIGHTS)
    assert set(parts) == {"t_v"}
    assert total.item() == pytest.approx(loop_term(out, "t", "v", "tv", 0.05), rel=1e-6)


def test_zero_weights_are_skipped_and_weights_normalised() -> None:
    out = make_out(batch=4, dim=3, empties={})
    total, parts = combinatorial_loss(out, {"t_v": 3.0, "v_a": 1.0}, temperature=0.1)
    assert set(parts) == {"t_v", "v_a"}
    expected = (3.0 * loop_term(out, "t", "v", "tv", 0.1) + loop_term(out, "v", "a", "va", 0.1)) / 4.0
    assert total.item() == pytest.approx(expected, rel=1e-6)


def test_all_rows_empty_gives_zero_with_a_graph() -> None:
    out = make_out(batch=3, dim=3, empties={"t": [0, 1, 2], "a": [0, 1, 2]})
    total, parts = combinatorial_loss(out, {"t_v": 1.0, "v_a": 1.0})
    assert parts == {} and total.item() == 0.0
    total.backward()
    assert out["v"].grad is not None


def test_unknown_or_negative_weight_is_a_user_error() -> None:
    out = make_out(batch=2, dim=3, empties={})
    with pytest.raises(UserError, match="unknown loss weight"):
        combinatorial_loss(out, {"t_x": 1.0})
    with pytest.raises(UserError, match="negative"):
        combinatorial_loss(out, {"t_v": -1.0})
