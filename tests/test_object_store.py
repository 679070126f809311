"""howto_prep.object_store against a real S3 API (moto's server, tests/s3_server.py): round trips,
conditional writes, the output lock's lease, and store faults as one-line SystemFaults after retries."""

from __future__ import annotations

import io
import json
import logging
import os
import threading
import time

import numpy as np
import pytest

from howto_prep.errors import OutputLocked, SystemFault, UserError
from howto_prep.object_store import LOCK_NAME, Retry, Store, StoreLock, is_url, lock_holder, register_webdataset_schemes
from s3_server import DUMMY_SECRET, S3Server, moto_server, s3  # noqa: F401  (fixtures)

FAST = Retry(tries=4, first_delay=0.02, max_delay=0.1)
MiB = 2 ** 20


def store_for(s3: S3Server, prefix: str = "set", **options) -> Store:
    """A store whose faults reach our retry loop directly (botocore's own per-request retries off)."""
    return Store.for_url(s3.url(prefix), retry=FAST, request_tries=1, **options)


def test_is_url_tells_urls_from_paths() -> None:
    assert is_url("s3://bucket/prefix") and is_url("gs://b/p") and is_url("file:///tmp/x")
    assert not is_url("/data/shards") and not is_url("shards") and not is_url("C:\\data")


def test_round_trips_put_get_list_exists_size_delete(s3: S3Server) -> None:
    store = store_for(s3)
    store.put_bytes("shard-000000.json", b'{"count": 1}')
    store.put_bytes("shard-000000.tar", b"x" * 1000)
    store.put_bytes("vocab/parts/shard-000000.w2v_ids.npy", b"ids")
    assert store.get_bytes("shard-000000.json") == b'{"count": 1}'
    assert store.exists("shard-000000.tar") and not store.exists("shard-000001.tar")
    assert store.size("shard-000000.tar") == 1000
    assert abs(store.modified("shard-000000.tar") - time.time()) < 60
    assert store.list("*.json") == ["shard-000000.json"]
    assert store.list("vocab/parts/*") == ["vocab/parts/shard-000000.w2v_ids.npy"]
    assert store.list("nothing-*.tar") == []
    with pytest.raises(FileNotFoundError):
        store.get_bytes("missing.json")
    store.delete("shard-000000.tar")
    store.delete("shard-000000.tar")  # a missing object is fine
    assert not store.exists("shard-000000.tar")
    # The endpoint came from AWS_ENDPOINT_URL alone (botocore reads it): every request went through the proxy.
    assert s3.proxy.count("PUT") == 3


def test_put_file_multipart_equals_byte_for_byte(s3: S3Server, tmp_path) -> None:
    data = np.random.default_rng(0).integers(0, 256, 12 * MiB, dtype=np.uint8).tobytes()
    local = tmp_path / "shard.tar"
    local.write_bytes(data)
    store = store_for(s3, part_size=5 * MiB)
    store.put_file(local, "shard-000000.tar")
    assert store.get_bytes("shard-000000.tar") == data
    assert s3.proxy.count("PUT") == 3  # three parts: the multipart path, not one PUT


def test_create_exclusive_refuses_a_second_create(s3: S3Server) -> None:
    store = store_for(s3)
    assert store.create_exclusive("lock", b"first")
    assert not store.create_exclusive("lock", b"second")
    assert store.get_bytes("lock") == b"first"


def test_lock_refuses_a_second_holder_naming_the_first(s3: S3Server) -> None:
    first = StoreLock(store_for(s3), holder_info=lock_holder("extract"), heartbeat_s=5)
    with first:
        with pytest.raises(OutputLocked) as refused:
            StoreLock(store_for(s3), holder_info=lock_holder("extract"), heartbeat_s=5).acquire()
        message = str(refused.value)
        assert "\n" not in message and f"pid {os.getpid()}" in message and s3.url() in message
        first.ensure_held()


def test_release_frees_the_lock(s3: S3Server) -> None:
    store = store_for(s3)
    StoreLock(store, heartbeat_s=5).acquire().release()
    assert not store.exists(LOCK_NAME)
    with StoreLock(store, heartbeat_s=5) as again:
        again.ensure_held()


