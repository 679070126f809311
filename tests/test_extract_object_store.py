"""`howto-prep extract --out s3://...` against a real S3 API (moto's server, started here).

One local run is the reference: the set on the store must hold the same samples, member for
member. The store runs behind tests/s3_server.py's fault proxy; the CLI runs as a subprocess with
only the standard AWS variables, like a user's shell.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from io import BytesIO
from pathlib import Path

import pytest

from howto_prep import schema, shards
from s3_server import DUMMY_SECRET, S3Server, moto_server, s3  # noqa: F401 (fixtures)

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
FEATURES = "logmel,tokens"
SHARD_SIZE = "100KB"  # below one video's logmel: every video closes its own shard
META_MAY_DIFFER = frozenset({"node", "host", "extracted_at", "time", "seconds"})
RUN_TIMEOUT_S = 240


def cli_env() -> dict[str, str]:
    """This test's AWS variables (the s3 fixture's), no RAY_ADDRESS, Ray's sockets under a short
    folder (a Unix socket path has at most 107 bytes)."""
    env = {key: value for key, value in os.environ.items() if key != "RAY_ADDRESS"}
    env["RAY_TMPDIR"] = tempfile.mkdtemp(prefix="ray-", dir="/tmp")
    return env


def run_cli(args: list[str], tmp_path: Path, timeout: float = RUN_TIMEOUT_S) -> subprocess.CompletedProcess:
    env = cli_env()
    try:
        return subprocess.run([sys.executable, "-m", "howto_prep.cli", *args], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=timeout)
    finally:
        shutil.rmtree(env["RAY_TMPDIR"], ignore_errors=True)


def extract_args(corpus, out: str, *extra: str) -> list[str]:
    return ["extract", "--videos", str(corpus.videos_dir), "--captions", str(corpus.captions), "--word2vec",
            str(corpus.word2vec), "--features", FEATURES, "--shard-size", SHARD_SIZE, "--out", out, *extra]


def explain(result: subprocess.CompletedProcess) -> str:
    return f"exit {result.returncode}\n--- stdout tail:\n{result.stdout[-1500:]}\n--- stderr tail:\n{result.stderr[-3000:]}"


def comparable(member_bytes: dict[str, bytes]) -> dict:
    result: dict = dict(member_bytes)
    meta = json.loads(member_bytes[schema.META_FIELD])
    result[schema.META_FIELD] = {key: value for key, value in meta.items() if key not in META_MAY_DIFFER}
    return result


def samples_of_tars(tars: list[tuple[bytes, list[str]]]) -> dict[str, dict]:
    """key -> comparable members over (tar bytes, the JSON's keys); a key twice is an error."""
    samples: dict[str, dict] = {}
    for data, keys in tars:
        found: dict[str, dict[str, bytes]] = {}
        with tarfile.open(fileobj=BytesIO(data)) as tar:
            for member in tar.getmembers():
                key, _, extension = member.name.partition(".")
                found.setdefault(key, {})[extension] = tar.extractfile(member).read()
        assert list(found) == keys
        for key, members in found.items():
            assert key not in samples, f"{key} is in two shards"
            samples[key] = comparable(members)
    return samples


def stored(server: S3Server, prefix: str) -> dict[str, bytes]:
    """Every object under the prefix, read behind the toolkit's back (boto3 straight to moto)."""
    client = server.client()
    objects = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=server.bucket, Prefix=f"{prefix}/"):
        for item in page.get("Contents", []):
            key = item["Key"][len(prefix) + 1:]
            objects[key] = client.get_object(Bucket=server.bucket, Key=item["Key"])["Body"].read()
    return objects


def stored_samples(objects: dict[str, bytes]) -> dict[str, dict]:
    records = [json.loads(data) for key, data in objects.items() if shards.SHARD_JSON_PATTERN.match(key)]
    return samples_of_tars([(objects[record["url"]], record["keys"]) for record in records])


