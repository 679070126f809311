"""A shard set on an object store (`--out s3://bucket/prefix`), written through a local work folder.

The disk writer runs unchanged on a local work folder (`--work`, by default
`.howto-prep/work/<scheme>/<bucket>/<prefix>` under the current folder): a shard is a tar, then its
vocabulary part, then its JSON, each whole. As soon as a shard's JSON is written there, its writer
publishes it: the tar, the vocabulary part (vectors, then ids), then the JSON, each uploaded whole
(`Store.put_file`: an object appears whole or not at all). The JSON on the store is the commit, as on
disk: a reader never reads a tar whose JSON is absent, and a tar uploaded without its JSON (a run
killed between the two, a store fault) is overwritten by the rerun. The local tar is then deleted: a
HowTo100M set is terabytes, the work folder keeps JSONs and vocabulary parts (kilobytes per shard).

A rerun (the same work folder or a fresh one, on this machine or another) first `pull`s the store's
shard JSONs, vocabulary parts and failures.jsonl into the work folder, so the disk code sees what is
done, then `publish_pending` uploads the shards committed locally whose JSON never reached the store.
The set's files (index.json, vocab/, clips.json, failures.jsonl) are uploaded at the end of a run,
vocab/w2v_ids.npy last as on disk; failures.jsonl also when a run stops on a fault.

One run per output: the driver holds a `StoreLock` on the URL; each writer reads the lock object
before each JSON upload and stops (SystemFault) if another run's token is there.
"""

from __future__ import annotations

import contextlib
import json
import logging
import queue
import threading
from pathlib import Path
from typing import Iterable

from howto_prep import schema, shards
from howto_prep.errors import SystemFault
from howto_prep.files import atomic_write_bytes, remove_quietly, storage_faults
from howto_prep.object_store import LOCK_NAME, Store

logger = logging.getLogger(__name__)

VOCAB_PARTS = f"{schema.VOCAB_DIR}/{schema.VOCAB_PARTS_DIR}"
# vocab/ as write_vocab writes it: w2v_ids.npy last (a reader that finds it finds the other two)
VOCAB_FILES = (schema.VOCAB_VECTORS, schema.VOCAB_WORDS, schema.VOCAB_W2V_IDS)


def part_names(shard_stem: str) -> tuple[str, str]:
    """A shard's vocabulary part files, in upload order (vectors before ids, as they are written)."""
    return (f"{shard_stem}.{schema.VOCAB_VECTORS}", f"{shard_stem}.{schema.VOCAB_W2V_IDS}")


