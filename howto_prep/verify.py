"""`howto-prep verify SHARDS`: every finished shard against its per-shard JSON, byte for byte.

A shard set copied between machines, synced to object storage or left on a failing disk can lose
or change bytes silently. For each shard this checks the size and sha256 the JSON recorded, that the
tar reads, that its samples are the JSON's keys in order, and that every member decodes with the
explicit decoders training uses (.npy without pickle, .json), reading each tar once. `verify
s3://bucket/prefix` streams the shards from the store. Nothing is modified.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import tarfile
from functools import partial
from pathlib import Path
from typing import BinaryIO, Callable

import numpy as np

from howto_prep import schema, shards
from howto_prep.cli_support import is_store_url
from howto_prep.errors import ExitCode, UserError
from howto_prep.object_store import Store


class HashingReader(io.RawIOBase):
    """A binary stream that hashes and counts what is read through it: the size, the sha256 and the
    members are checked in one pass, which matters for a shard streamed from an object store."""

    def __init__(self, raw: BinaryIO) -> None:
        self.raw = raw
        self.digest = hashlib.sha256()
        self.size = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:  # type: ignore[no-untyped-def]
        data = self.raw.read(len(buffer))
        buffer[:len(data)] = data
        self.digest.update(data)
        self.size += len(data)
        return len(data)

    def drain(self) -> None:
        while self.read(1 << 20):
            pass


def shard_problems(shard_dir: Path, record: dict) -> list[str]:
    """What is wrong with one shard on disk (empty when it matches its JSON)."""
    path = shard_dir / record["url"]
    if not path.is_file():
        return [f"{record['url']}: missing"]
    with open(path, "rb") as handle:
        return stream_problems(record, handle)


def stored_shard_problems(store: Store, record: dict) -> list[str]:
    """The same checks for a shard on an object store, streamed once (never downloaded to disk)."""
    try:
        with store.open_read(record["url"]) as handle:
            return stream_problems(record, handle)
    except FileNotFoundError:
        return [f"{record['url']}: missing"]


def stream_problems(record: dict, handle: BinaryIO) -> list[str]:
    """Size, sha256, sample keys in order and every member's decoding, in one pass over `handle`."""
    reader = HashingReader(handle)
    problems = []
    try:
        keys = member_keys(reader)
    except (tarfile.TarError, OSError, ValueError, EOFError) as err:
        keys, problems = None, [f"{record['url']}: {err}"]
    reader.drain()  # to the end (the tar's padding, or what follows a bad member): size and hash are whole
    if reader.size != record["bytes"]:
        problems.insert(0, f"{record['url']}: {reader.size} bytes, the JSON recorded {record['bytes']}")
    elif reader.digest.hexdigest() != record["sha256"]:
        problems.insert(0, f"{record['url']}: sha256 differs from the JSON's")
    if keys is not None and keys != record["keys"]:
        problems.append(f"{record['url']}: holds {len(keys)} samples, the JSON lists {len(record['keys'])} "
                        "(or in another order)")
    return problems


def sample_id(meta: dict) -> object:
    """The id a sample's key must be: a clip's own id in a clip-level set, else its video's."""
    return meta.get("clip_id") if meta.get("kind") == "clip" else meta.get("video_id")


def key_is_clip(meta_bytes: bytes) -> bool:
    return json.loads(meta_bytes).get("kind") == "clip"


def member_keys(stream: BinaryIO) -> list[str]:
    """Sample keys in tar order, after decoding every member; ValueError names a bad member."""
    keys: list[str] = []
    with tarfile.open(fileobj=stream, mode="r|") as tar:
        for member in tar:
            key, _, field = member.name.partition(".")
            data = tar.extractfile(member).read() if member.isfile() else b""
            try:
                if field.endswith("npy"):
                    np.load(io.BytesIO(data), allow_pickle=False)
                elif field.endswith("json"):
                    json.loads(data)
                else:
                    raise ValueError("not a field of the schema")
            except ValueError as err:
                raise ValueError(f"member {member.name} does not decode ({err})") from None
            if not keys or keys[-1] != key:
                keys.append(key)
            if field == schema.META_FIELD and sample_id(json.loads(data)) != key:
                raise ValueError(f"member {member.name} names another {'clip' if key_is_clip(data) else 'video'}")
    return keys


def run_verify(args: argparse.Namespace) -> int:
    """Exit 0 when every shard matches its JSON, 1 with one line per problem otherwise."""
    if is_store_url(args.shards):
        from howto_prep.shard_store import StoredSet

        store = Store.for_url(args.shards)
        records = StoredSet(store).records()
        check: Callable[[dict], list[str]] = partial(stored_shard_problems, store)
        where = store.url
    else:
        shard_dir = Path(args.shards)
        if not shard_dir.is_dir():
            raise UserError(f"{shard_dir} is not a folder")
        records = shards.read_shard_records(shard_dir)
        check, where = partial(shard_problems, shard_dir), str(shard_dir)
    if not records:
        raise UserError(f"{where} holds no finished shard (no per-shard JSON)")
    problems = [problem for record in records for problem in check(record)]
    for problem in problems:
        print(f"howto-prep verify: {problem}")
    samples = sum(record["count"] for record in records)
    verdict = f"{len(problems)} problem(s)" if problems else "all match their JSON"
    print(f"verify {where}: {len(records)} shards, {samples} samples: {verdict}")
    return int(ExitCode.CHECK_FAILED) if problems else 0
