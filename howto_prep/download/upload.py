"""In the worker: move one validated video from the local work folder to the object store.

A job names the store by its URL only; each worker process builds its own `Store` from the standard
credentials of its environment (AWS_* variables, ~/.aws, an instance role) and keeps it for the
process's later tasks, so no secret is ever a task argument. The object appears whole or not at
all (`Store.put_file`: retries with backoff, the stored size checked); only then is the local copy
deleted and the video reported done. A store fault (refused, unreachable, 5xx after the retries) is
reported as `store_fault`, never as the video's failure: the local file stays under its final name
in the work folder, and the rerun validates and uploads it without fetching it again.
"""

from __future__ import annotations

import threading
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from howto_prep.errors import ToolError

if TYPE_CHECKING:
    from howto_prep.download.task import FetchResult
    from howto_prep.object_store import Store

_stores: dict[str, "Store"] = {}
_stores_lock = threading.Lock()


def store_for(url: str) -> "Store":
    """This process's Store for `url` (built once from the environment's credentials)."""
    from howto_prep.object_store import Store

    with _stores_lock:
        store = _stores.get(url)
        if store is None:
            store = _stores[url] = Store.for_url(url)
        return store


def publish_video(store_url: str, out: Path, result: "FetchResult") -> "FetchResult":
    """Upload the done `result`'s file (out/result.path) to the same key under `store_url`, then delete
    the local copy; a store fault comes back as a not-ok result with `store_fault` set."""
    local = Path(out) / (result.path or "")
    try:
        store_for(store_url).put_file(local, result.path or "")
    except ToolError as fault:  # SystemFault from the store (already redacted), UserError building it
        return replace(result, ok=False, store_fault=str(fault))
    local.unlink(missing_ok=True)
    return result
