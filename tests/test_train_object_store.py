"""mft-train reading a shard set from an object store (moto's S3 server, tests/s3_server.py): the same
losses, weights and metrics as from the same set on disk; a tar without its JSON never read; a store
that refuses is one line, exit 5, no traceback, no secret."""

from __future__ import annotations

import json
import multiprocessing
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from howto_prep import schema
from howto_prep.object_store import Store
from mft_train.training.checkpoints import read_checkpoint_file
from s3_server import DUMMY_SECRET, S3Server, moto_server, s3  # noqa: F401  (fixtures)
from train_store_fixtures import disk_pretrain, pretrain_quietly, sets, settings, store_cache  # noqa: F401

REPO = Path(__file__).resolve().parents[1]
def upload(folder: Path, s3: S3Server, prefix: str, skip: tuple[str, ...] = ()) -> str:
    """Every file of `folder` to s3://bucket/prefix/ (same relative keys); returns the set's URL."""
    store = Store.for_url(s3.url(prefix))
    for path in sorted(folder.rglob("*")):
        key = path.relative_to(folder).as_posix()
        if path.is_file() and key not in skip:
            store.put_file(path, key)
    return store.url


def test_pretraining_from_a_url_equals_pretraining_from_the_folder(sets: dict, disk_pretrain: tuple[str, Path],
                                                                    s3: S3Server, store_cache: Path,
                                                                    tmp_path: Path) -> None:
    url = upload(sets["videos"], s3, "videos")
    from_disk, disk_run = disk_pretrain
    code, from_store = pretrain_quietly(url, tmp_path / "store")
    assert code == 0, from_store
    loss_line = [line for line in from_store.splitlines() if line.startswith("pretrain: steps")]
    assert loss_line and loss_line[0].split(", checkpoint")[0] in from_disk  # "steps 0->3, loss a -> b"
    disk = read_checkpoint_file(sorted(disk_run.rglob("*.pt"))[-1])
    store = read_checkpoint_file(sorted((tmp_path / "store").rglob("*.pt"))[-1])
    assert disk["step"] == store["step"] == 3
    assert all(torch.equal(disk["model"][name], store["model"][name]) for name in disk["model"])
    assert any(seen.method == "GET" and ".tar" in seen.path for seen in s3.proxy.seen)  # it did read the store
    assert (store_cache / "stores" / "s3" / s3.bucket / "videos" / schema.VOCAB_DIR / schema.VOCAB_VECTORS).is_file()


def evaluate(checkpoint: Path, shards: str, report: Path) -> dict:
    from mft_train.cli import main

    assert main(["evaluate", "--checkpoint", str(checkpoint), "--shards", shards, "--json", str(report),
                 "--set", "train.device=cpu"]) == 0
    return json.loads(report.read_text())


def test_evaluating_from_a_url_gives_the_folders_metrics(sets: dict, s3: S3Server, store_cache: Path,
                                                         tmp_path: Path) -> None:
    url = upload(sets["clips"], s3, "clips")
    disk = evaluate(sets["checkpoint"], str(sets["clips"]), tmp_path / "disk.json")
    store = evaluate(sets["checkpoint"], url, tmp_path / "store.json")
    assert store["shards"] == url and store["num_clips"] == disk["num_clips"] == 6
    assert store["num_expected"] == disk["num_expected"] == 7  # clips.json read from the store
    assert store["results"] == disk["results"]


def test_a_tar_without_its_json_is_never_read(sets: dict, s3: S3Server, store_cache: Path) -> None:
    """shard-000001.tar is uploaded but its JSON is not (a writer stopped between the two), though
    index.json lists it: neither discovery nor reading touches it; nor is it found without index.json."""
    from mft_train.data.reader import SkipPolicy, read_records
    from mft_train.data.shards import discover_shards

    url = upload(sets["videos"], s3, "videos", skip=("shard-000001.json",))
    uploaded = len(s3.proxy.seen)  # the upload's own requests (PUT, then HEAD to check the size)
    shards = discover_shards(url)
    assert shards.urls == [f"{url}/shard-000000.tar"] and shards.counts == [3]
    skips = SkipPolicy()
    assert len(list(read_records(shards.urls, skips))) == 3 and not skips.skipped
    read = [seen.path for seen in s3.proxy.seen[uploaded:] if seen.method in ("GET", "HEAD")]
    assert any("shard-000000.tar" in path for path in read)
    assert not any("shard-000001.tar" in path for path in read), read
    without_index = upload(sets["videos"], s3, "no-index", skip=("shard-000001.json", schema.INDEX_FILE))
    assert discover_shards(without_index).urls == [f"{without_index}/shard-000000.tar"]  # the JSONs decide