class ShardPublisher:
    """Uploads a work folder's committed shards to the store; runs in each writer's process.

    Pickles as (URL, work folder, lock token): the process that unpickles it builds its own Store
    from the standard credentials of its environment (nothing secret travels)."""

    def __init__(self, store: Store, work: Path, lock_token: str | None = None) -> None:
        self.store = store
        self.work = Path(work)
        self.lock_token = lock_token
        # publish() hands shards to one upload thread: the writer goes on with the next shard while
        # this one uploads; at most one more waits (so at most two tars per writer in the work folder)
        self._queue: queue.Queue[dict] = queue.Queue(maxsize=1)
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def __reduce__(self) -> tuple:
        return (ShardPublisher, (self.store, self.work, self.lock_token))

    # -- per shard

    def check_lock(self) -> None:
        """SystemFault unless the output lock still holds this run's token (read before each commit)."""
        if self.lock_token is None:
            return
        try:
            doc = json.loads(self.store.get_bytes(LOCK_NAME))
        except FileNotFoundError:
            doc = None
        except ValueError:
            doc = {}
        if not isinstance(doc, dict) or doc.get("token") != self.lock_token:
            raise SystemFault(f"the output lock of {self.store.url} is no longer this run's; stopped before "
                              "committing more output (another run may be writing there)")

    def publish(self, record: dict) -> None:
        """Queue one locally committed shard for upload (blocks while another waits). A failed upload
        is raised here or by `flush`, in the writer's thread; later shards are then not uploaded."""
        self._raise_failure()
        if self._thread is None:
            self._thread = threading.Thread(target=self._upload_loop, name="shard-upload", daemon=True)
            self._thread.start()
        self._queue.put(record)

    def flush(self) -> None:
        """Wait until every queued shard is on the store; raise the first upload failure."""
        if self._thread is not None:
            self._queue.join()
        self._raise_failure()

    def _raise_failure(self) -> None:
        if self._error is not None:
            raise self._error

    def _upload_loop(self) -> None:
        while True:
            record = self._queue.get()
            try:
                if self._error is None:
                    self.publish_now(record)
            except BaseException as err:  # SystemFault from the store, or a storage fault in the work folder
                self._error = err
            finally:
                self._queue.task_done()

    def publish_now(self, record: dict) -> None:
        """Upload one locally committed shard: tar, vocabulary part, JSON last; then drop the local tar."""
        tar_name = record["url"]
        stem = tar_name[:-len(".tar")]
        self.store.put_file(self.work / tar_name, tar_name)
        for name in part_names(stem):
            local = self.work / schema.VOCAB_DIR / schema.VOCAB_PARTS_DIR / name
            if local.is_file():
                self.store.put_file(local, f"{VOCAB_PARTS}/{name}")
        self.check_lock()
        self.store.put_file(self.work / f"{stem}.json", f"{stem}.json")
        with storage_faults(self.work / tar_name):
            remove_quietly(self.work / tar_name)

    # -- at the start of a run

    def pull(self) -> int:
        """Copy the store's shard JSONs, vocabulary parts and failures.jsonl that the work folder lacks;
        returns how many shard JSONs were copied. Tars are never downloaded."""
        with storage_faults(self.work):
            (self.work / schema.VOCAB_DIR / schema.VOCAB_PARTS_DIR).mkdir(parents=True, exist_ok=True)
        copied = 0
        for key in self.store.list("*.json"):
            if shards.SHARD_JSON_PATTERN.match(key) and not (self.work / key).exists():
                self._download(key)
                copied += 1
        for key in self.store.list(f"{VOCAB_PARTS}/*"):
            if not (self.work / key).exists():
                self._download(key)
        self._pull_failures()
        return copied

    def _download(self, key: str) -> None:
        data = self.store.get_bytes(key)
        atomic_write_bytes(self.work / key, data)

    def _pull_failures(self) -> None:
        """The store's failures.jsonl first, then the lines only the work folder has (a run that
        stopped before uploading them): readers keep the latest line per video."""
        try:
            remote = self.store.get_bytes(schema.FAILURES_FILE)
        except FileNotFoundError:
            return
        local_path = self.work / schema.FAILURES_FILE
        local = local_path.read_bytes() if local_path.exists() else b""
        if local.startswith(remote):
            return
        known = set(remote.splitlines())
        extra = [line for line in local.splitlines() if line and line not in known]
        merged = remote + (b"" if remote.endswith(b"\n") or not remote else b"\n")
        atomic_write_bytes(local_path, merged + b"".join(line + b"\n" for line in extra))

    def publish_pending(self) -> list[str]:
        """Upload the shards committed in the work folder whose JSON is not on the store."""
        on_store = {key for key in self.store.list("*.json") if shards.SHARD_JSON_PATTERN.match(key)}
        pending = [path for path in shards.shard_jsons(self.work) if path.name not in on_store]
        for path in pending:
            record = json.loads(path.read_text())
            if not (self.work / record["url"]).is_file():
                raise SystemFault(f"{path} is committed in the work folder but neither its tar nor its JSON is on "
                                  f"{self.store.url}: was the work folder copied from another run?")
            self.publish_now(record)
        if pending:
            logger.info("published %d shard(s) a stopped run had committed locally", len(pending))
        return [path.name for path in pending]

    def clear_unfinished_uploads(self) -> None:
        """Multipart uploads a killed run left (invisible, billed): aborted, under the lock."""
        aborted = self.store.abort_unfinished_uploads()
        if aborted:
            logger.info("aborted %d unfinished upload(s) of a stopped run", len(aborted))

    # -- at the end of a run

    def publish_set_files(self) -> None:
        """index.json, clips.json, vocab/ (w2v_ids.npy last), failures.jsonl: whatever the work folder has."""
        self.check_lock()
        for name in (schema.CLIPS_FILE, *(f"{schema.VOCAB_DIR}/{n}" for n in VOCAB_FILES), schema.INDEX_FILE):
            if (self.work / name).is_file():
                self.store.put_file(self.work / name, name)
        self.publish_failures()

    def publish_failures(self) -> None:
        if (self.work / schema.FAILURES_FILE).is_file():
            self.store.put_file(self.work / schema.FAILURES_FILE, schema.FAILURES_FILE)

    def publish_failures_quietly(self) -> None:
        """On the way out of a failed run: keep its failure records if the store takes them; a fault
        here must not hide the one that stopped the run."""
        with contextlib.suppress(SystemFault, OSError):
            self.publish_failures()


class StoredSet:
    """A shard set read from the store (verify, status, training): records, failures, orphan tars."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def shard_json_keys(self) -> list[str]:
        keys = [key for key in self.store.list("*.json") if shards.SHARD_JSON_PATTERN.match(key)]
        return sorted(keys, key=lambda k: (shards.SHARD_JSON_PATTERN.match(k)["prefix"], k))

    def records(self) -> list[dict]:
        return [json.loads(self.store.get_bytes(key)) for key in self.shard_json_keys()]

    def failures(self) -> dict[str, dict]:
        try:
            text = self.store.get_bytes(schema.FAILURES_FILE).decode("utf-8")
        except FileNotFoundError:
            return {}
        return shards.parse_failures(text)

    def unfinished_tars(self, records: Iterable[dict]) -> list[str]:
        committed = {record["url"] for record in records}
        return [key for key in self.store.list("*.tar") if key not in committed]

    def summary(self) -> str:
        """`howto-prep status s3://...`: the same table as for a folder."""
        records = self.records()
        words = len({int(i) for record in records for i in record.get("token_ids", [])})
        return shards.summary_table(self.store.url, records, self.failures(), words,
                                    len(self.unfinished_tars(records)))

