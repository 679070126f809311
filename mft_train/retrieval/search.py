"""`mft-train search --index INDEX "text query"`: the windows of an embedded collection that best match.

The query goes through the index's own checkpoint and vocabulary (mft_train.retrieval.query), its
text embedding is scored against the windows' fused video+audio embeddings (`--target va`, the
paper's t->va) or one modality (`v`, `a`) by the index's faiss index, and the top windows are listed
with the caption nearest to them in time. `--json` prints the same as JSON instead; `--html FILE`
writes a page with a keyframe of each hit (decoded from `--videos DIR` when given). `--index`,
`--checkpoint` and `--vocab` may be s3:// / gs:// URLs (mft_train.retrieval.stored_index: a complete
index copied once into the cache); `--html` and `--videos` stay local (a page a person opens, and
the videos its keyframes are decoded from).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from howto_prep.errors import UserError
from mft_train.retrieval import index_store, vectors
from mft_train.retrieval.query import QueryEncoder, QueryWords
from mft_train.retrieval.stored_index import local_index

CAPTION_WIDTH = 60


class Searcher:
    """One target's vector index and the window table of an index folder, loaded once."""

    def __init__(self, root: Path, manifest: dict, target: str = "va") -> None:
        if target not in index_store.KEYS:
            raise UserError(f"--target must be one of {', '.join(index_store.KEYS)}, not {target!r}")
        self.root, self.manifest, self.target = Path(root), manifest, target
        self.index = vectors.load_index(index_store.vector_file(root, target))
        self.windows = index_store.WindowTable.load(root, manifest)
        if self.index.ntotal != len(self.windows):
            raise UserError(f"{index_store.vector_file(root, target)} holds {self.index.ntotal} vectors but the index "
                            f"lists {len(self.windows)} windows; rerun `mft-train embed`")

    def search(self, embedding: np.ndarray, top: int, nprobe: int | None = None) -> list[dict]:
        """The `top` best windows for one query embedding, best first, with rank, score and nearest caption."""
        scores, rows = vectors.search_index(self.index, embedding[None, :], top, nprobe)
        hits = []
        for score, row in zip(scores[0].tolist(), rows[0].tolist()):
            if row < 0:  # an IVF search that found fewer than `top` windows in the lists it scanned
                continue
            hits.append({"rank": len(hits) + 1, "score": round(float(score), 4), **self.windows.window(row)})
        return hits


def clock(seconds: float) -> str:
    minutes, rest = divmod(float(seconds), 60)
    hours, minutes = divmod(int(minutes), 60)
    return f"{hours}:{minutes:02d}:{rest:04.1f}" if hours else f"{minutes}:{rest:04.1f}"


def format_table(hits: list[dict]) -> str:
    lines = [f"{'rank':>4}  {'video id':<13} {'window':<15} {'score':>6}  caption nearest in time"]
    for hit in hits:
        caption = hit["caption"] or "-"  # a video extracted without captions
        caption = caption if len(caption) <= CAPTION_WIDTH else caption[: CAPTION_WIDTH - 3] + "..."
        window = f"{clock(hit['start'])}-{clock(hit['end'])}"
        lines.append(f"{hit['rank']:>4}  {hit['video_id']:<13} {window:<15} {hit['score']:>6.3f}  {caption}")
    return "\n".join(lines)


def describe_words(words: QueryWords) -> str:
    text = f"words used: {' '.join(words.used)}"
    if words.out_of_vocabulary:
        text += f"; out of vocabulary (left out): {', '.join(words.out_of_vocabulary)}"
    if words.truncated:
        text += f"; past the first {len(words.used)} words (left out): {', '.join(words.truncated)}"
    return text


def search_report(args: argparse.Namespace) -> dict:
    """Everything `search` prints or writes: the query's words, the settings and the hits."""
    if not args.query or not args.query.strip():
        raise UserError("the query is empty; give some words, e.g. \"crack the eggs\"")
    if args.top <= 0:
        raise UserError(f"--top must be positive, got {args.top}")
    root = local_index(args.index)  # a URL: its complete index copied once into the cache
    manifest = index_store.read_manifest(root)
    searcher = Searcher(root, manifest, args.target)
    encoder = QueryEncoder(manifest, args.checkpoint, args.vocab, list(args.overrides or []))
    words, embedding = encoder.encode(args.query)
    started = time.perf_counter()
    hits = searcher.search(embedding, args.top, args.nprobe)
    latency = time.perf_counter() - started
    return {"query": args.query, "words": words.used, "out_of_vocabulary": words.out_of_vocabulary,
            "truncated": words.truncated, "target": args.target, "index": str(args.index),
            "index_type": vectors.describe(searcher.index), "windows": len(searcher.windows),
            "videos": manifest["stats"]["videos"], "search_ms": round(latency * 1000, 3), "results": hits,
            "_words": words}


def run_search(args: argparse.Namespace) -> int:
    if args.videos and not args.html:
        raise UserError("--videos gives the keyframes of --html; add --html results.html")
    report = search_report(args)
    words = report.pop("_words")
    if args.html:
        from mft_train.retrieval.html import write_results_page

        write_results_page(Path(args.html), report, Path(args.videos) if args.videos else None)
    if args.json:
        print(json.dumps(report, indent=1))
        print(f"search: {describe_words(words)}", file=sys.stderr)
    else:
        print(f"search {report['query']!r}: {describe_words(words)}")
        print(f"target {report['target']} over {report['windows']} windows of {report['videos']} videos "
              f"({report['index_type']['type']} index, {report['search_ms']:.1f} ms)")
        print(format_table(report["results"]))
    if args.html:
        print(f"search: wrote {args.html}", file=sys.stderr)
    return 0
