"""`howto-prep download` against the loopback mirror and yt-dlp on 127.0.0.1: outcomes, resume, reruns, secrets."""

from __future__ import annotations

import base64
import os
import signal
import sqlite3
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from howto_prep import schema
from howto_prep.cli import main as cli_main
from howto_prep.download.catalog import Catalog, CatalogEntry
from howto_prep.download.command import AUTH_STOP_AFTER, NodeTally, download_all, select_work
from howto_prep.download.credentials import CredentialSource, Credentials, load_credentials, redact
from howto_prep.download.manifest import Manifest, manifest_summary
from howto_prep.download.plan import DownloadPlan, sources_for
from howto_prep.download.task import FetchJob, FetchResult, FetchSettings
from howto_prep.download.youtube import classify_ytdlp_error
from howto_prep.errors import FailureKind, UserError
from howto_prep.synthetic.mirror_server import LoopbackMirror
from howto_prep.synthetic.mp4 import write_mp4

USER = "researcher"
PASSWORD = "pw-7f3c9a1e5b"
FAST = FetchSettings(timeout_s=0.5, attempts=3, backoff_s=0.05)
IDS = ["good01", "good02", "trans1", "trunc1", "stall1", "gone01", "deny01", "html01", "junk01"]
FAULTS = {"trans1": "transient:2", "trunc1": "truncated:1", "stall1": "stall", "gone01": "not_found",
          "deny01": "auth", "html01": "html"}
EXPECTED = {"good01": ("done", None), "good02": ("done", None), "trans1": ("done", None),
            "trunc1": ("done", None), "stall1": ("failed", "timeout"), "gone01": ("failed", "not_found"),
            "deny01": ("failed", "auth"), "html01": ("failed", "bad_media"), "junk01": ("failed", "bad_media")}


def make_video(path: Path, seed: int, seconds: float = 2.0) -> Path:
    """A small real mp4 (160x120, 12 fps, H.264 + AAC) whose pixels and tone depend on `seed`."""
    y, x = np.mgrid[0:120, 0:160]
    frames = []
    for index in range(int(seconds * 12)):  # a seed-coloured gradient with a moving square: small, distinct files
        frame = np.stack([(x + 7 * seed) % 256, (y * 2 + 3 * index) % 256, np.full_like(x, 40 * seed % 256)], -1)
        frame[40:70, (index * 5) % 130:(index * 5) % 130 + 30] = 255
        frames.append(frame.astype(np.uint8))
    tone = 0.2 * np.sin(2 * np.pi * (200 + 50 * seed) * np.arange(int(seconds * 16000)) / 16000)
    return write_mp4(path, frames, 12, tone.astype(np.float32), sample_rate=16000)


