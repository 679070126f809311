"""An embedding index on an object store: `embed --out s3://...` writes one, `search --index s3://...` reads it.

Writing. `embed` builds the index in a local work folder exactly as on disk (`--work`, by default
`.howto-prep/work/<scheme>/<bucket>/<prefix>`), so a killed run resumes there shard by shard. Once
the index is complete it is published (`local_copies.publish_folder`): the parts and the faiss files,
each whole, then `index.json` LAST. index.json (written with "complete": true only after the faiss
files) is the index's commit on the store, as it is on disk: a reader never opens an index without
it. Before republishing over an older complete index, the store's index.json is deleted first, so no
reader ever pairs an old manifest with new parts. A file is uploaded when the store lacks it, holds
another size, or holds an older copy than the work folder's: a re-embedded part or a rebuilt faiss
file keeps its size, so size alone would leave the old one there.

A fresh work folder (another machine) looks at the store first: an index there that is complete for
the same checkpoint, shard set (same shards), windows, vocabulary and index type is left as it is,
and nothing is embedded; otherwise the store's parts of unchanged shards are downloaded into the work
folder and only the other shards are embedded.

Reading. `search` reads the store's index.json first: missing or unfinished is one line, exit 2, and
nothing else is downloaded. The folder is then copied once into the cache (`local_copies.local_folder`'s
rule: each file kept while its size and modified time match the store's), and the store's index.json must then still be the one read at the start (a republish in
flight is refused, never half read).

Store faults (refused, unreachable, failing after retries) are howto_prep's SystemFault: exit 5.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from howto_prep.cli_support import Location, is_store_url
from howto_prep.errors import UserError
from howto_prep.local_copies import (cache_path, copy_folder, default_work_folder, fetch_file, files_under,
                                     nanoseconds, needs_upload, open_folder_store, publish_folder)
from howto_prep.object_store import Store
from mft_train.retrieval import index_store, vectors

Plan = list[tuple[str, int, str, Path]]  # (shard URL, samples, shard identity, local part file) per shard


def checkpoint_url(given: Location, local: str) -> str | None:
    """The URL of the very checkpoint file embedded, for a --checkpoint URL (a run folder's best.pt or
    pointer checkpoint), so a search on another machine can fetch it; None for a local checkpoint."""
    if not is_store_url(given):
        return None
    url = str(given).rstrip("/")
    try:
        relative = Path(local).relative_to(cache_path(url)).as_posix()
    except ValueError:
        return url
    return url if relative in ("", ".") else f"{url}/{relative}"


class IndexPublisher:
    """The store copy of one index whose work folder is `work` (see the module docstring)."""

    def __init__(self, store: Store, work: Path) -> None:
        self.store, self.work = store, Path(work)

    @property
    def url(self) -> str:
        return self.store.url

    def stored_manifest(self) -> dict | None:
        """The store's index.json (checked to be an index manifest), or None when there is none."""
        try:
            raw = self.store.get_bytes(index_store.MANIFEST)
        except FileNotFoundError:
            return None
        try:
            manifest = json.loads(raw)
        except ValueError:
            manifest = None
        return index_store.checked_manifest(manifest, self.url, complete=False)

    def up_to_date(self, stored: dict | None, identity: dict, plan: Plan, index_type: str) -> bool:
        """Whether `stored` (checked by check_same_index already) is complete for exactly this plan."""
        if not stored or not stored.get("complete"):
            return False
        want = [(Path(url).name, ident) for url, _, ident, _ in plan]
        have = [(part.get("shard"), part.get("identity")) for part in stored.get("parts", [])]
        windows = int(stored.get("stats", {}).get("windows", 0))
        same_type = stored.get("index", {}).get("type") == vectors.choose_type(index_type, windows)
        return want == have and same_type and _vocab_key(stored["vocab"]) == _vocab_key(identity["vocab"])

    def pull_parts(self, stored: dict | None, plan: Plan) -> int:
        """Download the store's parts of unchanged shards the work folder lacks; how many."""
        recorded = {part.get("file"): part.get("identity") for part in (stored or {}).get("parts", [])}
        if not recorded:
            return 0
        listing = self.store.list_info(index_store.PARTS_DIR)
        pulled = 0
        for _, _, ident, path in plan:
            key = path.relative_to(self.work).as_posix()
            if recorded.get(key) != ident or key not in listing or index_store.part_identity(path) == ident:
                continue
            size, modified = listing[key]
            fetch_file(self.store, key, path, size, nanoseconds(modified))  # mtime = the store's: not re-uploaded
            pulled += 1
        return pulled

    def publish(self) -> int:
        """Upload the complete work folder, index.json last (the store's one first retracted); files uploaded."""
        remote = self.store.list_info("")
        changed = [key for key in files_under(self.work)
                   if key != index_store.MANIFEST and needs_upload(self.work / key, remote.get(key))]
        changed.sort(key=lambda key: (not key.startswith(f"{index_store.PARTS_DIR}/"), key))  # parts, then faiss
        if index_store.MANIFEST in remote:
            self.store.delete(index_store.MANIFEST)  # readers refuse the index until the new one is whole
        return publish_folder(self.work, self.store, last=[*changed, index_store.MANIFEST])


