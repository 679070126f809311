"""caption.json's on-disk index: the same entries as json.load, one-line errors, stale and resumed builds."""

from __future__ import annotations

import json
import logging
import os
import pickle
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from howto_prep.errors import UserError
from howto_prep.extract.caption_index import (KIND, PROGRESS_FILE, CaptionIndex, Progress, build_index,
                                              read_progress)
from howto_prep.input_index import fingerprint, index_folder

WORDS = ["cut", "the", "onion", "café", "naïve", "日本語", "emoji😀", "tab\there", 'quote"s', "back\\slash", "ß"]


def entry(rng: random.Random, lines: int) -> dict:
    return {"start": [round(rng.uniform(0, 99), 2) for _ in range(lines)],
            "end": [round(rng.uniform(0, 99), 2) for _ in range(lines)],
            "text": [" ".join(rng.choices(WORDS, k=rng.randint(1, 5))) for _ in range(lines)]}


def write_rich_captions(path: Path, videos: int = 60, seed: int = 0) -> Path:
    """A caption.json json.load reads but a naive indexer would get wrong: non-ASCII text and ids
    (raw and \\u-escaped), pretty-printed and odd whitespace, extra keys, empty entries, and ids that
    occur twice with different entries (json.load keeps the last)."""
    rng = random.Random(seed)
    members = []
    for number in range(videos):
        video_id = ["vid%03d" % number, "vïdéo%d" % number, "日本%d" % number, 'q"%d\\' % number][number % 4]
        if number % 9 == 8:
            video_id = "vid000"  # a repeated id: its last entry wins
        value = entry(rng, rng.randint(0, 8))
        if number % 5 == 0:
            value["extra"] = {"lang": "fr", "n": [1, None, True]}
        key = json.dumps(video_id, ensure_ascii=number % 2 == 0)
        body = json.dumps(value, ensure_ascii=number % 3 == 0, indent=2 if number % 4 == 1 else None)
        members.append(f"{key}{' ' * (number % 3)}:\r\n\t {body}")
    path.write_text("{\n " + " ,\n  ".join(members) + "\n}\n", encoding="utf-8")
    return path


def reference(path: Path) -> dict:
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def assert_same_entries(index: CaptionIndex, expected: dict) -> None:
    assert len(index) == len(expected)
    for video_id, value in expected.items():
        assert video_id in index
        assert index.get(video_id) == value, video_id


def build(source: Path, out: Path, **options: int) -> CaptionIndex:
    folder = index_folder(out, KIND)
    build_index(source, folder, fingerprint(source, "caption.json"), **options)
    return CaptionIndex.load(folder, source)


@pytest.mark.parametrize("block_bytes", [1, 7, 61, 4096])
def test_entries_equal_json_load_across_block_boundaries(tmp_path: Path, block_bytes: int) -> None:
    source = write_rich_captions(tmp_path / "caption.json")
    expected = reference(source)
    assert source.read_text(encoding="utf-8").count('"vid000"') > 1  # the file repeats an id
    index = build(source, tmp_path / "out", block_bytes=block_bytes, part_bytes=1500)
    assert max(index.lengths) > block_bytes or block_bytes == 4096  # values span blocks
    assert_same_entries(index, expected)


def test_repeated_id_keeps_last_entry(tmp_path: Path) -> None:
    source = tmp_path / "caption.json"
    first, last = {"start": [1.0], "end": [2.0], "text": ["first"]}, {"start": [], "end": [], "text": []}
    middle = {"start": [3.0], "end": [4.0], "text": ["other"]}
    source.write_text(json.dumps({"a": first, "b": middle})[:-1] + ', "a": ' + json.dumps(last) + "}")
    index = build(source, tmp_path / "out", block_bytes=16, part_bytes=40)  # "a" twice, in different parts
    assert len(index) == 2 and index.get("a") == last and index.get("b") == middle


def test_open_builds_once_then_reads(tmp_path: Path) -> None:
    source = write_rich_captions(tmp_path / "caption.json")
    index = CaptionIndex.open(source, tmp_path / "out")
    assert_same_entries(index, reference(source))
    assert index.get("no-such-video") is None and "no-such-video" not in index
    assert index.get("vid0") is None and index.get("") is None  # a prefix, the empty id
    folder = index_folder(tmp_path / "out", KIND)
    assert sorted(p.name for p in folder.iterdir()) == ["ids.npy", "lengths.npy", "offsets.npy", "source.json"]
    built = (folder / "ids.npy").stat().st_mtime_ns
    again = CaptionIndex.open(source, tmp_path / "out")
    assert (folder / "ids.npy").stat().st_mtime_ns == built and len(again) == len(index)
    assert pickle.loads(pickle.dumps(index)).get("vid002") == index.get("vid002")


GOOD = '"ok": {"start": [1], "end": [2], "text": ["é"]}'


