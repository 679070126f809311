"""Is this the same file the index was built from? Size, modification time, then sha256.

Why: an index is only meaningful with the checkpoint that embedded it (queries go through its text
branch) and the vocabulary its shards were tokenised with. Hashing a 2.7 GB checkpoint on every
search would cost seconds, so the sha256 recorded at embedding time is recomputed only when the size
matches but the modification time does not (a copy, a touched file).
"""

from __future__ import annotations

from pathlib import Path

from howto_prep.files import file_sha256


def fingerprint(path: Path) -> dict:
    """{"path", "bytes", "mtime_ns", "sha256"} of a file."""
    path = Path(path)
    stat = path.stat()
    return {"path": str(path.resolve()), "bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": file_sha256(path)}


def same_file(recorded: dict, path: Path) -> bool:
    """True when `path` holds the bytes `recorded` describes (cheap when size and mtime agree)."""
    path = Path(path)
    if not path.is_file():
        return False
    stat = path.stat()
    if stat.st_size != recorded.get("bytes"):
        return False
    if stat.st_mtime_ns == recorded.get("mtime_ns"):
        return True
    return file_sha256(path) == recorded.get("sha256")
