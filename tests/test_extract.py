"""`howto-prep extract` end to end: real mp4s, real Ray, real tars, real gensim vectors.

One clean CLI run (in a subprocess, with a real local Ray) on a tiny synthetic corpus plus bad
media; the other tests read its shards and recompute what they hold independently.
"""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from howto_prep import schema, shards
from howto_prep.files import file_sha256
from howto_prep.synthetic.corpus import generate_corpus
from howto_prep.synthetic.mp4 import write_mp4

REPO = Path(__file__).resolve().parents[1]
EXTRA_ID = "nocaption01"  # a good video that caption.json does not know
BAD = {"empty00": "bad_media", "trunc00": "bad_media", "audioonly0": "no_video", "short00": "too_short",
       "00hang": "decode_timeout"}
TIMEOUT_S = 20


def cli(*args: str, env: dict | None = None, timeout: float = 400) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "howto_prep.cli", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, **(env or {})})


def extract_args(corpus: dict, videos: Path, out: Path, *extra: str) -> list[str]:
    return ["extract", "--videos", str(videos), "--captions", str(corpus["captions"]),
            "--word2vec", str(corpus["word2vec"]), "--csv", str(corpus["csv"]), "--out", str(out),
            "--weights-2d", str(corpus["weights_2d"]), "--weights-3d", "random", *extra]


def gradient_frames(count: int, height: int, width: int) -> list[np.ndarray]:
    y, x = np.mgrid[0:height, 0:width]
    return [np.stack([(x + 4 * i) % 256, (y + 2 * i) % 256, np.full_like(x, 9 * i % 256)], -1).astype(np.uint8)
            for i in range(count)]


def add_bad_media(videos: Path, good: Path) -> None:
    import av

    (videos / "empty00.mp4").write_bytes(b"")
    (videos / "trunc00.mp4").write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    write_mp4(videos / "short00.mp4", gradient_frames(12, 120, 160), 30.0)
    with av.open(str(videos / "audioonly0.mp4"), "w") as container:
        stream = container.add_stream("aac", rate=16_000, layout="mono")
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 32_000), np.float32), format="fltp", layout="mono")
        frame.sample_rate = 16_000
        for packet in list(stream.encode(frame)) + list(stream.encode()):
            container.mux(packet)
    os.mkfifo(videos / "00hang.mp4")  # opening it blocks forever: a hung decode


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> dict:
    import torch
    import torchvision

    root = tmp_path_factory.mktemp("extract")
    info = generate_corpus(root / "corpus", videos=3, seed=0, heldout_videos=0, min_seconds=2, max_seconds=3.5)
    nested = info.videos_dir / "no"  # download's videos/<2 chars>/<id>.<ext> layout
    nested.mkdir()
    rate = 44_100
    tone = 0.3 * np.sin(2 * np.pi * 330 * np.arange(int(2.2 * rate)) / rate)
    write_mp4(nested / f"{EXTRA_ID}.mp4", gradient_frames(66, 120, 214), 30.0, tone, rate)
    good_ids = [*info.video_ids, EXTRA_ID]
    add_bad_media(info.videos_dir, nested / f"{EXTRA_ID}.mp4")
    with torch.random.fork_rng():
        torch.manual_seed(11)
        torch.save(torchvision.models.resnet152().state_dict(), root / "resnet152_random.pth")
    corpus = {"captions": info.captions, "word2vec": info.word2vec, "csv": info.csv, "videos": info.videos_dir,
              "weights_2d": root / "resnet152_random.pth", "good_ids": good_ids, "root": root,
              "no_audio_ids": info.no_audio_ids}
    out = root / "shards"
    started = time.perf_counter()
    result = cli(*extract_args(corpus, info.videos_dir, out, "--shard-size", "40KB",
                               "--decode-timeout", str(TIMEOUT_S)))
    corpus.update(out=out, result=result, seconds=time.perf_counter() - started)
    assert result.returncode == 0, result.stderr[-3000:]
    corpus["samples"] = {s["__key__"]: s for s in shards.iterate_samples(out)}
    return corpus