def _dead_holder(store: Store) -> dict:
    """A lock object left by a run that died on another machine (never refreshed again)."""
    doc = {"tool": "extract", "host": "node-7", "pid": 4242, "since": "2026-01-01T00:00:00Z", "token": "dead0001",
           "heartbeat": time.time(), "heartbeat_s": 0.05, "stale_after_s": 0.5}
    store.put_bytes(LOCK_NAME, json.dumps(doc).encode())
    return doc


def test_a_stale_lock_is_taken_over_with_a_warning(s3: S3Server, caplog: pytest.LogCaptureFixture) -> None:
    store = store_for(s3)
    _dead_holder(store)
    with pytest.raises(OutputLocked):  # fresh: refused
        StoreLock(store, heartbeat_s=0.05, stale_after_s=5).acquire()
    time.sleep(0.7)
    with caplog.at_level(logging.WARNING, logger="howto_prep"):
        taker = StoreLock(store, heartbeat_s=5, stale_after_s=0.5).acquire()
    assert "taking over the lock of extract (pid 4242 on node-7" in caplog.text
    assert json.loads(store.get_bytes(LOCK_NAME))["token"] == taker.token
    assert store.list(f"{LOCK_NAME}.takeover-*") == []  # the claim is gone
    taker.release()


def test_a_live_holder_keeps_its_lock_by_heartbeats(s3: S3Server) -> None:
    # M = 10 x 0.1 s. Without heartbeats the 1.6 s wait would make the lock stale and the second run would win.
    with StoreLock(store_for(s3), heartbeat_s=0.1) as holder:
        time.sleep(1.6)
        with pytest.raises(OutputLocked):
            StoreLock(store_for(s3), heartbeat_s=0.25, stale_after_s=0.5).acquire()
        holder.ensure_held()


def test_a_holder_whose_lock_was_taken_over_stops(s3: S3Server, caplog: pytest.LogCaptureFixture) -> None:
    store = store_for(s3)
    holder = StoreLock(store, heartbeat_s=0.1).acquire()
    holder._stop.set()  # frozen: no more heartbeats (as a stopped VM)
    holder._thread.join()
    holder._stop.clear()
    time.sleep(1.3)  # past the holder's M (10 x 0.1 s), which counts over the taker's shorter one
    taker = StoreLock(store, heartbeat_s=5, stale_after_s=0.5).acquire()
    woken = threading.Thread(target=holder._beat, daemon=True)  # it wakes up
    with caplog.at_level(logging.ERROR, logger="howto_prep"):
        woken.start()
        woken.join(timeout=5)
    assert "this run must stop writing there" in caplog.text
    with pytest.raises(SystemFault, match="now held by"):
        holder.ensure_held()
    assert json.loads(store.get_bytes(LOCK_NAME))["token"] == taker.token  # the woken holder left it alone
    holder.release()
    assert store.exists(LOCK_NAME)  # release deletes only its own lock
    taker.release()


class Interleaved(Store):
    """Two takers of one stale lock, forced into the worst order: both read the stale lock before
    either changes anything, and the second one's delete waits until the first has created its lock
    (a plain delete + create would then let both win)."""

    def __init__(self, base: Store, shared: dict) -> None:
        super().__init__(base.fs, base.root, base.url, retry=base.retry)
        self.shared = shared
        self.reads = 0

    def get_bytes(self, key: str) -> bytes:
        self.reads += 1
        if key == LOCK_NAME and self.reads == 1:
            self.shared["read_barrier"].wait(timeout=10)
        return super().get_bytes(key)

    def delete(self, key: str) -> None:
        if key == LOCK_NAME:
            with self.shared["mutex"]:
                first = not self.shared["deleters"]
                self.shared["deleters"].append(self)
            if not first:
                self.shared["first_created"].wait(timeout=3)
        super().delete(key)

    def create_exclusive(self, key: str, data: bytes) -> bool:
        created = super().create_exclusive(key, data)
        if key == LOCK_NAME and self in self.shared["deleters"]:
            self.shared["first_created"].set()
        return created


