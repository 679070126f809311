"""MCN's online K-means: cost of a warm-started refit against a cold k-means++ fit, same data, same run.

    .venv/bin/python bench/bench_mcn_kmeans.py [--rows 4096] [--dim 512] [--k 64] [--device cpu]
    .venv/bin/python bench/bench_mcn_kmeans.py --paper --device cuda     # 40,960 x 6,144, K = 256

The queue is refilled between refits (at the paper's 4,096 clips per step and a refit every 20 steps
the 40,960-row queue is replaced twice over), so the benchmark fits queue A, then refits on a fresh
queue B drawn from slightly drifted blobs (the model moved) cold and warm. Columns: seconds and
iterations per fit, the mean cosine of points to their centroid (higher is better), and the refit
cost per training step (warm seconds / refit_every). The last column is cold / warm time.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mft_train.losses.kmeans import KMeans, assign_cosine  # noqa: E402


def drifting_queues(rows: int, dim: int, blobs: int, drift: float, device: str, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Two queues of unit vectors from `blobs` noisy directions; queue B's directions moved by `drift`."""
    gen = torch.Generator().manual_seed(seed)
    centres = F.normalize(torch.randn(blobs, dim, generator=gen), dim=1)
    moved = F.normalize(centres + drift * torch.randn(blobs, dim, generator=gen) / dim**0.5, dim=1)

    def sample(directions: torch.Tensor) -> torch.Tensor:
        labels = torch.randint(blobs, (rows,), generator=gen)
        return F.normalize(directions[labels] + 0.6 * torch.randn(rows, dim, generator=gen) / dim**0.5, dim=1)

    return sample(centres).to(device), sample(moved).to(device)


def timed_fit(kmeans: KMeans, x: torch.Tensor, init: torch.Tensor | None) -> tuple[float, torch.Tensor]:
    if x.is_cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    centroids = kmeans.fit(x, init=init)
    if x.is_cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - start, centroids


def mean_fit(x: torch.Tensor, centroids: torch.Tensor) -> float:
    return float((x * centroids[assign_cosine(x, centroids)]).sum(dim=1).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=4096)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--k", type=int, default=64)
    parser.add_argument("--iters", type=int, default=50)
    parser.add_argument("--refit-every", type=int, default=20)
    parser.add_argument("--drift", type=float, default=0.3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--paper", action="store_true", help="40,960 x 6,144 queue, K = 256")
    args = parser.parse_args()
    if args.paper:
        args.rows, args.dim, args.k = 40_960, 6_144, 256
    queue_a, queue_b = drifting_queues(args.rows, args.dim, 2 * args.k, args.drift, args.device)
    previous = KMeans(args.k, iters=args.iters, seed=0).fit(queue_a)
    cold = KMeans(args.k, iters=args.iters, seed=1)
    cold_s, cold_c = timed_fit(cold, queue_b, None)
    warm = KMeans(args.k, iters=args.iters, seed=1)
    warm_s, warm_c = timed_fit(warm, queue_b, previous)
    print(f"queue {args.rows} x {args.dim}, K = {args.k}, device {args.device}, torch threads {torch.get_num_threads()}")
    print(f"{'fit':<18}{'seconds':>10}{'iters':>8}{'mean cos':>10}{'s / step':>10}")
    print(f"{'cold k-means++':<18}{cold_s:>10.3f}{cold.n_iter:>8}{mean_fit(queue_b, cold_c):>10.4f}{cold_s / args.refit_every:>10.4f}")
    print(f"{'warm start':<18}{warm_s:>10.3f}{warm.n_iter:>8}{mean_fit(queue_b, warm_c):>10.4f}{warm_s / args.refit_every:>10.4f}")
    print(f"cold / warm time: {cold_s / warm_s:.2f}x")


if __name__ == "__main__":
    main()
