"""Recall-at-K plot (PNG) of an evaluation, drawn with matplotlib's Agg backend (no display needed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from howto_prep.files import atomic_path
from mft_train.evaluation.metrics import recall_at


def recall_curve(ranks: np.ndarray, num_expected: int, ks: np.ndarray) -> np.ndarray:
    """R@K in percent for each K: present queries that are hits at K over num_expected (missing = misses)."""
    ranks = np.asarray(ranks, dtype=np.float64)
    return np.array([100.0 * float(recall_at(ranks, int(k)).sum()) / num_expected for k in ks])


def recall_ks(num_expected: int) -> np.ndarray:
    """K = 1 .. num_expected on a roughly logarithmic grid (at most ~60 points)."""
    grid = np.unique(np.round(np.geomspace(1, max(num_expected, 1), num=60)).astype(int))
    return grid[grid >= 1]


def plot_recall_at_k(ranks: dict[str, np.ndarray], num_expected: int, path: Path, title: str = "",
                     queries_expected: dict[str, int] | None = None) -> Path:
    """One R@K curve per combination, plus the chance line 100 K / N; written atomically to `path`.

    `queries_expected` gives a combination its own denominator (MSR-VTT full: all sentences for t->x)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    ks = recall_ks(num_expected)
    figure, axes = plt.subplots(figsize=(7, 4.5), dpi=100)
    try:
        for name, combo_ranks in ranks.items():
            denominator = (queries_expected or {}).get(name, num_expected)
            axes.plot(ks, recall_curve(combo_ranks, denominator, ks), label=name, linewidth=1.4)
        axes.plot(ks, 100.0 * ks / num_expected, "k--", label="chance", linewidth=1.0)
        axes.set_xscale("log")
        axes.set_xlabel("K")
        axes.set_ylabel("R@K (%)")
        axes.set_ylim(0, 100)
        axes.set_title(title or f"recall at K (N = {num_expected})")
        axes.grid(True, which="both", alpha=0.3)
        axes.legend(fontsize=8, ncol=2)
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as temp:
            figure.savefig(temp, format="png", bbox_inches="tight")
    finally:
        plt.close(figure)
    return path
