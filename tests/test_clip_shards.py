"""Clip-level shard sets slice video-level rows on each feature's timeline and list every clip."""

import json

import numpy as np
import pytest
from gensim.models import Word2Vec

from howto_prep import schema, shards
from howto_prep.extract.annotations import ClipList, ClipRecord
from howto_prep.extract.clip_set import build_clip_shards, row_span
from howto_prep.extract.plan import ClipAnnotations
from howto_prep.features.tokens import Word2VecVocabulary


@pytest.fixture(scope="module")
def vocab(tmp_path_factory):
    sentences = [["crack", "the", "eggs"], ["whisk", "eggs", "bowl"], ["slice", "onions"]] * 20
    model = Word2Vec(sentences, vector_size=300, min_count=1, workers=1, seed=1)
    path = tmp_path_factory.mktemp("w2v") / "w2v.bin"
    model.wv.save_word2vec_format(str(path), binary=True)
    return Word2VecVocabulary(path)


def video_sample(video_id: str, duration: float, with_audio: bool) -> dict[str, bytes]:
    """Rows whose value is their own index, so a slice shows exactly which rows it took."""
    t2, t3, frames = int(duration), int(duration * 1.5), int(duration * 100)
    fields = {
        schema.META_FIELD: json.dumps({"video_id": video_id, "duration": duration}).encode(),
        schema.RESNET152.field: shards.npy_bytes(np.repeat(np.arange(t2, dtype=np.float16)[:, None], 2048, 1)),
        schema.RESNEXT101.field: shards.npy_bytes(np.repeat(np.arange(t3, dtype=np.float16)[:, None], 2048, 1)),
        schema.CAPTIONS_FIELD: b'{"start": [], "end": [], "text": []}',
    }
    if with_audio:
        mel = np.repeat(np.arange(frames, dtype=np.float32)[None, :], 40, 0)
        fields[schema.LOGMEL.field] = shards.npy_bytes(mel)
    return fields


def youcook2_list(clips: list[ClipRecord]) -> ClipAnnotations:
    return ClipAnnotations(ClipList("youcook2", "validation", tuple(clips), "youcook2-json"))


def test_row_span_rules():
    assert row_span(2.0, 5.0, 1.0, 30) == slice(2, 5)
    assert row_span(2.5, 5.2, 1.0, 30) == slice(2, 6)
    assert row_span(2.0, 5.0, 1.5, 45) == slice(3, 8)  # floor(3.0) .. ceil(7.5)
    assert row_span(1.234, 2.0, 100.0, 3000, "round") == slice(123, 200)
    assert row_span(29.9, None, 1.0, 30) == slice(29, 30)
    assert row_span(40.0, 45.0, 1.0, 30) == slice(29, 30)  # clamped, never empty


def test_clip_shards_slice_and_list_missing(tmp_path, vocab):
    video_dir = tmp_path / "videos"
    with shards.ShardWriter(video_dir) as writer:
        writer.write("vidA_______", video_sample("vidA_______", 30.0, True), seconds=30)
        writer.write("vidB-______", video_sample("vidB-______", 20.0, False), seconds=20)
    clips = [
        ClipRecord("vidA________0000", "vidA_______", 2.0, 5.0, ("crack the eggs",), "validation"),
        ClipRecord("vidB-_______0000", "vidB-______", 10.0, 12.0, ("slice zzz onions",), "validation"),
        ClipRecord("gone_______0000", "gone_______", 0.0, 4.0, ("whisk",), "validation"),
    ]
    out = tmp_path / "clips"
    annotations = youcook2_list(clips)
    result = build_clip_shards(video_dir, annotations, vocab, out)
    assert (result["written"], result["present"], result["expected"]) == (2, 2, 3)
    samples = {s["__key__"]: s for s in shards.iterate_samples(out)}
    first = samples["vidA________0000"]
    assert first["resnet152.npy"][:, 0].tolist() == [2, 3, 4]
    assert first["resnext101.npy"][:, 0].tolist() == [3, 4, 5, 6, 7]
    assert first["logmel.npy"].shape == (40, 300) and first["logmel.npy"][0, 0] == 200
    assert first["meta.json"]["clip_start"] == 2.0 and first["meta.json"]["kind"] == "clip"
    second = samples["vidB-_______0000"]
    assert "logmel.npy" not in second
    words = vocab.words_for(second["tokens.npy"])
    assert words == ["slice", "onions"] and second["token_offsets.npy"].tolist() == [0, 2]
    manifest = json.loads((out / schema.CLIPS_FILE).read_text())
    assert manifest["num_expected"] == 3 and manifest["missing"] == ["gone_______0000"]
    vocab_words = (out / "vocab" / "words.txt").read_text().split()
    assert sorted(vocab_words) == sorted({"crack", "the", "eggs", "slice", "onions"})
    # A rerun writes nothing new and keeps what is there.
    assert build_clip_shards(video_dir, annotations, vocab, out)["written"] == 0
    assert len(list(shards.iterate_samples(out))) == 2


def test_segment_after_the_video_end_is_missing_not_shortened(tmp_path, vocab, caplog):
    """A segment that starts after the file ends is reported and counted missing, never a 0.001 s clip;
    one that only ends past the end is cut there and counted."""
    video_dir = tmp_path / "videos"
    with shards.ShardWriter(video_dir) as writer:
        writer.write("vidA_______", video_sample("vidA_______", 30.0, True), seconds=30)
    clips = [
        ClipRecord("vidA________0000", "vidA_______", 2.0, 5.0, ("crack the eggs",), "validation"),
        ClipRecord("vidA________0001", "vidA_______", 35.0, 41.0, ("whisk eggs",), "validation"),
        ClipRecord("vidA________0002", "vidA_______", 25.0, 33.0, ("slice onions",), "validation"),
        ClipRecord("gone_______0000", "gone_______", 0.0, 4.0, ("whisk",), "validation"),
    ]
    out = tmp_path / "clips"
    result = build_clip_shards(video_dir, youcook2_list(clips), vocab, out, absent_videos={"gone_______"})
    assert (result["present"], result["expected"], result["cut_at_video_end"]) == (2, 4, 1)
    assert "start after the end of their video" in caplog.text
    manifest = json.loads((out / schema.CLIPS_FILE).read_text())
    assert manifest["missing_by_reason"]["outside_video"] == ["vidA________0001"]
    assert manifest["missing_by_reason"]["video_absent"] == ["gone_______0000"]
    cut = {s["__key__"]: s for s in shards.iterate_samples(out)}["vidA________0002"]
    assert cut["meta.json"]["clip_end"] == 30.0 and cut["resnet152.npy"][:, 0].tolist() == [25, 26, 27, 28, 29]
