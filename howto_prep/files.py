"""Files that are whole or absent: the one temp-file-then-rename helper and the one file digest.

Every output of both tools (shards, their JSONs, the vocabulary, checkpoints, configs, plots,
synthetic media) is written to a hidden temporary sibling, flushed to disk, then renamed over its
final name, so a kill at any moment leaves either the old file or the new one, never a torn one.
A failed write removes its temporary file (a failed 8 GB checkpoint save must not stay behind).

A fault of the filesystem being written (full, over quota, file too large, read-only, I/O error) is
the system's, not the data's: `storage_faults` turns it into one SystemFault line that names the
path and the errno, here in one place, for every writer of both tools.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from howto_prep.errors import SystemFault

TEMP_MARKER = ".tmp-"
# What the output's filesystem answers when it cannot take the bytes: never the fault of a video.
STORAGE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EIO})


def is_storage_fault(err: BaseException) -> bool:
    """An OSError by which the filesystem refuses what we write (see STORAGE_ERRNOS)."""
    return isinstance(err, OSError) and err.errno in STORAGE_ERRNOS


def storage_fault(path: Path, err: OSError) -> SystemFault:
    """The one-line system fault for `err` while writing `path`: the path, the errno's name, what to do."""
    name = errno.errorcode.get(err.errno, str(err.errno))
    return SystemFault(f"output filesystem error on {path}: {name} ({os.strerror(err.errno)}): "
                       "finished output is kept; free space (or fix the filesystem) and rerun the same command "
                       "to continue")


@contextmanager
def storage_faults(path: Path) -> Iterator[None]:
    """Turn a storage OSError raised while writing `path` into SystemFault; other errors pass unchanged."""
    try:
        yield
    except OSError as err:
        if not is_storage_fault(err):
            raise
        raise storage_fault(path, err) from None


def remove_quietly(path: Path) -> None:
    """Remove a file of ours during cleanup after a fault: a second fault here (a read-only
    filesystem) must not replace the first; the next run's cleanup removes what is left."""
    with contextlib.suppress(OSError):
        Path(path).unlink(missing_ok=True)


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
    error it is removed and the error propagates (a storage fault, in the body too, as SystemFault)."""
    path = Path(path)
    temp = temp_sibling(path)
    try:
        with storage_faults(path):
            yield temp
            fsync_file(temp)
            os.replace(temp, path)
    except BaseException:
        remove_quietly(temp)
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
