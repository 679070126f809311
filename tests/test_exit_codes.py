"""Each exit status says one thing (README, "Failures, exit codes, one writer per output").

Codes already checked end to end elsewhere: 0 (most CLI tests), 1 (test_failure_semantics: verify
mismatch), 2 (test_engine, test_extract, ...), 3 (test_doctor: broken native library), 4
(test_failure_semantics: output locked), 5 (test_download, test_ray_address, test_storage_faults),
130 (test_failure_semantics: SIGTERM during extract). Here: 6 (a diverged training run), the error
hierarchy every entry point relies on, and `positive_int` refusing 0.
"""

from __future__ import annotations

import argparse
import io
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest

from howto_prep import errors
from howto_prep.cli import build_parser
from howto_prep.cli_support import run_handler
from shard_fixtures import rewrite_member, write_shard_set

TOOL_ERRORS = {  # class name -> (exit code, the label the entry point prints)
    "UserError": (2, "error"),
    "OutputLocked": (4, "error"),
    "SystemFault": (5, "system fault"),
    "Diverged": (6, "diverged"),
    "Interrupted": (130, "stopped"),
}


def raise_given(args: argparse.Namespace) -> int:
    """A subcommand handler that fails with the error the test hands it."""
    raise args.error


@pytest.mark.parametrize("name", sorted(TOOL_ERRORS))
def test_each_tool_error_is_its_own_kind_with_its_own_code(name: str) -> None:
    """A system fault, a stop or a diverged run is no "bad input": `except UserError` must not catch it."""
    cls = getattr(errors, name)
    assert cls.__bases__ == (errors.ToolError,)
    assert cls is errors.UserError or not issubclass(cls, errors.UserError)
    assert cls.exit_code == TOOL_ERRORS[name][0] and cls.exit_code in set(errors.ExitCode)


@pytest.mark.parametrize("name", sorted(TOOL_ERRORS))
def test_the_entry_point_prints_one_line_and_the_code(name: str, capsys: pytest.CaptureFixture) -> None:
    code, label = TOOL_ERRORS[name]
    args = argparse.Namespace(handler=f"{__name__}:raise_given", error=getattr(errors, name)("what happened"))
    assert run_handler("mft-train", args) == code
    assert capsys.readouterr().err == f"mft-train: {label}: what happened\n"


@pytest.mark.parametrize("argv", [
    ["synth", "--out", "x", "--videos", "0"],
    ["download", "--ids", "x", "--out", "y", "--limit", "0"],
    ["extract", "--videos", "x", "--out", "y", "--limit", "0"],
    ["extract", "--videos", "x", "--out", "y", "--failure-storm", "0"],
])
def test_positive_int_refuses_zero(argv: list[str], capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as stopped:
        build_parser().parse_args(argv)
    assert stopped.value.code == errors.ExitCode.USAGE
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert f"argument {argv[-2]}: must be >= 1: '0'" in last


@pytest.mark.parametrize("argv, option, value", [
    (["synth", "--out", "x", "--heldout", "0"], "heldout", 0),
    (["mirror", "--root", "x", "--port", "0"], "port", 0),
    (["download", "--ids", "x", "--out", "y", "--workers", "0"], "workers", 0),
    (["extract", "--videos", "x", "--out", "y", "--gpus", "0"], "gpus", 0),
    (["extract", "--videos", "x", "--out", "y", "--workers", "0"], "workers", 0),
])
def test_options_where_zero_means_something_still_take_it(argv: list[str], option: str, value: int) -> None:
    """0 is a choice for these (no held-out set, a free port, no Ray, a CPU actor, automatic)."""
    assert getattr(build_parser().parse_args(argv), option) == value


def poison_every_video(shards: Path) -> None:
    """NaN 2D features for every video, so the first step's loss is NaN whatever the batch order."""
    from howto_prep import schema
    from howto_prep.shards import npy_bytes

    for tar in sorted(shards.glob("*.tar")):
        with tarfile.open(tar) as archive:
            names = [name for name in archive.getnames() if name.endswith("." + schema.RESNET152.field)]
            arrays = {name: np.load(io.BytesIO(archive.extractfile(name).read())) for name in names}
        for name, features in arrays.items():
            rewrite_member(tar, name, npy_bytes(np.full_like(features, np.nan)))


def test_a_non_finite_loss_exits_6_with_one_line_and_saves_nothing(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from mft_train.cli import main

    shards, out = tmp_path / "shards", tmp_path / "run"
    write_shard_set(shards, videos=4, shards=1, topics=2)
    poison_every_video(shards)
    settings = ["model.width=32", "model.heads=2", "model.embed_dim=32",
                "model.davenet_widths=[8, 8, 8, 8, 8, 8]", "model.davenet_depths=[1, 1, 1, 1, 1, 1]",
                "data.clips_per_video=2", "data.workers=0", "train.batch=4", "train.device=cpu",
                "train.cpu_threads=1", "train.epochs=1", "train.steps_per_epoch=2", "train.checkpoint_every=1"]
    argv = ["pretrain", "--shards", str(shards), "--out", str(out), "--config", "eao_small"]
    assert main(argv + [arg for item in settings for arg in ("--set", item)]) == 6
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("mft-train: diverged: the loss became nan at step 1"), err
    assert not list(out.rglob("*.pt"))  # the NaN step's weights are not saved


@pytest.mark.parametrize("argv", [
    ["howto_prep.cli", "extract", "--videos", "videos", "--captions", "c.json", "--out", "http://howto/shards"],
    ["howto_prep.cli", "download", "--ids", "ids.txt", "--out", "ftp://howto/videos"],
    ["howto_prep.cli", "verify", "http://howto/shards"],
    ["mft_train.cli", "pretrain", "--shards", "ftp://howto/shards", "--out", "runs/x"],
])
def test_an_object_storage_url_is_refused_not_taken_as_a_local_folder(argv, tmp_path):
    """`--out s3://b/p` once wrote a local folder ./s3:/b/p and exited 0; a scheme that is no object
    store we write to (http://, ftp://) is still refused that way."""
    result = subprocess.run([sys.executable, "-m", *argv], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "URLs are not supported" in result.stderr and "Traceback" not in result.stderr
    assert not any(tmp_path.glob("*:"))
