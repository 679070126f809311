"""mft-train finetune: the paper presets, a real fine-tuning run that lifts t->va R@1, bad input."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import pytest
import torch

from clip_shard_fixtures import pretrained_checkpoint, write_clip_set
from mft_train.cli import main
from mft_train.data.eval_sets import open_clip_set
from mft_train.evaluation.evaluate import evaluate_checkpoint
from mft_train.presets import load_config
from mft_train.training.checkpoints import load_checkpoint
from mft_train.training.finetune import rank_slice, steps_in_epoch

TOPICS = 8
EPOCHS = 2
FAST = ["--config", "eao_finetune_small", "--set", "train.device=cpu", "--set", f"train.epochs={EPOCHS}",
        "--set", "train.batch=8", "--set", "train.lr=1e-3", "--set", "data.video_tokens=15",
        "--set", "data.audio_frames=1024"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A tiny checkpoint pretrained on another "world", then a training and a held-out clip set of one world
    (same topics, different clips): what fine-tuning learns on one must carry over to the other."""
    root = tmp_path_factory.mktemp("finetune")
    checkpoint = pretrained_checkpoint(root)
    write_clip_set(root / "train", clips_per_topic=3, topics=TOPICS, seed=1, benchmark="msrvtt", length=(4.0, 9.0),
                   sentences=2, world_seed=7)
    write_clip_set(root / "val", clips_per_topic=1, topics=TOPICS, seed=2, benchmark="msrvtt", length=(4.0, 9.0),
                   sentences=2, world_seed=7)
    return {"root": root, "checkpoint": checkpoint, "train": root / "train", "val": root / "val"}


@pytest.fixture(scope="module")
def finetuned(setup: dict) -> dict:
    out = setup["root"] / "run"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = main(["finetune", "--init", str(setup["checkpoint"]), "--shards", str(setup["train"]),
                     "--eval-shards", str(setup["val"]), "--out", str(out), *FAST])
    assert code == 0
    return {"out": out, "results": json.loads((out / "results.json").read_text()), "printed": printed.getvalue()}


def test_presets_follow_the_papers_recipe() -> None:
    paper = {"eao_finetune_youcook2": (1e-5, 5, 256, 72, 4608), "eao_finetune_msrvtt": (5e-5, 25, 128, 48, 3072)}
    for preset, (lr, epochs, batch, tokens, frames) in paper.items():
        config = load_config(preset)
        train, data = config.train, config.data
        assert (train.lr, train.epochs, train.batch, data.video_tokens, data.audio_frames) == (lr, epochs, batch, tokens, frames)
        assert config.loss.weights == dict.fromkeys(("t_v", "t_a", "v_a", "t_va", "v_ta", "a_tv"), 1.0)
        assert train.optimizer == "adam" and train.lr_gamma == 0.9 and not data.audio_shift  # released ExponentialLR
    small = load_config("eao_finetune_small")
    assert small.loss.weights == load_config("eao_finetune_youcook2").loss.weights


def test_finetuning_raises_t_va_recall_on_held_out_clips(finetuned: dict, capsys: pytest.CaptureFixture) -> None:
    epochs = finetuned["results"]["epochs"]
    assert [row["epoch"] for row in epochs] == list(range(EPOCHS + 1))
    zero_shot = epochs[0]["results"]["t->va"]["R1"]
    best = max(row["results"]["t->va"]["R1"] for row in epochs[1:])
    chance = finetuned["results"]["chance_R1"]
    assert chance == pytest.approx(100.0 / TOPICS)
    assert best > zero_shot and best >= 4 * chance, (zero_shot, best)
    assert all(row["loss"] > 0 for row in epochs[1:])


