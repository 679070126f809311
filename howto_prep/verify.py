"""`howto-prep verify SHARDS`: every finished shard against its per-shard JSON, byte for byte.

A shard set copied between machines, synced to object storage or left on a failing disk can lose
or change bytes silently. For each shard this checks the size and sha256 the JSON recorded, that the
tar reads, that its samples are the JSON's keys in order, and that every member decodes with the
explicit decoders training uses (.npy without pickle, .json). Nothing is modified.
"""

from __future__ import annotations

import argparse
import io
import json
import tarfile
from pathlib import Path

import numpy as np

from howto_prep.cli_support import require_local
from howto_prep import schema, shards
from howto_prep.errors import ExitCode, UserError
from howto_prep.files import file_sha256


def shard_problems(shard_dir: Path, record: dict) -> list[str]:
    """What is wrong with one shard (empty when it matches its JSON)."""
    path = shard_dir / record["url"]
    if not path.is_file():
        return [f"{record['url']}: missing"]
    problems = []
    if path.stat().st_size != record["bytes"]:
        problems.append(f"{record['url']}: {path.stat().st_size} bytes, the JSON recorded {record['bytes']}")
    elif file_sha256(path) != record["sha256"]:
        problems.append(f"{record['url']}: sha256 differs from the JSON's")
    try:
        keys = member_keys(path)
    except (tarfile.TarError, OSError, ValueError) as err:
        return problems + [f"{record['url']}: {err}"]
    if keys != record["keys"]:
        problems.append(f"{record['url']}: holds {len(keys)} samples, the JSON lists {len(record['keys'])} "
                        "(or in another order)")
    return problems


def member_keys(path: Path) -> list[str]:
    """Sample keys in tar order, after decoding every member; ValueError names a bad member."""
    keys: list[str] = []
    with tarfile.open(path, "r:") as tar:
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
            if field == schema.META_FIELD and json.loads(data).get("video_id") != key:
                raise ValueError(f"member {member.name} names another video")
    return keys


def run_verify(args: argparse.Namespace) -> int:
    """Exit 0 when every shard matches its JSON, 1 with one line per problem otherwise."""
    shard_dir = require_local(args.shards, "verify")
    if not shard_dir.is_dir():
        raise UserError(f"{shard_dir} is not a folder")
    records = shards.read_shard_records(shard_dir)
    if not records:
        raise UserError(f"{shard_dir} holds no finished shard (no per-shard JSON)")
    problems = [problem for record in records for problem in shard_problems(shard_dir, record)]
    for problem in problems:
        print(f"howto-prep verify: {problem}")
    samples = sum(record["count"] for record in records)
    verdict = f"{len(problems)} problem(s)" if problems else "all match their JSON"
    print(f"verify {shard_dir}: {len(records)} shards, {samples} samples: {verdict}")
    return int(ExitCode.CHECK_FAILED) if problems else 0
