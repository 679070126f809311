"""Which videos an object-store download output already holds: one listing, held compactly.

A rerun on a URL trusts the bucket, not the work folder's manifest: a video is done there when its
object `<id[:2]>/<id>.<ext>` exists (objects appear whole: an upload is atomic and size-checked, and
only validated files are uploaded). So a fresh work folder, a killed run that uploaded a video but
never recorded it, and an object deleted by hand all come out right.

Why one listing rather than a HEAD per video: ListObjectsV2 returns 1000 keys per request, so
HowTo100M's 1.2 M videos are ~1,200 sequential requests (about 1-3 minutes on S3, once per run),
where a HEAD per id is 1.2 M requests. The listing is streamed page by page into fixed-width byte
arrays (~40 bytes per object), never one Python object per key.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterator

import numpy as np

from howto_prep.download.catalog import Catalog

if TYPE_CHECKING:
    from howto_prep.object_store import Store

VIDEO_KEY = re.compile(r"^([^/.][^/]?)/([^/]+)\.([A-Za-z0-9]{1,8})$")
PAGE = 1000  # ListObjectsV2's maximum


def video_of_key(key: str) -> str | None:
    """The video id of a key laid out as a download writes it (`ab/abc.mp4`), else None."""
    match = VIDEO_KEY.match(key)
    if match is None or match.group(2)[:2] != match.group(1):
        return None
    return match.group(2)


@dataclass
class StoredVideos:
    """The video objects under a store root: ids, keys and sizes, one entry per video (first key wins)."""

    ids: np.ndarray  # dtype S, sorted, unique
    keys: np.ndarray  # dtype S, the object key of each id
    sizes: np.ndarray  # int64

    @classmethod
    def from_pairs(cls, pairs: Iterator[tuple[str, int]]) -> "StoredVideos":
        ids: list[np.ndarray] = []
        keys: list[np.ndarray] = []
        sizes: list[np.ndarray] = []
        batch: list[tuple[str, str, int]] = []

        def flush() -> None:
            if batch:
                ids.append(np.array([b[0] for b in batch], dtype="S"))
                keys.append(np.array([b[1] for b in batch], dtype="S"))
                sizes.append(np.array([b[2] for b in batch], dtype=np.int64))
                batch.clear()

        for key, size in pairs:
            video_id = video_of_key(key)
            if video_id is not None:
                batch.append((video_id, key, size))
                if len(batch) >= 1 << 14:
                    flush()
        flush()
        if not ids:
            return cls(np.empty(0, "S1"), np.empty(0, "S1"), np.empty(0, np.int64))
        all_ids, all_keys = np.concatenate(ids), np.concatenate(keys)
        _, first = np.unique(all_ids, return_index=True)  # sorted by id
        return cls(all_ids[first], all_keys[first], np.concatenate(sizes)[first])

    def __len__(self) -> int:
        return len(self.ids)

    def in_catalog(self, catalog: Catalog) -> np.ndarray:
        """For each catalog position, the index of its stored object, or -1."""
        found = np.full(len(catalog), -1, np.int64)
        if len(self.ids):
            positions = catalog.positions(self.ids)
            known = positions >= 0
            found[positions[known]] = np.flatnonzero(known)
        return found

    def row(self, index: int) -> tuple[str, int]:
        """(key, size) of the stored object at `index`."""
        return self.keys[index].decode("utf-8"), int(self.sizes[index])


def list_stored_videos(store: "Store") -> StoredVideos:
    """Every video object under the store's root (one paginated listing, each page under the
    store's fault policy)."""
    return StoredVideos.from_pairs(store.iter_objects(PAGE))
