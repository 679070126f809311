"""The environment self-test names a broken package in one sentence (and passes on the locked set)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def doctor(extra_path: Path | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    if extra_path is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(extra_path), env.get("PYTHONPATH", "")])
    return subprocess.run([sys.executable, "-m", "howto_prep.cli", "doctor", "--skip-ray"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)


def test_locked_environment_passes():
    result = doctor()
    assert result.returncode == 0, result.stderr
    assert "all checks passed" in result.stdout


def test_broken_native_library_is_one_named_sentence(tmp_path: Path):
    # A torchvision whose compiled library does not load, as a wheel built for another torch does.
    broken = tmp_path / "torchvision"
    broken.mkdir()
    (broken / "__init__.py").write_text(
        "raise OSError('_C.so: undefined symbol: torch_exception_get_what_without_backtrace')\n")
    result = doctor(tmp_path)
    assert result.returncode == 3
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "torchvision" in lines[0] and "undefined symbol" in lines[0] and "Traceback" not in result.stderr
