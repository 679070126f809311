"""Embedding indexes and imported runs on an object store (moto's S3 server, tests/s3_server.py).

`embed --out s3://...` builds the index in a local work folder and publishes the folder's very index
(parts and faiss files, index.json last); a rerun on a fresh machine leaves a complete index alone, and
one with another index type copies the parts back instead of embedding again. `search --index s3://...`
(with `--checkpoint` and `--vocab` URLs too) gives the folder's results, and an index without its
index.json is refused before anything is downloaded. `import-eao` from and to URLs makes a run that
`evaluate --checkpoint s3://...` reads, and `evaluate --json s3://...` uploads its report. A store that
refuses is one line and exit 5; the secret key is never printed or written."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from howto_prep.local_copies import publish_folder
from howto_prep.object_store import Store
from mft_train.cli import main
from s3_server import DUMMY_SECRET, S3Server, moto_server, s3  # noqa: F401  (fixtures)
from train_store_fixtures import sets, store_cache  # noqa: F401  (fixtures)

pytestmark = pytest.mark.slow  # a moto S3 server and several embed/evaluate runs, as the other store modules

DEVICE = ["--set", "train.device=cpu"]
FAISS = ("a.faiss", "v.faiss", "va.faiss")
PART_FIELDS = ("identity", "video_id", "start", "end", "va", "v", "a", "v_empty", "a_empty", "captions")


def embed_args(sets: dict, out: str, *extra: str, checkpoint: str | None = None) -> list[str]:
    return ["embed", "--checkpoint", checkpoint or str(sets["checkpoint"]), "--shards", str(sets["videos"]),
            "--out", out, "--stride", "3", *extra, *DEVICE]


def publish_run(sets: dict, url: str) -> str:
    """The tiny checkpoint's run on the store (as pretrain --out URL leaves it); the URL of its checkpoint."""
    from mft_train.training.run_store import RunMirror

    RunMirror(Store.for_url(url), sets["checkpoint"].parent.parent).publish_checkpoint(sets["checkpoint"], 2)
    return f"{url}/checkpoints/{sets['checkpoint'].name}"


