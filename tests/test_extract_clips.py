"""`howto-prep extract --youcook2/--msrvtt` builds clip-level sets with the annotated clip counts."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

from howto_prep import schema, shards

FEATURES = "logmel,tokens"  # the visual models are covered by test_extract; clip cutting is what is tested here


def extract(*args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "howto_prep.cli", "extract", "--features", FEATURES, *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=600)


def test_youcook2_and_msrvtt_clip_counts(synth_corpus, tmp_path):
    annotations = json.loads(synth_corpus.youcook2_json.read_text())["database"]
    expected = sum(len(entry["annotations"]) for entry in annotations.values() if entry["subset"] == "validation")
    out = tmp_path / "yc2-val"
    result = extract("--videos", str(synth_corpus.heldout_videos_dir), "--word2vec", str(synth_corpus.word2vec),
                     "--youcook2", str(synth_corpus.youcook2_json), "--out", str(out))
    assert result.returncode == 0, result.stderr[-2000:]
    manifest = json.loads((out / schema.CLIPS_FILE).read_text())
    assert manifest["num_expected"] == expected and not manifest["missing"]
    samples = list(shards.iterate_samples(out))
    assert len(samples) == expected
    first = samples[0]
    assert first["meta.json"]["kind"] == "clip" and first["captions.json"]["text"]
    span = first["meta.json"]["clip_end"] - first["meta.json"]["clip_start"]
    assert abs(first["logmel.npy"].shape[1] - 100 * span) <= 1 or "logmel" in first["meta.json"]["missing"]

    listed = {row["video_id"]: row["sentence"] for row in csv.DictReader(synth_corpus.msrvtt_test_list.open())}
    out = tmp_path / "msrvtt-1kA"
    result = extract("--videos", str(synth_corpus.msrvtt_dir), "--word2vec", str(synth_corpus.word2vec),
                     "--msrvtt", str(synth_corpus.msrvtt_json), "--test-list", str(synth_corpus.msrvtt_test_list),
                     "--out", str(out))
    assert result.returncode == 0, result.stderr[-2000:]
    samples = {sample["__key__"]: sample for sample in shards.iterate_samples(out)}
    assert sorted(samples) == sorted(listed)
    # The JSFusion list's sentence is each clip's one sentence, so it is the query (not sen_id 0).
    assert {key: sample["captions.json"]["text"] for key, sample in samples.items()} == {
        key: [sentence] for key, sentence in listed.items()}
    protocol = json.loads((out / schema.CLIPS_FILE).read_text())["protocol"]
    assert protocol["name"] == "msrvtt-1ka" and protocol["num_expected"] == len(listed)
    assert not protocol["standard"]  # a 1k-A list with fewer than 1,000 rows is marked non-standard
    assert "protocol msrvtt-1ka" in result.stderr


def test_clip_options_bad_input(synth_corpus, tmp_path):
    result = extract("--videos", str(synth_corpus.heldout_videos_dir), "--word2vec", str(synth_corpus.word2vec),
                     "--out", str(tmp_path / "x"))
    assert result.returncode == 2 and "--captions" in result.stderr and "Traceback" not in result.stderr
    result = extract("--videos", str(tmp_path), "--word2vec", str(synth_corpus.word2vec),
                     "--youcook2", str(synth_corpus.youcook2_json), "--out", str(tmp_path / "y"))
    assert result.returncode == 2 and "none of the" in result.stderr
    result = extract("--videos", str(synth_corpus.heldout_videos_dir), "--word2vec", str(synth_corpus.word2vec),
                     "--youcook2", str(synth_corpus.youcook2_json), "--split", "test", "--out", str(tmp_path / "z"))
    assert result.returncode == 2 and "split" in result.stderr
