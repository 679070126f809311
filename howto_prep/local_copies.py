"""Local copies of object-store files, for the inputs that must be read from a real filesystem.

Some inputs are read at random (caption.json and the word2vec .bin are indexed on disk and
memory-mapped; faiss and SQLite need a file): a URL given for one of them is downloaded once into a
cache folder and reused while the object's size and modified time are unchanged (the copy's mtime
is set to the object's, so one `stat` checks it). Outputs made the same way (a local folder, then
uploaded) use `publish_folder`, which uploads the files that say "complete" last.

Downloads are streamed to a hidden `.part` file next to the target and renamed into place: a
killed download never leaves a copy that looks whole.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Iterable, Sequence

from howto_prep.cli_support import Location, is_store_url
from howto_prep.errors import UserError
from howto_prep.object_store import Store

CACHE_VARIABLE = "HOWTO_MFT_CACHE"
WORK_ROOT = Path(".howto-prep") / "work"


def cache_root() -> Path:
    """Where copies of store files live: $HOWTO_MFT_CACHE, else $XDG_CACHE_HOME/howto-mft (~/.cache)."""
    explicit = os.environ.get(CACHE_VARIABLE)
    if explicit:
        return Path(explicit)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "howto-mft"


def url_parts(url: str) -> Path:
    """A URL as a relative path, one per URL (`s3://b/x/y` -> `s3/b/x/y`; `.` and `..` dropped)."""
    scheme, _, rest = url.partition("://")
    parts = [part for part in rest.split("/") if part not in ("", ".", "..")]
    return Path(scheme.lower(), *parts)


def cache_path(url: str, root: Path | None = None) -> Path:
    """The local path that mirrors `url` (`s3://b/x/y` -> ROOT/stores/s3/b/x/y): one place per URL."""
    return (root or cache_root()) / "stores" / url_parts(url)


def default_work_folder(url: str) -> Path:
    """Where a URL output's local state lives unless --work says (extract, download, synth, mft-train's
    runs and indexes): one folder per URL under the current folder, `.howto-prep/work/s3/bucket/prefix`."""
    return WORK_ROOT / url_parts(url)


def split_url(url: str) -> tuple[str, str]:
    """(the folder URL, the object's name) of a file URL: `s3://b/x/y.json` -> (`s3://b/x`, `y.json`)."""
    folder, _, name = url.rstrip("/").rpartition("/")
    if not name or folder.endswith(":/"):
        raise UserError(f"{url} names a bucket, not a file")
    return folder, name


def fetch_file(store: Store, key: str, target: Path, size: int, modified_ns: int | None) -> bool:
    """Copy one object to `target` unless an identical copy (size and time) is there; atomic replace.
    True when it downloaded."""
    if target.is_file():
        stat = target.stat()
        if stat.st_size == size and modified_ns is not None and stat.st_mtime_ns == modified_ns:
            return False
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, temp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
    os.close(handle)
    try:
        store.get_file(key, temp)  # streamed to disk, size checked, retried under the store's fault policy
        if modified_ns is not None:
            os.utime(temp, ns=(modified_ns, modified_ns))
        os.replace(temp, target)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    return True


def nanoseconds(modified: float | None) -> int | None:
    """A store's modified time (epoch seconds) as a file's st_mtime_ns."""
    return None if modified is None else int(modified * 1e9)


def local_file(value: Location, what: str, root: Path | None = None) -> Path:
    """The path to read for an input file given as a path or an s3:// / gs:// URL: a path as it is;
    a URL's object downloaded once into the cache (a missing object is one line, exit 2)."""
    if not is_store_url(value):
        return Path(value)
    url = str(value)
    folder, name = split_url(url)
    store = Store.for_url(folder)
    store.check_access()
    found = store.list_info(name).get(name)
    if found is None:
        raise UserError(f"{what} {url} does not exist")
    size, modified = found
    target = cache_path(url, root)
    fetch_file(store, name, target, size, nanoseconds(modified))
    return target


def local_input(value: Location | None, what: str) -> Path | None:
    """An optional CLI input file (a path or a URL, None when the option was left out) as an absolute
    local path: absolute because Ray workers, whose working folder is not the driver's, may open it."""
    if value is None:
        return None
    return local_file(value, what).absolute()


def local_folder(value: Location, what: str, root: Path | None = None) -> Path:
    """The folder to read for an input folder given as a path or a URL: a URL's objects (every key
    under its prefix) copied once into the cache; files the store no longer has are removed."""
    if not is_store_url(value):
        return Path(value)
    return copy_folder(open_folder_store(str(value)), what, root)


def copy_folder(store: Store, what: str, root: Path | None = None) -> Path:
    """Every object below the store's root copied into the cache (a file kept while its size and time
    match the store's); files the store no longer has are removed. Returns the cached folder."""
    wanted = {key: info for key, info in store.list_info("").items() if not key.endswith("/")}
    if not wanted:
        raise UserError(f"{what} {store.url} holds no files")
    folder = cache_path(store.url, root)
    for key, (size, modified) in sorted(wanted.items()):
        fetch_file(store, key, folder / key, size, nanoseconds(modified))
    for stale in [path for path in folder.rglob("*") if path.is_file() and not path.name.startswith(".")
                  and path.relative_to(folder).as_posix() not in wanted]:
        stale.unlink(missing_ok=True)
    return folder


def files_under(folder: Path) -> list[str]:
    """Every file below `folder` as a '/'-separated key, hidden files (partial downloads) left out."""
    return sorted(path.relative_to(folder).as_posix() for path in folder.rglob("*")
                  if path.is_file() and not any(part.startswith(".") for part in path.relative_to(folder).parts))


def needs_upload(path: Path, remote: tuple[int, float | None] | None) -> bool:
    """Missing on the store, another size there, or written here after the store's copy was (a
    rebuilt file often keeps its size). Whole-second store clocks may upload a file twice, never
    leave a stale one."""
    if remote is None or remote[1] is None:
        return True
    size, modified = remote
    stat = path.stat()
    return stat.st_size != size or stat.st_mtime_ns > nanoseconds(modified)


def publish_folder(folder: Path, store: Store, last: Sequence[str] = (), skip: Iterable[str] = ()) -> int:
    """Upload every file of `folder` the store lacks or holds an older copy of (`needs_upload`), each
    whole; the keys in `last` go up at the end, in that order, always (the files a reader takes as
    "complete"). Returns how many files were uploaded."""
    skipped, final = set(skip), set(last)
    keys = [key for key in files_under(folder) if key not in skipped]
    present = set(keys)
    remote = store.list_info("")
    ordered = [key for key in keys if key not in final] + [key for key in last if key in present]
    uploaded = 0
    for key in ordered:
        local = folder / key
        if key not in final and not needs_upload(local, remote.get(key)):
            continue
        store.put_file(local, key)
        uploaded += 1
    return uploaded


def open_folder_store(url: str) -> Store:
    """The store of a folder URL (a corpus, a published folder), checked with one listing: a refused,
    unreachable or missing bucket is a SystemFault (exit 5) before any work."""
    store = Store.for_url(url.rstrip("/"))
    store.check_access()
    return store
