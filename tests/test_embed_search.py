"""mft-train embed and search: windows, stored embeddings = the model's, resume per shard, the faiss
search = a brute-force product, query tokenisation and out-of-vocabulary words, the HTML page, bad input."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from clip_shard_fixtures import pretrained_checkpoint
from shard_fixtures import write_shard_set
from mft_train.cli import main
from mft_train.data.shards import discover_shards
from mft_train.retrieval import index_store, vectors
from mft_train.retrieval.embed import WindowEmbedder, checkpoint_state, shard_samples
from mft_train.retrieval.html import keyframe_jpeg
from mft_train.retrieval.index_store import nearest_caption
from mft_train.retrieval.windows import WindowSpec, window_bounds, window_inputs, window_spec

DEVICE = ["--set", "train.device=cpu"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory, two_torch_threads) -> dict:
    """A tiny pretrained EAO, a 6-video video-level set over 2 shards (video 4 without audio) and its index."""
    root = tmp_path_factory.mktemp("embed")
    info = write_shard_set(root / "shards", videos=6, shards=2, seed=3, duration=(9.0, 21.0))
    checkpoint = pretrained_checkpoint(root)
    index = root / "index"
    assert main(["embed", "--checkpoint", str(checkpoint), "--shards", str(root / "shards"), "--out", str(index),
                 "--stride", "3", *DEVICE]) == 0
    words = (root / "shards" / "vocab" / "words.txt").read_text().split()
    return {"root": root, "info": info, "checkpoint": checkpoint, "index": index, "words": words}


def one_error_line(capsys: pytest.CaptureFixture) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    return err


def test_window_bounds_cover_the_video_with_the_stride() -> None:
    spec = window_spec(8.0, 12, 768, stride=4.0)
    assert (spec.seconds, spec.stride, spec.video_tokens, spec.audio_frames) == (8.0, 4.0, 12, 768)
    assert window_bounds(20.0, spec) == [(0.0, 8.0), (4.0, 12.0), (8.0, 16.0), (12.0, 20.0)]
    assert window_bounds(21.0, spec)[-1] == (16.0, 21.0)  # the last window ends with the video
    assert window_bounds(5.0, spec) == [(0.0, 5.0)]
    assert window_spec(8.0, 12, 768, seconds=4.0) == WindowSpec(4.0, 2.0, 6, 384)


def test_index_holds_every_window_as_float16_with_the_model_embeddings(setup: dict) -> None:
    manifest = index_store.read_manifest(setup["index"])
    spec = WindowSpec(**manifest["windows"])
    assert spec.seconds == 8.0 and spec.stride == 3.0
    state = checkpoint_state(setup["checkpoint"], ["train.device=cpu"])
    embedder = WindowEmbedder(state, torch.device("cpu"))
    shards = discover_shards(setup["root"] / "shards")
    assert [part["shard"] for part in manifest["parts"]] == [Path(url).name for url in shards.urls]
    total = 0
    for url, part in zip(shards.urls, manifest["parts"]):
        stored = index_store.read_part(setup["index"] / part["file"], ("video_id", "start", "end", "va", "v", "a", "a_empty"))
        assert stored["va"].dtype == np.float16 and stored["va"].shape[1] == manifest["embedding"]["dim"]
        row = 0
        for record, captions in shard_samples(url, setup["root"] / "shards"):
            bounds = window_bounds(record.duration, spec)
            assert stored["video_id"][row:row + len(bounds)].tolist() == [record.video_id] * len(bounds)
            assert stored["start"][row:row + len(bounds)].tolist() == [b[0] for b in bounds]
            expected = embedder.embed([window_inputs(record, start, end, spec) for start, end in bounds])
            for key in ("va", "v", "a"):
                np.testing.assert_allclose(stored[key][row:row + len(bounds)], expected[key], atol=1e-3)
            assert stored["a_empty"][row:row + len(bounds)].all() == (record.logmel is None)
            row += len(bounds)
        assert row == len(stored["video_id"])
        total += row
    assert manifest["stats"]["windows"] == total and manifest["stats"]["videos"] == 6
    assert manifest["complete"] and manifest["index"]["type"] == "flat"
    for key in index_store.KEYS:
        assert index_store.vector_file(setup["index"], key).is_file()


def test_search_equals_a_brute_force_product_and_reports_out_of_vocabulary(setup: dict, capsys: pytest.CaptureFixture) -> None:
    words = setup["words"]
    query = f"{words[0]} {words[1]} gonna {words[2]}"
    capsys.readouterr()
    assert main(["search", "--index", str(setup["index"]), query, "--top", "4", "--json", *DEVICE]) == 0
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    assert report["words"] == [words[0], words[1], words[2]] and report["out_of_vocabulary"] == ["gonna"]
    assert "out of vocabulary (left out): gonna" in captured.err
    hits = report["results"]
    assert [hit["rank"] for hit in hits] == [1, 2, 3, 4]

    from mft_train.retrieval.query import QueryEncoder

    manifest = index_store.read_manifest(setup["index"])
    _, embedding = QueryEncoder(manifest, overrides=["train.device=cpu"]).encode(query)
    matrix = np.concatenate([index_store.read_part(setup["index"] / p["file"], ("va",))["va"] for p in manifest["parts"]])
    scores, rows = vectors.brute_force(matrix.astype(np.float32), embedding[None], 4)
    assert [hit["row"] for hit in hits] == rows[0].tolist()
    np.testing.assert_allclose([hit["score"] for hit in hits], scores[0], atol=1e-3)
    table = index_store.WindowTable.load(setup["index"], manifest)
    for hit in hits:
        assert (hit["video_id"], hit["start"], hit["end"]) == (table.video_id[hit["row"]], table.start[hit["row"]], table.end[hit["row"]])
        assert hit["caption"].startswith("caption ")

    assert main(["search", "--index", str(setup["index"]), query, "--top", "3", "--target", "a", *DEVICE]) == 0
    out = capsys.readouterr().out
    assert "rank  video id" in out and "target a over" in out and len(out.strip().splitlines()) == 3 + 3


def test_nearest_caption_prefers_overlap_then_distance() -> None:
    captions = {"start": [0.0, 5.0, 20.0], "end": [4.0, 9.0, 22.0], "text": ["a", "b", "c"]}
    assert nearest_caption(captions, 3.0, 11.0)["caption"] == "b"  # 4 s overlap beats 1 s
    assert nearest_caption(captions, 12.0, 16.0)["caption"] == "b"  # none overlaps: 3 s away beats 4 s
    assert nearest_caption({"start": [], "end": [], "text": []}, 0.0, 8.0)["caption"] == ""


def test_embed_resumes_per_shard_and_refuses_another_checkpoint(setup: dict, tmp_path: Path,
                                                               capsys: pytest.CaptureFixture) -> None:
    index = tmp_path / "index"
    args = ["embed", "--checkpoint", str(setup["checkpoint"]), "--shards", str(setup["root"] / "shards"),
            "--out", str(index), "--stride", "3", "--index-type", "ivf", *DEVICE]
    assert main(args) == 0
    manifest = index_store.read_manifest(index)
    assert manifest["index"]["type"] == "ivf"
    first, second = (index / part["file"] for part in manifest["parts"])
    kept_mtime = first.stat().st_mtime_ns
    before = index_store.read_part(second, ("va",))["va"]
    second.unlink()  # as if killed while embedding the second shard
    manifest["complete"] = False
    index_store.write_manifest(index, manifest)
    capsys.readouterr()
    with pytest.raises(SystemExit):  # search refuses the unfinished index
        raise SystemExit(main(["search", "--index", str(index), setup["words"][0], *DEVICE]) or 0)
    assert "unfinished; rerun the same `mft-train embed`" in one_error_line(capsys)
    assert main(args) == 0
    assert "(1 shards already embedded)" in capsys.readouterr().err
    assert first.stat().st_mtime_ns == kept_mtime
    np.testing.assert_array_equal(index_store.read_part(second, ("va",))["va"], before)
    assert index_store.read_manifest(index)["complete"]

    other = pretrained_checkpoint(tmp_path / "other", seed=1)
    capsys.readouterr()
    assert main(["embed", "--checkpoint", str(other), "--shards", str(setup["root"] / "shards"), "--out", str(index), *DEVICE]) == 2
    assert "holds embeddings of another checkpoint" in one_error_line(capsys)


def test_bad_input_is_one_line_and_exit_2(setup: dict, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    index = str(setup["index"])
    cases = [
        (["search", "--index", index, "   "], "the query is empty"),
        (["search", "--index", index, "gonna uhm"], "no word of the query is in the vocabulary"),
        (["search", "--index", str(tmp_path / "nowhere"), "word"], "does not exist"),
        (["search", "--index", str(setup["root"] / "shards"), "word"], "is not an embedding index"),
        (["search", "--index", index, setup["words"][0], "--top", "0"], "--top must be positive"),
        (["search", "--index", index, setup["words"][0], "--videos", str(tmp_path)], "add --html"),
        (["embed", "--checkpoint", str(tmp_path / "no-run"), "--shards", str(setup["root"] / "shards"),
          "--out", str(tmp_path / "i")], "does not exist"),
        (["embed", "--checkpoint", str(setup["checkpoint"]), "--shards", str(tmp_path), "--out", str(tmp_path / "i")],
         "no complete shards"),
        (["embed", "--checkpoint", str(setup["checkpoint"]), "--shards", str(setup["root"] / "shards"),
          "--out", str(tmp_path / "i"), "--stride", "0"], "--stride must be a positive"),
    ]
    for argv, message in cases:
        assert main([*argv, *DEVICE]) == 2, argv
        assert message in one_error_line(capsys), argv
    moved = tmp_path / "moved.pt"
    moved.write_bytes(Path(setup["checkpoint"]).read_bytes()[:-10] + b"0123456789")
    assert main(["search", "--index", index, setup["words"][0], "--checkpoint", str(moved), *DEVICE]) == 2
    assert "is not the checkpoint the index was embedded with" in one_error_line(capsys)


def _write_colour_video(path: Path) -> None:
    """4 s, 64x48, 10 fps: red for 2 s, then blue (each second starts with a key frame)."""
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        stream.options = {"g": "10"}
        for i in range(40):
            rgb = np.zeros((48, 64, 3), np.uint8)
            rgb[..., 0 if i < 20 else 2] = 230
            for packet in stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def test_html_page_has_a_keyframe_from_the_window_middle(setup: dict, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    import io

    from PIL import Image

    video = tmp_path / "colours.mp4"
    _write_colour_video(video)
    for seconds, channel in ((1.0, 0), (3.0, 2), (2.5, 2)):
        pixel = np.asarray(Image.open(io.BytesIO(keyframe_jpeg(video, seconds))).convert("RGB"))[24, 32]
        assert int(np.argmax(pixel)) == channel and pixel.max() > 150, (seconds, pixel)
    assert keyframe_jpeg(tmp_path / "missing.mp4", 1.0) is None

    videos = tmp_path / "videos"
    videos.mkdir()
    first_id = setup["info"]["ids"][0]
    os.link(video, videos / f"{first_id}.mp4")
    page = tmp_path / "results.html"
    assert main(["search", "--index", str(setup["index"]), setup["words"][3], "--top", "1000", "--html", str(page),
                 "--videos", str(videos), *DEVICE]) == 0  # every window, so the one video with a file is a hit
    text = page.read_text()
    windows = index_store.read_manifest(setup["index"])["stats"]["windows"]
    assert text.count("<tr><td>") == windows and "video not found" in text
    with_file = text.count(f"<code>{first_id}</code>")
    assert with_file >= 1 and text.count("data:image/jpeg;base64,") == with_file
    assert "hit video(s) not in" in capsys.readouterr().err


def test_synthetic_truth_labels_a_window_by_the_step_covering_more_than_half() -> None:
    from mft_train.retrieval.synthetic_check import precision, window_steps

    truth = {"v": [{"step": 0, "start": 0.0, "end": 5.0}, {"step": 1, "start": 5.0, "end": 10.0}]}
    starts, ends = np.array([0.0, 3.0, 4.0, 8.0, 0.0]), np.array([4.0, 7.0, 8.0, 12.0, 4.0])
    ids = np.array(["v", "v", "v", "v", "other"])
    shows = window_steps(ids, starts, ends, truth, steps=2)
    # [0,4]: step 0 covers 4 of 4. [3,7]: 2 s each, exactly half: neither. [4,8]: step 1 covers 3 of 4.
    # [8,12]: step 1 covers 2 of 4 (the video ends at 10): neither. Another video: nothing.
    assert shows.tolist() == [[True, False], [False, False], [False, True], [False, False], [False, False]]
    hits = [{"row": 2}, {"row": 0}, {"row": 1}, {"row": 2}, {"row": 4}]
    assert precision(hits, shows, step=1, k=5) == pytest.approx(2 / 5)
    assert precision(hits, shows, step=0, k=2) == pytest.approx(1 / 2)