def test_best_checkpoint_holds_the_best_epoch_and_frozen_batchnorm(setup: dict, finetuned: dict) -> None:
    out, results = finetuned["out"], finetuned["results"]
    best_state = load_checkpoint(out / "best.pt")
    best_row = results["epochs"][results["best_epoch"]]
    assert best_state["epoch"] == results["best_epoch"] and best_row["results"]["t->va"]["R1"] == max(
        row["results"]["t->va"]["R1"] for row in results["epochs"])
    # Evaluating best.pt again reproduces the metrics recorded for its epoch.
    again = evaluate_checkpoint(best_state, open_clip_set(setup["val"]))
    for combo, metrics in best_row["results"].items():
        for key, value in metrics.items():
            assert again["results"]["cosine"][combo][key] == pytest.approx(value), (combo, key)
    init = torch.load(setup["checkpoint"], map_location="cpu", weights_only=True)["model"]
    stats = [k for k in init if k.endswith(("running_mean", "running_var"))]
    assert stats and all(torch.equal(init[k], best_state["model"][k]) for k in stats)  # model kept in eval mode
    if results["best_epoch"] > 0:  # while the trained weights did move
        assert not torch.equal(init["heads.text.fc.weight"], best_state["model"]["heads.text.fc.weight"])
    assert len(list((out / "checkpoints").glob("step-*.pt"))) >= 1
    assert (out / "best-eval.json").is_file() and (out / "best-eval.png").read_bytes()[:4] == b"\x89PNG"
    # Per-query ranks for the best epoch and for every epoch evaluated (epoch 0 = before fine-tuning).
    best_lines = (out / "best-eval.queries.jsonl").read_text().splitlines()
    assert best_lines and all("ranks" in json.loads(line) or "missing" in json.loads(line) for line in best_lines)
    epochs = sorted(path.name for path in (out / "eval").glob("epoch-*.queries.jsonl"))
    assert epochs == [f"epoch-{row['epoch']:03d}.queries.jsonl" for row in results["epochs"]]


def test_results_table_is_printed_with_chance(finetuned: dict) -> None:
    printed = finetuned["printed"]
    assert f"chance R@1 = {100 / TOPICS:.2f}" in printed and "t->va R@1" in printed and "best epoch" in printed
    rows = [line.split() for line in printed.splitlines() if line.split()[:1] in (["0"], ["1"], ["2"])]
    assert [row[0] for row in rows] == ["0", "1", "2"]
    best = finetuned["results"]["best_epoch"]
    assert [row[-1] == "*" for row in rows] == [epoch == best for epoch in range(EPOCHS + 1)]


def _one_error_line(capsys: pytest.CaptureFixture) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("mft-train: error: "), err
    return err[0]


def test_bad_inputs_exit_2_with_one_line(setup: dict, finetuned: dict, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    base = ["finetune", "--shards", str(setup["train"]), "--eval-shards", str(setup["val"])]
    assert main([*base, "--init", str(tmp_path / "none.pt"), "--out", str(tmp_path / "a"), *FAST]) == 2
    assert "does not exist" in _one_error_line(capsys)
    (tmp_path / "videos").mkdir()
    assert main(["finetune", "--init", str(setup["checkpoint"]), "--shards", str(setup["train"]), "--eval-shards",
                 str(tmp_path / "videos"), "--out", str(tmp_path / "b"), *FAST]) == 2
    assert "no complete shards" in _one_error_line(capsys)
    assert main([*base, "--init", str(setup["checkpoint"]), "--out", str(finetuned["out"]), *FAST]) == 2
    assert "already holds a fine-tuning run" in _one_error_line(capsys)
    assert main([*base, "--init", str(setup["checkpoint"]), "--out", str(tmp_path / "c"), *FAST,
                 "--set", "model.width=64"]) == 2
    assert "differ from the --init checkpoint" in _one_error_line(capsys)


def test_batches_per_epoch_and_rank_shares() -> None:
    assert steps_in_epoch(24, 8, 1) == 3 and steps_in_epoch(25, 8, 1) == 3 and steps_in_epoch(26, 8, 1) == 4
    assert steps_in_epoch(26, 8, 2) == 3  # under DDP only full batches, so every rank gets an equal share
    batch = {"video": torch.arange(8).reshape(4, 2), "clip_id": ["a", "b", "c", "d"]}
    share = rank_slice(batch, 1, 2)
    assert share["clip_id"] == ["c", "d"] and share["video"].tolist() == [[4, 5], [6, 7]]
