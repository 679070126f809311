"""ShardWriter and readers on real tars: rollover, per-shard JSON, wids index, resume, failures, status."""

from __future__ import annotations

import hashlib
import json
import re
import tarfile
from functools import partial
from pathlib import Path

import numpy as np
import pytest

from howto_prep import schema, shards
from howto_prep.errors import FailureKind
from howto_prep.files import is_temp_name, temp_sibling


def sample_fields(seed: int, rows: int = 8) -> dict[str, bytes]:
    rng = np.random.default_rng(seed)
    return {schema.META_FIELD: json.dumps({"video_id": f"v{seed}"}).encode(),
            schema.RESNET152.field: shards.npy_bytes(rng.standard_normal((rows, 2048)).astype(np.float16))}


def write_videos(out: Path, ids: list[int], max_bytes: int) -> shards.ShardWriter:
    writer = shards.ShardWriter(out, max_bytes=max_bytes)
    for seed in ids:
        writer.write(f"vid{seed}", sample_fields(seed), token_ids=np.array([seed, 7, seed]), seconds=2.5)
    writer.close()
    return writer


def test_rollover_json_and_index(tmp_path: Path) -> None:
    one_sample = len(sample_fields(0)[schema.RESNET152.field])
    write_videos(tmp_path, list(range(5)), max_bytes=2 * one_sample)  # two samples per shard
    tars = sorted(tmp_path.glob("*.tar"))
    assert [t.name for t in tars] == ["shard-000000.tar", "shard-000001.tar", "shard-000002.tar"]
    records = [json.loads(t.with_suffix(".json").read_text()) for t in tars]
    assert [r["keys"] for r in records] == [["vid0", "vid1"], ["vid2", "vid3"], ["vid4"]]
    for tar, record in zip(tars, records):
        assert record["bytes"] == tar.stat().st_size
        assert record["sha256"] == hashlib.sha256(tar.read_bytes()).hexdigest()
        assert record["count"] == len(record["keys"])
        with tarfile.open(tar) as handle:
            assert {m.name for m in handle.getmembers()} == {f"{k}.{f}" for k in record["keys"]
                                                             for f in (schema.META_FIELD, schema.RESNET152.field)}
    assert records[0]["token_ids"] == [0, 1, 7] and records[0]["video_seconds"] == 5.0
    index = json.loads((tmp_path / schema.INDEX_FILE).read_text())
    assert index["__kind__"] == "wids-shard-index-v1" and index["wids_version"] == 1
    assert [(s["url"], s["nsamples"]) for s in index["shardlist"]] == [
        ("shard-000000.tar", 2), ("shard-000001.tar", 2), ("shard-000002.tar", 1)]
    assert not list(tmp_path.glob(".*"))  # no temporary file left behind


def test_samples_read_back_with_webdataset_and_wids(tmp_path: Path) -> None:
    import wids
    from wids.wids_decode import default_decoder

    write_videos(tmp_path, [3, 4, 5], max_bytes=10**9)
    by_key = {s["__key__"]: s for s in shards.iterate_samples(tmp_path)}
    assert sorted(by_key) == ["vid3", "vid4", "vid5"]
    expected = np.random.default_rng(4).standard_normal((8, 2048)).astype(np.float16)
    np.testing.assert_array_equal(by_key["vid4"][schema.RESNET152.field], expected)
    assert by_key["vid4"][schema.META_FIELD] == {"video_id": "v4"}
    dataset = wids.ShardListDataset(str(tmp_path / schema.INDEX_FILE), cache_dir=str(tmp_path / "cache"),
                                    transformations=partial(default_decoder, format="numpy"))
    assert len(dataset) == 3
    assert dataset[1]["__key__"] == "vid4"
    np.testing.assert_array_equal(dataset[1][".resnet152.npy"], expected)  # wids decodes .npy


def test_unfinished_shard_is_ignored_kept_and_its_videos_redone(tmp_path: Path) -> None:
    write_videos(tmp_path, [0, 1], max_bytes=1)  # one shard per video
    (tmp_path / "shard-000001.json").unlink()  # as if killed between the rename and the JSON
    orphan = (tmp_path / "shard-000001.tar").read_bytes()
    temp_sibling(tmp_path / "shard-000002.tar").write_bytes(b"partial")  # killed while writing
    foreign = tmp_path / "shard-000007.tar"
    foreign.write_bytes(b"not ours")  # a file this tool did not write: never deleted or overwritten
    assert shards.finished_keys(tmp_path) == {"vid0"}
    writer = shards.ShardWriter(tmp_path, max_bytes=1)
    assert not [path for path in tmp_path.iterdir() if is_temp_name(path.name)]  # our own residue goes
    writer.write("vid1", sample_fields(1))
    writer.close()
    assert shards.finished_keys(tmp_path) == {"vid0", "vid1"}
    assert json.loads((tmp_path / "shard-000008.json").read_text())["keys"] == ["vid1"]  # after every tar
    assert (tmp_path / "shard-000001.tar").read_bytes() == orphan and foreign.read_bytes() == b"not ours"
    assert [p.name for p in shards.unfinished_tars(tmp_path)] == ["shard-000001.tar", "shard-000007.tar"]


def test_error_inside_writer_leaves_no_final_tar(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError):
        with shards.ShardWriter(tmp_path) as writer:
            writer.write("vid0", sample_fields(0))
            raise RuntimeError("killed")
    assert not list(tmp_path.glob("*.tar")) and shards.finished_keys(tmp_path) == set()
    assert not [path for path in tmp_path.iterdir() if is_temp_name(path.name)]  # the open shard was discarded
    with pytest.raises(ValueError):
        shards.ShardWriter(tmp_path).write("bad.key", sample_fields(0))


def test_failures_and_summary_table(tmp_path: Path) -> None:
    write_videos(tmp_path, [0, 1, 2], max_bytes=10**9)
    shards.record_failure(tmp_path, "gone", FailureKind.BAD_MEDIA, "moov atom not found")
    shards.record_failure(tmp_path, "slow", FailureKind.DECODE_TIMEOUT, "killed")
    shards.record_failure(tmp_path, "vid1", FailureKind.DECODE_TIMEOUT, "killed")  # later redone with --retry-failed
    shards.record_failure(tmp_path, "gone", FailureKind.TOO_SHORT, "0.4 s")  # latest record wins
    with open(tmp_path / schema.FAILURES_FILE, "a") as handle:
        handle.write('{"video_id": "torn", "ki')  # a kill in the middle of a line
    shards.record_failure(tmp_path, "after", FailureKind.BAD_MEDIA, "appended after the torn line")
    failures = shards.read_failures(tmp_path)
    assert {k: v["kind"] for k, v in failures.items()} == {
        "gone": "too_short", "slow": "decode_timeout", "vid1": "decode_timeout", "after": "bad_media"}
    table = shards.shard_set_summary(tmp_path)
    values = dict(re.split(r"\s{2,}", line.strip()) for line in table.splitlines()[2:])
    assert values["videos"] == "3" and values["shards"] == "1"
    assert values["hours"] == f"{3 * 2.5 / 3600:.3f}"
    assert values["failed videos"] == "3"  # vid1 is in a shard now
    assert values["failed: too_short"] == "1" and values["failed: decode_timeout"] == "1"
    assert values["failed: bad_media"] == "1"
    assert values["bytes"] == f"{(tmp_path / 'shard-000000.tar').stat().st_size:,}"
