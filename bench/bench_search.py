"""Embedding and search: windows/s of `mft-train embed`, index size per hour of video, and search
latency of the faiss indexes against a brute-force matrix product, measured in the same run.

    .venv/bin/python bench/bench_search.py [--sizes 10000,100000,1000000] [--queries 30] [--skip-paper]

1. Embedding throughput (CPU): WindowEmbedder (what `embed` runs) on windows of a structured shard set
   (tests/shard_fixtures.py), small preset and paper preset (random weights: speed does not depend
   on them), default windows (8 s every 4 s = 900 windows per hour of video).
2. Index size per hour of video: one hour's windows (900) stored the way `embed` stores them (float16
   parts for va, v, a + the three flat faiss indexes), at the small and the paper embedding size.
3. Search latency for one query at a time: brute force (float32 matrix @ query + top 10, numpy) vs
   faiss exact (flat, fp16) vs faiss IVF (fp16, nlist ~ sqrt(n), nprobe = max(16, nlist / 16)), with IVF's
   recall@10 against the exact top 10. Synthetic unit vectors drawn around 2,000 centres (embeddings
   cluster by content; uniform random vectors would be IVF's worst case); queries are noisy copies of
   stored vectors. The paper's dimension (6,144) is used up to 100,000 vectors; 1,000,000 of them
   would take 12 GB in float16 (24 GB as a float32 brute-force matrix), more than this machine's
   memory, so every size is also run at dimension 512, 1,000,000 included.
"""

from __future__ import annotations

import argparse
import gc
import io
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from mft_train.data.shards import discover_shards  # noqa: E402
from mft_train.models import build_model  # noqa: E402
from mft_train.presets import load_config  # noqa: E402
from mft_train.retrieval import vectors  # noqa: E402
from mft_train.retrieval.embed import WindowEmbedder, shard_samples  # noqa: E402
from mft_train.retrieval.windows import window_bounds, window_inputs, window_spec  # noqa: E402

WINDOWS_PER_HOUR = 900  # 8 s windows every 4 s


def embedding_throughput(preset: str, windows: list[dict], batch: int, repeats: int) -> float:
    """Windows/s of WindowEmbedder on pre-cut windows (shard decoding is a small part, measured apart)."""
    config = load_config(preset, ["train.device=cpu"])
    model = build_model(config.model)
    state = {"model": model.state_dict(), "config": config.to_dict(), "path": preset}
    del model
    embedder = WindowEmbedder(state, torch.device("cpu"))
    del state
    embedder.embed(windows[:batch])  # warm-up
    started, count = time.perf_counter(), 0
    for _ in range(repeats):
        for first in range(0, len(windows), batch):
            embedder.embed(windows[first:first + batch])
            count += len(windows[first:first + batch])
    rate = count / (time.perf_counter() - started)
    del embedder
    gc.collect()
    return rate


def cut_windows(shards: Path, limit: int) -> tuple[list[dict], float]:
    """Up to `limit` default windows of the shard set, and the seconds it took to decode and cut them."""
    spec = window_spec(8.0, 12, 768)
    started, windows = time.perf_counter(), []
    for url in discover_shards(shards).urls:
        for record, _ in shard_samples(url, shards):
            for start, end in window_bounds(record.duration, spec):
                windows.append(window_inputs(record, start, end, spec))
    seconds = time.perf_counter() - started
    return windows[:limit], seconds / max(len(windows), 1)


def bytes_per_hour(dim: int) -> tuple[int, int]:
    """(float16 parts, flat faiss indexes) bytes for one hour of windows (900) at `dim`, as embed writes them."""
    rng = np.random.default_rng(0)
    rows = rng.standard_normal((WINDOWS_PER_HOUR, dim)).astype(np.float16)
    buffer = io.BytesIO()
    np.savez(buffer, va=rows, v=rows, a=rows, start=np.zeros(WINDOWS_PER_HOUR), end=np.zeros(WINDOWS_PER_HOUR),
             video_id=np.array(["x" * 11] * WINDOWS_PER_HOUR), v_empty=np.zeros(WINDOWS_PER_HOUR, bool),
             a_empty=np.zeros(WINDOWS_PER_HOUR, bool))
    import faiss

    index = vectors.build_index([rows], dim, "flat", len(rows))
    return len(buffer.getvalue()), 3 * len(faiss.serialize_index(index))


def clustered(count: int, dim: int, centres: int, seed: int) -> np.ndarray:
    """Unit float16 vectors around `centres` random unit centres (noise ~ the centre spread)."""
    rng = np.random.default_rng(seed)
    centre = rng.standard_normal((centres, dim)).astype(np.float32)
    centre /= np.linalg.norm(centre, axis=1, keepdims=True)
    out = np.empty((count, dim), np.float16)
    for first in range(0, count, 50_000):
        n = min(50_000, count - first)
        rows = centre[rng.integers(centres, size=n)] + rng.standard_normal((n, dim)).astype(np.float32) * (0.8 / np.sqrt(dim))
        out[first:first + n] = rows / np.linalg.norm(rows, axis=1, keepdims=True)
    return out


def latency(search, queries: np.ndarray) -> tuple[float, float, np.ndarray]:
    """(median ms, p95 ms, top-10 rows) of one-query-at-a-time searches (after one warm-up)."""
    search(queries[:1])
    times, rows = [], []
    for query in queries:
        started = time.perf_counter()
        rows.append(search(query[None]))
        times.append((time.perf_counter() - started) * 1000)
    return float(np.median(times)), float(np.percentile(times, 95)), np.stack(rows)


