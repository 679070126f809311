"""Clip lists from YouCook2, MSR-VTT and clips.csv annotation files give the expected clips."""

import json

import pytest

from howto_prep.extract.annotations import load_clips_csv, load_msrvtt, load_youcook2
from howto_prep.errors import UserError


def write_youcook2(path):
    database = {
        "abcdefghij1": {"subset": "training", "duration": 60.0, "annotations": [
            {"id": 0, "segment": [1, 5], "sentence": "crack the eggs"},
            {"id": 1, "segment": [6, 12], "sentence": "whisk them"}]},
        "abc-_efghij": {"subset": "validation", "duration": 30.0, "annotations": [
            {"id": 0, "segment": [0, 4], "sentence": "slice onions"},
            {"id": 1, "segment": [4, 9], "sentence": "fry onions"},
            {"id": 2, "segment": [10, 20], "sentence": "serve"}]},
    }
    path.write_text(json.dumps({"database": database}))


def test_youcook2_segments_per_split(tmp_path):
    path = tmp_path / "youcookii_annotations_trainval.json"
    write_youcook2(path)
    validation = load_youcook2(path, "validation")
    assert [clip.clip_id for clip in validation] == ["abc-_efghij_0000", "abc-_efghij_0001", "abc-_efghij_0002"]
    assert (validation[1].start, validation[1].end, validation[1].captions) == (4.0, 9.0, ("fry onions",))
    assert len(load_youcook2(path, "training")) == 2
    with pytest.raises(UserError, match="split"):
        load_youcook2(path, "test")


def test_msrvtt_test_list_and_split(tmp_path):
    path = tmp_path / "videodatainfo.json"
    videos = [{"video_id": f"video{i}", "id": i, "split": "test" if i >= 2 else "train"} for i in range(4)]
    sentences = [{"video_id": f"video{i}", "sen_id": 20 * i + j, "caption": f"caption {j} of {i}"}
                 for i in range(4) for j in range(20)]
    path.write_text(json.dumps({"videos": videos, "sentences": sentences}))
    test_list = tmp_path / "test_1kA.txt"
    test_list.write_text("video3\nvideo2\n")
    clips = load_msrvtt(path, test_list=test_list)
    assert [clip.video_id for clip in clips] == ["video3", "video2"]
    assert len(clips[0].captions) == 20 and clips[0].captions[0] == "caption 0 of 3"
    assert clips[0].end is None
    assert [clip.video_id for clip in load_msrvtt(path, split="train")] == ["video0", "video1"]
    test_list.write_text("video9\n")
    with pytest.raises(UserError, match="not in"):
        load_msrvtt(path, test_list=test_list)


def test_clips_csv_and_bad_input(tmp_path):
    path = tmp_path / "clips.csv"
    path.write_text("video_id,start,end,caption\nv1,0,5,a b\nv1,5,9,c d\nv2,1.5,3,e\n")
    clips = load_clips_csv(path)
    assert [clip.clip_id for clip in clips] == ["v1_0000", "v1_0001", "v2_0000"]
    path.write_text("video_id,start,caption\nv1,0,a\n")
    with pytest.raises(UserError, match="column"):
        load_clips_csv(path)
    path.write_text("video_id,start,end,caption\nv1,5,1,a\n")
    with pytest.raises(UserError, match="end <= start"):
        load_clips_csv(path)
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(UserError, match="not valid JSON"):
        load_youcook2(tmp_path / "bad.json")
