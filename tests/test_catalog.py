"""HowTo100M CSV and id lists -> records: parsing, URL ids, dedupe, and one-sentence errors."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from howto_prep.download.catalog import (Catalog, CatalogEntry, load_catalog, load_records, read_howto_csv, read_id_list,
                                         video_id_from_url)
from howto_prep.errors import UserError

HEADER = "video_id,category_1,category_2,rank,task_id\n"


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_csv_rows_become_records_in_order_without_duplicates(tmp_path: Path) -> None:
    path = write(tmp_path, "HowTo100M_v1.csv", HEADER + "nVbIUDjzWY4,Cars & Other Vehicles,Motorcycles,27,52907\n"
                 "CTPAZ2euJ2Q,Cars & Other Vehicles,Motorcycles,35,109057\n\n"
                 "nVbIUDjzWY4,Cars & Other Vehicles,Motorcycles,27,52907\n")
    assert read_howto_csv(path) == [CatalogEntry("nVbIUDjzWY4"), CatalogEntry("CTPAZ2euJ2Q")]


def test_csv_with_a_byte_order_mark_and_quoted_fields(tmp_path: Path) -> None:
    path = write(tmp_path, "v.csv", "\ufeff" + HEADER + 'a-b_c,"Food, Drink",Baking,1,2\n')
    assert read_howto_csv(path) == [CatalogEntry("a-b_c")]


@pytest.mark.parametrize("text, message", [
    ("", "is empty"),
    ("video_id,colour\nabc,red\n", "unknown column(s) colour"),
    ("category_1,rank\nx,1\n", "has no video_id column"),
    (HEADER + "abc,x,y,1\n", "line 2: expected 5 fields, found 4"),
    (HEADER + "ab.c,x,y,1,2\n", "line 2: bad video id 'ab.c'"),
    (HEADER + "\n", "holds no video ids"),
])
def test_bad_csv_is_one_clear_sentence(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(UserError) as caught:
        read_howto_csv(write(tmp_path, "bad.csv", text))
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_missing_and_binary_files(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="does not exist"):
        read_howto_csv(tmp_path / "nope.csv")
    binary = tmp_path / "bin.csv"
    binary.write_bytes(b"\xff\xfe\x00\x81" * 10)
    with pytest.raises(UserError, match="cannot read"):
        read_howto_csv(binary)


def test_id_list_with_urls_comments_and_duplicates(tmp_path: Path) -> None:
    path = write(tmp_path, "ids.txt", "# my list\nabc123\n\n  https://www.youtube.com/watch?v=XyZ_-09&t=3s\n"
                 "https://youtu.be/abc123\nhttp://127.0.0.1:8000/videos/clip7.mp4\n"
                 "https://www.youtube.com/shorts/short1\n")
    assert read_id_list(path) == [CatalogEntry("abc123"), CatalogEntry("XyZ_-09"),
                                  CatalogEntry("clip7", "http://127.0.0.1:8000/videos/clip7.mp4"),
                                  CatalogEntry("short1")]


@pytest.mark.parametrize("url, video_id", [
    ("https://www.youtube.com/watch?v=dQw4w9WgXcQ", "dQw4w9WgXcQ"),
    ("https://m.youtube.com/watch?feature=share&v=a_b-c", "a_b-c"),
    ("https://youtu.be/a_b-c?t=10", "a_b-c"),
    ("http://host:9/x/y/stem.tar.mp4", "stem"),
])
def test_video_id_from_url(url: str, video_id: str) -> None:
    assert video_id_from_url(url) == video_id


@pytest.mark.parametrize("line", ["ftp://host/a.mp4", "https://www.youtube.com/watch?x=1", "http:///a.mp4",
                                  "not an id", "https://host/"])
def test_bad_entries_name_the_line(tmp_path: Path, line: str) -> None:
    path = write(tmp_path, "ids.txt", f"good1\n{line}\n")
    with pytest.raises(UserError, match="line 2: bad entry"):
        read_id_list(path)


def test_empty_list_and_source_choice(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="holds no video ids"):
        read_id_list(write(tmp_path, "ids.txt", "# nothing yet\n\n"))
    ids = write(tmp_path, "ok.txt", "abc\n")
    assert load_records(None, ids) == [CatalogEntry("abc")]
    with pytest.raises(UserError, match="exactly one"):
        load_records(ids, ids)


# ------------------------------------------------------------------ the compact, streamed catalog
@pytest.mark.parametrize("name, text", [
    ("v.csv", HEADER + "b,x,y,1,2\r\na,x,y,1,2\rb,x,y,1,2\n\nc,\"multi\nline\",y,1,2\n"),
    ("v.csv", "\ufeff" + HEADER + 'a-b_c,"Food, Drink",Baking,1,2\nd\x0ce,x,y,1,2\n'),
    ("v.csv", HEADER + "abc,x,y,1\n"),
    ("v.csv", HEADER + "a,x,y,1,2\n" * 3 + "ab.c,x,y,1,2\n"),
    ("v.csv", ""),
    ("ids.txt", "# list\nabc\r\nhttps://youtu.be/abc\nhttp://127.0.0.1:8000/v/clip7.mp4\n\nxyz\x0cclip7\n"),
    ("ids.txt", "good1\nnot an id\n"),
    ("ids.txt", "# only a comment\n"),
])
def test_load_catalog_streams_to_exactly_what_load_records_returns(tmp_path: Path, name: str, text: str) -> None:
    """Same entries, order and URLs, and the same one-sentence errors (same line numbers), for CSVs and id lists
    with CRLF, lone CR, form feeds, a byte order mark and multi-line quoted fields."""
    path = write(tmp_path, name, text)
    args = (path, None) if name.endswith(".csv") else (None, path)
    try:
        expected = load_records(*args)
    except UserError as err:
        with pytest.raises(UserError) as caught:
            load_catalog(*args)
        assert str(caught.value) == str(err)
        return
    catalog = load_catalog(*args)
    assert catalog.to_list() == expected and len(catalog) == len(expected)


def test_catalog_keeps_the_first_of_each_id_and_its_url() -> None:
    pairs = [("b", None), ("a", "http://h/a.mp4"), ("b", "http://h/b.mp4"), ("c", None), ("a", None), ("d", "u")]
    catalog = Catalog.from_pairs(pairs)
    assert catalog.to_list() == [CatalogEntry("b"), CatalogEntry("a", "http://h/a.mp4"), CatalogEntry("c"),
                                 CatalogEntry("d", "u")]
    assert catalog.ids.dtype.itemsize == 1  # one byte per id here: fixed width = the longest id
    assert catalog.head(2).to_list() == catalog.to_list()[:2] and catalog.head(2).urls == {1: "http://h/a.mp4"}
    assert list(catalog.entries([3, 0])) == [CatalogEntry("d", "u"), CatalogEntry("b")]
    found = catalog.positions(np.array([b"c", b"zz", b"a", b"", b"dd", b"d"]))
    assert found.tolist() == [2, -1, 1, -1, -1, 3]
    assert Catalog.from_entries(catalog).to_list() == catalog.to_list()
    assert len(Catalog.from_pairs([])) == 0 and Catalog.from_pairs([]).positions(np.array([b"a"])).tolist() == [-1]


def test_catalog_of_many_ids_is_compact_and_read_streaming(tmp_path: Path) -> None:
    """The catalog is the ids' bytes (11 per id), and the file is read a block at a time: Python's
    allocations peak at a constant ~12 MB (the text, its lines and an object per row: ~40 MB here,
    ~300 MB for HowTo100M's 1.22 M rows)."""
    rng = np.random.default_rng(0)
    alphabet = np.frombuffer(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_", np.uint8)
    count = 200_000
    ids = alphabet[rng.integers(0, 64, (count, 11))].view("S11").ravel()
    path = tmp_path / "HowTo100M_v1.csv"
    with open(path, "w") as handle:
        handle.write(HEADER)
        handle.writelines(f"{video_id.decode()},Food and Entertaining,Recipes,{i % 90},{i % 23000}\n"
                          for i, video_id in enumerate(ids))
        handle.write(f"{ids[5].decode()},Food and Entertaining,Recipes,1,2\n")  # a duplicate
    tracemalloc.start()
    try:
        catalog = load_catalog(path, None)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert len(catalog) == len(np.unique(ids)) and catalog.ids.nbytes == 11 * len(catalog)
    assert catalog.video_id(0) == ids[0].decode() and catalog.positions(ids[-3:]).tolist() == [count - 3, count - 2,
                                                                                                 count - 1]
    assert path.stat().st_size > 10_000_000 and peak < 20_000_000, peak
