"""Cosine K-means and the FIFO feature queue used by MCN's clustering loss."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mft_train.losses.kmeans import FeatureQueue, KMeans, assign_cosine


def blobs_on_sphere(per_blob: int, dim: int = 16, spread: float = 0.05, seed: int = 0) -> tuple[torch.Tensor, np.ndarray]:
    """4 tight gaussian blobs around orthogonal unit directions, shuffled; returns points and true labels."""
    gen = torch.Generator().manual_seed(seed)
    centres = torch.eye(dim)[:4] * 3.0  # scaled: cosine assignment must ignore the norm
    labels = torch.arange(4).repeat_interleave(per_blob)
    points = centres[labels] + spread * torch.randn(len(labels), dim, generator=gen)
    order = torch.randperm(len(labels), generator=gen)
    return points[order], labels[order].numpy()


def purity(found: np.ndarray, truth: np.ndarray) -> float:
    """Fraction of points whose cluster's majority true label equals their own."""
    hits = 0
    for cluster in np.unique(found):
        members = truth[found == cluster]
        hits += np.bincount(members).max()
    return hits / len(truth)


@pytest.mark.parametrize("init", ["k-means++", "random"])
def test_kmeans_recovers_well_separated_blobs(init: str) -> None:
    points, truth = blobs_on_sphere(per_blob=50)
    kmeans = KMeans(4, iters=50, init=init, seed=3)
    centroids = kmeans.fit(points)
    labels = assign_cosine(points, kmeans.centroids).numpy()
    assert centroids.shape == (4, 16)
    assert torch.allclose(centroids.norm(dim=1), torch.ones(4), atol=1e-5)
    assert len(np.unique(labels)) == 4
    assert purity(labels, truth) == 1.0
    # Every centroid points at one of the true directions (cosine > 0.99).
    best = (centroids @ torch.eye(16)[:4].t()).max(dim=1).values
    assert bool((best > 0.99).all())


def test_kmeans_is_reproducible_with_the_same_seed_and_differs_with_another() -> None:
    points = torch.randn(200, 8, generator=torch.Generator().manual_seed(1))
    first = KMeans(5, seed=7).fit(points)
    second = KMeans(5, seed=7).fit(points)
    other = KMeans(5, seed=8).fit(points)
    assert torch.equal(first, second)
    assert not torch.equal(first, other)


def test_warm_start_converges_at_once_and_keeps_centroids() -> None:
    points, truth = blobs_on_sphere(per_blob=60, seed=2)
    cold_iters = []
    for seed in range(5):
        cold = KMeans(4, init="random", seed=seed)
        cold.fit(points)
        cold_iters.append(cold.n_iter)
    centroids = cold.centroids
    # Refit on the same data from its own result: a fixed point, found in one assign + one check.
    same = KMeans(4, init="random")
    assert torch.allclose(same.fit(points, init=centroids), centroids, atol=1e-6)
    assert same.n_iter == 2
    # New data from the same blobs (the queue moved on): clusters kept, fewer iterations than cold starts.
    fresh, fresh_truth = blobs_on_sphere(per_blob=60, seed=5)
    warm = KMeans(4, init="random")
    refit = warm.fit(fresh, init=centroids)
    assert warm.n_iter == 2
    assert warm.n_iter < np.mean(cold_iters)
    assert float((refit * centroids).sum(dim=1).min()) > 0.99  # centroid i stays centroid i
    assert torch.equal(assign_cosine(fresh, refit), assign_cosine(fresh, centroids))
    assert purity(assign_cosine(fresh, warm.centroids).numpy(), fresh_truth) == 1.0


def test_empty_cluster_takes_the_worst_served_point() -> None:
    # Two identical far-apart initial centroids: the second gets no point and must be re-seeded.
    points = torch.tensor([[1.0, 0.0], [0.99, 0.1], [0.0, 1.0], [0.1, 0.99]])
    init = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    centroids = KMeans(2).fit(points, init=init)
    labels = assign_cosine(points, centroids)
    assert sorted(labels.tolist()) == [0, 0, 1, 1]
    assert labels[0] == labels[1] and labels[2] == labels[3]


def test_kmeans_rejects_too_few_points() -> None:
    with pytest.raises(ValueError, match="needs"):
        KMeans(10).fit(torch.randn(5, 3))


def test_queue_keeps_the_newest_vectors_in_order_after_wrap_around() -> None:
    queue = FeatureQueue(size=5, dim=2)
    assert len(queue) == 0 and queue.values().shape == (0, 2)
    rows = torch.arange(24, dtype=torch.float32).view(12, 2)  # row i = (2i, 2i + 1)
    queue.push(rows[:3])
    assert torch.equal(queue.values(), rows[:3])
    queue.push(rows[3:7])  # wraps: 7 pushed, 5 kept
    assert len(queue) == 5 and queue.full
    assert torch.equal(queue.values(), rows[2:7])
    queue.push(rows[7:8])
    assert torch.equal(queue.values(), rows[3:8])
    queue.push(rows[8:12].clone())  # a later change to the pushed tensor must not leak in
    assert torch.equal(queue.values(), rows[7:12])


def test_queue_push_larger_than_size_keeps_the_last_rows_and_round_trips() -> None:
    queue = FeatureQueue(size=4, dim=3)
    data = torch.randn(10, 3)
    queue.push(data)
    assert torch.equal(queue.values(), data[-4:])
    copy = FeatureQueue(size=4, dim=3)
    copy.load_state_dict(queue.state_dict())
    assert torch.equal(copy.values(), data[-4:])
    copy.push(data[:1])
    assert torch.equal(copy.values(), torch.cat([data[-3:], data[:1]]))
    with pytest.raises(ValueError):
        queue.push(torch.zeros(2, 4))