def test_every_good_video_is_written_with_schema_shapes(corpus: dict) -> None:
    samples = corpus["samples"]
    assert sorted(samples) == sorted(corpus["good_ids"])
    assert len(list(corpus["out"].glob("*.tar"))) >= 2  # rolled over by size
    csv_rows = {row.split(",")[0]: row.split(",") for row in corpus["csv"].read_text().splitlines()[1:]}
    for key, sample in samples.items():
        meta = sample[schema.META_FIELD]
        duration = meta["duration"]
        t2 = math.floor(duration + 0.5)
        t3 = math.ceil(math.floor(24 * duration + 0.5) / 16)
        assert sample[schema.RESNET152.field].shape == (t2, 2048) and abs(t2 - duration) <= 0.5
        assert sample[schema.RESNEXT101.field].shape == (t3, 2048) and abs(t3 - 1.5 * duration) <= 1
        for spec in schema.VISUAL_FEATURES:
            rows = sample[spec.field]
            assert rows.dtype == np.float16
            np.testing.assert_allclose(np.linalg.norm(rows.astype(np.float32), axis=1), 1.0, atol=2e-3)
        assert meta["schema_version"] == schema.SCHEMA_VERSION and meta["video_id"] == key
        assert meta["features"]["resnet152"]["weights_sha256"] == file_sha256(corpus["weights_2d"])
        assert meta["features"]["resnext101"]["weights"] == "random"
        if key in csv_rows:
            assert meta["category_1"] == csv_rows[key][1] and meta["task_id"] == int(csv_rows[key][4])
        if key in corpus["no_audio_ids"]:
            assert schema.LOGMEL.field not in sample and meta["missing"]["logmel"] == "no audio stream"
            assert meta["audio_sample_rate"] is None and "logmel" not in meta["features"]
        else:
            mel = sample[schema.LOGMEL.field]
            assert mel.dtype == np.float16 and mel.shape[0] == 40
            assert abs(mel.shape[1] - 100 * duration) <= 8  # 100 frames/s (+ codec priming samples)
            assert mel.max() == 0 and mel.min() >= -80
    assert samples[EXTRA_ID][schema.CAPTIONS_FIELD] == {"start": [], "end": [], "text": []}
    assert "captions" in samples[EXTRA_ID][schema.META_FIELD]["missing"]


def independent_1fps_frames(path: Path) -> np.ndarray:
    """Frames decoded with PyAV and picked like ffmpeg's fps=1: output k shows the last frame whose
    time rounds to <= k; there are round(duration) outputs (constant-rate file: last frame lasts one step)."""
    import av

    with av.open(str(path)) as container:
        frames = [(float(f.time), f.to_ndarray(format="rgb24")) for f in container.decode(video=0)]
    times = np.array([t for t, _ in frames]) - frames[0][0]
    duration = times[-1] + np.median(np.diff(times))
    picks = [max(i for i, t in enumerate(times) if math.floor(t + 0.5) <= k) for k in range(math.floor(duration + 0.5))]
    return np.stack([frames[i][1] for i in picks])


def test_2d_features_equal_an_independent_torchvision_computation(corpus: dict) -> None:
    import torch
    import torchvision
    from torchvision.transforms import v2

    key = corpus["good_ids"][0]
    frames = independent_1fps_frames(corpus["videos"] / f"{key}.mp4")
    model = torchvision.models.resnet152()
    model.load_state_dict(torch.load(corpus["weights_2d"], weights_only=True))
    model.fc = torch.nn.Identity()
    model.eval()
    transform = v2.Compose([v2.ToDtype(torch.float32, scale=True), v2.Resize(224, antialias=True),
                            v2.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])
    with torch.inference_mode():
        batch = transform(torch.from_numpy(frames).permute(0, 3, 1, 2))
        expected = torch.nn.functional.normalize(model(batch), dim=1).numpy()
    stored = corpus["samples"][key][schema.RESNET152.field].astype(np.float32)
    assert stored.shape == expected.shape
    cosine = (stored * expected).sum(1) / np.linalg.norm(stored, axis=1) / np.linalg.norm(expected, axis=1)
    assert cosine.min() >= 0.999, cosine