def test_a_store_that_refuses_is_one_line_and_exit_5_without_the_secret(sets: dict, s3: S3Server,
                                                                        tmp_path: Path) -> None:
    url = upload(sets["clips"], s3, "clips")
    s3.proxy.fail("403", times=10_000)  # every request refused, as wrong credentials are
    env = {**os.environ, "HOWTO_MFT_CACHE": str(tmp_path / "cache"), "PYTHONPATH": str(REPO)}
    result = subprocess.run([sys.executable, "-m", "mft_train.cli", "evaluate", "--checkpoint", str(sets["checkpoint"]),
                             "--shards", url, "--set", "train.device=cpu"],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 5, result.stderr
    assert len(lines) == 1 and lines[0].startswith("mft-train: system fault: object store refused"), lines
    assert "Traceback" not in result.stderr and DUMMY_SECRET not in result.stderr + result.stdout


def test_a_refusal_while_streaming_tars_in_a_loader_worker_is_one_line_exit_5(
        sets: dict, s3: S3Server, store_cache: Path, tmp_path: Path) -> None:
    """Listing and the vocabulary succeed, then every tar GET is refused: a SystemFault in the
    DataLoader worker, not a damaged shard skipped forever, and not torch's worker traceback."""
    url = upload(sets["videos"], s3, "videos")
    s3.proxy.fail("403", times=10_000, path_contains=".tar")
    code, err = pretrain_quietly(url, tmp_path / "run")
    lines = [line for line in err.strip().splitlines() if line.startswith("mft-train:")]
    assert code == 5, err
    assert lines == [lines[-1]] and lines[-1].startswith("mft-train: system fault: object store refused read s3://")
    assert "Traceback" not in err and DUMMY_SECRET not in err
    assert not multiprocessing.active_children()  # the worker is gone (at exit nothing waits for it)


def test_embedding_a_url_equals_embedding_the_folder_and_its_index_searches(
        sets: dict, s3: S3Server, store_cache: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from mft_train.cli import main
    from mft_train.retrieval import index_store

    url = upload(sets["videos"], s3, "videos")
    for shards, out in ((str(sets["videos"]), tmp_path / "disk"), (url, tmp_path / "store")):
        assert main(["embed", "--checkpoint", str(sets["checkpoint"]), "--shards", shards, "--out", str(out),
                     "--stride", "4", "--set", "train.device=cpu"]) == 0, capsys.readouterr().err
    disk, store = index_store.read_manifest(tmp_path / "disk"), index_store.read_manifest(tmp_path / "store")
    assert store["shards"]["root"] == store["vocab"]["root"] == url
    sizes = [p["identity"].split(":")[:2] for p in store["parts"]]  # the fixture's JSONs have no sha256
    assert sizes == [p["identity"].split(":")[:2] for p in disk["parts"]] and sizes[0][0] == "bytes"
    for ours, theirs in zip(store["parts"], disk["parts"]):
        a = index_store.read_part(tmp_path / "store" / ours["file"], ("video_id", "va"))
        b = index_store.read_part(tmp_path / "disk" / theirs["file"], ("video_id", "va"))
        assert a["video_id"].tolist() == b["video_id"].tolist() and np.array_equal(a["va"], b["va"])
    word = (sets["videos"] / schema.VOCAB_DIR / schema.VOCAB_WORDS).read_text().split()[0]
    capsys.readouterr()
    assert main(["search", word, "--index", str(tmp_path / "store"), "--json", "--set", "train.device=cpu"]) == 0
    assert json.loads(capsys.readouterr().out)  # the vocabulary came from the store's copy


def test_the_vocabulary_copy_follows_the_store(s3: S3Server, store_cache: Path) -> None:
    """Downloaded once; an object rewritten on the store is fetched again, one deleted there is
    deleted here (an old merged table must never outlive its object)."""
    from mft_train.data.store_set import vocab_folder

    store = Store.for_url(s3.url("set"))
    store.put_bytes("vocab/w2v_ids.npy", b"ids-1")
    store.put_bytes("vocab/parts/shard-000000.w2v_ids.npy", b"part")
    folder = vocab_folder(store.url)
    assert (folder / "vocab/w2v_ids.npy").read_bytes() == b"ids-1"
    gets = s3.proxy.count("GET")
    assert vocab_folder(store.url) == folder and s3.proxy.count("GET") == gets + 1  # the listing only
    store.put_bytes("vocab/w2v_ids.npy", b"ids-22")
    store.delete("vocab/parts/shard-000000.w2v_ids.npy")
    vocab_folder(store.url)
    assert (folder / "vocab/w2v_ids.npy").read_bytes() == b"ids-22"
    assert not (folder / "vocab/parts/shard-000000.w2v_ids.npy").exists()


def test_finetuning_on_urls_equals_finetuning_on_the_folders(sets: dict, s3: S3Server, store_cache: Path,
                                                            tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from mft_train.cli import main

    url = upload(sets["clips"], s3, "clips")
    fast = ["--config", "eao_finetune_small"] + settings(["train.device=cpu", "train.epochs=1", "train.batch=3",
                                                          "data.video_tokens=15", "data.audio_frames=1024"])
    results = []
    for shards, out in ((str(sets["clips"]), tmp_path / "disk"), (url, tmp_path / "store")):
        assert main(["finetune", "--init", str(sets["checkpoint"]), "--shards", shards, "--eval-shards", shards,
                     "--out", str(out), *fast]) == 0, capsys.readouterr().err
        results.append(json.loads((out / "results.json").read_text()))
    disk, store = results
    assert store["train_shards"] == store["eval_shards"] == url
    assert store["epochs"] == disk["epochs"] and store["num_expected"] == disk["num_expected"] == 7
