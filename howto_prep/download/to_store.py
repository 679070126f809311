"""`howto-prep download --out s3://bucket/prefix`: the disk run on a local work folder, each video uploaded whole.

Where things live:
- the videos: `<URL>/<id[:2]>/<id>.<ext>`, the keys a local run uses as paths under --out;
- the manifest (SQLite) in the local work folder, `--work DIR` or by default
  `./.howto-prep/work/<scheme>/<bucket>/<prefix>/manifest.sqlite` (download.plan): SQLite needs a
  real filesystem with working locks and in-place writes (WAL), which an object store is not. The
  work folder also holds the partial files and the videos between validation and upload; on a
  cluster, give --work on a filesystem the nodes share (or let each node use the same local path:
  a video only passes through it);
- a copy of the manifest at `<URL>/manifest.sqlite`, uploaded at the end of every run (also one
  stopped by a fault or Ctrl-C, when the store still answers), so the bucket says what is in it.

The order of a run: the store is checked first (a refused or unreachable store is one line, exit 5,
before any work); the URL's lock object (`StoreLock`: one run per output across machines), then the
work folder's flock; multipart uploads a killed run left are aborted; a fresh work folder starts
from the bucket's manifest copy; then one listing of the bucket says which videos are there
(download.stored): those are done, whatever the manifest says, and done rows whose object is gone are
fetched again. So a rerun with the same work folder resumes, and one on a fresh work folder redoes
nothing the bucket holds. Each worker fetches and validates into the work folder, uploads
(download.upload) and deletes its copy; the video is recorded done only after its upload succeeded.
A store fault in a worker stops the run (exit 5) and is never recorded against a video.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

from howto_prep import schema
from howto_prep.download.catalog import Catalog
from howto_prep.download.command import RunSummary, download_all
from howto_prep.download.manifest import Manifest
from howto_prep.download.plan import DownloadPlan
from howto_prep.download.stored import StoredVideos, list_stored_videos, video_of_key
from howto_prep.download.task import PARTIAL_DIR
from howto_prep.files import atomic_write_bytes, remove_quietly
from howto_prep.object_store import Retry, Store, StoreLock, lock_holder
from howto_prep.output_lock import output_lock

TOOL = "howto-prep download"
MANIFEST_KEY = schema.MANIFEST_FILE
UPLOAD_NAME = ".manifest-upload.sqlite"

logger = logging.getLogger(__name__)


def download_to_store(catalog: Catalog, plan: DownloadPlan) -> RunSummary:
    """Run `plan` (plan.out: the work folder) into plan.store_url (module docstring)."""
    assert plan.store_url is not None
    store = Store.for_url(plan.store_url)
    store.check_access()
    with StoreLock(store, holder_info=lock_holder(TOOL)) as lock, output_lock(plan.out, TOOL):
        finished = False
        try:
            store.abort_unfinished_uploads()
            restore_manifest(store, plan.out)
            stored = list_stored_videos(store)
            drop_uploaded_leftovers(plan.out, stored)
            summary = download_all(catalog, plan, stored=stored, guard=lock.ensure_held)
            finished = True
        finally:
            if not lock.lost:
                if finished:
                    publish_manifest(store, plan.out)
                else:  # a fault or Ctrl-C is on its way out: one quick try, and never a second message
                    with contextlib.suppress(Exception):
                        publish_manifest(Store.for_url(plan.store_url, retry=Retry(tries=1)), plan.out)
    return summary


def restore_manifest(store: Store, work: Path) -> bool:
    """A work folder without a manifest starts from the bucket's copy (its failures and durations);
    True when there was one. The listing that follows corrects whatever the copy is behind on."""
    local = Path(work) / schema.MANIFEST_FILE
    if local.exists():
        return False
    try:
        data = store.get_bytes(MANIFEST_KEY)
    except FileNotFoundError:
        return False
    atomic_write_bytes(local, data)
    return True


def publish_manifest(store: Store, work: Path) -> None:
    """Upload a consistent copy of the work folder's manifest to `<URL>/manifest.sqlite`."""
    work = Path(work)
    if not (work / schema.MANIFEST_FILE).exists():
        return
    copy = work / UPLOAD_NAME
    remove_quietly(copy)
    try:
        with Manifest(work) as manifest:
            manifest.snapshot(copy)
        store.put_file(copy, MANIFEST_KEY)
    finally:
        remove_quietly(copy)


def drop_uploaded_leftovers(work: Path, stored: StoredVideos) -> None:
    """Delete work-folder videos whose object is already in the bucket (a run killed between an upload
    and the local delete); the others stay, and the rerun uploads them without fetching them again."""
    for path in Path(work).glob("*/*.*"):
        if path.parent.name == PARTIAL_DIR or not path.is_file():
            continue
        video_id = video_of_key(f"{path.parent.name}/{path.name}")
        if video_id is not None and len(stored) and _holds(stored, video_id):
            path.unlink(missing_ok=True)


def _holds(stored: StoredVideos, video_id: str) -> bool:
    import numpy as np

    wanted = np.array([video_id.encode("utf-8")], dtype="S")
    slot = int(np.searchsorted(stored.ids, wanted)[0])
    return slot < len(stored.ids) and stored.ids[slot] == wanted[0]
