"""Two gloo processes under torchrun train like one process on the same global batch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import global_batchnorm
from mft_train.presets import load_config
from mft_train.training import distributed
from mft_train.training.distributed import DistInfo
from mft_train.training.pretrain import train
from shard_fixtures import rewrite_member, write_shard_set

SETTINGS = [
    "model.width=32", "model.heads=2", "model.embed_dim=32",
    "model.davenet_widths=[8, 8, 8, 8, 8, 8]", "model.davenet_depths=[1, 1, 1, 1, 1, 1]",
    "data.clips_per_video=2", "data.workers=0", "data.order=fixed",  # same global batches at any world size
    "train.batch=4", "train.device=cpu", "train.cpu_threads=1", "train.lr=1e-3",
    "train.epochs=1", "train.steps_per_epoch=2", "train.checkpoint_every=1",
    "train.sync_batchnorm=true",  # DAVEnet's BatchNorm over the global batch (tests/global_batchnorm.py on CPU)
]


def first_moments(run_dir: Path) -> dict[int, torch.Tensor]:
    state = torch.load(run_dir / "checkpoints" / "step-000000001.pt", map_location="cpu", weights_only=True)
    return {index: entry["exp_avg"] for index, entry in state["optimizer"]["state"].items()}


def losses(run_dir) -> list[float]:
    return [json.loads(line)["loss"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.timeout(300)
def test_two_gloo_ranks_match_one_process(tmp_path, monkeypatch):
    shards = tmp_path / "shards"
    write_shard_set(shards, videos=8, shards=2, topics=2)
    monkeypatch.setattr(distributed, "sync_batchnorm", global_batchnorm.convert_to_global_batchnorm)

    single = train(load_config("eao_small", SETTINGS), shards, tmp_path / "single",
                   DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu")))

    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               str(Path(global_batchnorm.__file__)), "pretrain", "--shards", str(shards), "--out", str(tmp_path / "ddp"),
               "--config", "eao_small"]
    command += [arg for item in SETTINGS for arg in ("--set", item)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(command, capture_output=True, text=True, timeout=280, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]

    ddp = losses(tmp_path / "ddp")
    assert len(ddp) == len(single.losses) == 2
    # step 1: same forward on the same global batch; step 2: also the same gradient update.
    # (Parameters are not compared one by one: the key bias of attention has an exactly-zero true
    # gradient, and Adam turns its rounding noise into +-lr steps that change no output.)
    assert ddp == pytest.approx(single.losses, abs=1e-5)
    assert (tmp_path / "ddp" / "checkpoints" / "step-000000002.pt").is_file()
    # Per parameter, the gradient of step 1: Adam's first moment after one step is exactly
    # (1 - beta1) * grad, so comparing it compares every gradient, scale included (halving each
    # gradient would give identical losses but half these values).
    one = first_moments(tmp_path / "single")
    two = first_moments(tmp_path / "ddp")
    assert one.keys() == two.keys() and len(one) > 20
    scale = max(float(m.abs().max()) for m in one.values())
    for index, moment in one.items():
        torch.testing.assert_close(two[index], moment, rtol=1e-4, atol=1e-6 * scale, msg=f"parameter {index}")
    assert "pretrain: steps 0->2" in proc.stderr  # rank 0 reports once
    assert proc.stderr.count("pretrain: steps") == 1


def poison_video(shards: Path, video_id: str) -> None:
    """Rewrite the tar holding `video_id` with NaN 2D features for it (a corrupted feature file)."""
    import io
    import tarfile

    import numpy as np

    from howto_prep import schema
    from howto_prep.shards import npy_bytes

    name = f"{video_id}.{schema.RESNET152.field}"
    for tar in sorted(shards.glob("*.tar")):
        with tarfile.open(tar) as archive:
            if name not in archive.getnames():
                continue
            features = np.load(io.BytesIO(archive.extractfile(name).read()))
        rewrite_member(tar, name, npy_bytes(np.full_like(features, np.nan)))
        return
    raise AssertionError(f"{video_id} is in no shard")


@pytest.mark.timeout(300)
def test_a_nan_loss_stops_every_rank_with_one_line(tmp_path):
    """The NaN comes from rank 1's share of the first global batch; every rank must stop after that
    step with the one line (before: rank 0 alone raised, rank 1 went on into the next collective)."""
    shards = tmp_path / "shards"
    made = write_shard_set(shards, videos=8, shards=2, topics=2)
    poison_video(shards, made["ids"][2])  # fixed order: global batch 1 = videos 0-3, rank 1 takes 2 and 3
    logs = tmp_path / "logs"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "--log-dir", str(logs), "--redirects", "2", str(Path(global_batchnorm.__file__)), "pretrain",
               "--shards", str(shards), "--out", str(tmp_path / "ddp"), "--config", "eao_small"]
    command += [arg for item in SETTINGS for arg in ("--set", item)]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=280, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode != 0  # torchrun's own status; its summary names the rank's: 6, a diverged run
    assert "exitcode  : 6 (pid" in proc.stderr and "exitcode  : 2 " not in proc.stderr, proc.stderr[-3000:]
    rank_logs = sorted(logs.rglob("stderr.log"))
    assert len(rank_logs) == 2, proc.stderr[-3000:]
    for log in rank_logs:
        text = log.read_text()
        assert "the loss became nan at step 1 (every rank stops here)" in text, text[-3000:]
        assert "Traceback" not in text, text[-3000:]
    assert not (tmp_path / "ddp" / "checkpoints" / "step-000000001.pt").exists()  # NaN weights are not saved


def rank_pids(parent: int) -> dict[int, int]:
    """{rank: pid} of torchrun's worker processes (read from their environment)."""
    found = {}
    for child in Path(f"/proc/{parent}/task/{parent}/children").read_text().split():
        try:
            environ = Path(f"/proc/{child}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        ranks = [item.split(b"=", 1)[1] for item in environ if item.startswith(b"RANK=")]
        if ranks:
            found[int(ranks[0])] = int(child)
    return found


@pytest.mark.timeout(300)
def test_sigterm_to_one_rank_stops_every_rank_after_the_same_step(tmp_path):
    """Only rank 0 gets SIGTERM: the stop rides the step's all_reduce, so both ranks stop after the same
    step, one checkpoint is written there, and neither rank is left waiting in a collective."""
    import signal
    import time

    shards = tmp_path / "shards"
    write_shard_set(shards, videos=8, shards=2, topics=2)
    logs, out = tmp_path / "logs", tmp_path / "ddp"
    settings = [item for item in SETTINGS if not item.startswith(("train.steps_per_epoch", "train.checkpoint_every"))]
    settings += ["train.steps_per_epoch=40", "train.checkpoint_every=100"]
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "--log-dir", str(logs), "--redirects", "2", str(Path(global_batchnorm.__file__)), "pretrain",
               "--shards", str(shards), "--out", str(out), "--config", "eao_small"]
    command += [arg for item in settings for arg in ("--set", item)]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    metrics = out / "metrics.jsonl"
    deadline = time.monotonic() + 240
    signalled = False
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if metrics.is_file() and len(metrics.read_text().splitlines()) >= 3:
                pids = rank_pids(proc.pid)
                if 0 in pids:
                    os.kill(pids[0], signal.SIGTERM)
                    signalled = True
                    break
            time.sleep(0.01)
        _, stderr = proc.communicate(timeout=120)  # a rank left waiting in a collective: never ends
    finally:
        if proc.poll() is None:
            for pid in rank_pids(proc.pid).values():
                os.kill(pid, signal.SIGKILL)
            proc.kill()
            proc.wait()
    assert signalled, stderr[-3000:]
    assert proc.returncode != 0
    rank_logs = {log.parent.name: log.read_text() for log in logs.rglob("stderr.log")}
    assert sorted(rank_logs) == ["0", "1"], stderr[-3000:]
    assert "stopped: SIGTERM after step" in rank_logs["0"], rank_logs["0"][-3000:]
    assert "stopped: a stop request on another rank after step" in rank_logs["1"], rank_logs["1"][-3000:]
    steps = {rank: int(text.split(" after step ")[1].split(";")[0]) for rank, text in rank_logs.items()}
    assert steps["0"] == steps["1"] < 40
    assert all("Traceback" not in text for text in rank_logs.values())
    assert (out / "checkpoints" / f"step-{steps['0']:09d}.pt").is_file()
