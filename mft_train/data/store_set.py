"""A shard set on an object store (`s3://bucket/prefix`, `gs://...`), read as a folder on disk is.

The layout is the disk's (keys under the prefix), and so is the commit rule: a shard exists only
when its per-shard JSON does, so a tar uploaded without its JSON (a writer killed between the two)
is never listed, whatever index.json says. Small files (shard JSONs, index.json, clips.json) are
read whole with `Store.get_bytes`; vocab/ is copied once into a local cache folder because the word
table memory-maps it (one copy in the page cache for every loader worker); the tars themselves are
streamed by webdataset through fsspec (mft_train.data.reader).

A store's fault (refused credentials, a missing bucket, a store that keeps failing after retries)
is a SystemFault: one line, exit 5, secrets scrubbed (howto_prep.object_store). It is never taken
for a damaged shard: skipping shards because the store is down would quietly change the results.
"""

from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from howto_prep import schema
from howto_prep.cli_support import is_store_url
from howto_prep.errors import SystemFault, UserError
from howto_prep.local_copies import cache_path, fetch_file
from howto_prep.object_store import Store, Verdict, classify, describe_error
from howto_prep.shards import SHARD_JSON_PATTERN

__all__ = ["is_store_url", "open_store", "discover_store_shards", "read_set_file", "vocab_folder",
           "shard_record", "store_fault", "url_name"]

READ_THREADS = 16  # shard JSONs fetched at once when a set has no index.json
REFUSED = frozenset({Verdict.REFUSED, Verdict.NO_CREDENTIALS, Verdict.NO_BUCKET})
FAILING = frozenset({Verdict.TRANSIENT, Verdict.FATAL})


_STORES: dict[tuple[int, str], Store] = {}


def open_store(url: str) -> Store:
    """The store of a shard-set URL (credentials the standard AWS/GCS way, never in the URL), one per
    URL and process: a Store's client is costly to make, and an async one does not survive fork."""
    key = (os.getpid(), url.rstrip("/"))
    store = _STORES.get(key)
    if store is None:
        store = _STORES[key] = Store.for_url(url)
    return store


def url_name(url: str) -> str:
    """The last part of a URL's path (`s3://b/sets/youcook2` -> `youcook2`), as Path.name for a folder."""
    return url.rstrip("/").rpartition("/")[2]


def _sample_count(record: dict) -> int:
    return int(record.get("samples", record.get("count", len(record.get("keys", [])))))


def discover_store_shards(url: str) -> tuple[list[str], list[int]]:
    """(shard URLs, sample counts) of the committed shards under `url`: index.json's list when there
    is one, else every shard JSON; either way only tars whose JSON and tar both exist."""
    store = open_store(url)
    keys = set(store.list("*"))  # one listing (also the access check: a refusal is a SystemFault here)
    committed = {key for key in keys if SHARD_JSON_PATTERN.match(key)}
    entries: list[tuple[str, int]] = []
    if schema.INDEX_FILE in keys:
        try:
            listing = json.loads(store.get_bytes(schema.INDEX_FILE))["shardlist"]
            entries = [(str(item["url"]), int(item["nsamples"])) for item in listing]
        except (ValueError, KeyError, TypeError) as err:
            raise UserError(f"{store.url_of(schema.INDEX_FILE)} is not a wids shard index ({err})") from None
    else:
        names = sorted(committed)
        with ThreadPoolExecutor(min(READ_THREADS, max(1, len(names)))) as pool:
            records = list(pool.map(lambda key: _json_record(store, key), names))
        entries = [(str(record.get("url") or f"{key[:-len('.json')]}.tar"), _sample_count(record))
                   for key, record in zip(names, records)]
    entries = [(name, count) for name, count in entries
               if count > 0 and name in keys and _json_of(name) in committed]
    if not entries:
        raise UserError(f"no complete shards in {url}; run `howto-prep extract --out {url}` first")
    return [store.url_of(name) for name, _ in entries], [count for _, count in entries]


def _json_record(store: Store, key: str) -> dict:
    try:
        record = json.loads(store.get_bytes(key))
    except ValueError as err:
        raise UserError(f"{store.url_of(key)} is not valid JSON ({err})") from None
    if not isinstance(record, dict):
        raise UserError(f"{store.url_of(key)} is not a shard record (a JSON object with url and count)")
    return record


def _json_of(tar_name: str) -> str:
    return f"{tar_name[:-len('.tar')]}.json" if tar_name.endswith(".tar") else f"{tar_name}.json"


def read_set_file(url: str, name: str) -> bytes | None:
    """One small file of the set (clips.json, meta.json, ...); None when the store has none."""
    try:
        return open_store(url).get_bytes(name)
    except FileNotFoundError:
        return None


def shard_record(tar_url: str) -> dict | None:
    """The per-shard JSON of a shard URL; None when it is missing or unreadable."""
    root, _, name = tar_url.rpartition("/")
    data = read_set_file(root, _json_of(name))
    try:
        record = json.loads(data) if data is not None else None
    except ValueError:
        return None
    return record if isinstance(record, dict) else None


def vocab_folder(url: str) -> Path:
    """A local folder whose vocab/ is the store's, file for file, each file's mtime its LastModified
    (so WordTable's "are the parts newer than the merged table" rule reads the store's clocks).

    Downloaded once: a file whose size and time match the store's is kept; files the store no
    longer has are removed, so an old merged table never outlives its object."""
    store = open_store(url)
    prefix = schema.VOCAB_DIR
    wanted = store.list_info(prefix)
    folder = cache_path(url)
    if not wanted:
        raise UserError(f"the shard set {url} has no vocabulary: {url}/{schema.VOCAB_DIR}/{schema.VOCAB_W2V_IDS} "
                        f"and {schema.VOCAB_VECTORS} (or {schema.VOCAB_DIR}/{schema.VOCAB_PARTS_DIR}/) are needed")
    vocab = folder / prefix
    for key, (size, modified) in sorted(wanted.items()):
        fetch_file(store, key, folder / key, size, None if modified is None else int(modified * 1e9))
    if vocab.is_dir():  # (another process's download in flight, a hidden .part file, is left alone)
        for stale in [p for p in vocab.rglob("*") if p.is_file() and not p.name.startswith(".")
                      and p.relative_to(folder).as_posix() not in wanted]:
            stale.unlink(missing_ok=True)
    return folder


def store_fault(url: str, error: BaseException) -> SystemFault | None:
    """The SystemFault a store error reading shard `url` is, or None when it is the shard's own
    damage (a missing or torn object, an unreadable tar: the reader skips the shard and counts it)."""
    verdict = classify(error)
    if verdict in REFUSED:
        return SystemFault(f"object store refused read {url}: {describe_error(error)}: check the credentials "
                           "(AWS_* variables, ~/.aws) and the bucket's permissions")
    if verdict in FAILING:
        return SystemFault(f"object store failing: read {url}: {describe_error(error)}; rerun the same command "
                           "to continue")
    return None