def _vocab_key(vocab: dict) -> tuple:
    return vocab.get("root"), vocab.get("words", {}).get("sha256"), vocab.get("vectors", {}).get("sha256")


def index_location(out: Location, work: Path | None) -> tuple[Path, IndexPublisher | None]:
    """(the local index folder, the store's publisher or None) of an --out folder or URL and its --work.
    A URL is checked with one listing first: a refused or missing bucket stops before any work."""
    if is_store_url(out):
        url = str(out).rstrip("/")
        folder = Path(work) if work else default_work_folder(url)
        return folder, IndexPublisher(open_folder_store(url), folder)
    if work is not None:
        raise UserError(f"--work is only for an s3:// or gs:// --out (it names the local copy); --out {out} "
                        "is already a local folder")
    return Path(out), None


def report_published(publisher: IndexPublisher, uploaded: int) -> None:
    print(f"embed: published {publisher.url} ({uploaded} files uploaded, {index_store.MANIFEST} last)", file=sys.stderr)


# -- reading


def local_index(value: Location) -> Path:
    """The folder to search for an --index folder or URL: a URL's complete index copied into the cache."""
    if not is_store_url(value):
        return Path(value)
    url = str(value).rstrip("/")
    store = open_folder_store(url)
    found = store.list_info("")
    if index_store.MANIFEST not in found:
        if not found:
            raise UserError(f"index {url} does not exist; build it with `mft-train embed --out {url}`")
        raise UserError(f"index {url} has no {index_store.MANIFEST}: it is unfinished or still being published; "
                        f"rerun the `mft-train embed --out {url}` that writes it")
    try:
        raw = store.get_bytes(index_store.MANIFEST)
    except FileNotFoundError:
        raise _changed(url) from None
    try:
        manifest = json.loads(raw)
    except ValueError:
        manifest = None
    index_store.checked_manifest(manifest, url, complete=True)  # an unfinished one: nothing downloaded
    folder = copy_folder(store, "index")
    _check_unchanged(store, url, folder / index_store.MANIFEST, found[index_store.MANIFEST])
    return folder


def _check_unchanged(store: Store, url: str, copy: Path, listed: tuple[int, float | None]) -> None:
    """The copied index.json and the store's one now are the one listed first: no republish meanwhile."""
    size, modified = listed
    now = store.list_info(index_store.MANIFEST).get(index_store.MANIFEST)
    stat = copy.stat() if copy.is_file() else None
    if (now != listed or stat is None or stat.st_size != size or modified is None
            or stat.st_mtime_ns != nanoseconds(modified)):
        raise _changed(url)


def _changed(url: str) -> UserError:
    return UserError(f"index {url} changed while it was being copied (an `mft-train embed` publishing it?); "
                     "search again when it has finished")