@pytest.mark.parametrize("text, near", [
    ("{" + GOOD + ', "x": {"start": [1] "end": []}}', '"end": []}}'),  # missing comma, after non-ASCII
    ("{" + GOOD + ', "x": {"start": [1], "end": [2], "text": ["a"]},}', "}"),  # trailing comma
    ("{" + GOOD + ' "x": 1}', '"x": 1}'),
    ("{" + GOOD + ', "x" {"start": []}}', '{"start": []}}'),
    ("{" + GOOD + "} extra", "extra"),
    ("{" + GOOD + ', "x": {"start": [1], "end": [2], "text": ["unterminated]}', None),
    ("{" + GOOD + ", ", None),
    ("", None),
])
def test_invalid_json_is_one_line(tmp_path: Path, text: str, near: str | None) -> None:
    source = tmp_path / "caption.json"
    source.write_text(text, encoding="utf-8")
    with pytest.raises(UserError, match="is not valid JSON") as caught:
        build(source, tmp_path / "out", block_bytes=8)
    message = str(caught.value)
    assert "\n" not in message and str(source) in message
    if near is not None:
        assert f"near byte {len(text.encode()) - len(near.encode()):,})" in message


def test_invalid_utf8_and_non_object(tmp_path: Path) -> None:
    source = tmp_path / "caption.json"
    data = b'{"a": {"start": [], "end": [], "text": ["\xc3\xa9\xff"]}}'
    source.write_bytes(data)
    bad = data.index(b"\xff")
    with pytest.raises(UserError, match=rf"not valid JSON \(not UTF-8.* near byte {bad}\)"):
        build(source, tmp_path / "out")
    source.write_text('[{"start": [], "end": [], "text": []}]')
    with pytest.raises(UserError, match="must map video ids"):
        build(source, tmp_path / "out2")


@pytest.mark.parametrize("value", [
    '{"start": [1, 2], "end": [2], "text": ["a"]}', '{"start": [1], "end": [2]}', '[1, 2]',
    '{"start": 1, "end": [2], "text": ["a"]}', "null",
])
def test_bad_entry_is_one_line_naming_it(tmp_path: Path, value: str) -> None:
    source = tmp_path / "caption.json"
    source.write_text('{"fine": {"start": [], "end": [], "text": []}, "broken\u00e9": ' + value + "}",
                      encoding="utf-8")
    with pytest.raises(UserError, match="entry 'brokené' .*needs start, end and text lists") as caught:
        CaptionIndex.open(source, tmp_path / "out")
    assert "\n" not in str(caught.value)


def test_changed_source_is_refused(tmp_path: Path) -> None:
    source = write_rich_captions(tmp_path / "caption.json")
    CaptionIndex.open(source, tmp_path / "out")
    data = source.read_bytes()
    digit = data.index(b"1")
    source.write_bytes(data[:digit] + b"2" + data[digit + 1:])  # same size, other bytes
    with pytest.raises(UserError, match="--captions .* is not the file this output was indexed from") as caught:
        CaptionIndex.open(source, tmp_path / "out")
    assert "\n" not in str(caught.value)
    source.write_bytes(data + b" ")
    with pytest.raises(UserError, match="is not the file indexed"):
        CaptionIndex.load(index_folder(tmp_path / "out", KIND), source)


def test_load_needs_a_finished_index(tmp_path: Path) -> None:
    source = write_rich_captions(tmp_path / "caption.json")
    with pytest.raises(UserError, match="no finished caption index"):
        CaptionIndex.load(index_folder(tmp_path / "out", KIND), source)


STALLED_BUILD = """
import sys, time
from pathlib import Path
from howto_prep.extract.caption_index import build_index
from howto_prep.input_index import fingerprint

def stall_after_two_parts(progress):  # fault injection: hold still until the test kills us with SIGKILL
    if progress.parts == 2:
        time.sleep(600)

source, folder = Path(sys.argv[1]), Path(sys.argv[2])
build_index(source, folder, fingerprint(source, "caption.json"), block_bytes=256, part_bytes=1024,
            on_part=stall_after_two_parts)
"""


def kill_build_after_two_parts(source: Path, folder: Path) -> Progress:
    """Run a build in a child process, SIGKILL it once it saved two parts; the progress it left."""
    child = subprocess.Popen([sys.executable, "-c", STALLED_BUILD, str(source), str(folder)])
    try:
        deadline = time.monotonic() + 60
        while (progress := read_progress(folder)) is None or progress.parts < 2:
            assert child.poll() is None and time.monotonic() < deadline, "the build did not stall"
            time.sleep(0.02)
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
    return progress


def test_killed_build_resumes_where_it_stopped(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    source = write_rich_captions(tmp_path / "caption.json", videos=80)
    folder = index_folder(tmp_path / "out", KIND)
    progress = kill_build_after_two_parts(source, folder)
    assert 0 < progress.position < source.stat().st_size and progress.entries > 0
    caplog.set_level(logging.INFO, logger="howto_prep.extract.caption_index")
    index = CaptionIndex.open(source, tmp_path / "out")
    assert f"at byte {progress.position} (2 part(s) saved)" in caplog.text
    assert_same_entries(index, reference(source))
    assert not (folder / PROGRESS_FILE).exists() and not list(folder.glob("part-*"))


def test_killed_build_of_another_file_starts_over(tmp_path: Path) -> None:
    source = write_rich_captions(tmp_path / "caption.json", videos=80)
    folder = index_folder(tmp_path / "out", KIND)
    kill_build_after_two_parts(source, folder)
    write_rich_captions(source, videos=80, seed=1)  # the file changed before the rerun
    started_at = build_index(source, folder, fingerprint(source, "caption.json"))
    assert started_at == 0
    assert_same_entries(CaptionIndex.load(folder, source), reference(source))
