"""Where Ray runs: --address, else RAY_ADDRESS, else a new local Ray, whatever `ray start` left behind.

Run through the real CLI with a real Ray. Each run gets its own Ray temp folder (RAY_TMPDIR, short
so that Ray's socket paths fit), so the current-cluster file written here is seen by nobody else.
Joining a live `ray start` cluster through RAY_ADDRESS or `--address auto` is tested on the 3-node
cluster of tests/test_multinode.py (a separate `ray start --head` here cost 42 s of the suite).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def ray_tmpdir():
    folder = Path(tempfile.mkdtemp(prefix="r", dir="/tmp"))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def extract(synth_corpus, out: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "howto_prep.cli", "extract", "--videos", str(synth_corpus.videos_dir),
               "--captions", str(synth_corpus.captions), "--word2vec", str(synth_corpus.word2vec),
               "--features", "logmel,tokens", "--limit", "1", "--out", str(out)]
    clean = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300, env={**clean, **env})


def test_a_stale_ray_start_file_does_not_stop_the_local_default(synth_corpus, tmp_path, ray_tmpdir):
    """A crashed `ray start` leaves ray_current_cluster naming a dead head: the default still runs locally."""
    ray_dir = ray_tmpdir / "ray"
    ray_dir.mkdir()
    (ray_dir / "ray_current_cluster").write_text("127.0.0.1:1\n")
    result = extract(synth_corpus, tmp_path / "out", {"RAY_TMPDIR": str(ray_tmpdir)})
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Traceback" not in result.stderr


def test_an_unreachable_ray_address_is_one_line_and_exit_5(synth_corpus, tmp_path, ray_tmpdir):
    result = extract(synth_corpus, tmp_path / "out", {"RAY_TMPDIR": str(ray_tmpdir), "RAY_ADDRESS": "127.0.0.1:1"})
    assert result.returncode == 5, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("howto-prep: system fault: cannot join the Ray cluster at 127.0.0.1:1 (from RAY_ADDRESS)"), last