@pytest.fixture(scope="module")
def local_index(sets: dict, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The index of the tiny video-level set, embedded into a folder (the reference)."""
    out = tmp_path_factory.mktemp("local-index") / "index"
    assert main(embed_args(sets, str(out))) == 0
    return out








def files_of(folder: Path) -> list[str]:
    return sorted(path.relative_to(folder).as_posix() for path in folder.rglob("*")
                  if path.is_file() and not path.name.startswith("."))


def assert_same_index(stored: dict[str, bytes], folder: Path) -> None:
    """The store's index holds the folder's files: the same faiss bytes, the same part arrays."""
    assert sorted(stored) == files_of(folder)
    for name in FAISS:
        assert stored[name] == (folder / name).read_bytes(), name
    for key in (k for k in stored if k.startswith("parts/")):
        with np.load(io.BytesIO(stored[key])) as ours, np.load(folder / key) as theirs:
            for field in PART_FIELDS:
                np.testing.assert_array_equal(ours[field], theirs[field], err_msg=f"{key} {field}")


def one_error_line(capsys: pytest.CaptureFixture) -> str:
    """The command's one `mft-train:` line (progress lines of the work before it aside); no traceback, no secret."""
    captured = capsys.readouterr()
    ours = [line for line in captured.err.splitlines() if line.startswith("mft-train:")]
    assert "Traceback" not in captured.err and len(ours) == 1, captured.err
    assert DUMMY_SECRET not in captured.out + captured.err
    return ours[0]


def assert_no_secret_in_files(*folders: Path) -> None:
    secret = DUMMY_SECRET.encode()
    for folder in folders:
        for path in (p for p in folder.rglob("*") if p.is_file()):
            assert secret not in path.read_bytes(), path


def query_words(sets: dict) -> str:
    words = (sets["videos"] / "vocab" / "words.txt").read_text().split()
    return f"{words[0]} {words[1]} {words[2]}"


def search(index: str, query: str, capsys: pytest.CaptureFixture, *extra: str) -> dict:
    capsys.readouterr()
    assert main(["search", "--index", index, query, "--top", "5", "--json", *extra, *DEVICE]) == 0
    return json.loads(capsys.readouterr().out)


def test_embedding_to_a_url_publishes_the_folders_index_json_last_and_a_fresh_rerun_embeds_nothing(
        sets: dict, local_index: Path, s3: S3Server, store_cache: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    monkeypatch.chdir(tmp_path)
    url = s3.url("index")
    assert main(embed_args(sets, url)) == 0
    stored = s3.objects("index")
    assert_same_index(stored, local_index)
    assert json.loads(stored["index.json"])["complete"]
    first = s3.writes("index")
    assert first[-1] == ("PUT", "index.json") and [key for _, key in first].count("index.json") == 1
    assert {key for _, key in first} == set(stored)  # every file uploaded once, the manifest after all of them
    work = tmp_path / ".howto-prep" / "work" / "s3" / s3.bucket / "index"
    assert all((work / key).read_bytes() == data for key, data in stored.items())

    fresh = tmp_path / "fresh"  # another machine: an empty work folder, the index complete on the store
    fresh.mkdir()
    monkeypatch.chdir(fresh)
    capsys.readouterr()
    assert main(embed_args(sets, url)) == 0
    assert "already holds this index, complete" in capsys.readouterr().err
    assert s3.writes("index") == first and not (fresh / ".howto-prep").exists()  # nothing embedded or written

    # another index type: the store's parts are copied back (not embedded again), only faiss files change;
    # the old index.json goes first, so no reader pairs it with the new faiss files, and comes back last
    assert main(embed_args(sets, url, "--index-type", "ivf")) == 0
    err = capsys.readouterr().err
    assert "copied 2 shards' parts" in err and "(2 shards already embedded)" in err
    assert s3.writes("index")[len(first):] == [("DELETE", "index.json")] + [("PUT", k) for k in FAISS] + [
        ("PUT", "index.json")]
    assert json.loads(s3.objects("index")["index.json"])["index"]["type"] == "ivf"
    assert_no_secret_in_files(tmp_path)


def test_a_refused_upload_leaves_no_index_json_and_the_rerun_resumes_from_the_work_folder(
        sets: dict, local_index: Path, s3: S3Server, store_cache: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    """With the checkpoint on the store too: a search on another machine (an empty cache) fetches it."""
    monkeypatch.chdir(tmp_path)
    url = s3.url("index")
    checkpoint = publish_run(sets, s3.url("run"))
    s3.proxy.fail("403", times=10_000, method="PUT", path_contains="va.faiss")
    capsys.readouterr()
    assert main(embed_args(sets, url, checkpoint=s3.url("run"))) == 5
    assert one_error_line(capsys).startswith(f"mft-train: system fault: object store refused upload {url}/va.faiss")
    assert "index.json" not in s3.objects("index") and "parts/shard-000000.npz" in s3.objects("index")

    # the half-published index is never searched, and none of its files is downloaded
    assert main(["search", "--index", url, query_words(sets), *DEVICE]) == 2
    assert f"index {url} has no index.json: it is unfinished or still being published" in one_error_line(capsys)
    assert s3.reads("index") == [] and not (store_cache / "stores" / "s3" / s3.bucket / "index").exists()

    s3.proxy.clear()
    assert main(embed_args(sets, url, checkpoint=s3.url("run"))) == 0
    assert "(2 shards already embedded)" in capsys.readouterr().err  # from the work folder: no shard embedded again
    assert s3.writes("index")[-1] == ("PUT", "index.json")
    stored = s3.objects("index")
    assert_same_index(stored, local_index)
    assert json.loads(stored["index.json"])["model"]["source"] == checkpoint
    assert_no_secret_in_files(tmp_path)

    shutil.rmtree(store_cache)  # another machine: neither the index nor the checkpoint is there
    query = query_words(sets)
    assert search(url, query, capsys)["results"] == search(str(local_index), query, capsys)["results"]


def test_searching_an_index_url_gives_the_folders_results_and_copies_it_once(
        sets: dict, local_index: Path, s3: S3Server, store_cache: Path, capsys: pytest.CaptureFixture) -> None:
    url = s3.url("idx")
    publish_folder(local_index, Store.for_url(url), last=["index.json"])  # as embed --out URL leaves it
    query = query_words(sets)
    local = search(str(local_index), query, capsys)
    remote = search(url, query, capsys)
    assert remote["results"] == local["results"] and len(remote["results"]) == 5 and remote["index"] == url
    downloads = len(s3.reads("idx"))
    assert downloads >= len(files_of(local_index))
    assert search(url, query, capsys)["results"] == local["results"]
    assert len(s3.reads("idx")) == downloads + 1  # only index.json is read again: the copy is reused

    # the checkpoint and the vocabulary on the store as well (an index whose inputs moved there)
    run = s3.url("run")
    publish_run(sets, run)
    publish_folder(sets["videos"], Store.for_url(s3.url("videos")))
    moved = search(url, query, capsys, "--checkpoint", run, "--vocab", s3.url("videos"))
    assert moved["results"] == local["results"]


def test_an_index_url_without_a_finished_index_json_is_refused(
        local_index: Path, sets: dict, s3: S3Server, store_cache: Path, capsys: pytest.CaptureFixture) -> None:
    query = query_words(sets)
    url = s3.url("half")
    publish_folder(local_index, Store.for_url(url), skip=["index.json"])  # stopped before its last file
    assert main(["search", "--index", url, query, *DEVICE]) == 2
    assert f"{url} has no index.json" in one_error_line(capsys)
    unfinished = {**json.loads((local_index / "index.json").read_text()), "complete": False}
    Store.for_url(url).put_bytes("index.json", json.dumps(unfinished).encode())
    assert main(["search", "--index", url, query, *DEVICE]) == 2
    assert f"index {url} is unfinished" in one_error_line(capsys)
    assert s3.reads("half") == ["index.json"] and not (store_cache / "stores").exists()
    assert main(["search", "--index", s3.url("nothing"), query, *DEVICE]) == 2
    assert "does not exist; build it with `mft-train embed --out" in one_error_line(capsys)


def test_an_index_republished_while_being_copied_is_refused(
        local_index: Path, sets: dict, s3: S3Server, store_cache: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture) -> None:
    from mft_train.retrieval import stored_index

    url = s3.url("moving")
    publish_folder(local_index, Store.for_url(url), last=["index.json"])
    copy = stored_index.copy_folder

    def copy_then_republish(store: Store, what: str) -> Path:
        folder = copy(store, what)
        Store.for_url(url).put_bytes("index.json", (local_index / "index.json").read_bytes() + b" ")  # a new commit
        return folder

    monkeypatch.setattr(stored_index, "copy_folder", copy_then_republish)
    assert main(["search", "--index", url, query_words(sets), *DEVICE]) == 2
    assert f"index {url} changed while it was being copied" in one_error_line(capsys)


def test_a_rewritten_file_of_the_same_size_replaces_the_stores_copy(s3: S3Server, tmp_path: Path) -> None:
    """A re-embedded part or a rebuilt faiss file keeps its size: it is uploaded because it is newer."""
    from mft_train.retrieval.stored_index import IndexPublisher

    work = tmp_path / "work"
    (work / "parts").mkdir(parents=True)
    (work / "parts" / "x.npz").write_bytes(b"first")
    (work / "index.json").write_bytes(b"{}")
    publisher = IndexPublisher(Store.for_url(s3.url("same")), work)
    assert publisher.publish() == 2
    (work / "parts" / "x.npz").write_bytes(b"again")
    assert publisher.publish() == 2
    assert s3.objects("same") == {"parts/x.npz": b"again", "index.json": b"{}"}
    assert s3.writes("same")[-3:] == [("DELETE", "index.json"), ("PUT", "parts/x.npz"), ("PUT", "index.json")]


def test_import_eao_from_and_to_urls_makes_a_run_that_evaluate_reads_and_reports_to_a_url(
        sets: dict, s3: S3Server, store_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture) -> None:
    from mft_train.models.eao import EAOConfig, EverythingAtOnce
    from test_import_eao import TINY, trained_like, write_authors_checkpoint

    torch.manual_seed(0)
    source = write_authors_checkpoint(tmp_path / "c.pth", trained_like(EverythingAtOnce(EAOConfig.from_dict(TINY))))
    Store.for_url(s3.url("released")).put_file(source, "c.pth")
    monkeypatch.chdir(tmp_path)
    run = s3.url("runs/released")
    assert main(["import-eao", s3.url("released/c.pth"), "--out", run]) == 0
    assert s3.writes("runs/released") == [("PUT", "best.pt"), ("PUT", "imported.json"), ("PUT", "config.yaml")]
    work = tmp_path / ".howto-prep" / "work" / "s3" / s3.bucket / "runs" / "released"
    released = s3.objects("runs/released")
    assert all(released[name] == (work / name).read_bytes() for name in ("best.pt", "imported.json", "config.yaml"))
    assert json.loads(released["imported.json"])["source"] == s3.url("released/c.pth")

    capsys.readouterr()
    report = s3.url("reports/released.json")
    assert main(["evaluate", "--checkpoint", run, "--shards", str(sets["clips"]), "--json", report, *DEVICE]) == 0
    assert f"evaluate: wrote {report}" in capsys.readouterr().err
    assert s3.writes("reports") == [("PUT", "released.queries.jsonl"), ("PUT", "released.png"),
                                     ("PUT", "released.json")]
    assert main(["evaluate", "--checkpoint", str(work), "--shards", str(sets["clips"]),
                 "--json", str(tmp_path / "local.json"), *DEVICE]) == 0  # the same run, read from the folder
    stored = s3.objects("reports")
    local = json.loads((tmp_path / "local.json").read_text())
    assert json.loads(stored["released.json"])["results"] == local["results"]
    assert stored["released.queries.jsonl"] == (tmp_path / "local.queries.jsonl").read_bytes()

    capsys.readouterr()
    assert main(["import-eao", str(source), "--out", run]) == 2
    assert f"{run} already holds a run; choose another --out" in one_error_line(capsys)
    assert main(["import-eao", s3.url("released/none.pth"), "--out", s3.url("runs/other")]) == 2
    assert f"checkpoint {s3.url('released/none.pth')} does not exist" in one_error_line(capsys)
    assert_no_secret_in_files(tmp_path)


def test_a_store_that_refuses_is_one_line_and_exit_5_for_every_url_option(
        sets: dict, local_index: Path, s3: S3Server, store_cache: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    monkeypatch.chdir(tmp_path)
    s3.proxy.fail("403", times=10_000)
    runs = [
        embed_args(sets, s3.url("index")),
        ["search", "--index", s3.url("index"), query_words(sets), *DEVICE],
        ["import-eao", str(sets["checkpoint"]), "--out", s3.url("runs/x")],
        ["evaluate", "--checkpoint", str(sets["checkpoint"]), "--shards", str(sets["clips"]),
         "--json", s3.url("reports/x.json"), *DEVICE],
    ]
    capsys.readouterr()
    for argv in runs:
        assert main(argv) == 5, argv
        assert one_error_line(capsys).startswith("mft-train: system fault: object store refused"), argv
    assert not (tmp_path / ".howto-prep").exists()  # refused before any work
    assert_no_secret_in_files(tmp_path)
