"""On-disk indexes of the big inputs (caption.json, the word2vec .bin): where they live, and when one is stale.

At HowTo100M's size the inputs do not fit a driver's memory as Python objects (caption.json: ~136 M
caption lines; GoogleNews word2vec: 3 M words, 3.6 GB). Each is indexed once, into a folder under the
output (`OUT/.index/<kind>/`, so every node of a cluster that sees the output sees the index), then
memory-mapped by every run and every worker. An index records its source's size and sha256: a source
that changed since the index was built is refused with one line (a shard set must not mix two
versions of its captions or vocabulary), never silently re-indexed under finished shards.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from howto_prep.errors import UserError

INDEX_DIR = ".index"  # hidden: the shard readers glob the output's top level only
SOURCE_FILE = "source.json"  # written last: an index folder without it is unfinished
HASH_BLOCK = 8 << 20


@dataclass(frozen=True)
class SourceFingerprint:
    """What identifies an input file: its size and the sha256 of its bytes (the path is informative)."""

    path: str
    size: int
    sha256: str

    def same_file(self, other: "SourceFingerprint") -> bool:
        return self.size == other.size and self.sha256 == other.sha256


def index_folder(out_dir: Path, kind: str) -> Path:
    """OUT/.index/<kind>: the index of one input kind ('captions', 'word2vec') of this output."""
    return Path(out_dir) / INDEX_DIR / kind


def fingerprint(path: Path, what: str) -> SourceFingerprint:
    """Size and sha256 of `path`, streamed with a progress bar (hashlib runs at ~1.5 GB/s here)."""
    from tqdm import tqdm

    path = Path(path)
    size = path.stat().st_size
    digest = hashlib.sha256()
    with open(path, "rb") as handle, tqdm(total=size, unit="B", unit_scale=True, desc=f"checking {what}",
                                          file=sys.stderr, disable=size < (256 << 20)) as bar:
        while block := handle.read(HASH_BLOCK):
            digest.update(block)
            bar.update(len(block))
    return SourceFingerprint(str(path.resolve()), size, digest.hexdigest())


def read_recorded_source(folder: Path) -> SourceFingerprint | None:
    """The fingerprint a finished index recorded, or None when the folder holds no finished index."""
    try:
        return SourceFingerprint(**json.loads((Path(folder) / SOURCE_FILE).read_text()))
    except FileNotFoundError:
        return None
    except (ValueError, TypeError) as err:
        raise UserError(f"index {folder} is damaged ({SOURCE_FILE}: {err}); delete the folder to rebuild it") from None


def refuse_if_stale(folder: Path, source: SourceFingerprint, option: str) -> None:
    """One line, exit 2, when the finished index in `folder` was built from other bytes than `source`."""
    recorded = read_recorded_source(folder)
    if recorded is not None and not recorded.same_file(source):
        raise UserError(f"{option} {source.path} is not the file this output was indexed from "
                        f"({recorded.path}: {recorded.size:,} bytes, sha256 {recorded.sha256[:12]}; now "
                        f"{source.size:,} bytes, sha256 {source.sha256[:12]}); use a new --out, or delete "
                        f"{folder} and the shards made from the old file")


def require_finished(folder: Path, source: Path, option: str, what: str) -> SourceFingerprint:
    """The recorded fingerprint of the finished index in `folder`, for a process that opens it
    without re-hashing (a worker, after the driver checked it): only the source's size is compared,
    a cheap guard against another file at the same path. One line, exit 2, otherwise."""
    recorded = read_recorded_source(folder)
    if recorded is None:
        raise UserError(f"{folder} holds no finished {what}; `howto-prep extract` builds it from {option} {source}")
    try:
        size = Path(source).stat().st_size
    except FileNotFoundError:
        raise UserError(f"{option}: file {source} does not exist") from None
    if size != recorded.size:
        raise UserError(f"{option} {source} is not the file indexed in {folder} ({size:,} bytes, indexed "
                        f"{recorded.size:,}); use the original file or a new --out")
    return recorded


def record_source(folder: Path, source: SourceFingerprint) -> None:
    """Mark the index in `folder` finished (the last write of a build)."""
    from howto_prep.files import atomic_write_json

    atomic_write_json(Path(folder) / SOURCE_FILE, asdict(source))


def open_readonly_array(path: Path):  # type: ignore[no-untyped-def]
    """A .npy of an index, memory-mapped read-only (pages are shared by every process of a node)."""
    import numpy as np

    return np.load(path, mmap_mode="r", allow_pickle=False)


def clear_unfinished(folder: Path) -> None:
    """Remove a folder's files when it holds no finished index and no resumable build (a fresh start)."""
    folder = Path(folder)
    if folder.is_dir() and read_recorded_source(folder) is None:
        for child in folder.iterdir():
            if child.is_file():
                os.unlink(child)