def test_two_takers_of_a_stale_lock_cannot_both_win(s3: S3Server) -> None:
    base = store_for(s3)
    _dead_holder(base)
    time.sleep(0.7)
    shared = {"read_barrier": threading.Barrier(2), "mutex": threading.Lock(), "deleters": [],
              "first_created": threading.Event()}
    outcomes: dict[str, object] = {}

    def take(name: str) -> None:
        lock = StoreLock(Interleaved(base, shared), heartbeat_s=5, stale_after_s=0.5)
        try:
            outcomes[name] = lock.acquire()
        except OutputLocked as refused:
            outcomes[name] = refused

    threads = [threading.Thread(target=take, args=(name,)) for name in "AB"]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    winners = [value for value in outcomes.values() if isinstance(value, StoreLock)]
    assert len(outcomes) == 2 and len(winners) == 1, outcomes
    assert json.loads(base.get_bytes(LOCK_NAME))["token"] == winners[0].token
    winners[0].release()


def test_slowdown_twice_then_success_is_retried(s3: S3Server, tmp_path) -> None:
    local = tmp_path / "shard.tar"
    local.write_bytes(b"t" * 4096)
    store = store_for(s3)
    s3.proxy.fail("503", times=2, method="PUT")
    store.put_file(local, "shard-000000.tar")
    assert s3.proxy.count("PUT", "503") == 2 and s3.proxy.count("PUT", "200") == 1
    s3.proxy.fail("500", times=2, method="GET")
    assert store.get_bytes("shard-000000.tar") == b"t" * 4096


def test_a_store_that_keeps_failing_is_one_system_fault_without_secrets(
        s3: S3Server, tmp_path, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture) -> None:
    local = tmp_path / "shard.tar"
    local.write_bytes(b"t" * 4096)
    store = store_for(s3)
    s3.proxy.fail("503", times=1000)
    with caplog.at_level(logging.DEBUG):  # botocore's and s3fs's debug logs included
        with pytest.raises(SystemFault) as fault:
            store.put_file(local, "shard-000000.tar")
    message = str(fault.value)
    assert "\n" not in message and "s3://" in message and "shard-000000.tar" in message and "SlowDown" in message
    assert s3.proxy.count("PUT", "503") == FAST.tries
    captured = capsys.readouterr()
    for text in (message, caplog.text, captured.out, captured.err):
        assert DUMMY_SECRET not in text


def test_refusals_and_a_missing_bucket_are_system_faults_at_once(s3: S3Server) -> None:
    store = store_for(s3)
    s3.proxy.fail("403", times=1000)
    with pytest.raises(SystemFault, match="refused write s3://.*403|refused write s3://.*AccessDenied"):
        store.put_bytes("shard-000000.json", b"{}")
    assert s3.proxy.count("PUT") == 1  # no retry: it cannot help
    s3.proxy.clear()
    nowhere = Store.for_url("s3://no-such-bucket-here/set", retry=FAST, request_tries=1)
    with pytest.raises(SystemFault, match="bucket of s3://no-such-bucket-here/set/x.json does not exist"):
        nowhere.put_bytes("x.json", b"{}")
    with pytest.raises(SystemFault, match="does not exist"):
        nowhere.list("*.json")  # never an empty listing: "no shards" would be a lie
    assert s3.proxy.count("PUT") == 2


