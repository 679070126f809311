"""`howto-prep synth --out s3://bucket/prefix`: the corpus written in a local work folder, then uploaded.

The generator writes files (ffmpeg encoders, atomic renames), so it runs unchanged in a work folder
(`--work`, default `.howto-prep/work/<scheme>/<bucket>/<prefix>`, as for extract and download), which
is then published: the parameters stamp first (it marks the prefix as a corpus, maybe partial, as it
does a folder), every other file whole, and `synth_truth.json` then `README.txt` last: `load_corpus`
takes the truth file as "complete", the README is the last file the generator writes.

A rerun with the same parameters keeps the videos of its work folder and uploads only what the store
lacks. A corpus of other parameters on the store is deleted first, complete markers first: its videos
would otherwise stay beside the new ones, and `extract --videos URL` takes every video it lists. A
prefix holding anything that is not a synthetic corpus is refused, as a non-empty folder is.
"""

from __future__ import annotations

import logging
from pathlib import Path

from howto_prep.errors import UserError
from howto_prep.local_copies import open_folder_store, publish_folder
from howto_prep.object_store import Store
from howto_prep.synthetic.corpus import PARAMETERS_FILE
from howto_prep.synthetic.metadata import README_MARK

logger = logging.getLogger(__name__)

README = "README.txt"
COMPLETE_LAST = ("synth_truth.json", README)  # in upload order: a reader that sees the README sees it all


def open_target(url: str) -> Store:
    """The store at `url`, checked before any video is rendered: reachable (exit 5 otherwise) and
    empty or an earlier synthetic corpus (one line, exit 2 otherwise)."""
    store = open_folder_store(url)
    existing = store.list_info("")
    if existing and not is_corpus(store, existing):
        raise UserError(f"--out {url} holds objects that are not a synthetic corpus (e.g. {sorted(existing)[0]}); "
                        "give a new or empty prefix")
    return store


def is_corpus(store: Store, existing: dict) -> bool:
    """Whether the objects under the store's root are an earlier synthetic corpus (maybe partial)."""
    if PARAMETERS_FILE in existing:
        return True
    if README not in existing:
        return False
    return store.get_bytes(README).decode("utf-8", "replace").startswith(README_MARK)


def publish_corpus(work: Path, store: Store) -> int:
    """Upload the corpus in `work` to `store` (module docstring: order, reruns); returns how many
    files were uploaded."""
    stamp = (work / PARAMETERS_FILE).read_bytes()
    if stored_stamp(store) != stamp:
        remove_other_corpus(store)
    store.put_bytes(PARAMETERS_FILE, stamp)
    return publish_folder(work, store, last=COMPLETE_LAST)


def stored_stamp(store: Store) -> bytes | None:
    try:
        return store.get_bytes(PARAMETERS_FILE)
    except FileNotFoundError:
        return None


def remove_other_corpus(store: Store) -> None:
    """Delete a corpus of other parameters (or a stamp-less one), its complete markers first, so a
    reader never takes the mixture for a finished corpus."""
    keys = sorted(store.list_info(""))
    if not keys:
        return
    logger.info("synth: replacing the %d object(s) of an earlier corpus under %s", len(keys), store.url)
    for key in [key for key in COMPLETE_LAST if key in keys] + [key for key in keys if key not in COMPLETE_LAST]:
        store.delete(key)
