"""The chaos benchmark, small: kills, a killed actor and a concurrent run change nothing in the result.

Opt-in (`pytest -m chaos`, or `make bench`): at 70 s it does not fit `make test`'s 15 minutes on 2
cores. Each fault it combines has its own test in the suite: kill -9 then rerun (test_extract,
test_download, test_extract_object_store), a killed and a hung model actor (test_failure_semantics),
a second run on the same output (test_extract, test_extract_object_store, test_gcs_object_store)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.chaos


def test_chaos_run_equals_the_clean_run():
    result = subprocess.run([sys.executable, str(REPO / "bench" / "bench_chaos.py"), "--videos", "6", "--kills", "1"],
                            cwd=REPO, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    verdicts = {" ".join(line.split()[:-1]): line.split()[-1] for line in result.stdout.splitlines() if line.strip()}
    assert verdicts["samples equal member for member, byte for byte"] == "yes"
    assert verdicts["every id: same status and kind as the clean run"] == "yes"
