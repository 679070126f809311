"""The benchmarks' files as published -> the clips and the named protocol they define.

Fixtures are written here in each real format (the real files are not committed): the 2016 MSR-VTT
pair (train_val "validate" + test) and the 2017 single file ("val"), the JSFusion 1k-A csv
(key,vid_key,video_id,sentence; quoted fields, non-ASCII sentences), the 7k/9k lists (header
video_id), YouCook2's JSON and the MIL-NCE 3,350-clip list (end,start,task,text,video_id; ids
starting with '-').
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from howto_prep.errors import UserError
from howto_prep.extract.annotations import load_clips_csv, load_msrvtt, load_youcook2
from howto_prep.extract.protocols import choose_protocol, describe, protocol_record


def sentences_of(video: int, count: int = 20) -> list[dict]:
    return [{"caption": f"sentence {j} of video{video}", "video_id": f"video{video}", "sen_id": 20 * video + j}
            for j in range(count)]


def write_msrvtt_2016(folder: Path) -> tuple[Path, Path]:
    """train_val (videos 0-5: train 0-3, validate 4-5; video5 has no sentence) and test (videos 6-9)."""
    train_val = {"videos": [{"video_id": f"video{i}", "id": i, "split": "train" if i < 4 else "validate"}
                            for i in range(6)],
                 "sentences": [s for i in range(5) for s in sentences_of(i)]}
    test = {"videos": [{"video_id": f"video{i}", "id": i, "split": "test"} for i in range(6, 10)],
            "sentences": [s for i in range(6, 10) for s in sentences_of(i)]}
    paths = folder / "train_val_videodatainfo.json", folder / "test_videodatainfo.json"
    for path, data in zip(paths, (train_val, test)):
        path.write_text(json.dumps(data))
    return paths


def write_jsfusion(path: Path) -> dict[str, str]:
    """Three rows; the sentences are not the videos' sentence 0, one is quoted (a comma), one non-ASCII."""
    rows = {"video7": "a man, standing, talks", "video9": "un café crème est versé", "video6": "sentence 3 of video6"}
    lines = ["key,vid_key,video_id,sentence"]
    for n, (video_id, sentence) in enumerate(rows.items()):
        field = f'"{sentence}"' if "," in sentence else sentence
        lines.append(f"ret{n},msr{video_id[5:]},{video_id},{field}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return rows


def test_jsfusion_list_queries_with_its_own_sentence(tmp_path):
    train_val, test = write_msrvtt_2016(tmp_path)
    listed = write_jsfusion(tmp_path / "MSRVTT_JSFUSION_test.csv")
    clips = load_msrvtt([train_val, test], test_list=tmp_path / "MSRVTT_JSFUSION_test.csv")
    assert [clip.video_id for clip in clips] == list(listed)
    assert [clip.captions for clip in clips] == [(sentence,) for sentence in listed.values()]
    assert clips.split == "list:MSRVTT_JSFUSION_test.csv"
    protocol = choose_protocol(clips)
    assert protocol is not None and protocol.name == "msrvtt-1ka"
    record = protocol_record(clips, protocol)
    assert (record["num_expected"], record["published_n"], record["standard"]) == (3, 1000, False)
    assert "NOT the published N = 1000" in describe(record)


def test_nine_k_list_spans_both_2016_files_and_keeps_all_sentences(tmp_path):
    train_val, test = write_msrvtt_2016(tmp_path)
    nine_k = tmp_path / "MSRVTT_train.9k.csv"
    nine_k.write_text("video_id\nvideo0\nvideo4\nvideo8\n")
    clips = load_msrvtt([train_val, test], test_list=nine_k)
    assert [clip.video_id for clip in clips] == ["video0", "video4", "video8"]
    assert all(len(clip.captions) == 20 for clip in clips) and clips[0].captions[0] == "sentence 0 of video0"
    assert clips.split == "list:MSRVTT_train.9k.csv" and choose_protocol(clips) is None  # labelled by its list
    with pytest.raises(UserError, match="give both with --msrvtt"):
        load_msrvtt([train_val], test_list=nine_k)


def test_seven_k_header_bare_ids_and_repeated_ids(tmp_path):
    train_val, test = write_msrvtt_2016(tmp_path)
    seven_k = tmp_path / "MSRVTT_train.7k.csv"
    seven_k.write_text("video_id\r\nvideo1\r\nvideo2\r\n")  # the header and Windows line ends
    assert [clip.video_id for clip in load_msrvtt([train_val, test], test_list=seven_k)] == ["video1", "video2"]
    bare = tmp_path / "ids.txt"
    bare.write_text("video3\n\nvideo2\n")
    assert [clip.video_id for clip in load_msrvtt([train_val, test], test_list=bare)] == ["video3", "video2"]
    bare.write_text("video3\nvideo3\n")
    with pytest.raises(UserError, match="more than once"):
        load_msrvtt([train_val, test], test_list=bare)


def test_val_and_validate_are_one_split_and_a_video_without_sentences_is_skipped(tmp_path):
    train_val, test = write_msrvtt_2016(tmp_path)
    clips = load_msrvtt([train_val, test], split="val")
    assert [clip.video_id for clip in clips] == ["video4"] and clips.without_sentences == ("video5",)
    release_2017 = tmp_path / "videodatainfo.json"
    data = json.loads(train_val.read_text())
    for video in data["videos"]:
        video["split"] = "val" if video["split"] == "validate" else video["split"]
    release_2017.write_text(json.dumps(data))
    assert [clip.video_id for clip in load_msrvtt(release_2017, split="validate")] == ["video4"]
    with pytest.raises(UserError, match="splits: train, validate"):
        load_msrvtt(release_2017, split="test")


def test_msrvtt_full_protocol_counts_every_sentence(tmp_path):
    _, test = write_msrvtt_2016(tmp_path)
    clips = load_msrvtt([test], split="test")
    protocol = choose_protocol(clips)
    assert protocol is not None and protocol.name == "msrvtt-full" and protocol.all_sentences
    record = protocol_record(clips, protocol)
    assert (record["num_expected"], record["num_queries"]) == (4, 80)


def write_youcook2_list(path: Path) -> None:
    """The MIL-NCE list's exact columns; an id starting with '-', a quoted text with a comma."""
    path.write_text("end,start,task,text,video_id\n"
                    "24,22,201,prepare some chicken cutlets,-ErPSunMfcs\n"
                    '27,25,201,"coat the chicken, then fry",-ErPSunMfcs\n'
                    "60,47,226,pick the ends off the verdalago,xHr8X2Wpmno\n", encoding="utf-8")


def test_youcook2_list_is_read_with_its_text_column(tmp_path):
    path = tmp_path / "validation_youcook.csv"
    write_youcook2_list(path)
    clips = load_clips_csv(path)
    assert [(c.clip_id, c.video_id, c.start, c.end) for c in clips] == [
        ("-ErPSunMfcs_0000", "-ErPSunMfcs", 22.0, 24.0), ("-ErPSunMfcs_0001", "-ErPSunMfcs", 25.0, 27.0),
        ("xHr8X2Wpmno_0000", "xHr8X2Wpmno", 47.0, 60.0)]
    assert clips[1].captions == ("coat the chicken, then fry",)
    protocol = choose_protocol(clips, "youcook2-val")
    assert protocol is not None and protocol.benchmark == "youcook2"
    assert protocol_record(clips, protocol)["published_n"] == 3350
    with pytest.raises(UserError, match="--protocol msrvtt-1ka is defined on"):
        choose_protocol(clips, "msrvtt-1ka")
    generic = tmp_path / "clips.csv"
    generic.write_text("video_id,start,end,caption\nv1,0,5,a b\n")
    assert choose_protocol(load_clips_csv(generic)) is None


def test_youcook2_json_validation_is_the_all_segments_protocol(tmp_path):
    path = tmp_path / "youcookii_annotations_trainval.json"
    path.write_text(json.dumps({"database": {
        "-abcdefghij": {"subset": "validation", "annotations": [{"segment": [0, 4], "sentence": "slice onions"}]},
        "bcdefghijkl": {"subset": "training", "annotations": [{"segment": [1, 5], "sentence": "crack eggs"}]}}}))
    protocol = choose_protocol(load_youcook2(path, "validation"))
    assert protocol is not None and protocol.name == "youcook2-val-all"
    assert choose_protocol(load_youcook2(path, "training")) is None


def test_extract_cli_refuses_a_protocol_the_inputs_do_not_define(tmp_path):
    path = tmp_path / "validation_youcook.csv"
    write_youcook2_list(path)
    result = subprocess.run([sys.executable, "-m", "howto_prep.cli", "extract", "--videos", str(tmp_path),
                             "--word2vec", str(tmp_path / "w.bin"), "--clips", str(path), "--protocol", "msrvtt-full",
                             "--out", str(tmp_path / "out")], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "--protocol msrvtt-full is defined on" in result.stderr
