"""gs:// end to end against a real GCS JSON API (gcp-storage-emulator, tests/gcs_server.py): extract
writes the same samples as a local run, verify and status read the URL, a second run is refused, and
mft-train evaluates from the URL exactly as from the folder. The S3 tests
(test_extract_object_store.py, test_train_object_store.py) cover the fault and kill cases in depth;
the code under test is the same Store, so these check what differs: gcsfs, its errors, its URLs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gcs_server import GcsServer, gcs, gcs_emulator  # noqa: F401 (fixtures)
from howto_prep import schema, shards
from howto_prep.object_store import LOCK_NAME, Store, StoreLock, lock_holder
from test_extract_object_store import extract_args, explain, local_samples, run_cli, samples_of_tars
from test_train_object_store import evaluate
from train_store_fixtures import sets, store_cache  # noqa: F401 (fixtures)

pytestmark = pytest.mark.slow


def stored(server: GcsServer, prefix: str) -> dict[str, bytes]:
    """Every object under the prefix, read behind the toolkit's back (gcsfs straight to the emulator)."""
    from gcsfs.core import GCSFileSystem

    host, port = server.emulator
    direct = GCSFileSystem(skip_instance_cache=True, endpoint_url=f"http://{host}:{port}", token="anon")
    root = f"{server.bucket}/{prefix}/"
    return {path[len(root):]: direct.cat_file(path) for path in direct.find(root)}


def stored_samples(objects: dict[str, bytes]) -> dict[str, dict]:
    records = [json.loads(data) for key, data in objects.items() if shards.SHARD_JSON_PATTERN.match(key)]
    return samples_of_tars([(objects[record["url"]], record["keys"]) for record in records])


def upload(folder: Path, url: str) -> str:
    store = Store.for_url(url)
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            store.put_file(path, path.relative_to(folder).as_posix())
    return store.url


def test_extract_to_gs_is_the_local_set_through_throttling_and_verify_and_status_read_it(
        synth_corpus, local_set: Path, gcs: GcsServer, tmp_path: Path) -> None:
    url = gcs.url("howto/shards")
    gcs.proxy.fail("503", times=2, method="POST", path_contains="/upload/")  # throttled uploads: retried, not failed
    result = run_cli(extract_args(synth_corpus, url, "--work", str(tmp_path / "work")), tmp_path)
    assert result.returncode == 0, explain(result)
    assert gcs.proxy.count(outcome="503") == 2
    objects = stored(gcs, "howto/shards")
    assert stored_samples(objects) == local_samples(local_set)
    assert objects[f"{schema.VOCAB_DIR}/{schema.VOCAB_VECTORS}"] == (
        local_set / schema.VOCAB_DIR / schema.VOCAB_VECTORS).read_bytes()
    assert LOCK_NAME not in objects  # released
    # the lock (the only object created exclusively) went up with GCS's create-only precondition; the
    # emulator does not enforce it, GCS does
    # (here its first two tries were the throttled uploads)
    creates = [seen.outcome for seen in gcs.proxy.seen if "ifGenerationMatch=0" in seen.path]
    assert creates == ["503", "503", "200"], creates
    verify = run_cli(["verify", url], tmp_path)
    assert verify.returncode == 0 and "all match their JSON" in verify.stdout, explain(verify)
    status = run_cli(["status", url], tmp_path)
    assert status.returncode == 0 and f"shard set {url}" in status.stdout, explain(status)


def test_a_second_run_on_the_same_gs_url_is_refused(synth_corpus, gcs: GcsServer, tmp_path: Path) -> None:
    url = gcs.url("busy")
    with StoreLock(Store.for_url(url), holder_info={**lock_holder("howto-prep extract"), "host": "node-7"}):
        result = run_cli(extract_args(synth_corpus, url, "--work", str(tmp_path / "work")), tmp_path)
    assert result.returncode == 4, explain(result)
    assert result.stderr.strip().splitlines()[-1].startswith(f"howto-prep: error: {url} is in use by "), explain(result)
    assert stored(gcs, "busy") == {}


def test_evaluating_from_gs_gives_the_folders_metrics(sets: dict, gcs: GcsServer, store_cache: Path,
                                                      tmp_path: Path) -> None:
    """The tars streamed from gs:// through webdataset and gcsfs (pretraining reads them the same way:
    test_train_object_store.py checks it, worker processes included, on S3)."""
    clips = upload(sets["clips"], gcs.url("clips"))
    on_disk = evaluate(sets["checkpoint"], str(sets["clips"]), tmp_path / "disk.json")
    on_store = evaluate(sets["checkpoint"], clips, tmp_path / "store.json")
    assert on_store["num_expected"] == on_disk["num_expected"] == 7  # clips.json read from the store
    assert on_store["results"] == on_disk["results"]
    assert gcs.requests_with(".tar"), "the tars were not read from the store"


def test_a_refusing_gs_store_is_one_line_and_exit_5(sets: dict, gcs: GcsServer, store_cache: Path, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture) -> None:
    from mft_train.cli import main

    clips = upload(sets["clips"], gcs.url("clips"))
    gcs.proxy.fail("403", times=1000, method="GET")
    code = main(["evaluate", "--checkpoint", str(sets["checkpoint"]), "--shards", clips, "--set", "train.device=cpu"])
    err = capsys.readouterr().err
    assert code == 5, err
    assert err.strip().splitlines()[-1].startswith("mft-train: system fault: object store refused"), err
    assert "Traceback" not in err


def test_listing_a_gs_root_goes_page_by_page_and_names_every_object(gcs: GcsServer) -> None:
    """download's one listing per run (iter_objects) reads GCS's objects.list a page at a time, so
    1.2 M videos are never one dict each; the emulator answers in one page, real GCS in several."""
    store = Store.for_url(gcs.url("videos"))
    for name in ("a.mp4", "b/c.mp4", "d.webm"):
        store.put_bytes(name, name.encode())
    Store.for_url(gcs.url("other")).put_bytes("x.mp4", b"x")  # outside the root: not listed
    assert sorted(store.iter_objects(page_size=2)) == [("a.mp4", 5), ("b/c.mp4", 7), ("d.webm", 6)]
    assert any("maxResults=2" in line for line in gcs.requests_with("GET /storage/v1/b/"))
