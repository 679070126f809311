"""`howto-prep download --out s3://bucket/prefix` against a real S3 API (moto behind the fault proxy,
tests/s3_server.py) and the loopback mirror: the bucket equals a local run, reruns redo nothing (same
or fresh work folder), one run per URL, and a refusing store stops the run blaming no video."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from howto_prep import schema
from howto_prep.cli import main as cli_main
from howto_prep.download.manifest import Manifest
from howto_prep.local_copies import default_work_folder
from howto_prep.object_store import LOCK_NAME, Store, StoreLock, lock_holder
from howto_prep.synthetic.mirror_server import LoopbackMirror
from s3_server import DUMMY_SECRET, S3Server, moto_server, s3  # noqa: F401  (fixtures)
from test_download import make_video

USER, PASSWORD = "researcher", "pw-0b1d2e3f4a"
IDS = ["good01", "good02", "late01"]


@pytest.fixture(scope="module")
def library(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("mirror_root")
    for index, video_id in enumerate(IDS):
        make_video(root / f"{video_id}.mp4", index, seconds=1.5)
    return root


@pytest.fixture
def inputs(tmp_path: Path) -> tuple[Path, Path]:
    """(id list, credentials file) for the CLI."""
    ids = tmp_path / "ids.txt"
    ids.write_text("\n".join(IDS) + "\n")
    credentials = tmp_path / "credentials.txt"
    credentials.write_text(f"{USER}:{PASSWORD}\n")
    credentials.chmod(0o600)
    return ids, credentials


def download_args(inputs: tuple[Path, Path], out: str, mirror: LoopbackMirror, workers: int = 0) -> list[str]:
    ids, credentials = inputs
    return ["download", "--ids", str(ids), "--out", out, "--source", "mirror", "--mirror-url", mirror.url,
            "--credentials", str(credentials), "--workers", str(workers)]


def bucket_objects(s3: S3Server, prefix: str) -> dict[str, bytes]:
    """Key (below the prefix) -> bytes of every object, read straight from moto."""
    client = s3.client()
    listing = client.list_objects_v2(Bucket=s3.bucket, Prefix=f"{prefix}/").get("Contents", [])
    return {item["Key"][len(prefix) + 1:]: client.get_object(Bucket=s3.bucket, Key=item["Key"])["Body"].read()
            for item in listing}


def rows(folder: Path) -> dict[str, tuple]:
    with Manifest(folder) as manifest:
        return {row.video_id: (row.status, row.path, row.bytes, row.failure_kind) for row in manifest.rows()}


def video_puts(s3: S3Server) -> int:
    """Uploads of videos the store took."""
    return sum(1 for seen in s3.proxy.seen if seen.method == "PUT" and seen.path.endswith(".mp4")
               and seen.outcome == "200")


def test_the_bucket_equals_a_local_run_and_reruns_redo_nothing(library: Path, s3: S3Server, inputs, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    url = s3.url("videos-run")
    for name in ("a", "b", "c"):
        (tmp_path / name).mkdir()
    monkeypatch.chdir(tmp_path / "a")
    work = tmp_path / "a" / default_work_folder(url)
    with LoopbackMirror(library, (USER, PASSWORD)) as mirror:
        assert cli_main(download_args(inputs, str(tmp_path / "local"), mirror)) == 0
        fetched_locally = sum(mirror.requests.values())
        s3.proxy.fail("503", times=1, method="PUT", path_contains=".mp4")  # transient: retried, blames nothing
        s3.proxy.fail("drop", times=1, method="PUT", path_contains=".mp4")
        assert cli_main(download_args(inputs, url, mirror)) == 0
        assert s3.proxy.count("PUT", "503") == 1 and s3.proxy.count("PUT", "drop") == 1
        fetched = sum(mirror.requests.values()) - fetched_locally
        objects = bucket_objects(s3, "videos-run")
        local = {str(path.relative_to(tmp_path / "local")): path.read_bytes()
                 for path in (tmp_path / "local").glob("*/*.mp4")}
        assert len(local) == len(IDS) and {key: objects[key] for key in local} == local  # same keys, same bytes
        assert set(objects) == set(local) | {schema.MANIFEST_FILE}  # the lock is gone, the manifest copy is there
        assert {video: row[:3] for video, row in rows(work).items()} == {
            video: ("done", f"{video[:2]}/{video}.mp4", len(local[f"{video[:2]}/{video}.mp4"])) for video in IDS}
        assert not list(work.glob("*/*.mp4"))  # uploaded copies leave the work folder
        copy = tmp_path / "copy"
        copy.mkdir()
        (copy / schema.MANIFEST_FILE).write_bytes(objects[schema.MANIFEST_FILE])
        assert rows(copy) == rows(work)  # the bucket says what is in it
        puts = video_puts(s3)
        assert puts == len(IDS)
        capsys.readouterr()
        assert cli_main(["status", url]) == 0  # `status` reads the bucket's manifest copy
        assert url in capsys.readouterr().out

        assert cli_main(download_args(inputs, url, mirror)) == 0  # the same work folder: nothing redone
        monkeypatch.chdir(tmp_path / "b")  # a fresh work folder: starts from the bucket's manifest copy
        assert cli_main(download_args(inputs, url, mirror)) == 0
        s3.client().delete_object(Bucket=s3.bucket, Key=f"videos-run/{schema.MANIFEST_FILE}")
        monkeypatch.chdir(tmp_path / "c")  # fresh, and no copy either: the listing alone says what is there
        assert cli_main(download_args(inputs, url, mirror)) == 0
        assert sum(mirror.requests.values()) - fetched_locally == fetched and video_puts(s3) == puts
        fresh = tmp_path / "c" / default_work_folder(url)
        assert {video: row[:3] for video, row in rows(fresh).items()} == {
            video: row[:3] for video, row in rows(work).items()}

        s3.client().delete_object(Bucket=s3.bucket, Key="videos-run/go/good02.mp4")  # deleted by hand: redone
        monkeypatch.chdir(tmp_path / "a")
        before = dict(mirror.requests)
        assert cli_main(download_args(inputs, url, mirror)) == 0
        assert dict(mirror.requests) == {**before, "good02": before["good02"] + 1} and video_puts(s3) == puts + 1
    assert bucket_objects(s3, "videos-run")["go/good02.mp4"] == local["go/good02.mp4"]
    captured = capsys.readouterr()
    assert DUMMY_SECRET not in captured.out + captured.err and PASSWORD not in captured.out + captured.err


def test_a_second_run_on_the_same_url_is_refused(library: Path, s3: S3Server, inputs, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    """Another machine's run holds the URL's lock object: refused in one line (exit 4), nothing fetched."""
    monkeypatch.chdir(tmp_path)
    url = s3.url("videos-run")
    with StoreLock(Store.for_url(url), holder_info=lock_holder("howto-prep download")), \
            LoopbackMirror(library, (USER, PASSWORD)) as mirror:
        code = cli_main(download_args(inputs, url, mirror))
        assert sum(mirror.requests.values()) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 4 and len(err) == 1 and "is in use by howto-prep download" in err[0], err
    assert set(bucket_objects(s3, "videos-run")) == set()  # (its lock released on leaving the with)


def test_a_store_refusing_access_stops_before_any_work(library: Path, s3: S3Server, inputs, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    s3.proxy.fail("403", times=1000)
    url = s3.url("videos-run")
    with LoopbackMirror(library, (USER, PASSWORD)) as mirror:
        code = cli_main(download_args(inputs, url, mirror))
        assert sum(mirror.requests.values()) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 5 and len(err) == 1 and err[0].startswith("howto-prep: system fault: object store refused"), err
    assert "AccessDenied" in err[0] and DUMMY_SECRET not in err[0]
    assert not (tmp_path / default_work_folder(url) / schema.MANIFEST_FILE).exists()


def test_a_store_refusing_uploads_stops_the_run_and_blames_no_video(library: Path, s3: S3Server, inputs,
                                                                    tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Ray workers build their own Store from the environment; a 403 on a video's upload stops the run
    (exit 5, one line), no video is recorded failed, no secret anywhere; the rerun uploads the
    validated copies the work folder kept without fetching them again."""
    url = s3.url("videos-run")
    s3.proxy.fail("403", times=1000, method="PUT", path_contains=".mp4")
    ray_dir = tempfile.mkdtemp(prefix="r", dir="/tmp")  # short: Ray's socket paths must fit in 107 bytes
    env = {**{k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}, "RAY_TMPDIR": ray_dir,
           "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0"}
    try:
        with LoopbackMirror(library, (USER, PASSWORD)) as mirror:
            process = subprocess.run([sys.executable, "-m", "howto_prep.cli", *download_args(inputs, url, mirror, 2)],
                                     cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
            first = dict(mirror.requests)
            work = tmp_path / default_work_folder(url)
            lines = [line for line in process.stderr.splitlines() if line.startswith("howto-prep")]
            assert process.returncode == 5, process.stderr
            assert len(lines) == 1 and "object store refused upload" in lines[0] and "AccessDenied" in lines[0], lines
            assert "Traceback" not in process.stderr
            assert {row[0] for row in rows(work).values()} == {"pending"}  # none failed, none done
            assert not [key for key in bucket_objects(s3, "videos-run") if key.endswith(".mp4")]
            logs = [path for path in Path(ray_dir).rglob("*") if path.is_file() and path.stat().st_size < 50_000_000]
            for path in [*logs, *(path for path in work.rglob("*") if path.is_file())]:
                assert DUMMY_SECRET.encode() not in path.read_bytes(), path
            assert DUMMY_SECRET not in process.stdout + process.stderr

            s3.proxy.clear()
            monkeypatch.chdir(tmp_path)
            assert cli_main(download_args(inputs, url, mirror)) == 0
            refetched = {video for video in first if mirror.requests[video] != first[video]}
    finally:
        shutil.rmtree(ray_dir, ignore_errors=True)
    assert {row[0] for row in rows(work).values()} == {"done"}
    assert not list(work.glob("*/*.mp4"))  # nothing left locally
    assert len([key for key in bucket_objects(s3, "videos-run") if key.endswith(".mp4")]) == len(IDS)
    assert refetched < set(IDS)  # at least the video whose upload was refused was kept, not fetched again
    stored = bucket_objects(s3, "videos-run")
    assert LOCK_NAME not in stored and schema.MANIFEST_FILE in stored
    for data in [*stored.values(), *(path.read_bytes() for path in work.rglob("*") if path.is_file())]:
        assert DUMMY_SECRET.encode() not in data and PASSWORD.encode() not in data


def test_the_work_folder_is_per_url_or_given_and_only_for_a_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from howto_prep.download.plan import output_folders
    from howto_prep.errors import UserError

    monkeypatch.chdir(tmp_path)
    assert output_folders("s3://b/p/q/", None) == (tmp_path / ".howto-prep/work/s3/b/p/q", "s3://b/p/q")
    assert output_folders("gs://b/p", Path("w")) == (tmp_path / "w", "gs://b/p")
    assert output_folders(Path("videos"), None) == (tmp_path / "videos", None)
    with pytest.raises(UserError, match="--work is for an --out URL"):
        output_folders(Path("videos"), Path("w"))
