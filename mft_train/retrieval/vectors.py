"""The vector-search indexes of an embedding index, with faiss (faiss-cpu).

Why faiss: one maintained library (Meta's, the reference implementation of most vector-search
methods) gives both the exact search small collections want and the inverted-file search large ones
need, behind the same `search(queries, k)` call, with indexes saved to and read from one file. Its
wheel depends only on numpy and packaging, which the lock already holds. (usearch is a fine HNSW
library too, but an HNSW graph over a million 6,144-d vectors takes far longer to build on a CPU
than the k-means of an inverted file, and faiss's exact index is the brute-force baseline itself.)

Both kinds keep the vectors as float16, as the index parts store them (exact = the stored values):
- "flat": an exact scan (IndexScalarQuantizer, fp16), the inner product with every window.
- "ivf": IndexIVFScalarQuantizer (fp16): k-means splits the windows into `nlist` lists (about
  sqrt(n)); a query scans only the `nprobe` lists nearest to it. Approximate: bench/bench_search.py
  measures its recall@10 against the exact search.
"auto" takes "flat" below AUTO_IVF_FROM windows (about 110 hours of video at the default stride; up
to there the exact scan of 6,144-d vectors takes at most ~150 ms per query on 2 CPU cores, measured in
bench/bench_search.py) and "ivf" from there on. Embeddings are unit vectors, so
the inner product is the cosine similarity.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Iterable

import numpy as np

from howto_prep.errors import UserError
from howto_prep.files import atomic_path

INDEX_TYPES = ("auto", "flat", "ivf")
AUTO_IVF_FROM = 100_000
TRAIN_PER_LIST = 64  # k-means training points per list (faiss asks for at least 39)
ADD_CHUNK = 65_536  # rows converted to float32 at a time while adding


def choose_type(kind: str, count: int) -> str:
    if kind not in INDEX_TYPES:
        raise UserError(f"--index-type must be one of {', '.join(INDEX_TYPES)}, not {kind!r}")
    if kind == "auto":
        return "ivf" if count >= AUTO_IVF_FROM else "flat"
    return kind


def ivf_lists(count: int) -> int:
    """Inverted lists for `count` vectors: the power of two nearest sqrt(count), with at least 39
    vectors per list to train on (faiss's minimum), at least 1."""
    return max(1, min(2 ** round(math.log2(max(math.sqrt(count), 1))), count // 39))


def default_nprobe(nlist: int) -> int:
    """Lists scanned per query: 1/16 of them, at least 16 (all of them when there are fewer)."""
    return min(nlist, max(16, nlist // 16))


def _float32(rows: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(rows, dtype=np.float32)


def build_index(chunks: Iterable[np.ndarray], dim: int, kind: str, count: int, seed: int = 0):
    """A faiss index over the rows of `chunks` ((n_i, dim) arrays, in order), of type `kind`.

    `count` is the total number of rows (for "auto" and for the IVF training sample). IVF training
    draws TRAIN_PER_LIST x nlist rows with a seeded generator, so the same vectors give the same index.
    """
    import faiss

    kind = choose_type(kind, count)
    if kind == "flat":
        index = faiss.IndexScalarQuantizer(dim, faiss.ScalarQuantizer.QT_fp16, faiss.METRIC_INNER_PRODUCT)
        for chunk in chunks:
            for first in range(0, len(chunk), ADD_CHUNK):
                index.add(_float32(chunk[first:first + ADD_CHUNK]))
        return index
    chunks = list(chunks)
    nlist = ivf_lists(count)
    quantizer = faiss.IndexFlatIP(dim)
    index = faiss.IndexIVFScalarQuantizer(quantizer, dim, nlist, faiss.ScalarQuantizer.QT_fp16,
                                          faiss.METRIC_INNER_PRODUCT)
    index.cp.seed = seed
    take = min(count, TRAIN_PER_LIST * nlist)
    rows = np.sort(np.random.default_rng(seed).choice(count, size=take, replace=False))
    index.train(_float32(_gather(chunks, rows)))
    for chunk in chunks:
        for first in range(0, len(chunk), ADD_CHUNK):
            index.add(_float32(chunk[first:first + ADD_CHUNK]))
    index.nprobe = default_nprobe(nlist)
    return index


def _gather(chunks: list[np.ndarray], rows: np.ndarray) -> np.ndarray:
    """Rows (sorted global numbers) of the concatenation of `chunks`, without concatenating them."""
    parts, offset = [], 0
    for chunk in chunks:
        lo, hi = np.searchsorted(rows, [offset, offset + len(chunk)])
        parts.append(chunk[rows[lo:hi] - offset])
        offset += len(chunk)
    return np.concatenate(parts)


def save_index(index, path: Path) -> None:
    import faiss

    with atomic_path(Path(path)) as temp:
        faiss.write_index(index, str(temp))


def load_index(path: Path):
    import faiss

    if not Path(path).is_file():
        raise UserError(f"the index has no {Path(path).name}; rerun `mft-train embed` to finish it")
    return faiss.read_index(str(path))


def describe(index) -> dict:
    """{"type", "count", "nlist", "nprobe"} of a loaded index."""
    import faiss

    ivf = faiss.try_extract_index_ivf(index) if hasattr(faiss, "try_extract_index_ivf") else None
    if ivf is not None:
        return {"type": "ivf", "count": int(index.ntotal), "nlist": int(ivf.nlist), "nprobe": int(ivf.nprobe)}
    return {"type": "flat", "count": int(index.ntotal)}


def search_index(index, queries: np.ndarray, k: int, nprobe: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(scores, rows), each (queries, min(k, n)), best first; rows index the windows in index order."""
    import faiss

    k = max(1, min(int(k), int(index.ntotal)))
    if nprobe is not None:
        ivf = faiss.try_extract_index_ivf(index)
        if ivf is None:
            raise UserError("--nprobe applies to an IVF index; this index is exact (flat)")
        ivf.nprobe = max(1, min(int(nprobe), int(ivf.nlist)))
    scores, rows = index.search(_float32(queries), k)
    return scores, rows


def brute_force(matrix: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The baseline: one matrix product of the queries with every row of `matrix` (float32), then the top k."""
    scores = _float32(queries) @ matrix.T
    k = min(k, scores.shape[1])
    top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(scores, top, axis=1), axis=1, kind="stable")
    rows = np.take_along_axis(top, order, axis=1)
    return np.take_along_axis(scores, rows, axis=1), rows
