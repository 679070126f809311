"""Shard set on disk: the writer (rollover, atomic rename, per-shard JSON last), readers, index, failures.

A shard exists only when its per-shard JSON exists: the tar is written under a temporary name,
renamed, hashed, and only then is the JSON written (itself through a temporary name). A killed
run leaves temporary files (ours by their name: `clean_unfinished` removes them) and at most a tar
without its JSON; such a tar is never read, never overwritten and never deleted (we cannot know
we made it): new shards take indices after every existing tar and JSON, and the tar's videos,
not being in any finished shard, are redone. `howto-prep status` lists such tars.

A storage fault (full disk, quota, file too large, read-only, I/O error) anywhere in that sequence
raises SystemFault (files.storage_faults) and drops the open shard whole: its temporary file, or its
tar if already renamed (made by this very call, so ours), never a JSON for a torn tar.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import time
from collections import Counter
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from howto_prep import schema
from howto_prep.errors import FailureKind, SystemFault
from howto_prep.files import (atomic_path, atomic_write_json, file_sha256, is_temp_name, remove_quietly,
                              storage_faults)

SHARD_JSON_PATTERN = re.compile(r"^(?P<prefix>.+)-(?P<index>\d{6})\.json$")


def npy_bytes(array: np.ndarray) -> bytes:
    """An array as .npy file bytes (what webdataset's npy decoder reads back)."""
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
    return buffer.getvalue()


def shard_jsons(out_dir: Path) -> list[Path]:
    """Per-shard JSONs (finished shards), in index order; index.json and the rest are ignored."""
    found = [p for p in Path(out_dir).glob("*.json") if SHARD_JSON_PATTERN.match(p.name)]
    return sorted(found, key=lambda p: (SHARD_JSON_PATTERN.match(p.name)["prefix"], p.name))


def read_shard_records(out_dir: Path) -> list[dict]:
    """The per-shard JSON records of all finished shards."""
    return [json.loads(p.read_text()) for p in shard_jsons(out_dir)]


def finished_keys(out_dir: Path) -> set[str]:
    """Video ids already stored in finished shards (those whose JSON exists)."""
    return {key for record in read_shard_records(out_dir) for key in record["keys"]}


def clean_unfinished(out_dir: Path) -> list[Path]:
    """Delete our own temporary files (a killed run's residue; the output lock guarantees no other
    run is writing them); return them. Nothing else is ever deleted."""
    out_dir = Path(out_dir)
    removed = []
    for path in out_dir.iterdir():
        if is_temp_name(path.name):
            with storage_faults(path):
                path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def unfinished_tars(out_dir: Path) -> list[Path]:
    """Tars without their per-shard JSON: not part of the set (not read, kept as they are)."""
    return sorted(tar for tar in Path(out_dir).glob("*.tar") if not tar.with_suffix(".json").exists())


def write_index(out_dir: Path) -> dict:
    """Rebuild index.json (the `wids` shard-index format) from the per-shard JSONs."""
    records = read_shard_records(out_dir)
    index = {"__kind__": "wids-shard-index-v1", "wids_version": 1, "name": Path(out_dir).resolve().name,
             "shardlist": [{"url": record["url"], "nsamples": record["count"]} for record in records]}
    atomic_write_json(Path(out_dir) / schema.INDEX_FILE, index)
    return index


def used_token_ids(out_dir: Path) -> np.ndarray:
    """Sorted unique word2vec ids used by any finished shard (drives vocab/)."""
    ids = [np.asarray(record.get("token_ids", []), dtype=np.int64) for record in read_shard_records(out_dir)]
    return np.unique(np.concatenate(ids)) if ids else np.zeros(0, dtype=np.int64)


def record_failure(out_dir: Path, video_id: str, kind: FailureKind, error: str) -> None:
    """Append one line to failures.jsonl (a single small write, flushed). A storage fault is SystemFault:
    the video is then not recorded (a torn line it may leave is skipped by readers and the next append)."""
    line = json.dumps({"video_id": video_id, "kind": kind.value, "error": error,
                       "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
    path = Path(out_dir) / schema.FAILURES_FILE
    with storage_faults(path):
        torn = path.exists() and path.stat().st_size > 0 and _last_byte(path) != b"\n"  # a killed append
        with open(path, "a", encoding="utf-8") as handle:
            handle.write(("\n" if torn else "") + line + "\n")
            handle.flush()
            os.fsync(handle.fileno())


def _last_byte(path: Path) -> bytes:
    with open(path, "rb") as handle:
        handle.seek(-1, os.SEEK_END)
        return handle.read(1)


def read_failures(out_dir: Path) -> dict[str, dict]:
    """Latest failure record per video id (a torn last line from a kill is ignored)."""
    path = Path(out_dir) / schema.FAILURES_FILE
    if not path.exists():
        return {}
    return parse_failures(path.read_text(encoding="utf-8"))


def parse_failures(text: str) -> dict[str, dict]:
    """failures.jsonl's text -> latest record per video id (torn lines skipped)."""
    latest: dict[str, dict] = {}
    for line in text.splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        latest[record["video_id"]] = record
    return latest


@dataclass(frozen=True)
class WriterSlot:
    """Which shard indices one writer of a set takes (first, first + stride, ...), so several writers
    never pick the same name, and what it adds to each of its shard records (e.g. the node it ran on)."""

    first_index: int
    stride: int
    record: dict = field(default_factory=dict)


def next_free_index(out_dir: Path, prefix: str) -> int:
    """The index after every existing tar and JSON of `prefix` (a tar without JSON is never overwritten)."""
    name = re.compile(rf"^{re.escape(prefix)}-(?P<index>\d{{6}})\.(json|tar)$")
    taken = [int(match["index"]) for match in map(name.match, os.listdir(out_dir)) if match]
    return max(taken) + 1 if taken else 0


def prepare_output(out_dir: Path) -> None:
    """Create the set's folder and clear a killed run's residue (our temporary files)."""
    with storage_faults(Path(out_dir)):
        Path(out_dir).mkdir(parents=True, exist_ok=True)
    clean_unfinished(Path(out_dir))


def writer_slots(out_dir: Path, prefix: str, writers: int) -> list[WriterSlot]:
    """Clear a killed run's residue once, then give `writers` writers interleaved indices after the
    existing shards (the output lock guarantees no other run writes here meanwhile)."""
    prepare_output(Path(out_dir))
    first = next_free_index(Path(out_dir), prefix)
    return [WriterSlot(first + position, writers) for position in range(writers)]


class ShardWriter:
    """The only writer of a shard set: one sample per video, rolls over after `max_bytes`."""

    def __init__(self, out_dir: Path, max_bytes: int = schema.DEFAULT_SHARD_BYTES,
                 prefix: str = schema.DEFAULT_PREFIX,
                 before_json: Callable[[str, set[int]], None] | None = None,
                 slot: WriterSlot | None = None,
                 after_commit: Callable[[dict], None] | None = None) -> None:
        """`before_json(shard_name, token_ids)` runs after a shard's tar is in place and before its
        JSON makes it part of the set (extract writes the shard's vocabulary part there).
        `after_commit(record)` runs once the JSON is written (a URL output uploads the shard there:
        shard_store.ShardPublisher); if it raises, the shard stays committed in the folder.

        Alone (slot None) the writer clears a killed run's residue and takes the indices after every
        existing shard. One of several writers of one set (extract's per-node agents) gets a `slot`
        from `writer_slots`, which did both once for all of them."""
        self.out_dir = Path(out_dir)
        with storage_faults(self.out_dir):
            self.out_dir.mkdir(parents=True, exist_ok=True)
        self.max_bytes = max_bytes
        self.prefix = prefix
        self.before_json = before_json
        self.after_commit = after_commit
        if slot is None:
            clean_unfinished(self.out_dir)
            slot = WriterSlot(next_free_index(self.out_dir, prefix), 1)
        self.slot = slot
        self.next_index = slot.first_index
        self.committed: list[dict] = []  # the records of the shards this writer finished (drained by its owner)
        self._shard: ExitStack | None = None  # the open shard: its temporary file, renamed on close_shard
        self._reset()

    def _reset(self) -> None:
        """No shard open (after closing or dropping one)."""
        self._shard, self._tar, self._stream = None, None, None
        self._keys: list[str] = []
        self._token_ids: set[int] = set()
        self._seconds = 0.0

    def write(self, key: str, fields: dict[str, bytes], token_ids: np.ndarray | None = None,
              seconds: float = 0.0) -> None:
        """Add one sample (`fields`: extension -> encoded bytes); roll over when the shard is full."""
        if "." in key:
            raise ValueError(f"sample key {key!r} contains a dot")
        if self._shard is None:
            self._open_shard()
        try:
            self._tar.write({"__key__": key, **fields})
        except BaseException as err:  # the tar may end in a torn member: drop the shard whole
            shard, tar = self._shard, self._tar
            self._reset()
            self._drop(shard, tar, err)
            raise
        self._keys.append(key)
        if token_ids is not None:
            self._token_ids.update(int(i) for i in np.unique(token_ids))
        self._seconds += float(seconds)
        if self._stream.tell() >= self.max_bytes:
            self.close_shard()

    def _open_shard(self) -> None:
        import webdataset as wds

        with ExitStack() as stack:  # a failed open unwinds (atomic_path turns a storage fault into SystemFault)
            temp = stack.enter_context(atomic_path(self._final_path(schema.SHARD_NAME)))
            self._stream = stack.enter_context(open(temp, "wb"))
            self._shard = stack.pop_all()
        self._tar = wds.TarWriter(self._stream, encoder=False, mtime=0.0)

    def _final_path(self, pattern: str) -> Path:
        return self.out_dir / pattern.format(prefix=self.prefix, index=self.next_index)

    def close_shard(self) -> Path | None:
        """Finish the open shard: close, fsync, rename, hash, then write its JSON and the index.

        On an error before its JSON exists the shard is dropped whole (the next run redoes its videos);
        the shard is no longer open either way."""
        if self._shard is None:
            return None
        shard, tar, keys, token_ids, seconds = self._shard, self._tar, self._keys, self._token_ids, self._seconds
        final, record_path = self._final_path(schema.SHARD_NAME), self._final_path(schema.SHARD_JSON)
        self._reset()
        self.next_index += self.slot.stride
        try:
            tar.close()  # the end-of-archive blocks: the last bytes of the tar
        except BaseException as err:
            self._drop(shard, tar, err)
            raise
        shard.close()  # closes the file, then syncs and renames it to its final name (or removes it)
        try:
            with storage_faults(final):
                if self.before_json is not None:
                    self.before_json(final.stem, token_ids)
                record = {"url": final.name, "keys": keys, "count": len(keys), "bytes": final.stat().st_size,
                          "sha256": file_sha256(final), "video_seconds": round(seconds, 3),
                          "token_ids": sorted(token_ids), "schema_version": schema.SCHEMA_VERSION,
                          **self.slot.record}
            atomic_write_json(record_path, record)
        except BaseException:
            remove_quietly(final)  # made by this call, so ours: without its JSON it would only be an orphan
            raise
        if self.slot.stride == 1:  # several writers: index.json is rebuilt once, when the run ends
            write_index(self.out_dir)
        self.committed.append(record)
        if self.after_commit is not None:
            self.after_commit(record)
        return final

    @staticmethod
    def _drop(shard: ExitStack, tar, err: BaseException) -> None:  # type: ignore[no-untyped-def]
        """Discard a shard after `err`: its temporary file is removed. A storage fault while doing so
        comes out as SystemFault (atomic_path); otherwise the caller re-raises `err`."""
        with contextlib.suppress(OSError):
            tar.close()  # before its file goes (tarfile would flush into a closed file later)
        shard.__exit__(type(err), err, err.__traceback__)

    def keep_after_fault(self) -> None:
        """The run stops on a fault raised elsewhere: keep the open shard's whole samples if the
        filesystem still takes them; if it does not, the shard is dropped and nothing is raised, so
        the first fault is the one reported."""
        with contextlib.suppress(SystemFault, OSError):
            self.close_shard()

    def close(self) -> None:
        self.close_shard()

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, *exc) -> None:
        # On an error the open shard is discarded (its temporary file removed, no JSON written):
        # the next run redoes its videos.
        if exc[0] is None:
            self.close()
        elif self._shard is not None:
            shard, tar = self._shard, self._tar
            self._reset()
            with contextlib.suppress(SystemFault, OSError):  # the error in flight is the one to report
                self._drop(shard, tar, exc[1])


def iterate_samples(out_dir: Path) -> Iterator[dict]:
    """Decoded samples of all finished shards (numpy arrays, dicts), with plain `webdataset`."""
    import webdataset as wds

    urls = [str(Path(out_dir) / record["url"]) for record in read_shard_records(out_dir)]
    if not urls:
        return iter(())
    from webdataset.autodecode import npy_loads

    # Only the two encodings the schema uses; webdataset's default list would also unpickle
    # .pyd/.pickle and torch.load .pth members of a tar it is handed.
    decoders = (wds.handle_extension("npy", npy_loads), wds.handle_extension("json", json.loads))
    dataset = wds.WebDataset(urls, shardshuffle=False, empty_check=False)
    return iter(dataset.decode(*decoders, pre=[], post=[]))


def shard_set_summary(shard_dir: Path) -> str:
    """`howto-prep status shards/`: videos, hours, bytes, shards, failures by kind."""
    shard_dir = Path(shard_dir)
    return summary_table(str(shard_dir), read_shard_records(shard_dir), read_failures(shard_dir),
                         len(used_token_ids(shard_dir)), len(unfinished_tars(shard_dir)))


def summary_table(name: str, records: list[dict], failures: dict[str, dict], words: int, unfinished: int) -> str:
    """The status table of a set, on disk or on a store (shard_store.StoredSet)."""
    done = {key for record in records for key in record["keys"]}
    failures = {vid: rec for vid, rec in failures.items() if vid not in done}
    rows = [("shards", str(len(records))),
            ("videos", str(sum(record["count"] for record in records))),
            ("hours", f"{sum(record.get('video_seconds', 0.0) for record in records) / 3600:.3f}"),
            ("bytes", f"{sum(record['bytes'] for record in records):,}"),
            ("vocabulary words", str(words)),
            ("failed videos", str(len(failures)))]
    rows += [(f"  failed: {kind}", str(count)) for kind, count in sorted(Counter(r["kind"] for r in failures.values()).items())]
    if unfinished:
        rows.append(("tars without JSON (not read; videos redone)", str(unfinished)))
    width = max(len(row) for row, _ in rows)
    lines = [f"shard set {name}", "-" * (width + 16)]
    lines += [f"{row:<{width}}  {value:>12}" for row, value in rows]
    return "\n".join(lines)
