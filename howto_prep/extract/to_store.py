"""`howto-prep extract --out s3://bucket/prefix`: the disk run on a local work folder, published as it goes.

What is atomic where, and how a rerun resumes: howto_prep/shard_store.py. Here: the order of a run
on a URL. The store is checked first (a refused or unreachable store is one line, exit 5, before any
work); the URL's lock object, then the work folder's flock, make this the only run on both; a stopped
run's multipart uploads are aborted; the store's progress is pulled into the work folder and shards a
stopped run committed only locally are uploaded; then the ordinary run, whose writers publish each
shard; the set's files last. A video-level set's tars leave the work folder once uploaded. A clip-level
set is cut from its video-level features in the work folder (`video-level/` stays local: it is the
source of the cut, small for a benchmark) and its shards are uploaded when the cut is done.
"""

from __future__ import annotations

from dataclasses import replace

from howto_prep.extract.plan import ExtractPlan
from howto_prep.object_store import Store, StoreLock, lock_holder
from howto_prep.output_lock import output_lock
from howto_prep.shard_store import ShardPublisher, StoredSet

TOOL = "howto-prep extract"


def extract_to_store(plan: ExtractPlan) -> str:
    """Run `plan` (plan.out: the work folder) into plan.store_url; returns the stored set's summary."""
    from howto_prep.extract.command import extract_with_lock

    assert plan.store_url is not None
    store = Store.for_url(plan.store_url)
    store.check_access()
    with StoreLock(store, holder_info=lock_holder(TOOL)) as lock, output_lock(plan.out, TOOL):
        publisher = ShardPublisher(store, plan.out, lock.token)
        publisher.clear_unfinished_uploads()
        publisher.pull()
        publisher.publish_pending()
        video_level = plan.clip_annotations is None
        try:
            extract_with_lock(replace(plan, publisher=publisher) if video_level else plan)
            lock.ensure_held()
            # the clip shards, cut in the work folder; for a video-level set, the shards of an agent
            # lost after committing them locally (its node removed) and before uploading them
            publisher.publish_pending()
            publisher.publish_set_files()
        except BaseException:
            publisher.publish_failures_quietly()
            raise
    return StoredSet(store).summary()
