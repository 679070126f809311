"""The Trainer and `mft-train pretrain`: learning, checkpoints, exact resume, bad input."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
import torch

from mft_train.cli import main
from mft_train.presets import load_config
from mft_train.training.distributed import DistInfo
from mft_train.training.pretrain import ShardStream, train
from mft_train.training.trainer import Trainer
from shard_fixtures import write_shard_set

SINGLE = DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
TINY = [
    "model.width=32", "model.heads=2", "model.embed_dim=32",
    "model.davenet_widths=[8, 8, 8, 8, 8, 8]", "model.davenet_depths=[1, 1, 1, 1, 1, 1]",
    "data.clips_per_video=2", "data.workers=0", "data.shuffle_buffer=8",
    "train.batch=4", "train.device=cpu", "train.log_every=1", "train.cpu_threads=1",
]


@pytest.fixture(scope="module")
def shard_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("shards")
    write_shard_set(root, videos=8, shards=2, topics=2)
    return root


def tiny_config(*overrides: str) -> dict:
    return load_config("eao_small", TINY + list(overrides))


def test_a_short_run_lowers_the_loss(shard_dir, tmp_path):
    config = tiny_config("train.lr=1e-3", "train.epochs=1", "train.steps_per_epoch=24", "train.checkpoint_every=100")
    result = train(config, shard_dir, tmp_path / "run", SINGLE)
    losses = result.losses
    assert len(losses) == 24 and all(torch.isfinite(torch.tensor(losses)))
    first, last = sum(losses[:4]) / 4, sum(losses[-4:]) / 4
    assert last < 0.8 * first, f"loss did not fall enough: {first:.3f} -> {last:.3f}"
    # 8 clips per step: matching at chance gives about 2 ln 8 per term (both directions summed)
    assert last < 2 * math.log(8), f"final loss {last:.3f} is not below chance"


def test_resume_reproduces_the_uninterrupted_run(shard_dir, tmp_path):
    overrides = ("train.epochs=3", "train.steps_per_epoch=2", "train.checkpoint_every=3", "train.lr=1e-3", "train.lr_gamma=0.5")
    whole = train(tiny_config(*overrides), shard_dir, tmp_path / "whole", SINGLE)
    assert len(whole.losses) == 6

    first = train(tiny_config(*overrides), shard_dir, tmp_path / "split", SINGLE, max_steps=3)
    assert first.last_step == 3 and first.losses == whole.losses[:3]
    (tmp_path / "split" / "metrics.jsonl").open("a").write(json.dumps({"step": 4, "loss": -1.0}) + "\n")  # a dead run's tail
    second = train(tiny_config(*overrides), shard_dir, tmp_path / "split", SINGLE, resume=True)
    assert (second.first_step, second.last_step) == (3, 6)
    assert second.losses == whole.losses[3:]  # exactly, not approximately

    lines = [json.loads(line) for line in (tmp_path / "split" / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == [1, 2, 3, 4, 5, 6]
    assert [line["loss"] for line in lines] == whole.losses
    # ExponentialLR steps once per epoch (2 steps): lr = 1e-3 * 0.5 ** epoch
    assert [line["lr"] for line in lines] == pytest.approx([1e-3, 1e-3, 5e-4, 5e-4, 2.5e-4, 2.5e-4])


def test_checkpoint_holds_the_full_training_state(shard_dir, tmp_path):
    config = tiny_config("train.epochs=1", "train.steps_per_epoch=2", "train.checkpoint_every=1", "train.keep_checkpoints=1")
    result = train(config, shard_dir, tmp_path / "run", SINGLE)
    files = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())
    assert files == ["step-000000002.pt"]  # pruned to one, no temp file left
    state = torch.load(result.checkpoint, weights_only=True)
    assert {"model", "optimizer", "scheduler", "objective", "rng", "step", "epoch", "config"} <= set(state)
    assert state["step"] == 2 and state["epoch"] == 1 and state["config"] == config.to_dict()
    assert state["scheduler"]["last_epoch"] == 1 and len(state["optimizer"]["state"]) > 0
    rerun = Trainer(config, ShardStream(shard_dir, config, SINGLE), tmp_path / "run", SINGLE)
    rerun.resume()
    assert all(torch.equal(a, b) for a, b in zip(rerun.model.state_dict().values(), state["model"].values()))
    # Checkpoints of older versions also hold the (always disabled) GradScaler's state: still readable.
    state["scaler"] = {"scale": 65536.0, "growth_factor": 2.0, "backoff_factor": 0.5, "growth_interval": 2000}
    torch.save(state, result.checkpoint)
    older = Trainer(config, ShardStream(shard_dir, config, SINGLE), tmp_path / "run", SINGLE)
    assert older.resume() == result.checkpoint and older.step == 2


def test_cli_pretrain_writes_a_run_and_refuses_to_overwrite_it(shard_dir, tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["pretrain", "--shards", str(shard_dir), "--out", str(out), "--config", "eao_small"]
    sets = [arg for item in TINY + ["train.epochs=1", "train.steps_per_epoch=2"] for arg in ("--set", item)]
    assert main(argv + sets) == 0
    assert (out / "config.yaml").is_file() and (out / "checkpoints" / "step-000000002.pt").is_file()
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 2
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))
    capsys.readouterr()
    assert main(argv + sets) == 2
    assert "pass --resume" in capsys.readouterr().err
    assert main(argv + sets + ["--resume"]) == 0
    assert "nothing to do" in capsys.readouterr().err


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--shards", "{tmp}/missing"], "shard directory .* does not exist"),
        (["--config", "no_such_preset"], "unknown preset 'no_such_preset'"),
        (["--set", "train.epochs=many"], "train.epochs must be a int"),
        (["--set", "model.depth=3"], "unknown EAO model setting"),
    ],
)
def test_cli_bad_input_exits_2_with_one_line(shard_dir, tmp_path, capsys, extra, message):
    args = {"--shards": str(shard_dir), "--out": str(tmp_path / "run"), "--config": "eao_small"}
    sets = []
    for flag, value in zip(extra[::2], extra[1::2]):
        if flag == "--set":
            sets += [flag, value]
        else:
            args[flag] = value.format(tmp=tmp_path)
    argv = ["pretrain"] + [item for pair in args.items() for item in pair] + sets + ["--set", "train.device=cpu"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert err.startswith("mft-train: error: ")
    import re

    assert re.search(message, err)


def test_console_script_reports_a_missing_shard_dir_without_traceback(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "mft_train.cli", "pretrain", "--shards", str(tmp_path / "nope"), "--out", str(tmp_path / "run")],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [f"mft-train: error: shard directory {tmp_path / 'nope'} does not exist"]


def test_cosine_schedule_warms_up_then_decays_per_step(shard_dir, tmp_path):
    config = tiny_config("train.schedule=cosine", "train.warmup_steps=2", "train.lr=1e-3",
                         "train.epochs=2", "train.steps_per_epoch=3", "train.checkpoint_every=100")
    train(config, shard_dir, tmp_path / "run", SINGLE)
    lrs = [json.loads(line)["lr"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    # step s (0-based) uses 1e-3 * (s + 1) / 2 while s < 2, then 1e-3 * (1 + cos(pi * (s - 2) / 4)) / 2
    expected = [1e-3 * (s + 1) / 2 if s < 2 else 1e-3 * 0.5 * (1 + math.cos(math.pi * (s - 2) / 4)) for s in range(6)]
    assert lrs == pytest.approx(expected)


def test_mcn_pretrains_through_the_trainer_with_its_cluster_state(shard_dir, tmp_path):
    from mft_train.models import build_model
    from mft_train.models.mcn import MCN

    config = load_config("mcn_small", ["model.embed_dim=16", "model.audio_hidden=8", "model.recon_hidden=8",
                                       "model.davenet_widths=[8, 8, 8, 8]", "data.workers=0", "data.clips_per_video=2",
                                       "train.batch=4", "train.device=cpu", "train.cpu_threads=1", "loss.clusters=2",
                                       "loss.queue_size=16", "loss.refit_every=2", "train.epochs=1",
                                       "train.steps_per_epoch=4", "train.checkpoint_every=100"])
    model = build_model(config.model)  # an error here fails the test: MCN must build from its preset
    assert isinstance(model, MCN) and sum(p.numel() for p in model.parameters()) > 0
    result = train(config, shard_dir, tmp_path / "run", SINGLE)
    assert len(result.losses) == 4 and all(math.isfinite(v) for v in result.losses)
    state = torch.load(result.checkpoint, weights_only=True)["objective"]
    assert state["step"] == 4 and state["centroids"] is not None and state["centroids"].shape == (2, 16)