def test_logmel_is_the_recipe_on_the_decoded_soundtrack(corpus: dict) -> None:
    from decord_audio import decord_audio
    from howto_prep.features.logmel import logmel

    key = next(k for k in corpus["good_ids"] if k not in corpus["no_audio_ids"])
    path = next(corpus["videos"].rglob(f"{key}.mp4"))
    np.testing.assert_array_equal(corpus["samples"][key][schema.LOGMEL.field], logmel(decord_audio(path)))


def test_tokens_follow_the_rule_and_vocab_holds_the_words_used(corpus: dict) -> None:
    from gensim.models import KeyedVectors

    vectors = KeyedVectors.load_word2vec_format(str(corpus["word2vec"]), binary=True)
    captions = json.loads(Path(corpus["captions"]).read_text())
    used = set()
    for key, sample in corpus["samples"].items():
        texts = captions.get(key, {"text": []})["text"]
        assert sample[schema.CAPTIONS_FIELD] == captions.get(key, {"start": [], "end": [], "text": []})
        offsets = sample[schema.TOKEN_OFFSETS_FIELD]
        tokens = sample[schema.TOKENS_FIELD]
        assert offsets.dtype == np.int32 and tokens.dtype == np.int32 and len(offsets) == len(texts) + 1
        for i, text in enumerate(texts):
            words = [w for w in re.findall(r"[\w']+", text) if w in vectors.key_to_index]
            assert tokens[offsets[i]:offsets[i + 1]].tolist() == [vectors.key_to_index[w] for w in words]
        used.update(tokens.tolist())
    vocab = corpus["out"] / schema.VOCAB_DIR
    ids = np.load(vocab / schema.VOCAB_W2V_IDS)
    assert ids.tolist() == sorted(used)
    assert (vocab / schema.VOCAB_WORDS).read_text().splitlines() == [vectors.index_to_key[i] for i in ids]
    np.testing.assert_array_equal(np.load(vocab / schema.VOCAB_VECTORS), vectors.vectors[ids])


def test_bad_media_is_recorded_and_skipped(corpus: dict) -> None:
    failures = shards.read_failures(corpus["out"])
    assert {vid: rec["kind"] for vid, rec in failures.items()} == BAD
    assert all(rec["error"] for rec in failures.values())
    summary = corpus["result"].stdout
    assert re.search(r"videos\s+4\b", summary) and re.search(r"failed: decode_timeout\s+1\b", summary)
    status = cli("status", str(corpus["out"]))
    assert status.returncode == 0 and re.search(r"failed videos\s+5\b", status.stdout)


def test_rerun_skips_finished_and_failed_videos(corpus: dict) -> None:
    before = {p.name: p.stat().st_mtime_ns for p in corpus["out"].glob("*.tar")}
    result = cli(*extract_args(corpus, corpus["videos"], corpus["out"]))
    assert result.returncode == 0, result.stderr[-2000:]
    assert "0 to do" in result.stderr
    assert {p.name: p.stat().st_mtime_ns for p in corpus["out"].glob("*.tar")} == before


def test_bad_arguments_are_one_line_errors(corpus: dict) -> None:
    result = cli(*extract_args(corpus, corpus["root"] / "missing", corpus["root"] / "x"))
    assert result.returncode == 2 and result.stderr.strip().count("\n") == 0 and "is not a folder" in result.stderr
    bad_weights = extract_args(corpus, corpus["videos"], corpus["root"] / "x")
    bad_weights[bad_weights.index("--weights-2d") + 1] = str(corpus["root"] / "nope.pth")
    result = cli(*bad_weights)
    assert result.returncode == 2 and "nope.pth" in result.stderr and "Traceback" not in result.stderr
    no_words = extract_args(corpus, corpus["videos"], corpus["root"] / "x")
    del no_words[no_words.index("--word2vec"):no_words.index("--word2vec") + 2]
    result = cli(*no_words)  # tokens are among the default features
    assert result.returncode == 2 and result.stderr.strip().count("\n") == 0 and "--word2vec" in result.stderr


