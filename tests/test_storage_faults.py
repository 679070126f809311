"""Faults of the output filesystem (full, over quota, read-only, file too large, I/O error) are system faults.

Real filesystems, real processes: a small tmpfs fills up (ENOSPC), a tmpfs or a bind mount is made
read-only (EROFS), RLIMIT_FSIZE caps a file's size (EFBIG). Each run must stop with exit 5 and one
line naming the path and the errno, leave no temporary file, blame no video, and a rerun after the
cause is gone must complete. Mounting needs root; elsewhere these tests skip and say why.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest

from howto_prep import shards
from howto_prep.download.manifest import Manifest
from howto_prep.errors import ExitCode, FailureKind, SystemFault
from howto_prep.files import atomic_write_bytes, file_sha256, is_temp_name
from howto_prep.synthetic.corpus import CorpusInfo
from howto_prep.synthetic.mirror_server import LoopbackMirror

REPO = Path(__file__).resolve().parents[1]
FEATURES = "logmel,tokens"  # no model actor: each run takes seconds


def cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "howto_prep.cli", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout)


def extract_args(corpus: CorpusInfo, out: Path, shard_size: str) -> list[str]:
    return ["extract", "--videos", str(corpus.videos_dir), "--captions", str(corpus.captions),
            "--word2vec", str(corpus.word2vec), "--out", str(out), "--features", FEATURES,
            "--shard-size", shard_size]


def mount(*args: str) -> None:
    result = subprocess.run(["mount", *args], capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount here (root and mount(8) are needed): {result.stderr.strip()}")


@contextmanager
def tmpfs(where: Path, size: str) -> Iterator[Path]:
    """A real tmpfs of `size` at `where`, unmounted afterwards."""
    where.mkdir(parents=True, exist_ok=True)
    mount("-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where))
    try:
        yield where
    finally:
        subprocess.run(["umount", str(where)], check=False)


def fill(filesystem: Path, leave: int = 0) -> Path:
    """Fill `filesystem` to the last byte, then give back `leave` bytes; returns the filler file."""
    filler = filesystem / "filler"
    with open(filler, "wb") as handle:
        try:
            while True:
                handle.write(b"\0" * 65536)
                handle.flush()
        except OSError:
            pass
    with open(filler, "rb+") as handle:
        handle.truncate(max(0, filler.stat().st_size - leave))
    return filler


def temp_files(root: Path) -> list[Path]:
    return [path for path in root.rglob("*") if is_temp_name(path.name)]


def assert_one_line_fault(result: subprocess.CompletedProcess, errno_name: str, path_part: str = "") -> str:
    """Exit 5 and one `howto-prep: system fault: output filesystem error on PATH: ERRNO (...)` line."""
    assert result.returncode == ExitCode.SYSTEM_FAULT, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    ours = [line for line in lines if line.startswith("howto-prep:")]
    assert len(ours) == 1 and ours[0] == lines[-1], result.stderr[-3000:]
    line = ours[0]
    assert line.startswith("howto-prep: system fault: output filesystem error on "), line
    assert f": {errno_name} (" in line and path_part in line, line
    return line


def assert_complete(corpus: CorpusInfo, out: Path, result: subprocess.CompletedProcess) -> None:
    """The rerun finished every video, the set verifies, and nothing temporary or orphaned is left."""
    assert result.returncode == 0, result.stderr[-3000:]
    assert shards.finished_keys(out) == set(corpus.video_ids)
    assert not shards.read_failures(out) and not temp_files(out) and not shards.unfinished_tars(out)
    verified = cli("verify", str(out))
    assert verified.returncode == 0, verified.stdout + verified.stderr


# ENOSPC ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("shard_size", ["1B", "10MB"], ids=["fault-between-shards", "fault-inside-a-shard"])
def test_full_disk_stops_extract_with_one_line_and_the_rerun_completes(tmp_path: Path, synth_corpus: CorpusInfo,
                                                                       shard_size: str) -> None:
    """1B: every sample closes its shard, so the disk fills while closing, hashing, writing a JSON, a
    vocabulary part or the index; 10MB: while writing a sample into the open tar (then closing it fails too)."""
    with tmpfs(tmp_path / "small", "300k") as filesystem:
        out = filesystem / "shards"
        result = cli(*extract_args(synth_corpus, out, shard_size))
        assert_one_line_fault(result, "ENOSPC", str(out))
        assert not temp_files(out) and not shards.read_failures(out)
        assert not shards.unfinished_tars(out)  # a tar whose JSON could not be written is removed too
        mount("-o", "remount,size=20m", str(filesystem))
        assert_complete(synth_corpus, out, cli(*extract_args(synth_corpus, out, shard_size)))


def test_shard_writer_faults_at_any_point_leave_whole_shards_and_no_temp_files(tmp_path: Path) -> None:
    """In-process, many fill levels: wherever the disk fills (a tar, a JSON, a part, the index,
    failures.jsonl), one SystemFault names the path and ENOSPC, and every shard that has its JSON is whole."""
    rng = np.random.default_rng(0)
    payloads = [rng.bytes(9000) for _ in range(8)]
    faulted: set[str] = set()  # which kinds of file the disk filled up on
    with tmpfs(tmp_path / "small", "256k") as filesystem:
        for leave in range(0, 120_000, 7_000):
            out = filesystem / f"out{leave}"
            out.mkdir()
            filler = fill(filesystem, leave)

            def part(shard_name: str, token_ids: set[int], out: Path = out) -> None:
                atomic_write_bytes(out / f"{shard_name}.part", json.dumps(sorted(token_ids)).encode() * 20)

            try:
                with shards.ShardWriter(out, max_bytes=20_000, before_json=part) as writer:
                    for index, payload in enumerate(payloads):
                        writer.write(f"video{index:02d}", {"bin": payload}, np.arange(index, index + 5), 1.0)
                        if index % 3 == 2:
                            shards.record_failure(out, f"bad{index:02d}", FailureKind.BAD_MEDIA, "x" * 500)
                shards.write_index(out)
            except SystemFault as fault:
                text = str(fault)
                assert text.startswith("output filesystem error on ") and ": ENOSPC (" in text, text
                path = Path(text.removeprefix("output filesystem error on ").split(": ")[0])
                faulted.add(path.suffix if path.name.startswith("shard-") else path.name)
            assert not temp_files(out), leave
            for record in shards.read_shard_records(out):  # a shard with a JSON is whole
                assert file_sha256(out / record["url"]) == record["sha256"]
            assert not shards.unfinished_tars(out), leave
            filler.unlink()
            shutil.rmtree(out)
    assert len(faulted) >= 3, faulted  # the sweep hit the fault in several places


def test_a_storage_fault_while_cleaning_up_after_a_fault_does_not_replace_it(tmp_path: Path) -> None:
    """What extract does on a system fault (keep the open shard's whole samples) meets a full disk: the
    shard is dropped without a trace and the first fault is the one that comes out."""
    with tmpfs(tmp_path / "small", "128k") as filesystem:
        out = filesystem / "out"
        with pytest.raises(SystemFault, match="^the first fault$"):
            with shards.ShardWriter(out, max_bytes=10**7) as writer:
                writer.write("video00", {"bin": b"x" * 3000}, np.arange(3), 1.0)  # still in the tar's buffer
                fill(filesystem)
                try:
                    raise SystemFault("the first fault")
                except SystemFault:
                    writer.keep_after_fault()  # the tar's last bytes do not fit
                    raise
        assert not temp_files(out) and not shards.read_shard_records(out) and not shards.unfinished_tars(out)


# EROFS -------------------------------------------------------------------------------------------

def test_read_only_output_is_one_line_and_the_rerun_completes(tmp_path: Path, synth_corpus: CorpusInfo) -> None:
    """The whole output read-only (the lock file cannot be opened), then a read-only vocab/parts folder
    (a bind mount) that fails mid-run, after a shard's tar is in place and before its JSON."""
    with tmpfs(tmp_path / "fs", "20m") as filesystem:
        out = filesystem / "shards"
        assert cli(*extract_args(synth_corpus, out, "1B"), "--limit", "2").returncode == 0
        mount("-o", "remount,ro", str(filesystem))
        try:
            result = cli(*extract_args(synth_corpus, out, "1B"))
        finally:
            mount("-o", "remount,rw", str(filesystem))
        assert_one_line_fault(result, "EROFS", ".howto-prep.lock")

        parts = out / "vocab" / "parts"
        mount("--bind", str(parts), str(parts))
        try:
            mount("-o", "remount,bind,ro", str(parts))
            result = cli(*extract_args(synth_corpus, out, "1B"))
        finally:
            subprocess.run(["umount", str(parts)], check=False)
        assert_one_line_fault(result, "EROFS", str(parts))
        assert not temp_files(out) and not shards.read_failures(out) and not shards.unfinished_tars(out)
        assert len(shards.finished_keys(out)) == 2
        assert_complete(synth_corpus, out, cli(*extract_args(synth_corpus, out, "1B")))


# EFBIG -------------------------------------------------------------------------------------------

# Ray's own processes need large files (its object store), so only the process that writes the shards,
# extract's agent, runs under RLIMIT_FSIZE (HOWTO_PREP_FAULT_FILE_SIZE_LIMIT, extract.agent), ignoring
# SIGXFSZ: writes past the limit fail with a real EFBIG from the kernel.

def test_file_size_limit_stops_extract_with_one_line_and_the_rerun_completes(tmp_path: Path,
                                                                             synth_corpus: CorpusInfo) -> None:
    out = tmp_path / "shards"
    args = extract_args(synth_corpus, out, "10MB")
    result = subprocess.run([sys.executable, "-m", "howto_prep.cli", *args], cwd=REPO, capture_output=True,
                            text=True, timeout=300, env={**os.environ, "HOWTO_PREP_FAULT_FILE_SIZE_LIMIT": "250000"})
    assert_one_line_fault(result, "EFBIG", str(out / "shard-000000.tar"))
    assert not temp_files(out) and not shards.read_failures(out) and not shards.unfinished_tars(out)
    assert_complete(synth_corpus, out, cli(*args))


# download ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("leave", [0, 8192, 300_000], ids=["no-room-for-the-lock", "no-room-for-the-manifest",
                                                           "no-room-for-the-videos"])