@pytest.fixture(scope="module")
def library(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Mirror root: real mp4s in nested folders (the mirror searches recursively), plus one non-video."""
    root = tmp_path_factory.mktemp("mirror_root")
    for index, video_id in enumerate(IDS[:-1] + ["late01", "late02", "late03", "late04"]):
        folder = root / f"part{index % 3}"
        folder.mkdir(exist_ok=True)
        make_video(folder / f"{video_id}.mp4", index)
    (root / "junk01.mp4").write_bytes(np.random.default_rng(9).bytes(6000))
    return root


def source_file(library: Path, video_id: str) -> Path:
    return next(library.rglob(f"{video_id}.*"))


def manifest_rows(out: Path) -> dict[str, tuple]:
    with Manifest(out) as manifest:
        return {row.video_id: row for row in manifest.rows()}


def assert_no_secret(paths: list[Path], *texts: str) -> None:
    token = base64.b64encode(f"{USER}:{PASSWORD}".encode())
    for path in paths:
        data = path.read_bytes()
        assert PASSWORD.encode() not in data and token not in data, path
    for text in texts:
        assert PASSWORD not in text and token.decode() not in text


def files_under(out: Path) -> list[Path]:
    return sorted(path for path in out.rglob("*") if path.is_file())


def plan(out: Path, url: str, **changes) -> DownloadPlan:
    secret_file = out.parent / f".{out.name}-credentials"  # workers read the credentials from a file
    secret_file.write_text(f"{USER}:{PASSWORD}\n")
    secret_file.chmod(0o600)
    values = dict(out=out, source="mirror", mirror_url=url, credentials=Credentials(USER, PASSWORD),
                  credential_source=CredentialSource(str(secret_file)), workers=2, settings=FAST,
                  show_progress=False)
    values.update(changes)
    return DownloadPlan(**values)


def test_faults_end_in_the_right_status_and_reruns_are_selective(library: Path, tmp_path: Path) -> None:
    out = tmp_path / "videos"
    records = [CatalogEntry(video_id) for video_id in IDS]
    with LoopbackMirror(library, (USER, PASSWORD), FAULTS, stall_seconds=2.0) as mirror:
        summary = download_all(records, plan(out, mirror.url))
        first_requests = dict(mirror.requests)
        ranged = dict(mirror.ranged_requests)
    rows = manifest_rows(out)
    assert {video_id: (row.status, row.failure_kind) for video_id, row in rows.items()} == EXPECTED
    assert (summary.done, summary.failed) == (4, 5)
    for video_id, (status, _) in EXPECTED.items():
        row = rows[video_id]
        if status == "done":  # final layout, byte-identical, real duration recorded
            assert row.path == f"{video_id[:2]}/{video_id}.mp4"
            assert (out / row.path).read_bytes() == source_file(library, video_id).read_bytes()
            assert row.bytes == (out / row.path).stat().st_size and row.duration == pytest.approx(2.0, abs=0.2)
        else:
            assert row.path is None and not list(out.glob(f"[!.]*/{video_id}.*")) and row.error
    assert first_requests["trans1"] == 3 and rows["trans1"].attempts == 3  # two 500s, then success
    assert ranged.get("trunc1") == 1 and rows["trunc1"].attempts == 2  # resumed with Range after the cut
    assert rows["stall1"].attempts == FAST.attempts and "timed out" not in rows["gone01"].error
    assert first_requests["gone01"] == len(FAST.extensions)  # every extension tried, no retries of a 404
    assert first_requests["deny01"] == 1 and "401" in rows["deny01"].error
    assert "HTML" in rows["html01"].error and "decord" in rows["junk01"].error
    assert_no_secret(files_under(out), *(row.error or "" for row in rows.values()))
    assert not [p for p in (out / ".partial").iterdir() if not p.name.startswith(("stall1", "locks"))]

    # Same arguments again: nothing is requested, nothing changes.
    with LoopbackMirror(library, (USER, PASSWORD)) as mirror:
        again = download_all(records, plan(out, mirror.url))
        assert sum(mirror.requests.values()) == 0 and again.selected == 0
    assert manifest_rows(out) == rows

    # --retry-failed (the faults are gone now): only failed rows are touched.
    time.sleep(1.1)  # updated_at has one-second resolution
    with LoopbackMirror(library, (USER, PASSWORD)) as mirror:
        download_all(records, plan(out, mirror.url, retry_failed=True))
        assert set(mirror.requests) == {video_id for video_id, (s, _) in EXPECTED.items() if s == "failed"}
    retried = manifest_rows(out)
    for video_id, row in retried.items():
        if rows[video_id].status == "done":
            assert row == rows[video_id]
        else:
            assert row.updated_at != rows[video_id].updated_at
    assert {v for v, row in retried.items() if row.status == "done"} == set(IDS) - {"junk01"}
    assert retried["stall1"].path == "st/stall1.mp4" and retried["junk01"].failure_kind == "bad_media"


def test_wrong_password_stops_the_run_in_one_line(library: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "videos"
    ids = tmp_path / "ids.txt"
    ids.write_text("\n".join(IDS[:4] + ["late01", "late02", "late03", "late04"]) + "\n")
    wrong = tmp_path / "wrong.txt"
    wrong.write_text(f"{USER}:not-{PASSWORD}\n")
    wrong.chmod(0o600)
    with LoopbackMirror(library, (USER, PASSWORD)) as mirror:
        code = cli_main(["download", "--ids", str(ids), "--out", str(out), "--source", "mirror",
                         "--mirror-url", mirror.url, "--credentials", str(wrong), "--workers", "2"])
        sent = sum(mirror.requests.values())
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert code == 5 and err[-1].startswith("howto-prep: system fault: the mirror rejected the credentials")
    assert PASSWORD not in captured.out + captured.err
    assert_no_secret(files_under(out))
    assert sent <= AUTH_STOP_AFTER + 2  # a handful of requests, not one per video
    assert {row.status for row in manifest_rows(out).values()} == {"pending"}
    assert not list(out.glob("*/*.mp4"))


def test_kill_9_then_rerun_equals_an_uninterrupted_run(library: Path, tmp_path: Path) -> None:
    """The CLI joins this process's Ray cluster (--address), is killed mid-run, and the rerun completes it."""
    import ray

    from howto_prep.cluster import init_ray

    init_ray(None)
    address = ray.get_runtime_context().gcs_address
    ids = ["good01", "good02", "trans1", "late01", "late02", "late03", "late04", "gone01"]
    id_file = tmp_path / "ids.txt"
    id_file.write_text("".join(f"{video_id}\n" for video_id in ids + ["good01"]))  # a duplicate: fetched once
    credentials_file = tmp_path / "credentials.txt"
    credentials_file.write_text(f"{USER}:{PASSWORD}\n")
    credentials_file.chmod(0o600)
    killed, clean = tmp_path / "killed", tmp_path / "clean"
    faults = {"gone01": "not_found"}
    with LoopbackMirror(library, (USER, PASSWORD), faults, throttle_bytes_per_s=25_000) as mirror:
        command = [sys.executable, "-m", "howto_prep.cli", "download", "--ids", str(id_file), "--out", str(killed),
                   "--source", "mirror", "--mirror-url", mirror.url, "--credentials", str(credentials_file),
                   "--workers", "2", "--address", address]
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
                                   env={**os.environ, "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0"})
        deadline = time.monotonic() + 90
        command_lines = []
        while time.monotonic() < deadline and done_count(killed) < 1:
            command_lines += read_command_lines()
            time.sleep(0.05)
        os.killpg(process.pid, signal.SIGKILL)
        stdout, stderr = process.communicate(timeout=30)
        done_at_kill = done_count(killed)
        assert 1 <= done_at_kill < len(ids) - 1, "the kill must land in the middle of the run"
        for final in killed.glob("*/*.mp4"):  # only whole files ever carry a final name
            assert final.read_bytes() == source_file(library, final.stem).read_bytes()
        patient = FetchSettings(timeout_s=10.0, attempts=3, backoff_s=0.05)
        download_all([CatalogEntry(v) for v in ids], plan(killed, mirror.url, settings=patient))
        download_all([CatalogEntry(v) for v in ids], plan(clean, mirror.url, settings=patient))
    assert_no_secret(files_under(killed), stdout.decode(), stderr.decode(), *command_lines)
    assert relative_files(killed) == relative_files(clean)
    assert row_facts(killed) == row_facts(clean)
    assert row_facts(clean)["gone01"][:2] == ("failed", "not_found") and len(row_facts(clean)) == len(ids)