def local_samples(out: Path) -> dict[str, dict]:
    return samples_of_tars([((out / record["url"]).read_bytes(), record["keys"])
                            for record in shards.read_shard_records(out)])


def assert_no_secret(*texts: str, folders: tuple[Path, ...] = (), objects: dict[str, bytes] | None = None) -> None:
    for text in texts:
        assert DUMMY_SECRET not in text
    for folder in folders:
        for path in folder.rglob("*"):
            if path.is_file():
                assert DUMMY_SECRET.encode() not in path.read_bytes(), path
    for key, data in (objects or {}).items():
        assert DUMMY_SECRET.encode() not in data, key


def test_extract_to_s3_is_the_local_set_survives_kill_9_and_resumes_from_a_fresh_work_folder(
        synth_corpus, local_set: Path, s3: S3Server, tmp_path: Path) -> None:
    url, work = s3.url("howto/shards"), tmp_path / "work"
    client = s3.client()
    # killed with SIGKILL as soon as its first shard's tar is on the store
    killed_env = cli_env()
    process = subprocess.Popen([sys.executable, "-m", "howto_prep.cli", *extract_args(synth_corpus, url, "--work",
                                                                                      str(work))],
                               cwd=tmp_path, env=killed_env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while time.monotonic() < deadline and process.poll() is None:
        listed = client.list_objects_v2(Bucket=s3.bucket, Prefix="howto/shards/").get("Contents", [])
        if any(item["Key"].endswith(".tar") for item in listed):
            break
        time.sleep(0.05)
    assert process.poll() is None, "the run ended before its first upload: nothing was killed mid-run"
    os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=30)
    shutil.rmtree(killed_env["RAY_TMPDIR"], ignore_errors=True)
    killed_out, killed_err = (stream.read().decode() for stream in (process.stdout, process.stderr))
    # the rerun takes over the dead run's lock at once (same machine, its process gone) and finishes
    rerun = run_cli(extract_args(synth_corpus, url, "--work", str(work)), tmp_path)
    assert rerun.returncode == 0, explain(rerun)
    objects = stored(s3, "howto/shards")
    assert stored_samples(objects) == local_samples(local_set)  # nothing lost, nothing twice, same bytes
    for name in (f"{schema.VOCAB_DIR}/{schema.VOCAB_W2V_IDS}", f"{schema.VOCAB_DIR}/{schema.VOCAB_VECTORS}",
                 f"{schema.VOCAB_DIR}/{schema.VOCAB_WORDS}"):
        assert objects[name] == (local_set / name).read_bytes(), name
    index = json.loads(objects[schema.INDEX_FILE])
    assert sorted(entry["url"] for entry in index["shardlist"]) == sorted(
        key for key in objects if key.endswith(".tar") and key.replace(".tar", ".json") in objects)
    assert ".howto-prep.lock" not in objects  # released
    # uploaded tars leave the work folder (a tar the kill caught between its rename and its JSON may stay:
    # never uploaded, never read, its videos redone; shards.py says why such a tar is never deleted)
    assert not {path.name for path in work.glob("*.tar")} & {key for key in objects if key.endswith(".tar")}
    assert s3.pending_uploads() == []
    # verify and status read the URL
    verify = run_cli(["verify", url], tmp_path)
    assert verify.returncode == 0 and "all match their JSON" in verify.stdout, explain(verify)
    status = run_cli(["status", url], tmp_path)
    assert status.returncode == 0 and f"shard set {url}" in status.stdout, explain(status)
    # a fresh work folder (another machine) redoes nothing: the store's JSONs say what is done
    tars_before = {key for key in objects if key.endswith(".tar")}
    again = run_cli(extract_args(synth_corpus, url, "--work", str(tmp_path / "fresh-work")), tmp_path)
    assert again.returncode == 0, explain(again)
    assert "0 to do" in again.stderr, explain(again)
    assert {key for key in stored(s3, "howto/shards") if key.endswith(".tar")} == tars_before
    assert_no_secret(killed_out, killed_err, rerun.stdout, rerun.stderr, verify.stdout, verify.stderr,
                     again.stdout, again.stderr, folders=(work, tmp_path / "fresh-work"), objects=objects)