def test_download_onto_a_full_disk_is_one_line_and_the_rerun_completes(tmp_path: Path, synth_corpus: CorpusInfo,
                                                                      leave: int) -> None:
    ids = tmp_path / "ids.txt"
    ids.write_text("".join(f"{video_id}\n" for video_id in synth_corpus.video_ids))
    with tmpfs(tmp_path / "small", "2m") as filesystem, LoopbackMirror(synth_corpus.videos_dir) as mirror:
        out = filesystem / "videos"
        filler = fill(filesystem, leave)
        args = ["download", "--ids", str(ids), "--out", str(out), "--source", "mirror", "--mirror-url", mirror.url,
                "--workers", "0"]
        result = cli(*args)
        assert result.returncode == ExitCode.SYSTEM_FAULT, result.stderr[-3000:]
        assert "Traceback" not in result.stderr
        lines = [line for line in result.stderr.splitlines() if line.startswith("howto-prep:")]
        assert len(lines) == 1 and lines[0].startswith("howto-prep: system fault:"), result.stderr[-3000:]
        assert "ENOSPC" in lines[0] or "No space left" in lines[0] or "disk is full" in lines[0], lines[0]
        filler.unlink()
        done = cli(*args)
        assert done.returncode == 0, done.stderr[-3000:]
        with Manifest(out) as manifest:
            statuses = {row.video_id: row.status for row in manifest.rows()}
        assert statuses == dict.fromkeys(synth_corpus.video_ids, "done")