def done_count(out: Path) -> int:
    path = out / schema.MANIFEST_FILE
    if not path.exists():
        return 0
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=1) as db:
            return db.execute("SELECT COUNT(*) FROM videos WHERE status = 'done'").fetchone()[0]
    except sqlite3.OperationalError:
        return 0


def read_command_lines() -> list[str]:
    """Every process's command line visible to us (the password must never be in one)."""
    lines = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                lines.append((entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"))
            except OSError:
                pass
    return lines


def relative_files(out: Path) -> dict[str, bytes]:
    return {str(path.relative_to(out)): path.read_bytes() for path in out.glob("*/*") if path.parent.name != ".partial"}


def row_facts(out: Path) -> dict[str, tuple]:
    return {video_id: (row.status, row.failure_kind, row.path, row.bytes, row.duration, row.source)
            for video_id, row in manifest_rows(out).items()}


def test_ytdlp_fetches_urls_and_maps_errors(library: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "videos"
    with LoopbackMirror(library, faults={"deny01": "auth"}) as mirror:
        id_file = tmp_path / "urls.txt"
        id_file.write_text(f"{mirror.url}/good02.mp4\n{mirror.url}/nothere.mp4\n{mirror.url}/deny01.mp4\n"
                           f"https://www.youtube.com/watch?v=good02\n")  # same id as the first URL: fetched once
        code = cli_main(["download", "--ids", str(id_file), "--out", str(out), "--source", "youtube",
                         "--workers", "2"])
    assert code == 0
    rows = manifest_rows(out)
    assert {v: (r.status, r.failure_kind, r.source) for v, r in rows.items()} == {
        "good02": ("done", None, "url"), "nothere": ("failed", "not_found", "url"),
        "deny01": ("failed", "auth", "url")}
    assert (out / "go" / "good02.mp4").read_bytes() == source_file(library, "good02").read_bytes()
    assert "HTTP Error 404" in rows["nothere"].error
    printed = capsys.readouterr().out
    assert manifest_summary(out) in printed
    assert cli_main(["status", str(out)]) == 0 and manifest_summary(out) in capsys.readouterr().out


@pytest.mark.parametrize("text, kind", [
    ("[youtube] abc: Video unavailable. This video has been removed by the uploader", "unavailable"),
    ("[youtube] abc: Private video. Sign in if you've been granted access to this video", "unavailable"),
    ("[youtube] abc: Sign in to confirm you're not a bot. Use --cookies-from-browser", "bot"),
    ("[youtube] abc: Sign in to confirm your age. This video may be inappropriate", "auth"),
    ("[generic] x: Unable to download webpage: HTTP Error 404: Not Found", "not_found"),
    ("[generic] x: Unable to download webpage: <urlopen error timed out>", "timeout"),
    ("[generic] x: Unable to download webpage: HTTP Error 503: Service Unavailable", "network"),
    ("Something nobody anticipated", "error"),
])
def test_ytdlp_error_texts_map_to_kinds(text: str, kind: str) -> None:
    assert classify_ytdlp_error(text) == kind


def test_sources_per_record_and_mode(tmp_path: Path) -> None:
    base = dict(out=tmp_path, mirror_url="http://127.0.0.1:1")
    assert sources_for(CatalogEntry("a"), DownloadPlan(source="auto", **base)) == ("mirror", "youtube")
    assert sources_for(CatalogEntry("a"), DownloadPlan(source="mirror", **base)) == ("mirror",)
    assert sources_for(CatalogEntry("a"), DownloadPlan(source="youtube", **base)) == ("youtube",)
    assert sources_for(CatalogEntry("a"), DownloadPlan(out=tmp_path, source="auto")) == ("youtube",)
    assert sources_for(CatalogEntry("a", "http://h/a.mp4"), DownloadPlan(source="mirror", **base)) == ("url",)


def test_credentials_from_file_or_environment_and_redaction(tmp_path: Path, capsys) -> None:
    path = tmp_path / "credentials.txt"
    path.write_text(f"{USER}:{PASSWORD}:with-colon\n")
    path.chmod(0o644)
    credentials = load_credentials(path, environ={})
    assert credentials == Credentials(USER, f"{PASSWORD}:with-colon")
    assert "readable by other users" in capsys.readouterr().err
    path.chmod(0o600)
    load_credentials(path, environ={})
    assert capsys.readouterr().err == ""
    assert PASSWORD not in repr(credentials) and PASSWORD not in str(credentials)
    token = credentials.basic_token()
    text = redact(f"Authorization: Basic {token} pw={PASSWORD}:with-colon", credentials)
    assert PASSWORD not in text and token not in text and text.count("***") == 2
    env = {"HOWTO100M_USER": "u", "HOWTO100M_PASSWORD": "p"}
    assert load_credentials(None, environ=env) == Credentials("u", "p")
    assert load_credentials(None, environ={}) is None
    with pytest.raises(UserError):
        load_credentials(None, environ={"HOWTO100M_USER": "u"})
    path.write_text("no-colon-here\n")
    with pytest.raises(UserError, match="username:password"):
        load_credentials(path, environ={})


@pytest.mark.parametrize("extra, message", [
    (["--csv", "{tmp}/missing.csv"], "does not exist"),
    (["--ids", "{tmp}/empty.txt"], "holds no video ids"),
    (["--ids", "{tmp}/ids.txt", "--mirror-url", "ftp://host/x"], "must be an http(s) URL"),
    (["--ids", "{tmp}/ids.txt", "--mirror-url", "http://user:pw@host/x"], "must not hold credentials"),
    (["--ids", "{tmp}/ids.txt", "--source", "mirror"], "needs --mirror-url"),
    (["--ids", "{tmp}/ids.txt", "--mirror-url", "http://127.0.0.1:9", "--credentials", "{tmp}/nope.txt"],
     "cannot read the credentials file"),
    (["--ids", "{tmp}/ids.txt", "--cookies", "{tmp}/nope.txt"], "cookies file"),
])
def test_bad_input_exits_2_with_one_line(tmp_path: Path, capsys, extra: list[str], message: str) -> None:
    (tmp_path / "empty.txt").write_text("\n# nothing\n")
    (tmp_path / "ids.txt").write_text("abc\n")
    argv = ["download", "--out", str(tmp_path / "out")] + [item.format(tmp=tmp_path) for item in extra]
    assert cli_main(argv) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and message in err and "Traceback" not in err


@pytest.fixture
def small_filesystem(tmp_path: Path):
    """A real 160 KiB tmpfs (root can mount one; elsewhere the test cannot run and says so)."""
    mount = tmp_path / "small"
    mount.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=160k", "tmpfs", str(mount)], capture_output=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", str(mount)], check=False)


def test_full_disk_stops_the_run_and_blames_no_video(library: Path, small_filesystem: Path, capsys) -> None:
    out = small_filesystem / "videos"
    ids = small_filesystem.parent / "ids.txt"
    wanted = ["good01", "good02", "late01", "late02", "late03", "late04"]
    ids.write_text("\n".join(wanted) + "\n")
    credentials = small_filesystem.parent / "credentials.txt"
    credentials.write_text(f"{USER}:{PASSWORD}\n")
    credentials.chmod(0o600)
    (small_filesystem / "filler").write_bytes(b"\0" * 100_000)  # leaves room for the manifest and a video or two
    with LoopbackMirror(library, (USER, PASSWORD)) as mirror:
        args = ["download", "--ids", str(ids), "--out", str(out), "--source", "mirror", "--mirror-url", mirror.url,
                "--credentials", str(credentials), "--workers", "0"]
        code = cli_main(args)
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 5 and err[-1].startswith("howto-prep: system fault:"), err
        assert "Traceback" not in "\n".join(err)
        rows = manifest_rows(out) if (out / schema.MANIFEST_FILE).exists() else {}
        assert not [row for row in rows.values() if row.status == "failed"]  # no video blamed
        (small_filesystem / "filler").unlink()
        subprocess.run(["mount", "-o", "remount,size=20m", str(small_filesystem)], check=True)
        assert cli_main(args) == 0  # the rerun continues; no --retry-failed needed
    assert {video: row.status for video, row in manifest_rows(out).items()} == {video: "done" for video in wanted}


def test_no_task_argument_or_ray_log_carries_the_password(library: Path, tmp_path: Path) -> None:
    """Workers read the credentials from the file themselves: the pickled task argument holds only its
    path, and nothing Ray wrote during a real run (session logs) holds the password in any form."""
    import pickle

    import ray

    from howto_prep.download.task import FetchJob

    work = plan(tmp_path / "videos", "http://127.0.0.1:9")
    job = FetchJob(CatalogEntry("good01"), str(work.out), ("mirror",), work.mirror_url, work.credential_source, None)
    assert_no_secret([], pickle.dumps(job).decode("latin-1"))
    with LoopbackMirror(library, (USER, PASSWORD)) as mirror:
        summary = download_all([CatalogEntry(video_id) for video_id in IDS[:3]], plan(tmp_path / "videos", mirror.url))
    assert summary.done >= 2  # good01, good02 (and trans1 once its transient faults are retried)
    session = Path(ray._private.worker._global_node.get_session_dir_path())
    logs = [path for path in session.rglob("*") if path.is_file() and path.stat().st_size < 50_000_000]
    assert logs
    assert_no_secret(logs)


# ------------------------------------------------------------------ the driver at HowTo100M's size
def seed_manifest(out: Path) -> None:
    """done1 (file present), gone1 (done, file deleted), fail1, pend1, and other (not in the catalog)."""
    (out / "do").mkdir(parents=True)
    (out / "do" / "done1.mp4").write_bytes(b"x")
    with Manifest(out) as manifest:
        manifest.add_pending(["done1", "gone1", "fail1", "pend1", "other"], "mirror")
        manifest.mark_done("done1", "mirror", "do/done1.mp4", 1, 1.0, 1)
        manifest.mark_done("gone1", "mirror", "go/gone1.mp4", 1, 1.0, 1)
        manifest.mark_failed("fail1", "mirror", FailureKind.NOT_FOUND, "404", 1)


@pytest.mark.parametrize("retry_failed", [False, True])
def test_select_work_keeps_the_rules_of_a_rerun(tmp_path: Path, retry_failed: bool) -> None:
    """New and pending ids are fetched (new ones registered as pending), done ones skipped unless their file
    vanished (then pending again); --retry-failed takes only the failed ones and registers nothing new."""
    out = tmp_path / "videos"
    seed_manifest(out)
    catalog = Catalog.from_ids(["new1", "done1", "gone1", "fail1", "pend1", "new1", "new2"])
    with Manifest(out) as manifest:
        work = select_work(catalog, manifest, plan(out, "http://127.0.0.1:9", retry_failed=retry_failed))
        picked = [entry.video_id for entry in catalog.entries(work)]
        rows = {row.video_id: row for row in manifest.rows()}
    if retry_failed:
        assert picked == ["fail1"] and set(rows) == {"done1", "gone1", "fail1", "pend1", "other"}
    else:
        assert picked == ["new1", "gone1", "pend1", "new2"]
        assert (rows["new1"].status, rows["new1"].source, rows["new2"].status) == ("pending", "mirror", "pending")
    assert (rows["gone1"].status, rows["gone1"].path) == ("pending", None)
    assert (rows["done1"].status, rows["fail1"].status, rows["other"].status) == ("done", "failed", "pending")


def test_the_driver_holds_no_object_per_video_before_the_first_task(tmp_path: Path, monkeypatch) -> None:
    """200k ids (a sixth of HowTo100M): what the driver allocates up to its first fetch (selecting the work,
    registering 200k pending rows, starting the job stream) stays ~4 MB on a first run and ~10 MB on a
    rerun that scans a full manifest (a batch of rows, the catalog's sorted index); the old lists of
    rows, tuples and jobs took 42 and 93 MB here."""
    from howto_prep.download import command

    class FirstFetch(BaseException):
        pass

    peaks = []

    def first_fetch(job):  # type: ignore[no-untyped-def]
        peaks.append(tracemalloc.get_traced_memory()[1])
        raise FirstFetch

    monkeypatch.setattr(command, "fetch_video", first_fetch)
    catalog = Catalog.from_ids(f"v{index:010d}" for index in range(200_000))
    out = tmp_path / "videos"
    for _ in range(2):  # a first run, then a rerun over 200k pending rows
        tracemalloc.start()
        try:
            with pytest.raises(FirstFetch):
                download_all(catalog, plan(out, "http://127.0.0.1:9", workers=0))
        finally:
            tracemalloc.stop()
    assert len(peaks) == 2 and max(peaks) < 20_000_000, peaks
    with Manifest(out) as manifest:
        assert manifest.counts() == [("pending", "", 200_000, 0)]


def fake_fetch(nodes: list[tuple[str, str]]):  # type: ignore[no-untyped-def]
    """A fetch that answers at once, from the given (ip, node id)s in turn: even ids done, odd ones failed."""
    calls = []

    def fetch(job: FetchJob) -> FetchResult:
        ip, node = nodes[len(calls) % len(nodes)]
        calls.append(job.record.video_id)
        if len(calls) % 2:
            return FetchResult(job.record.video_id, True, "mirror", f"{job.record.video_id[:2]}/x.mp4", 1_000_000,
                               2.0, attempts=1, node_ip=ip, node_id=node)
        return FetchResult(job.record.video_id, False, "mirror", failure_kind=FailureKind.NOT_FOUND, error="404",
                           attempts=1, node_ip=ip, node_id=node)

    return fetch


def test_the_summary_reports_each_node_when_several_took_part(tmp_path: Path, monkeypatch, capsys) -> None:
    from howto_prep.download import command

    ids = tmp_path / "ids.txt"
    ids.write_text("".join(f"vid{index}\n" for index in range(5)))
    args = ["download", "--ids", str(ids), "--source", "youtube", "--workers", "0"]
    monkeypatch.setattr(command, "fetch_video", fake_fetch([("10.0.0.2", "b" * 56), ("10.0.0.1", "a" * 56)]))
    assert cli_main(args + ["--out", str(tmp_path / "two")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("this run: 3 done, 2 failed, 0 already recorded, 3.0 MB in ")
    assert lines[1:3] == ["  node 10.0.0.1 (aaaaaaaa): 0 done, 2 failed, 0.0 MB",  # sorted by IP
                          "  node 10.0.0.2 (bbbbbbbb): 3 done, 0 failed, 3.0 MB"]
    assert lines[3].startswith("status ")  # then the manifest summary, as before
    monkeypatch.setattr(command, "fetch_video", fake_fetch([("10.0.0.1", "a" * 56)]))
    assert cli_main(args + ["--out", str(tmp_path / "one")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("this run: 3 done, 2 failed") and lines[1].startswith("status ")  # one node: no lines


def test_each_result_names_the_ray_node_it_ran_on(library: Path, tmp_path: Path) -> None:
    import ray

    from howto_prep.cluster import init_ray

    init_ray(None)
    with LoopbackMirror(library, (USER, PASSWORD)) as mirror:
        summary = download_all([CatalogEntry("good01"), CatalogEntry("gone02")], plan(tmp_path / "videos", mirror.url))
    node = ray.get_runtime_context().get_node_id()
    assert summary.nodes == {node: NodeTally(ray.util.get_node_ip_address(), done=1, failed=1,
                                             bytes=summary.bytes)}
    assert summary.bytes > 0 and summary.node_lines() == []  # one node: the totals say it all
