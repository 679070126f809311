"""A shard set (a folder, or a prefix on an object store): which shards are complete, its vocabulary,
and the arrays of one decoded sample.

Format: shards/README.md (schema version 1). A shard exists only when its JSON does (written last),
so a half-written tar is never read. Reading the tars: mft_train.data.reader; a set at an s3:// or
gs:// URL: mft_train.data.store_set.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from howto_prep.cli_support import Location, is_store_url
from howto_prep.errors import UserError
from howto_prep.schema import (
    INDEX_FILE,
    VOCAB_DIR,
    VOCAB_PARTS_DIR,
    VOCAB_VECTORS,
    VOCAB_W2V_IDS,
    WORD_DIM,
)


@dataclass(frozen=True)
class ShardSet:
    """The readable shards of a shard set and their sample counts; `root` is its folder (a Path) or
    its object-store URL (a str), and `urls` the shards' paths or URLs."""

    root: Location
    urls: list[str]
    counts: list[int]

    @property
    def num_videos(self) -> int:
        return sum(self.counts)


def discover_shards(root: Location) -> ShardSet:
    """Shards listed by index.json (wids format), else every tar whose per-shard JSON exists.

    A shard exists only when its JSON does (it is written last), so a half-written tar is ignored.
    `root` may be an s3:// or gs:// URL (mft_train.data.store_set: the same rule, on the store).
    """
    if is_store_url(root):
        from mft_train.data.store_set import discover_store_shards

        urls, counts = discover_store_shards(str(root))
        return ShardSet(str(root), urls, counts)
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"shard directory {root} does not exist")
    index = root / INDEX_FILE
    entries: list[tuple[Path, int]] = []
    if index.is_file():
        try:
            listing = json.loads(index.read_text())["shardlist"]
            entries = [(root / item["url"], int(item["nsamples"])) for item in listing]
        except (ValueError, KeyError, TypeError) as err:
            raise UserError(f"{index} is not a wids shard index ({err})") from err
    else:
        for tar in sorted(root.glob("*.tar")):
            sidecar = tar.with_suffix(".json")
            if sidecar.is_file():
                info = json.loads(sidecar.read_text())
                count = info.get("samples", info.get("count", len(info.get("keys", []))))
                entries.append((tar, int(count)))
    entries = [(path, count) for path, count in entries if path.is_file() and count > 0]
    if not entries:
        raise UserError(f"no complete shards in {root}; run `howto-prep extract --out {root}` first")
    return ShardSet(root, [str(path) for path, _ in entries], [count for _, count in entries])


class WordTable:
    """Frozen word2vec lookup: token ids (word2vec row ids) -> vocab rows -> 300-d vectors.

    A finished extraction has the merged table vocab/{w2v_ids,vectors}.npy, memory-mapped so every
    loader worker shares one copy through the page cache. A growing (or killed) extraction has, for
    each finished shard, vocab/parts/ with the words it first used (written before its JSON); when
    parts are newer than the merged table (or it is missing), the table is assembled from them.
    """

    def __init__(self, root: Location) -> None:
        vocab = vocab_root(root) / VOCAB_DIR
        ids_path, vectors_path = vocab / VOCAB_W2V_IDS, vocab / VOCAB_VECTORS
        parts = sorted((vocab / VOCAB_PARTS_DIR).glob(f"*.{VOCAB_W2V_IDS}"))
        merged = ids_path.is_file() and vectors_path.is_file()
        if merged and (not parts or ids_path.stat().st_mtime_ns >= max(p.stat().st_mtime_ns for p in parts)):
            self.w2v_ids = np.load(ids_path)
            self.vectors = np.load(vectors_path, mmap_mode="r")
        elif parts:  # a growing set: the parts, plus an older merged table (sets extended by a rerun)
            self.w2v_ids, self.vectors = _assemble_parts(parts, (ids_path, vectors_path) if merged else None)
            vectors_path = parts[0].parent
        else:
            raise UserError(f"the shard set has no vocabulary: {ids_path} and {vectors_path} (or {VOCAB_DIR}/"
                            f"{VOCAB_PARTS_DIR}/) are needed")
        if self.vectors.shape != (len(self.w2v_ids), WORD_DIM):
            raise UserError(f"{vectors_path} has shape {self.vectors.shape}, expected ({len(self.w2v_ids)}, {WORD_DIM})")

    def lookup(self, token_ids: np.ndarray) -> np.ndarray:
        rows = np.searchsorted(self.w2v_ids, token_ids)
        rows = np.minimum(rows, len(self.w2v_ids) - 1)
        if token_ids.size and not np.array_equal(self.w2v_ids[rows], token_ids):
            raise ValueError("a token id is missing from vocab/w2v_ids.npy")
        return np.asarray(self.vectors[rows], dtype=np.float32)


def vocab_root(root: Location) -> Path:
    """The local folder holding the set's vocab/: the set's own folder, or for a URL a local copy
    of the store's vocab/ (downloaded once, then memory-mapped like the disk's)."""
    if is_store_url(root):
        from mft_train.data.store_set import vocab_folder

        return vocab_folder(str(root))
    return Path(root)


def _assemble_parts(parts: list[Path], merged: tuple[Path, Path] | None) -> tuple[np.ndarray, np.ndarray]:
    """Sorted ids and their vectors from vocab/parts/ (each part's vectors file precedes its ids
    file) and, when given, an older merged table."""
    pairs = [(part, part.with_name(part.name.replace(VOCAB_W2V_IDS, VOCAB_VECTORS))) for part in parts]
    pairs += [merged] if merged else []
    ids = [np.load(ids_file) for ids_file, _ in pairs]
    vectors = [np.load(vectors_file) for _, vectors_file in pairs]
    all_ids, first = np.unique(np.concatenate(ids), return_index=True)
    return all_ids, np.concatenate(vectors)[first]


@dataclass(frozen=True)
class DecodedSample:
    """One decoded shard sample (a video, or a clip of a clip-level set): the arrays clips are cut from."""

    video_id: str
    duration: float
    resnet152: np.ndarray  # (T2, 2048) float16, 1 row/s
    resnext101: np.ndarray  # (T3, 2048) float16, 1.5 rows/s
    logmel: np.ndarray | None  # (40, F) float16, 100 frames/s; None without audio
    caption_starts: np.ndarray  # (C,) float64 seconds, sorted by start
    caption_ends: np.ndarray  # (C,)
    tokens: np.ndarray  # (N,) int32 word2vec row ids
    token_offsets: np.ndarray  # (C + 1,) int32
    caption_texts: tuple[str, ...] = ()  # the sentences themselves (evaluation reports name each query)