def search_row(count: int, dim: int, queries: int) -> dict:
    data = clustered(count, dim, 2000, seed=count + dim)
    rng = np.random.default_rng(1)
    picked = data[rng.integers(count, size=queries)].astype(np.float32)
    query = picked + rng.standard_normal(picked.shape).astype(np.float32) * (0.5 / np.sqrt(dim))
    query /= np.linalg.norm(query, axis=1, keepdims=True)
    row = {"n": count, "dim": dim, "fp16_mb": data.nbytes / 1e6}
    matrix = data.astype(np.float32)
    row["brute_ms"], row["brute_p95"], exact = latency(lambda q: vectors.brute_force(matrix, q, 10)[1][0], query)
    del matrix
    gc.collect()
    flat = vectors.build_index([data], dim, "flat", count)
    row["flat_ms"], _, flat_rows = latency(lambda q: vectors.search_index(flat, q, 10)[1][0], query)
    row["flat_recall"] = recall(flat_rows, exact)
    del flat
    started = time.perf_counter()
    ivf = vectors.build_index([data], dim, "ivf", count)
    row["ivf_build_s"] = time.perf_counter() - started
    row["nlist"], row["nprobe"] = vectors.describe(ivf)["nlist"], vectors.describe(ivf)["nprobe"]
    row["ivf_ms"], row["ivf_p95"], ivf_rows = latency(lambda q: vectors.search_index(ivf, q, 10)[1][0], query)
    row["ivf_recall"] = recall(ivf_rows, exact)
    del ivf, data
    gc.collect()
    return row


def recall(found: np.ndarray, exact: np.ndarray) -> float:
    return float(np.mean([len(set(f.tolist()) & set(e.tolist())) / len(e) for f, e in zip(found, exact)]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--paper-dim-sizes", default="10000,100000", help="sizes also run at dim 6144")
    parser.add_argument("--small-dim", type=int, default=512)
    parser.add_argument("--queries", type=int, default=30)
    parser.add_argument("--skip-paper", action="store_true", help="skip the paper preset's embedding throughput")
    args = parser.parse_args()
    torch.manual_seed(0)

    from shard_fixtures import write_shard_set

    with tempfile.TemporaryDirectory() as tmp:
        write_shard_set(Path(tmp) / "shards", videos=4, shards=1, seed=0, duration=(100.0, 140.0))
        windows, cut_s = cut_windows(Path(tmp) / "shards", 96)
    print(f"1. embedding throughput, CPU ({torch.get_num_threads()} threads), default windows (8 s every 4 s); "
          f"decoding + cutting: {1 / cut_s:.0f} windows/s")
    print(f"{'preset':<16} {'windows/s':>10} {'video hours per hour':>21}")
    presets = [("eao_small", 64, 3)] + ([] if args.skip_paper else [("eao_howto100m", 8, 1)])
    for preset, batch, repeats in presets:
        chosen = windows if preset == "eao_small" else windows[:16]
        rate = embedding_throughput(preset, chosen, batch, repeats)
        print(f"{preset:<16} {rate:>10.1f} {rate * 3600 / WINDOWS_PER_HOUR:>21.1f}")

    print("\n2. index size per hour of video (900 windows; va, v, a as float16 parts + 3 flat faiss indexes)")
    print(f"{'dim':>6} {'parts MB/h':>11} {'faiss MB/h':>11} {'total MB/h':>11}")
    for dim in (128, 6144):
        parts, index = bytes_per_hour(dim)
        print(f"{dim:>6} {parts / 1e6:>11.2f} {index / 1e6:>11.2f} {(parts + index) / 1e6:>11.2f}")

    print(f"\n3. search latency, one query at a time, top 10, median of {args.queries} queries (ms)")
    header = (f"{'windows':>9} {'dim':>5} {'fp16 MB':>8} {'brute force':>12} {'faiss flat':>11} {'faiss IVF':>10} "
              f"{'IVF p95':>8} {'nlist/nprobe':>13} {'IVF recall@10':>14} {'IVF build s':>12} {'speed-up':>9} {'flat recall@10':>15}")
    print(header)
    plan = [(int(n), 6144) for n in args.paper_dim_sizes.split(",") if n] + \
           [(int(n), args.small_dim) for n in args.sizes.split(",") if n]
    for count, dim in plan:
        row = search_row(count, dim, args.queries)
        print(f"{row['n']:>9,} {row['dim']:>5} {row['fp16_mb']:>8.0f} {row['brute_ms']:>12.2f} {row['flat_ms']:>11.2f} "
              f"{row['ivf_ms']:>10.2f} {row['ivf_p95']:>8.2f} {row['nlist']:>6}/{row['nprobe']:<6} "
              f"{row['ivf_recall']:>14.3f} {row['ivf_build_s']:>12.1f} {row['brute_ms'] / row['ivf_ms']:>8.1f}x "
              f"{row['flat_recall']:>15.3f}",
              flush=True)
    print("brute force: numpy float32 matrix @ query + argpartition; faiss flat: exact scan of the float16 vectors "
          "(recall < 1 only where float16 rounding reorders near-ties); speed-up = brute force / IVF.")


if __name__ == "__main__":
    main()