def test_an_unreachable_store_is_a_system_fault_after_retries(s3: S3Server, monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    with socket.socket() as probe:  # a port that nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
    with pytest.raises(SystemFault, match=r"object store failing: write .*\(4 tries"):
        store_for(s3).put_bytes("x.json", b"{}")


def test_a_connection_dropped_mid_upload_is_retried_and_never_torn(s3: S3Server, tmp_path) -> None:
    data = np.random.default_rng(1).integers(0, 256, 12 * MiB, dtype=np.uint8).tobytes()
    local = tmp_path / "shard.tar"
    local.write_bytes(data)
    store = store_for(s3, part_size=5 * MiB)
    # Cut off halfway, 6 times: more than aiohttp's own resend of a PUT on a closed keep-alive connection
    # absorbs, so the multipart upload fails, is aborted, and our retry uploads the file again.
    s3.proxy.fail("drop", times=6, method="PUT")
    store.put_file(local, "shard-000000.tar")
    assert s3.proxy.count("PUT", "drop") == 6
    assert store.get_bytes("shard-000000.tar") == data
    assert s3.pending_uploads() == []  # the broken multipart upload was aborted, not left to bill

    small = tmp_path / "small.tar"
    small.write_bytes(data[: MiB])
    s3.proxy.fail("drop", times=1000, method="PUT")
    with pytest.raises(SystemFault, match="shard-000001.tar"):
        store.put_file(small, "shard-000001.tar")
    s3.proxy.clear()
    assert not store.exists("shard-000001.tar")


def test_a_torn_object_kept_by_the_store_is_never_left_as_the_shard(s3: S3Server, tmp_path) -> None:
    local = tmp_path / "shard.tar"
    local.write_bytes(os.urandom(MiB))
    store = store_for(s3)
    s3.proxy.fail("truncate", times=1, method="PUT")  # the store keeps half the body and answers 200
    store.put_file(local, "shard-000000.tar")
    assert store.get_bytes("shard-000000.tar") == local.read_bytes()
    s3.proxy.fail("truncate", times=1000, method="PUT")
    with pytest.raises(SystemFault, match="kept 524288 bytes of 1048576"):
        store.put_file(local, "shard-000001.tar")
    s3.proxy.clear()
    assert not store.exists("shard-000001.tar")


def test_credentials_in_a_url_are_refused_without_echo() -> None:
    with pytest.raises(UserError) as refused:
        Store.for_url(f"s3://AKIAX:{DUMMY_SECRET}@bucket/set")
    assert DUMMY_SECRET not in str(refused.value)


def test_webdataset_reads_shards_from_s3(s3: S3Server, tmp_path) -> None:
    import webdataset as wds

    from howto_prep.shards import npy_bytes

    local = tmp_path / "shard-000000.tar"
    arrays = {f"vid{i}": np.arange(i * 10, dtype=np.float16) for i in range(1, 4)}
    with wds.TarWriter(str(local), encoder=False, mtime=0.0) as tar:
        for key, array in arrays.items():
            tar.write({"__key__": key, "x.npy": npy_bytes(array)})
    store = store_for(s3)
    store.put_file(local, "shard-000000.tar")
    register_webdataset_schemes()
    read = {sample["__key__"]: np.load(io.BytesIO(sample["x.npy"]))
            for sample in wds.WebDataset([store.url_of("shard-000000.tar")], shardshuffle=False, empty_check=False)}
    assert read.keys() == arrays.keys() and all(np.array_equal(read[k], arrays[k]) for k in arrays)


def test_a_local_store_has_the_same_guarantees(tmp_path) -> None:
    store = Store.for_url(f"file://{tmp_path}/set")
    assert store.create_exclusive("lock", b"1") and not store.create_exclusive("lock", b"2")
    (tmp_path / "t.tar").write_bytes(b"abc")
    store.put_file(tmp_path / "t.tar", "shard-000000.tar")
    assert store.get_bytes("shard-000000.tar") == b"abc" and store.list("*.tar") == ["shard-000000.tar"]
    assert sorted(p.name for p in (tmp_path / "set").iterdir()) == ["lock", "shard-000000.tar"]  # no temp files left


def test_a_killed_runs_multipart_uploads_are_aborted(s3: S3Server) -> None:
    client = s3.client()
    client.create_multipart_upload(Bucket=s3.bucket, Key="set/shard-000007.tar")  # a run killed mid-upload
    client.create_multipart_upload(Bucket=s3.bucket, Key="other-set/shard-000000.tar")  # not ours
    assert store_for(s3).abort_unfinished_uploads() == ["shard-000007.tar"]
    assert s3.pending_uploads() == ["other-set/shard-000000.tar"]


def test_a_store_travels_to_a_task_as_its_url_only(s3: S3Server) -> None:
    import pickle

    store = store_for(s3, part_size=5 * MiB)
    blob = pickle.dumps(store)
    assert DUMMY_SECRET.encode() not in blob
    copy = pickle.loads(blob)
    assert (copy.url, copy.retry, copy.part_size, copy.fs.retries) == (store.url, FAST, 5 * MiB, 1)
    copy.put_bytes("x.json", b"{}")
    assert store.get_bytes("x.json") == b"{}"
