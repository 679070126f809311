"""Spherical K-means in torch (cosine assignment) and a FIFO feature queue, for MCN's clustering loss.

Why our own K-means and not `fast-pytorch-kmeans`: MCN refits every 20 steps warm-started from the
previous centroids, and under DDP every rank must reach bit-identical centroids from the same queue.
That needs a seeded generator for k-means++ / random init, an explicit warm start, deterministic
handling of empty clusters, and no global RNG side effects; the algorithm itself is ~60 lines of
matrix products on the GPU, so an extra dependency would buy nothing and cost control.

Cosine K-means: points and centroids live on the unit sphere; a point goes to the centroid with the
largest dot product; a centroid is the L2-normalised mean of its points.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mft_train.losses.settings import KMEANS_INITS

INITS = KMEANS_INITS


class KMeans:
    """K-means with cosine assignment; `fit` returns unit-norm centroids (k, D).

    `fit(x, init=centroids)` warm-starts from given centroids (MCN's refit); otherwise the centroids
    come from k-means++ (or `random` rows) drawn with a generator seeded by `seed`, so two processes
    fitting the same data get the same result. Iteration stops when no assignment changes.
    """

    def __init__(self, k: int, iters: int = 50, init: str = "k-means++", seed: int = 0) -> None:
        if k <= 0:
            raise ValueError(f"k must be positive, got {k}")
        if init not in INITS:
            raise ValueError(f"init must be one of {INITS}, got {init!r}")
        self.k, self.iters, self.init, self.seed = k, iters, init, seed
        self.centroids: torch.Tensor | None = None
        self.n_iter = 0  # iterations the last fit ran (the convergence test of warm starts)

    def fit(self, x: torch.Tensor, init: torch.Tensor | None = None, iters: int | None = None) -> torch.Tensor:
        """Fit on x (N, D), N >= k; `init` (k, D) warm-starts. Returns (and keeps) the centroids."""
        if x.ndim != 2 or x.shape[0] < self.k:
            raise ValueError(f"K-means with k={self.k} needs a (N >= {self.k}, D) matrix, got {tuple(x.shape)}")
        points = F.normalize(x.detach().float(), dim=1)
        if init is not None:
            if init.shape != (self.k, x.shape[1]):
                raise ValueError(f"init centroids must have shape {(self.k, x.shape[1])}, got {tuple(init.shape)}")
            centroids = F.normalize(init.detach().float().to(points.device), dim=1)
        else:
            centroids = self._initial_centroids(points)
        labels = None
        self.n_iter = 0
        for _ in range(self.iters if iters is None else iters):
            new_labels = (points @ centroids.t()).argmax(dim=1)
            self.n_iter += 1
            if labels is not None and torch.equal(new_labels, labels):
                break
            labels = new_labels
            centroids = self._update(points, labels, centroids)
        self.centroids = centroids
        return centroids

    def _initial_centroids(self, points: torch.Tensor) -> torch.Tensor:
        gen = torch.Generator(device=points.device).manual_seed(self.seed)
        count = points.shape[0]
        if self.init == "random":
            rows = torch.randperm(count, generator=gen, device=points.device)[: self.k]
            return points[rows].clone()
        # k-means++: each next centre drawn with probability proportional to its squared cosine
        # distance (1 - cos) to the nearest centre chosen so far.
        first = int(torch.randint(count, (1,), generator=gen, device=points.device))
        chosen = [first]
        nearest = 1.0 - points @ points[first]
        for _ in range(1, self.k):
            weights = nearest.clamp(min=0.0) ** 2
            if float(weights.sum()) <= 0.0:  # fewer distinct points than k: take unused rows in order
                unused = torch.ones(count, dtype=torch.bool, device=points.device)
                unused[chosen] = False
                pick = int(torch.nonzero(unused)[0])
            else:
                pick = int(torch.multinomial(weights, 1, generator=gen))
            chosen.append(pick)
            nearest = torch.minimum(nearest, 1.0 - points @ points[pick])
        return points[chosen].clone()

    def _update(self, points: torch.Tensor, labels: torch.Tensor, previous: torch.Tensor) -> torch.Tensor:
        """Normalised mean per cluster; an empty cluster takes the point worst served by its centroid."""
        sums = torch.zeros_like(previous).index_add_(0, labels, points)
        counts = torch.bincount(labels, minlength=self.k)
        empty = torch.nonzero(counts == 0).flatten().tolist()
        if empty:
            fit = (points * previous[labels]).sum(dim=1)  # cosine of each point to its centroid
            worst = torch.argsort(fit)[: len(empty)]  # deterministic: the least-fitting points first
            sums[empty] = points[worst]
        return F.normalize(sums, dim=1)


def assign_cosine(x: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """Labels (N,) of the nearest centroid by cosine similarity; no gradient flows through them."""
    with torch.no_grad():
        return (F.normalize(x.float(), dim=1) @ F.normalize(centroids.float(), dim=1).t()).argmax(dim=1)


class FeatureQueue:
    """FIFO ring buffer of the `size` newest vectors of dimension `dim` (detached, float32).

    Storage is allocated on the device of the first push, so the queue follows the model to the GPU.
    """

    def __init__(self, size: int, dim: int) -> None:
        if size <= 0 or dim <= 0:
            raise ValueError(f"queue size and dim must be positive, got {size} and {dim}")
        self.size, self.dim = size, dim
        self.buffer: torch.Tensor | None = None
        self.count = 0  # vectors held, at most size
        self.head = 0  # slot the next vector goes to

    def __len__(self) -> int:
        return self.count

    @property
    def full(self) -> bool:
        return self.count == self.size

    def push(self, vectors: torch.Tensor) -> None:
        """Append (N, dim) vectors, dropping the oldest when full; only the last `size` of a large push stay."""
        if vectors.ndim != 2 or vectors.shape[1] != self.dim:
            raise ValueError(f"the queue holds (N, {self.dim}) vectors, got {tuple(vectors.shape)}")
        vectors = vectors.detach().float()[-self.size :]
        if self.buffer is None:
            self.buffer = torch.zeros(self.size, self.dim, device=vectors.device)
        n = vectors.shape[0]
        slots = (self.head + torch.arange(n, device=self.buffer.device)) % self.size
        self.buffer[slots] = vectors.to(self.buffer.device)
        self.head = (self.head + n) % self.size
        self.count = min(self.size, self.count + n)

    def values(self) -> torch.Tensor:
        """The held vectors, oldest first (newest last)."""
        if self.buffer is None:
            return torch.zeros(0, self.dim)
        if not self.full:
            return self.buffer[: self.count]
        return torch.cat([self.buffer[self.head :], self.buffer[: self.head]])

    def state_dict(self) -> dict:
        return {"values": self.values().cpu(), "size": self.size, "dim": self.dim}

    def load_state_dict(self, state: dict, device: torch.device | str = "cpu") -> None:
        if state["size"] != self.size or state["dim"] != self.dim:
            raise ValueError(f"queue state is ({state['size']}, {state['dim']}), expected ({self.size}, {self.dim})")
        self.buffer, self.count, self.head = None, 0, 0
        if len(state["values"]):
            self.push(state["values"].to(device))