def test_audio_only_run_needs_no_word2vec(corpus: dict, tmp_path: Path) -> None:
    """Without tokens among the features nothing reads --word2vec, so it may be left out."""
    videos = tmp_path / "videos"
    videos.mkdir()
    for key in corpus["good_ids"][:2]:
        os.link(next(corpus["videos"].rglob(f"{key}.mp4")), videos / f"{key}.mp4")
    args = extract_args(corpus, videos, tmp_path / "shards", "--features", "logmel")
    del args[args.index("--word2vec"):args.index("--word2vec") + 2]
    result = cli(*args)
    assert result.returncode == 0, result.stderr[-2000:]
    samples = {s["__key__"]: s for s in shards.iterate_samples(tmp_path / "shards")}
    assert sorted(samples) == sorted(corpus["good_ids"][:2])
    for key, sample in samples.items():
        assert schema.TOKENS_FIELD not in sample
        assert np.array_equal(sample[schema.LOGMEL.field], corpus["samples"][key][schema.LOGMEL.field])


def test_kill_9_then_rerun_gives_the_clean_samples(corpus: dict, tmp_path: Path) -> None:
    """Kill -9 the whole process group after the first shard, rerun, compare with a clean run.

    The visual models are left out here (the resume logic does not depend on which features are
    computed), and each good video appears under six ids, decoded one at a time, so the run is still
    busy when killed (a log-mel-only decode task is fast now that it imports neither torch nor decord).
    """
    videos = tmp_path / "videos"
    videos.mkdir()
    copies = {f"{key}{copy}": key for key in corpus["good_ids"] for copy in ("", "X2", "X3", "X4", "X5", "X6")}
    for new_id, key in copies.items():
        os.link(next(corpus["videos"].rglob(f"{key}.mp4")), videos / f"{new_id}.mp4")
    captions = json.loads(Path(corpus["captions"]).read_text())
    copied_captions = {new_id: captions[key] for new_id, key in copies.items() if key in captions}
    (tmp_path / "caption.json").write_text(json.dumps(copied_captions))
    fields = [schema.LOGMEL.field, schema.CAPTIONS_FIELD, schema.TOKENS_FIELD, schema.TOKEN_OFFSETS_FIELD]
    out = tmp_path / "shards"
    args = extract_args({**corpus, "captions": tmp_path / "caption.json"}, videos, out,
                        "--shard-size", "1", "--features", "logmel,tokens", "--workers", "1")
    process = subprocess.Popen([sys.executable, "-m", "howto_prep.cli", *args], cwd=REPO,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while not list(out.glob("shard-*.json")) and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert process.poll() is None, "the run ended before it could be killed"
        os.killpg(process.pid, signal.SIGKILL)  # the CLI and the Ray processes it started
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    assert 1 <= len(shards.finished_keys(out)) < len(copies)
    result = cli(*args)
    assert result.returncode == 0, result.stderr[-2000:]
    resumed = {s["__key__"]: s for s in shards.iterate_samples(out)}
    assert sorted(resumed) == sorted(copies)
    for new_id, sample in resumed.items():
        clean = corpus["samples"][copies[new_id]]
        assert sorted(f for f in fields if f in sample) == sorted(f for f in fields if f in clean)
        for field in fields:
            if field == schema.CAPTIONS_FIELD:
                assert sample[field] == clean[field]
            elif field in clean:
                np.testing.assert_array_equal(sample[field], clean[field], err_msg=field)
    assert not list(out.glob(".*tmp*"))
    # A kill between a shard's tar and its JSON (written last) leaves that tar: it is not part of the set
    # (the samples above are exactly the clean ones), it is kept, never overwritten, and status lists it.
    left = shards.unfinished_tars(out)
    assert len(left) <= 1
    if left:
        status = cli("status", str(out))
        assert "tars without JSON (not read; videos redone)" in status.stdout + status.stderr


def fifo_holders(fifo: Path) -> set[int]:
    """Pids (other than this one) with `fifo` open: every process's fd links, read from /proc."""
    target, found = os.path.realpath(fifo), set()
    for fd_dir in Path("/proc").glob("[0-9]*/fd"):
        try:
            if any(os.readlink(fd) == target for fd in fd_dir.iterdir()):
                found.add(int(fd_dir.parent.name))
        except OSError:  # gone meanwhile, or not ours to read
            continue
    return found - {os.getpid()}


def alive(pid: int) -> bool:
    try:
        return "zombie" not in Path(f"/proc/{pid}/status").read_text().lower()
    except OSError:
        return False


def test_a_hung_decode_is_killed_and_its_process_is_gone_while_the_run_goes_on(tmp_path: Path) -> None:
    """Two FIFOs that never deliver a byte, then a good video, one decode at a time: each hung decode is
    recorded as decode_timeout and the process that was decoding it is gone, the first one while the
    second still hangs (so the timeout's kill ended it, not Ray's shutdown at the end of the run; a
    decoder left hanging also holds a CPU slot, and with both slots held the run never ends)."""
    videos = tmp_path / "videos"
    videos.mkdir()
    fifos = [videos / "00hang.mp4", videos / "01hang.mp4"]  # sorted first: decoded first, in this order
    held = []
    for fifo in fifos:
        os.mkfifo(fifo)
        # Held open for writing (O_RDWR does not block on a FIFO): the decoder's open() returns and its
        # reads wait forever, so the decoding process shows the FIFO among its fds in /proc.
        held.append(os.open(fifo, os.O_RDWR))
    rate = 44_100
    tone = 0.3 * np.sin(2 * np.pi * 330 * np.arange(int(2.2 * rate)) / rate)
    write_mp4(videos / "goodvideo01.mp4", gradient_frames(66, 120, 214), 30.0, tone, rate)
    (tmp_path / "caption.json").write_text("{}")
    out = tmp_path / "shards"
    started = time.monotonic()
    process = subprocess.Popen(
        [sys.executable, "-m", "howto_prep.cli", "extract", "--videos", str(videos), "--captions",
         str(tmp_path / "caption.json"), "--out", str(out), "--features", "logmel", "--workers", "1",
         "--decode-timeout", "5"],
        cwd=REPO, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, start_new_session=True)
    decoders: dict[Path, set[int]] = {fifo: set() for fifo in fifos}
    gone_at: dict[int, float] = {}  # pid -> seconds into the run when it was first seen gone
    try:
        deadline = time.monotonic() + 150  # about 25 s when the hung decoders are killed
        while process.poll() is None and time.monotonic() < deadline:
            for fifo in fifos:
                decoders[fifo] |= fifo_holders(fifo)
            for pid in set().union(*decoders.values()) - set(gone_at):
                if not alive(pid):
                    gone_at[pid] = time.monotonic() - started
            time.sleep(0.1)
        ended = time.monotonic() - started
        assert process.poll() is not None, \
            f"the run never ended (hung decoders {set().union(*decoders.values()) - set(gone_at)} hold its CPU slots)"
        _, stderr = process.communicate(timeout=60)
        assert process.returncode == 0, stderr[-2000:]
        failures = shards.read_failures(out)
        assert {vid: rec["kind"] for vid, rec in failures.items()} == {"00hang": "decode_timeout",
                                                                    "01hang": "decode_timeout"}
        assert shards.finished_keys(out) == {"goodvideo01"}
        assert all(decoders.values()), f"no process was seen decoding a FIFO: {decoders}"
        # The second FIFO hangs for the full timeout after the first is dropped: a decoder killed at its
        # timeout is gone seconds before the second; one left hanging dies with it when Ray shuts down.
        (first,), (second,) = decoders[fifos[0]], decoders[fifos[1]]
        assert gone_at.get(first, ended) < gone_at.get(second, ended) - 2, \
            f"the first hung decoder (pid {first}) outlived its timeout: gone {gone_at.get(first)} s into the " \
            f"run, the second {gone_at.get(second)} s, the run ended at {ended:.1f} s"
        survivors = [pid for pids in decoders.values() for pid in pids if alive(pid)]
        assert not survivors, f"hung decoder processes {survivors} outlived the run"
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        for pid in set().union(*decoders.values()):  # never leave a hung decoder behind
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
        for handle in held:
            os.close(handle)
