"""Run folders and checkpoints on an object store (moto's S3 server, tests/s3_server.py): `pretrain --out
s3://...` publishes each checkpoint whole, then config.yaml and metrics.jsonl, then latest.json last,
and prunes on the store after the pointer moved; `--resume` on a fresh work folder continues from the
store's checkpoint exactly; `evaluate --checkpoint s3://...` follows the pointer and gives the folder's
metrics; a store that refuses the upload is one line, exit 5, no traceback, no secret."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch

from clip_shard_fixtures import TINY_MODEL
from howto_prep.object_store import Store
from s3_server import DUMMY_SECRET, S3Server, moto_server, s3  # noqa: F401  (fixtures)
from train_store_fixtures import sets, store_cache  # noqa: F401  (fixtures)

TINY = TINY_MODEL + ["model.davenet_depths=[1, 1, 1, 1, 1, 1]", "data.clips_per_video=2", "data.workers=0",
                     "data.shuffle_buffer=4", "train.batch=2", "train.device=cpu", "train.cpu_threads=1",
                     "train.log_every=1", "train.seed=7"]
CKPT = "checkpoints/step-{:09d}.pt"


def pretrain(sets: dict, out: str, extra: list[str], capsys: pytest.CaptureFixture, *flags: str) -> tuple[int, str]:
    from mft_train.cli import main

    settings = [arg for item in TINY + extra for arg in ("--set", item)]
    code = main(["pretrain", "--shards", str(sets["videos"]), "--out", out, "--config", "eao_small", *flags] + settings)
    return code, capsys.readouterr().err


def work_folder(cwd: Path, s3: S3Server, prefix: str) -> Path:
    return cwd / ".howto-prep" / "work" / "s3" / s3.bucket / prefix






def test_pretraining_to_a_url_uploads_each_checkpoint_then_the_pointer_and_prunes_after_it(
        sets: dict, s3: S3Server, store_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture) -> None:
    monkeypatch.chdir(tmp_path)
    url = s3.url("runs/x")
    code, err = pretrain(sets, url, ["train.epochs=1", "train.steps_per_epoch=3", "train.checkpoint_every=1",
                                     "train.keep_checkpoints=2"], capsys)
    assert code == 0, err
    work = work_folder(tmp_path, s3, "runs/x")
    stored = s3.objects("runs/x")
    assert sorted(k for k in stored if k.startswith("checkpoints/")) == [CKPT.format(2), CKPT.format(3)]
    assert sorted(p.name for p in (work / "checkpoints").iterdir()) == ["step-000000002.pt", "step-000000003.pt"]
    for key in (CKPT.format(2), CKPT.format(3), "config.yaml", "metrics.jsonl"):
        assert stored[key] == (work / key).read_bytes(), key
    pointer = json.loads(stored["latest.json"])
    assert pointer["checkpoint"] == CKPT.format(3) and pointer["step"] == 3
    assert pointer["sha256"] == hashlib.sha256(stored[CKPT.format(3)]).hexdigest()
    per_save = lambda step: [("PUT", CKPT.format(step)), ("PUT", "config.yaml"), ("PUT", "metrics.jsonl"),  # noqa: E731
                             ("PUT", "latest.json")]
    # each checkpoint whole, then config and metrics, the pointer last; step 1 deleted only after it moved to 3
    assert (s3.writes("runs/x", leave_out="tensorboard/")
            == per_save(1) + per_save(2) + per_save(3) + [("DELETE", CKPT.format(1))])
    assert f"published to {url}/checkpoints/" in err
    events = sorted(path.relative_to(work).as_posix() for path in (work / "tensorboard").rglob("*") if path.is_file())
    assert events and all(stored[key] == (work / key).read_bytes() for key in events)  # as the run left them


def test_resume_on_a_fresh_work_folder_continues_from_the_stores_checkpoint(
        sets: dict, s3: S3Server, store_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture) -> None:
    """The first half runs in folder A (its work folder there), the rest with --resume from folder B,
    whose work folder is empty (another machine): the same losses and weights as one whole local run."""
    from mft_train.presets import load_config
    from mft_train.training.distributed import init_distributed
    from mft_train.training.pretrain import train
    from mft_train.training.run_store import RunMirror

    schedule = ["train.epochs=3", "train.steps_per_epoch=2", "train.checkpoint_every=3", "train.lr=1e-3",
                "train.lr_gamma=0.5"]
    config = load_config("eao_small", TINY + schedule)
    single = init_distributed(force_cpu=True)
    whole = train(config, sets["videos"], tmp_path / "whole", single)
    url = s3.url("runs/r")
    first = train(config, sets["videos"], tmp_path / "a" / "work", single, max_steps=3,
                  mirror=RunMirror.open(url, tmp_path / "a" / "work"))
    assert first.last_step == 3 and first.losses == whole.losses[:3]

    fresh = tmp_path / "b"
    fresh.mkdir()
    monkeypatch.chdir(fresh)
    code, err = pretrain(sets, url, schedule, capsys)
    assert code == 2 and f"{url} already holds a run; pass --resume" in err  # the run exists only on the store
    code, err = pretrain(sets, url, schedule, capsys, "--resume")
    assert code == 0, err
    assert "pretrain: steps 3->6" in err  # continued from the store's step 3, not from scratch
    work = work_folder(fresh, s3, "runs/r")
    lines = [json.loads(line) for line in (work / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == [1, 2, 3, 4, 5, 6]  # steps 1-3 came from the store's metrics.jsonl
    assert [line["loss"] for line in lines] == whole.losses  # exactly
    ours = torch.load(work / CKPT.format(6), map_location="cpu", weights_only=True)
    theirs = torch.load(tmp_path / "whole" / CKPT.format(6), map_location="cpu", weights_only=True)
    assert all(torch.equal(ours["model"][name], theirs["model"][name]) for name in theirs["model"])
    assert json.loads(s3.objects("runs/r")["latest.json"])["step"] == 6


def evaluate(checkpoint: str, shards: Path, report: Path) -> dict:
    from mft_train.cli import main

    assert main(["evaluate", "--checkpoint", checkpoint, "--shards", str(shards), "--json", str(report),
                 "--set", "train.device=cpu"]) == 0
    return json.loads(report.read_text())


def test_evaluating_a_run_url_follows_the_pointer_and_gives_the_folders_metrics(
        sets: dict, s3: S3Server, store_cache: Path, tmp_path: Path) -> None:
    from mft_train.training.run_store import RunMirror

    run = sets["checkpoint"].parent.parent
    url = s3.url("runs/e")
    RunMirror(Store.for_url(url), run).publish_checkpoint(sets["checkpoint"], 2)
    # a newer checkpoint that no pointer names (an upload in flight, say): never read, and not loadable
    Store.for_url(url).put_bytes(CKPT.format(9), b"not a checkpoint")
    disk = evaluate(str(run), sets["clips"], tmp_path / "disk.json")
    folder = evaluate(url, sets["clips"], tmp_path / "folder.json")
    name = sets["checkpoint"].name
    gets = lambda: sum(1 for s in s3.proxy.seen if s.method == "GET" and name in s.path)  # noqa: E731
    downloads = gets()
    by_file = evaluate(f"{url}/checkpoints/{name}", sets["clips"], tmp_path / "file.json")
    again = evaluate(url, sets["clips"], tmp_path / "again.json")
    assert folder["results"] == by_file["results"] == again["results"] == disk["results"]
    assert gets() == downloads  # the folder URL's copy was downloaded once and reused
    assert not any("step-000000009" in s.path for s in s3.proxy.seen if s.method == "GET")
    cached = store_cache / "stores" / "s3" / s3.bucket / "runs" / "e" / "checkpoints" / name
    assert cached.is_file()
    from mft_train.retrieval.embed import checkpoint_state

    assert checkpoint_state(url, ["train.device=cpu"])["path"] == str(cached)  # `embed --checkpoint URL` too
    assert gets() == downloads


def test_a_store_that_refuses_the_checkpoint_upload_is_one_line_and_exit_5(
        sets: dict, s3: S3Server, store_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture) -> None:
    """Then, the store fixed, --resume publishes the checkpoint the refused run kept locally."""
    monkeypatch.chdir(tmp_path)
    url = s3.url("runs/f")
    schedule = ["train.epochs=1", "train.steps_per_epoch=2", "train.checkpoint_every=2"]
    s3.proxy.fail("403", times=10_000, method="PUT", path_contains="/checkpoints/")
    code, err = pretrain(sets, url, schedule, capsys)
    ours = [line for line in err.splitlines() if line.startswith("mft-train:")]
    assert code == 5, err
    assert ours == [f"mft-train: system fault: object store refused upload {url}/{CKPT.format(2)}: "
                    + ours[0].split(f"{CKPT.format(2)}: ", 1)[1]], err
    assert "Traceback" not in err and DUMMY_SECRET not in err
    assert "latest.json" not in s3.objects("runs/f")  # no pointer to a checkpoint the store lacks
    s3.proxy.clear()
    code, err = pretrain(sets, url, schedule, capsys, "--resume")
    assert code == 0 and "nothing to do" in err, err
    stored = s3.objects("runs/f")
    assert json.loads(stored["latest.json"])["checkpoint"] == CKPT.format(2)
    assert stored[CKPT.format(2)] == (work_folder(tmp_path, s3, "runs/f") / CKPT.format(2)).read_bytes()


def test_work_is_refused_with_a_local_out(sets: dict, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    code, err = pretrain(sets, str(tmp_path / "run"), [], capsys, "--work", str(tmp_path / "w"))
    assert code == 2 and "--work is only for an s3:// or gs:// --out" in err


def test_finetuning_from_and_to_urls_publishes_best_pt_and_its_reports(
        sets: dict, s3: S3Server, store_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture) -> None:
    from mft_train.cli import main
    from mft_train.training.run_store import RunMirror

    init = s3.url("runs/pre")
    RunMirror(Store.for_url(init), sets["checkpoint"].parent.parent).publish_checkpoint(sets["checkpoint"], 2)
    monkeypatch.chdir(tmp_path)
    out = s3.url("runs/ft")
    argv = ["finetune", "--init", init, "--shards", str(sets["clips"]), "--eval-shards", str(sets["clips"]),
            "--out", out, "--config", "eao_finetune_small"] + [
        arg for item in ["train.device=cpu", "train.epochs=1", "train.batch=3", "data.video_tokens=15",
                         "data.audio_frames=1024"] for arg in ("--set", item)]
    assert main(argv) == 0, capsys.readouterr().err
    work = work_folder(tmp_path, s3, "runs/ft")
    stored = s3.objects("runs/ft")
    for key in ("best.pt", "results.json", "best-eval.json", "config.yaml", "metrics.jsonl"):
        assert stored[key] == (work / key).read_bytes(), key
    pointer = json.loads(stored["latest.json"])
    assert stored[pointer["checkpoint"]] == (work / pointer["checkpoint"]).read_bytes()
    events = [path.relative_to(work).as_posix() for path in (work / "tensorboard").rglob("*") if path.is_file()]
    assert events and all(stored[key] == (work / key).read_bytes() for key in events)  # uploaded at the end too
    other = tmp_path / "other"
    other.mkdir()
    monkeypatch.chdir(other)  # a fresh work folder: the run on the store still counts
    capsys.readouterr()
    assert main(argv) == 2 and f"{out} already holds a fine-tuning run" in capsys.readouterr().err
    report = evaluate(out, sets["clips"], tmp_path / "ft.json")  # the folder URL: its best.pt
    assert report["checkpoint"].endswith("best.pt")
    assert report["results"] == json.loads((work / "best-eval.json").read_text())["results"]
