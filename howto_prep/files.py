"""Files that are whole or absent: the one temp-file-then-rename helper and the one file digest.

Every output of both tools (shards, their JSONs, the vocabulary, checkpoints, configs, plots,
synthetic media) is written to a hidden temporary sibling, flushed to disk, then renamed over its
final name, so a kill at any moment leaves either the old file or the new one, never a torn one.
A failed write removes its temporary file (a failed 8 GB checkpoint save must not stay behind).
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

TEMP_MARKER = ".tmp-"


def temp_sibling(path: Path) -> Path:
    """A hidden name beside `path`, unique per process and call: `.NAME.tmp-PID-RANDOM`."""
    path = Path(path)
    return path.with_name(f".{path.name}{TEMP_MARKER}{os.getpid()}-{uuid.uuid4().hex[:8]}")


def is_temp_name(name: str) -> bool:
    """True for names made by `temp_sibling` (what a cleanup may remove: we wrote them)."""
    return name.startswith(".") and TEMP_MARKER in name


def fsync_file(path: Path) -> None:
    with open(path, "rb+") as handle:
        os.fsync(handle.fileno())


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path to write; on success it is synced and renamed to `path`, on any
    error it is removed and the error propagates."""
    path = Path(path)
    temp = temp_sibling(path)
    try:
        yield temp
        fsync_file(temp)
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: Path, data: bytes) -> None:
    with atomic_path(path) as temp:
        temp.write_bytes(data)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_write_json(path: Path, value: Any) -> None:
    atomic_write_text(path, json.dumps(value, indent=1, sort_keys=True) + "\n")


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file, streamed (multi-GB checkpoints and shards do not fill memory)."""
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()
