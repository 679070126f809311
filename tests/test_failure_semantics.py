"""Failure semantics at scale: one writer per output, the manifest as the contract, no code from data,
shard sets verified against their JSONs. Real processes, real files, real pickles."""

from __future__ import annotations

import json
import os
import pickle
import signal
import sqlite3
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from howto_prep import schema, shards
from howto_prep.errors import ExitCode, OutputLocked, UserError
from howto_prep.extract.inputs import find_videos
from howto_prep.output_lock import LOCK_NAME, output_lock

REPO = Path(__file__).resolve().parents[1]


def cli(*args: str, module: str = "howto_prep.cli", timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout)


class Payload:
    """Unpickling this creates `marker`: proof that a load ran code from the file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


# One writer per output -------------------------------------------------------------------------

def test_second_run_on_a_held_output_stops_at_once_and_names_the_holder(tmp_path: Path):
    out = tmp_path / "shards"
    (tmp_path / "videos").mkdir()
    (tmp_path / "caption.json").write_text("{}")
    with output_lock(out, "howto-prep extract"):
        before = sorted(p.name for p in out.iterdir())
        result = cli("extract", "--videos", str(tmp_path / "videos"), "--captions", str(tmp_path / "caption.json"),
                     "--out", str(out), "--features", "logmel", timeout=120)
        assert result.returncode == ExitCode.OUTPUT_LOCKED, result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and f"pid {os.getpid()}" in lines[0] and "howto-prep extract" in lines[0]
        assert sorted(p.name for p in out.iterdir()) == before  # touched nothing
    videos = tmp_path / "downloads"
    with output_lock(videos, "howto-prep download"):
        ids = tmp_path / "ids.txt"
        ids.write_text("abcdefghijk\n")
        result = cli("download", "--ids", str(ids), "--out", str(videos), "--source", "mirror",
                     "--mirror-url", "http://127.0.0.1:9", timeout=120)
        assert result.returncode == ExitCode.OUTPUT_LOCKED and "in use by howto-prep download" in result.stderr
        assert not (videos / schema.MANIFEST_FILE).exists()


def test_the_lock_dies_with_its_holder_even_on_kill_9(tmp_path: Path):
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from pathlib import Path; from howto_prep.output_lock import output_lock\n"
        "with output_lock(Path(sys.argv[1]), 'howto-prep extract'):\n"
        "    print('held', flush=True); time.sleep(60)\n"), str(tmp_path)], cwd=REPO, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(OutputLocked, match=f"pid {holder.pid}"):
        with output_lock(tmp_path, "test"):
            pass
    holder.send_signal(signal.SIGKILL)
    holder.wait(timeout=30)
    with output_lock(tmp_path, "test") as path:  # no stale lock to clean up by hand
        assert json.loads(path.read_text())["pid"] == os.getpid()


# The manifest is the contract ------------------------------------------------------------------

def make_manifest(videos: Path, rows: list[tuple[str, str, str | None]]) -> None:
    from howto_prep.download.manifest import Manifest

    with Manifest(videos):
        pass
    db = sqlite3.connect(videos / schema.MANIFEST_FILE)
    for video_id, status, path in rows:
        db.execute("INSERT INTO videos (video_id, status, path, updated_at) VALUES (?, ?, ?, 'now')",
                   (video_id, status, path))
    db.commit()
    db.close()


def test_extract_takes_exactly_the_manifests_done_videos(tmp_path: Path):
    videos = tmp_path / "videos"
    for relative in ("ab/abcdefghijk.mp4", "zz/zzzzzzzzzzz.mp4", ".partial/ytdlp-aaaaaaaaaaa/aaaaaaaaaaa.mp4",
                     "bb/bbbbbbbbbbb.mp4", "cc/ccccccccccc.mp4"):
        (videos / relative).parent.mkdir(parents=True, exist_ok=True)
        (videos / relative).write_bytes(b"\0")
    make_manifest(videos, [("abcdefghijk", "done", "ab/abcdefghijk.mp4"),
                           ("aaaaaaaaaaa", "pending", None),  # its unvalidated file sits in .partial/
                           ("bbbbbbbbbbb", "failed", None),
                           ("ddddddddddd", "done", "dd/ddddddddddd.mp4")])  # file gone: not taken
    assert find_videos(videos) == {"abcdefghijk": videos / "ab/abcdefghijk.mp4"}


def test_without_a_manifest_hidden_folders_are_skipped(tmp_path: Path):
    for relative in ("ab/abcdefghijk.mp4", ".partial/ytdlp-aaaaaaaaaaa/aaaaaaaaaaa.mp4", "x/.hidden.mp4"):
        (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / relative).write_bytes(b"\0")
    assert find_videos(tmp_path) == {"abcdefghijk": tmp_path / "ab/abcdefghijk.mp4"}


# No code from data -----------------------------------------------------------------------------

def test_a_checkpoint_carrying_a_pickle_payload_is_refused_and_never_runs(tmp_path: Path):
    from mft_train.training.checkpoints import load_checkpoint

    marker = tmp_path / "ran"
    path = tmp_path / "shared.pt"
    torch.save({"model": {"w": torch.zeros(2)}, "config": {"model": {}}, "extra": Payload(marker)}, path)
    with pytest.raises(UserError, match="refusing checkpoint"):
        load_checkpoint(path)
    result = cli("evaluate", "--checkpoint", str(path), "--shards", str(tmp_path), module="mft_train.cli")
    assert result.returncode == 2 and "refusing checkpoint" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
    assert not marker.exists()


def test_a_shard_member_carrying_a_pickle_payload_is_never_unpickled(tmp_path: Path):
    marker = tmp_path / "ran"
    with shards.ShardWriter(tmp_path / "set") as writer:
        writer.write("vid0", {schema.META_FIELD: json.dumps({"video_id": "vid0"}).encode(),
                              schema.RESNET152.field: shards.npy_bytes(np.ones((2, 4), np.float16)),
                              "extra.pyd": pickle.dumps(Payload(marker)),
                              "weights.pth": pickle.dumps(Payload(marker))})
    samples = list(shards.iterate_samples(tmp_path / "set"))
    assert len(samples) == 1 and isinstance(samples[0]["extra.pyd"], bytes)  # left as bytes
    np.testing.assert_array_equal(samples[0][schema.RESNET152.field], np.ones((2, 4), np.float16))
    result = cli("verify", str(tmp_path / "set"))
    assert result.returncode == ExitCode.CHECK_FAILED and "extra.pyd" in result.stdout
    assert not marker.exists()


# howto-prep verify -----------------------------------------------------------------------------

def good_set(out: Path, count: int = 3) -> None:
    with shards.ShardWriter(out, max_bytes=1) as writer:  # one shard per video
        for index in range(count):
            writer.write(f"vid{index}", {schema.META_FIELD: json.dumps({"video_id": f"vid{index}"}).encode(),
                                         schema.RESNET152.field: shards.npy_bytes(np.full((8, 2048), index, np.float16))})


def test_verify_passes_a_whole_set_and_names_each_damaged_shard(tmp_path: Path):
    good_set(tmp_path)
    result = cli("verify", str(tmp_path))
    assert result.returncode == 0 and "3 shards, 3 samples: all match" in result.stdout
    flipped = tmp_path / "shard-000001.tar"
    data = bytearray(flipped.read_bytes())
    data[700] ^= 0xFF  # one bit pattern inside the first member's payload
    flipped.write_bytes(bytes(data))
    truncated = tmp_path / "shard-000002.tar"
    truncated.write_bytes(truncated.read_bytes()[:900])
    result = cli("verify", str(tmp_path))
    assert result.returncode == ExitCode.CHECK_FAILED
    assert "shard-000001.tar: sha256 differs" in result.stdout
    assert "shard-000002.tar: 900 bytes" in result.stdout and "shard-000000" not in result.stdout
    assert cli("verify", str(tmp_path / "nothing")).returncode == 2


# A system fault is never a video's fault ---------------------------------------------------------

def test_a_broken_library_stops_extract_without_blaming_any_video(tmp_path: Path, synth_corpus):
    """PyAV (the decode task's decoder, frames and soundtrack) shadowed by a package whose native
    library does not load (as a wheel built against another FFmpeg): every video's decode fails, the
    run stops with exit 5 and one line, no video is recorded as failed, and the rerun with a working
    library needs no --retry-failed."""
    broken = tmp_path / "broken"
    (broken / "av").mkdir(parents=True)
    (broken / "av" / "__init__.py").write_text(
        "raise ImportError('libavcodec.so.61: undefined symbol: avcodec_send_packet_v2')\n")
    videos = tmp_path / "videos"
    videos.mkdir()
    chosen = [p for p in sorted(synth_corpus.videos_dir.rglob("*.mp4")) if p.stem not in synth_corpus.no_audio_ids][:2]
    for path in chosen:
        os.link(path, videos / path.name)
    out = tmp_path / "shards"
    args = ["extract", "--videos", str(videos), "--captions", str(synth_corpus.captions),
            "--out", str(out), "--features", "logmel"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(broken), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run([sys.executable, "-m", "howto_prep.cli", *args], cwd=REPO, capture_output=True,
                            text=True, timeout=400, env=env)
    assert result.returncode == ExitCode.SYSTEM_FAULT, result.stderr[-2000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("howto-prep: system fault:") and "undefined symbol" in last
    assert "Traceback" not in result.stderr
    assert not shards.read_failures(out)  # no video blamed
    rerun = cli(*args, timeout=400)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert shards.finished_keys(out) == {path.stem for path in chosen}


def test_identical_failures_across_videos_are_a_storm_not_bad_videos():
    from howto_prep.errors import FailureKind, SystemFault
    from howto_prep.extract.failure_storm import FailureStorm

    storm = FailureStorm(threshold=3)
    text = "cannot decode {}.mp4: Invalid data found when processing input"
    assert storm.failed("aaa", FailureKind.BAD_MEDIA, text.format("aaa")) == []  # held back
    assert storm.failed("bbb", FailureKind.BAD_MEDIA, text.format("bbb")) == []
    released = storm.succeeded()  # a success between: they were the videos' own faults
    assert [video for video, _, _ in released] == ["aaa", "bbb"]
    for video in ("ccc", "ddd"):
        assert storm.failed(video, FailureKind.BAD_MEDIA, text.format(video)) == []
    with pytest.raises(SystemFault, match="3 videos in a row failed with the same error"):
        storm.failed("eee", FailureKind.BAD_MEDIA, text.format("eee"))
    # Different texts are independent videos; plain kinds (too short) are never a storm.
    fresh = FailureStorm(threshold=2)
    assert fresh.failed("a1", FailureKind.TOO_SHORT, "video lasts 0.5 s") == [("a1", FailureKind.TOO_SHORT,
                                                                              "video lasts 0.5 s")]
    assert fresh.failed("a2", FailureKind.BAD_MEDIA, "moov atom not found") == []
    assert [v for v, _, _ in fresh.failed("a3", FailureKind.BAD_MEDIA, "invalid NAL unit")] == ["a2"]
    with pytest.raises(SystemFault, match="nothing was recorded against a4"):
        fresh.failed("a4", FailureKind.WORKER_DIED, "feature model actor: ActorDiedError")


# Memory bounded by bytes, whatever the resolution ------------------------------------------------

def test_a_1080p_video_decodes_in_chunks_of_the_documented_size(tmp_path: Path):
    """Frames leave the decoder at the recipes' sizes, so a chunk holds at most chunk_seconds x (224 x L x 3)
    + 24 x chunk_seconds x (112 x 112 x 3) bytes (L = 398 for 16:9) whatever the source resolution, and the
    decoding process stays small (measured: about 100 MiB for 1080p against 63 MiB for 640x360)."""
    import av

    path = tmp_path / "v1080.mp4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=30)
        stream.width, stream.height, stream.pix_fmt = 1920, 1080, "yuv420p"
        stream.options = {"preset": "ultrafast"}
        ys, xs = np.mgrid[0:1080, 0:1920]
        for index in range(75):
            image = np.stack([(xs + 9 * index) % 256, (ys + 5 * index) % 256, (xs + ys) % 256], -1).astype(np.uint8)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(stream.encode())
    probe = (
        "import sys\nfrom pathlib import Path\nfrom howto_prep import decode\n"
        "source = decode.open_video(Path(sys.argv[1]))\nbiggest = 0\n"
        "for chunk in decode.iterate_chunks(source, decode.probe(source), chunk_seconds=2):\n"
        "    biggest = max(biggest, sum(a.nbytes for a in (chunk.frames_1fps, chunk.frames_24fps) if a is not None))\n"
        "peak = [l for l in open('/proc/self/status') if l.startswith('VmHWM')][0].split()[1]\n"
        "print(biggest, int(peak) // 1024)\n")
    result = subprocess.run([sys.executable, "-c", probe, str(path)], cwd=REPO, capture_output=True, text=True,
                            timeout=300, check=True)
    biggest, peak_mib = map(int, result.stdout.split())
    assert biggest == 2 * 224 * 398 * 3 + 48 * 112 * 112 * 3  # 2.3 MB for 2 s of 1080p (6.2 MB per frame raw)
    assert peak_mib < 400, f"decoding 1080p peaked at {peak_mib} MiB"


# Long training runs ----------------------------------------------------------------------------

def test_a_torn_last_metrics_line_is_dropped_with_a_warning(tmp_path: Path):
    from mft_train.training.run_folder import truncate_metrics

    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "loss": 2.0}\n{"step": 2, "loss": 1.5}\n{"step": 3, "loss": 1.')  # killed mid-write
    with pytest.warns(UserWarning, match="line 3 is torn"):
        truncate_metrics(path, step=2)
    assert [json.loads(line)["step"] for line in path.read_text().splitlines()] == [1, 2]


def test_a_failed_checkpoint_save_leaves_no_temporary_file(tmp_path: Path):
    from mft_train.training.checkpoints import save_checkpoint

    target = tmp_path / "checkpoints" / "step-000000010.pt"
    with pytest.raises(Exception):
        save_checkpoint({"model": {"w": torch.zeros(3)}, "unsaveable": lambda: None}, target)  # pickling fails
    assert list(target.parent.iterdir()) == []


# Model actors: a crash or a hang is restarted, never a video's failure ---------------------------

def actor_run(tmp_path: Path, synth_corpus, env: dict, *options: str) -> tuple[subprocess.Popen, Path, list[str]]:
    videos = tmp_path / "videos"
    videos.mkdir()
    chosen = sorted(synth_corpus.videos_dir.rglob("*.mp4"))[:3]
    for path in chosen:
        os.link(path, videos / path.name)
    out = tmp_path / "shards"
    command = [sys.executable, "-m", "howto_prep.cli", "extract", "--videos", str(videos), "--captions",
               str(synth_corpus.captions), "--out", str(out), "--features", "resnet152", "--weights-2d", "random",
               *options]
    process = subprocess.Popen(command, cwd=REPO, env={**os.environ, **env}, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, start_new_session=True)
    return process, out, [path.stem for path in chosen]


def actor_pids() -> list[int]:
    found = subprocess.run(["pgrep", "-f", "ray::FeatureModels"], capture_output=True, text=True).stdout.split()
    return [int(pid) for pid in found]


def test_a_killed_model_actor_is_restarted_and_no_video_is_blamed(tmp_path: Path, synth_corpus):
    process, out, ids = actor_run(tmp_path, synth_corpus, {})
    try:
        deadline = time.monotonic() + 240
        while not actor_pids() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(4)  # let it take chunks
        victims = actor_pids()
        assert victims and process.poll() is None, "the actor never started"
        for pid in victims:
            os.kill(pid, signal.SIGKILL)
        _, stderr = process.communicate(timeout=600)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert process.returncode == 0, stderr[-2000:]
    assert shards.finished_keys(out) == set(ids) and not shards.read_failures(out)


def test_a_hung_model_actor_is_killed_restarted_and_its_process_is_gone(tmp_path: Path, synth_corpus):
    marker = tmp_path / "hung-actor-pid"
    process, out, ids = actor_run(tmp_path, synth_corpus, {"HOWTO_PREP_FAULT_ACTOR_HANG": str(marker)},
                                  "--actor-timeout", "15")
    try:
        _, stderr = process.communicate(timeout=600)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert process.returncode == 0, stderr[-2000:]
    assert marker.exists(), "the injected hang never happened"
    assert shards.finished_keys(out) == set(ids) and not shards.read_failures(out)
    hung = int(marker.read_text())
    assert not Path(f"/proc/{hung}").exists() or "zombie" in Path(f"/proc/{hung}/status").read_text().lower()


RUNNER = """
import json, sys, torch
from mft_train.presets import load_config
from mft_train.training.distributed import DistInfo
from mft_train.training.pretrain import train
preset, shards, out, resume, max_steps, *overrides = sys.argv[1:]
result = train(load_config(preset, overrides), shards, out, DistInfo(0, 1, 0, torch.device("cpu")),
               resume=resume == "1", max_steps=int(max_steps) or None)
print(json.dumps(result.losses))
"""

TINY_EAO = ["model.width=32", "model.heads=2", "model.embed_dim=32", "model.davenet_widths=[8, 8, 8, 8, 8, 8]",
            "model.davenet_depths=[1, 1, 1, 1, 1, 1]"]
TINY_MCN = ["model.embed_dim=32", "model.audio_hidden=16", "model.recon_hidden=16", "model.davenet_widths=[8, 8, 8, 16]",
            "loss.clusters=4", "loss.queue_size=16", "loss.refit_every=2", "loss.kmeans_iters=5",
            "train.warmup_steps=2"]
COMMON = ["data.clips_per_video=2", "data.workers=1", "data.shuffle_buffer=8", "train.batch=4", "train.device=cpu",
          "train.cpu_threads=1", "train.epochs=3", "train.steps_per_epoch=2", "train.checkpoint_every=3",
          "train.lr=1e-3"]


def run_training(preset: str, shards: Path, out: Path, overrides: list[str], resume: bool = False,
                 max_steps: int = 0) -> list[float]:
    result = subprocess.run([sys.executable, "-c", RUNNER, preset, str(shards), str(out), "1" if resume else "0",
                             str(max_steps), *overrides], cwd=REPO / "tests", capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("preset, model", [("eao_small", TINY_EAO), ("mcn_small", TINY_MCN)], ids=["eao", "mcn"])
def test_resume_in_a_fresh_process_with_a_loader_worker_matches_the_uninterrupted_run(tmp_path: Path, preset, model):
    from shard_fixtures import write_shard_set

    shards = tmp_path / "shards"
    write_shard_set(shards, videos=8, shards=2, topics=2)
    overrides = model + COMMON
    whole = run_training(preset, shards, tmp_path / "whole", overrides)
    assert len(whole) == 6
    first = run_training(preset, shards, tmp_path / "split", overrides, max_steps=3)
    second = run_training(preset, shards, tmp_path / "split", overrides, resume=True)
    assert first + second == whole  # exactly: same batches, same RNG, same optimizer (and MCN queue) state


def pretrain_command(shards: Path, out: Path, overrides: list[str], resume: bool = False) -> list[str]:
    command = [sys.executable, "-m", "mft_train.cli", "pretrain", "--shards", str(shards), "--out", str(out),
               "--config", "eao_small", *(arg for item in overrides for arg in ("--set", item))]
    return command + (["--resume"] if resume else [])


def logged_losses(run_dir: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_sigterm_checkpoints_inside_a_stretch_and_resume_continues_with_the_same_batches(tmp_path: Path):
    """A scheduler's SIGTERM to the whole process group (loader worker included) in the middle of a
    stretch between checkpoints: exit 130 with one line, a checkpoint at that step, and --resume gives
    exactly the uninterrupted run's losses (it skips to the batch where the stop fell)."""
    from shard_fixtures import write_shard_set

    shards = tmp_path / "shards"
    write_shard_set(shards, videos=8, shards=2, topics=2)
    steps = 30
    overrides = TINY_EAO + [item for item in COMMON if not item.startswith(("train.epochs", "train.steps_per_epoch",
                                                                            "train.checkpoint_every"))]
    overrides += ["train.epochs=1", f"train.steps_per_epoch={steps}", "train.checkpoint_every=100"]  # one stretch
    whole = subprocess.run(pretrain_command(shards, tmp_path / "whole", overrides), cwd=REPO, capture_output=True,
                           text=True, timeout=300)
    assert whole.returncode == 0, whole.stderr[-3000:]

    split = tmp_path / "split"
    process = subprocess.Popen(pretrain_command(shards, split, overrides), cwd=REPO, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True, start_new_session=True)
    metrics = split / "metrics.jsonl"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and process.poll() is None:
        if metrics.is_file() and len(metrics.read_text().splitlines()) >= 3:
            os.killpg(process.pid, signal.SIGTERM)
            break
        time.sleep(0.005)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == ExitCode.INTERRUPTED, stderr[-3000:]
    assert "Traceback" not in stderr and "stopped: SIGTERM after step" in stderr
    stopped_at = len(logged_losses(split))
    assert 3 <= stopped_at < steps  # inside the stretch, not at a checkpoint step
    state = torch.load(split / "checkpoints" / f"step-{stopped_at:09d}.pt", map_location="cpu", weights_only=True)
    assert state["step"] == stopped_at and state["data_origin"] == 0

    resumed = subprocess.run(pretrain_command(shards, split, overrides, resume=True), cwd=REPO, capture_output=True,
                             text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert logged_losses(split) == logged_losses(tmp_path / "whole")  # exactly: the same batches


# A consistent shard set at every moment -----------------------------------------------------------

def test_every_finished_shards_tokens_can_be_looked_up_before_the_extraction_ends(tmp_path: Path, synth_corpus):
    """Training may start on a growing (or killed) extraction: each shard's new words are written to
    vocab/parts/ before its JSON, so the table covers every finished shard; the merged vocab written at
    the end replaces the parts for readers."""
    from howto_prep.extract.video_set import finish_set
    from howto_prep.features.tokens import VocabularyParts, Word2VecVocabulary
    from mft_train.data.shards import WordTable

    vocab = Word2VecVocabulary(synth_corpus.word2vec)
    captions = json.loads(synth_corpus.captions.read_text())
    texts = [" ".join(entry["text"]) for entry in list(captions.values())[:4]]
    writer = shards.ShardWriter(tmp_path, max_bytes=1, before_json=VocabularyParts(vocab, tmp_path).add)
    used = []
    for index, text in enumerate(texts):
        tokens, _ = vocab.encode([text])
        used.append(tokens)
        writer.write(f"vid{index}", {schema.META_FIELD: json.dumps({"video_id": f"vid{index}"}).encode(),
                                     schema.RESNET152.field: shards.npy_bytes(np.zeros((8, 2048), np.float16))},
                     token_ids=tokens)  # 32 KB: past the tar's buffer, so each video closes its shard
        if index == 1:  # a trainer starting now sees two finished shards and no merged vocab/
            table = WordTable(tmp_path)
            for tokens_so_far in used:
                np.testing.assert_array_equal(table.lookup(tokens_so_far.astype(np.int64)), vocab.vectors_for(tokens_so_far))
    writer.close()
    finish_set(tmp_path, vocab)
    table = WordTable(tmp_path)
    assert isinstance(table.vectors, np.memmap)  # the merged table, shared by the loader workers
    for tokens in used:
        np.testing.assert_array_equal(table.lookup(tokens.astype(np.int64)), vocab.vectors_for(tokens))