def test_videos_read_from_the_store_and_a_refused_commit_stops_the_run_with_exit_5_then_the_rerun_publishes_it(
        synth_corpus, local_set: Path, s3: S3Server, tmp_path: Path) -> None:
    """--videos s3://... (a download's output on the store) gives the same samples as the folder."""
    client = s3.client()
    for video in sorted(synth_corpus.videos_dir.rglob("*.mp4")):
        key = f"videos/{video.relative_to(synth_corpus.videos_dir).as_posix()}"
        client.put_object(Bucket=s3.bucket, Key=key, Body=video.read_bytes())
    client.put_object(Bucket=s3.bucket, Key="videos/.partial/x.mp4", Body=b"half a file")  # hidden: never taken
    url, work = s3.url("refused"), tmp_path / "work"

    def args(*extra: str) -> list[str]:
        listed = extract_args(synth_corpus, url, "--work", str(work), *extra)
        listed[listed.index("--videos") + 1] = s3.url("videos")
        return listed

    s3.proxy.fail("403", times=1, method="PUT", path_contains="shard-")  # the first shard upload is refused
    first = run_cli(args(), tmp_path)
    assert first.returncode == 5, explain(first)
    last = first.stderr.strip().splitlines()[-1]
    assert last.startswith("howto-prep: system fault: object store refused"), explain(first)
    assert "Traceback" not in first.stderr
    assert not (work / schema.FAILURES_FILE).exists() or not shards.read_failures(work)  # no video blamed
    s3.proxy.clear()
    rerun = run_cli(args(), tmp_path)
    assert rerun.returncode == 0, explain(rerun)
    objects = stored(s3, "refused")
    assert stored_samples(objects) == local_samples(local_set)
    assert_no_secret(first.stdout, first.stderr, rerun.stdout, rerun.stderr, folders=(work,), objects=objects)


def test_a_second_run_on_the_same_url_is_refused_while_the_first_holds_it(synth_corpus, s3: S3Server,
                                                                            tmp_path: Path) -> None:
    from howto_prep.object_store import Store, StoreLock, lock_holder

    url = s3.url("busy")
    with StoreLock(Store.for_url(url), holder_info={**lock_holder("howto-prep extract"), "host": "node-7"}):
        result = run_cli(extract_args(synth_corpus, url, "--work", str(tmp_path / "work")), tmp_path)
    assert result.returncode == 4, explain(result)
    assert result.stderr.strip().splitlines()[-1].startswith(f"howto-prep: error: {url} is in use by "
                                                              "howto-prep extract (pid"), explain(result)
    assert "node-7" in result.stderr
    assert set(stored(s3, "busy")) == set()  # nothing written (the test's lock was released)


def test_a_clip_level_set_goes_to_the_store_with_its_clip_list(synth_corpus, s3: S3Server, tmp_path: Path) -> None:
    annotations = json.loads(synth_corpus.youcook2_json.read_text())["database"]
    expected = sum(len(entry["annotations"]) for entry in annotations.values() if entry["subset"] == "validation")
    url = s3.url("yc2-val")
    result = run_cli(["extract", "--features", FEATURES, "--videos", str(synth_corpus.heldout_videos_dir),
                      "--word2vec", str(synth_corpus.word2vec), "--youcook2", str(synth_corpus.youcook2_json),
                      "--out", url, "--work", str(tmp_path / "work")], tmp_path)
    assert result.returncode == 0, explain(result)
    objects = stored(s3, "yc2-val")
    clips = json.loads(objects[schema.CLIPS_FILE])
    assert clips["num_expected"] == expected and not clips["missing"]
    assert len(stored_samples(objects)) == expected
    assert not any(key.startswith("video-level/") for key in objects)  # the cut's source stays in the work folder
    verify = run_cli(["verify", url], tmp_path)
    assert verify.returncode == 0, explain(verify)
