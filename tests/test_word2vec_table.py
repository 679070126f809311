"""Word2VecTable: the on-disk word2vec index gives gensim's ids, words and vectors for the same .bin,
refuses bad and changed files with one line, and starts over after a killed build."""

from __future__ import annotations

import gzip
import json
import logging
import os
import pickle
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from howto_prep.errors import UserError
from howto_prep.features.tokens import Word2VecVocabulary, tokenize
from howto_prep.features.word2vec_table import KIND, Word2VecTable, build
from howto_prep.files import is_temp_name
from howto_prep.input_index import SOURCE_FILE, index_folder
from howto_prep.synthetic.content import OOV_WORDS
from howto_prep.synthetic.word2vec import stable_hash, training_sentences

# Non-ASCII words, apostrophes, and phrases long enough for the 64- and 128-byte buckets.
LONG_PHRASE = "how_to_replace_a_bicycle_inner_tube"  # 35 bytes
VERY_LONG_PHRASE = "an_extraordinarily_long_phrase_that_lands_in_the_hundred_and_twenty_eight_byte_bucket"
EXTRA_WORDS = ["café", "crème", "brûlée", "jalapeño", "Straße", "naïve", "日本語", "Ελληνικά", "don't", "it's",
               "o'clock", "rock'n'roll", "New_York", LONG_PHRASE, VERY_LONG_PHRASE]
CAPTIONS = [
    "Café crème brûlée, don't stop! It's 5 o'clock",  # "Café" and "It's" differ in case: out of vocabulary
    "cut the jalapeño; the Straße in New_York is naïve...",
    f"{LONG_PHRASE} and {VERY_LONG_PHRASE}, {VERY_LONG_PHRASE}x",
    "",
    " ".join(OOV_WORDS) + " caf crèm cafés 日本 日本語 Ελληνικά",
    "rock'n'roll okay okay okay",
]


@pytest.fixture(scope="module")
def w2v(tmp_path_factory: pytest.TempPathFactory):
    """A small real model (the synthetic corpus' sentences plus EXTRA_WORDS), saved by gensim's
    `save_word2vec_format(binary=True)`, and gensim's own KeyedVectors read back from that file."""
    from gensim.models import KeyedVectors, Word2Vec

    rng = np.random.default_rng([5, 2])
    sentences = training_sentences(rng) + [list(rng.permutation(EXTRA_WORDS)) for _ in range(5)]
    model = Word2Vec(sentences=sentences, vector_size=300, window=5, min_count=1, epochs=1, workers=1, seed=5,
                     hashfxn=stable_hash)
    path = tmp_path_factory.mktemp("w2v") / "vectors.bin"
    model.wv.save_word2vec_format(str(path), binary=True)
    return path, KeyedVectors.load_word2vec_format(str(path), binary=True)


def index_files(out: Path) -> list[str]:
    folder = index_folder(out, KIND)
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


def vector(values: list[float]) -> bytes:
    return np.asarray(values, dtype="<f4").tobytes()


def gensim_load(path: Path):
    from gensim.models import KeyedVectors

    return KeyedVectors.load_word2vec_format(str(path), binary=True)


def test_ids_words_and_vectors_are_gensims(w2v, tmp_path: Path) -> None:
    path, kv = w2v
    table = Word2VecTable.open(path, tmp_path / "out")
    assert len(table) == len(kv) and table.dim == kv.vector_size == 300
    assert table.words_for(range(len(table))) == kv.index_to_key
    np.testing.assert_array_equal(table.vectors_for(np.arange(len(table))), kv.vectors)
    assert table.vectors_for(np.arange(len(table))).dtype == np.float32
    picked = np.array([[3, 1], [3, len(kv) - 1]])
    np.testing.assert_array_equal(table.vectors_for(picked), kv.vectors[picked])  # any shape, repeats
    assert table.vectors_for(np.zeros(0, dtype=np.int64)).shape == (0, 300)
    # Every word, each as its own caption, is found with gensim's id (tokenize keeps each word whole).
    assert all(tokenize(word) == [word] for word in kv.index_to_key)
    tokens, offsets = table.encode(kv.index_to_key)
    assert tokens.tolist() == list(range(len(kv))) and offsets.tolist() == list(range(len(kv) + 1))
    assert set(EXTRA_WORDS) <= set(kv.key_to_index)
    assert {8, 16, 64, 128} <= set(table.buckets)  # short words, and both ways of building long buckets


def test_encode_matches_the_gensim_vocabulary(w2v, tmp_path: Path) -> None:
    path, kv = w2v
    table = Word2VecTable.open(path, tmp_path / "out")
    tokens, offsets = table.encode(CAPTIONS)
    expected_tokens, expected_offsets = Word2VecVocabulary(path).encode(CAPTIONS)
    assert tokens.dtype == np.int32 and offsets.dtype == np.int32
    assert tokens.tolist() == expected_tokens.tolist() and offsets.tolist() == expected_offsets.tolist()
    words = table.words_for(tokens)
    assert words[:5] == ["crème", "brûlée", "don't", "o'clock", "the"]  # "stop" is no word of the model
    assert "Café" not in words and "caf" not in words and "日本" not in words and "okay" in words
    assert words.count(VERY_LONG_PHRASE) == 1 and LONG_PHRASE in words
    empty_tokens, empty_offsets = table.encode([])
    assert empty_tokens.shape == (0,) and empty_offsets.tolist() == [0]


def c_tool_file(path: Path) -> Path:
    """A .bin as the original C tool writes it: '\\n' after each vector, so each next word starts
    with one; plus a word after two newlines, a repeated word, a word holding NUL and an empty word."""
    rows = [(b"the", [1, 2]), (b"caf\xc3\xa9", [3, 4]), (b"\n\nstir", [5, 6]), (b"the", [7, 8]),
            (b"ab\x00", [9, 10]), (b"", [11, 12]), (b"don't", [13, 14])]
    body = b"".join(word + b" " + vector(values) + b"\n" for word, values in rows)
    path.write_bytes(b"7 2\n" + body)
    return path


def test_c_tool_layout_reads_as_gensim_reads_it(tmp_path: Path) -> None:
    path = c_tool_file(tmp_path / "c_tool.bin")
    logging.disable(logging.WARNING)  # gensim warns about the repeated word
    try:
        kv = gensim_load(path)
    finally:
        logging.disable(logging.NOTSET)
    table = Word2VecTable.open(path, tmp_path / "out")
    # gensim keeps the first "the", gives the later rows the next ids, and pads the unused slot with None.
    words = [w for w in kv.index_to_key if w is not None]
    assert words == ["the", "café", "stir", "ab\x00", "", "don't"] and len(kv.index_to_key) == 7
    assert len(table) == 6 and table.dim == 2
    assert table.words_for(range(len(table))) == words
    np.testing.assert_array_equal(table.vectors_for(np.arange(6)), kv.vectors[:6])
    tokens, offsets = table.encode(["the stir café, don't", "ab", ""])
    assert tokens.tolist() == [kv.key_to_index[w] for w in ("the", "stir", "café", "don't")]
    assert offsets.tolist() == [0, 4, 4, 4]  # "ab" is not "ab\x00"
    np.testing.assert_array_equal(table.vectors_for([0]), [[1, 2]])  # the first "the", as in gensim


@pytest.mark.parametrize("block_bytes", [7, 1000, 1500, 5000, 1 << 16])
def test_rows_cut_by_block_ends_read_the_same(w2v, tmp_path: Path, block_bytes: int) -> None:
    """Blocks shorter than a row (joined), and longer (a row across two blocks, from a bridge)."""
    path, kv = w2v
    for source, expected in [(path, kv), (c_tool_file(tmp_path / "c_tool.bin"), None)]:
        folder = index_folder(tmp_path / source.stem, KIND)
        folder.mkdir(parents=True)
        build(source, folder, block_bytes=block_bytes)
        table = Word2VecTable.load(folder, source)
        reference = Word2VecTable.open(source, tmp_path / f"{source.stem}-reference")  # one block
        assert table.words_for(range(len(table))) == reference.words_for(range(len(reference)))
        np.testing.assert_array_equal(table.vectors_for(np.arange(len(table))),
                                      reference.vectors_for(np.arange(len(reference))))
        if expected is not None:
            assert table.encode(expected.index_to_key)[0].tolist() == list(range(len(expected)))


def bad_files(w2v_bin: bytes) -> dict[str, bytes]:
    header_end = w2v_bin.index(b"\n") + 1
    return {
        "cut inside the last vector": w2v_bin[:-7],
        "cut inside a word": w2v_bin[:header_end + 3],
        "more rows announced than written": b"9" + w2v_bin,
        "a JSON file": b'{"abc": {"start": [1], "end": [2], "text": ["x"]}}\n',
        "an empty file": b"",
        "header of one number": b"3\n" + w2v_bin[header_end:],
        "a word that is not utf-8": b"2 1\nok " + vector([1]) + b"caf\xe9 " + vector([2]),
        "no space after the header": b"1 1\n" + b"x" * ((1 << 20) + 10),
    }


@pytest.mark.parametrize("case", list(bad_files(b"1 1\nx " + vector([1]))))
def test_bad_file_is_one_line_naming_it(w2v, tmp_path: Path, case: str) -> None:
    data = bad_files(w2v[0].read_bytes())[case]
    path = tmp_path / "bad.bin"
    path.write_bytes(data)
    with pytest.raises(Exception):  # gensim refuses it too
        gensim_load(path)
    with pytest.raises(UserError) as error:
        Word2VecTable.open(path, tmp_path / "out")
    message = str(error.value)
    assert str(path) in message and "\n" not in message and "--word2vec" in message
    if case == "no space after the header":  # refused before buffering the whole file
        assert "no word ends within" in message
    assert SOURCE_FILE not in index_files(tmp_path / "out")
    with pytest.raises(UserError):
        Word2VecTable.load(index_folder(tmp_path / "out", KIND), path)


def test_compressed_file_says_so(w2v, tmp_path: Path) -> None:
    path = tmp_path / "vectors.bin.gz"
    path.write_bytes(gzip.compress(w2v[0].read_bytes()))
    with pytest.raises(UserError, match="gzip-compressed; decompress it first"):
        Word2VecTable.open(path, tmp_path / "out")


def test_changed_file_is_refused(w2v, tmp_path: Path) -> None:
    original = w2v[0].read_bytes()
    path = tmp_path / "vectors.bin"
    path.write_bytes(original)
    out = tmp_path / "out"
    Word2VecTable.open(path, out)
    changed = bytearray(original)
    changed[-1] ^= 0x01  # one bit of the last vector: same size, other bytes
    path.write_bytes(bytes(changed))
    with pytest.raises(UserError, match="--word2vec .* is not the file this output was indexed from"):
        Word2VecTable.open(path, out)
    path.write_bytes(original + b"\n")  # another size: even `load` (no hashing) refuses it
    with pytest.raises(UserError, match="is not the file indexed in"):
        Word2VecTable.load(index_folder(out, KIND), path)
    path.write_bytes(original)
    assert len(Word2VecTable.open(path, out)) == len(w2v[1])


KILLED_BUILD = """
import os, signal, sys
from pathlib import Path
import howto_prep.files as files
from howto_prep.features import word2vec_table
point = sys.argv[3]
def die(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGKILL)
if point == "first_write":  # the first array is written to its temporary name, not yet renamed
    files.fsync_file = die
else:  # every array and table.json are in place; only source.json is missing
    word2vec_table.record_source = die
word2vec_table.Word2VecTable.open(Path(sys.argv[1]), Path(sys.argv[2]))
"""


@pytest.mark.parametrize("point", ["first_write", "before_source"])
def test_killed_build_starts_over(w2v, tmp_path: Path, point: str) -> None:
    path, kv = w2v
    out = tmp_path / "out"
    child = subprocess.run([sys.executable, "-c", KILLED_BUILD, str(path), str(out), point], timeout=120)
    assert child.returncode == -signal.SIGKILL
    left = index_files(out)
    assert left and SOURCE_FILE not in left
    if point == "first_write":
        assert any(is_temp_name(name) for name in left)
    with pytest.raises(UserError, match="holds no finished word2vec index"):
        Word2VecTable.load(index_folder(out, KIND), path)
    table = Word2VecTable.open(path, out)
    assert table.words_for(range(len(table))) == kv.index_to_key
    assert not any(is_temp_name(name) for name in index_files(out)) and SOURCE_FILE in index_files(out)


def test_unfinished_index_of_another_file_is_not_used(w2v, tmp_path: Path) -> None:
    path, kv = w2v
    out = tmp_path / "out"
    Word2VecTable.open(c_tool_file(tmp_path / "other.bin"), out)
    os.unlink(index_folder(out, KIND) / SOURCE_FILE)  # as if that build had been killed at its last write
    table = Word2VecTable.open(path, out)
    assert len(table) == len(kv) and table.encode(["stir"])[0].tolist() == [kv.key_to_index["stir"]]
    assert json.loads((index_folder(out, KIND) / SOURCE_FILE).read_text())["size"] == path.stat().st_size


LOAD_IN_CHILD = """
import json, sys
from pathlib import Path
from howto_prep.features.word2vec_table import Word2VecTable
table = Word2VecTable.load(Path(sys.argv[1]), Path(sys.argv[2]))
tokens, offsets = table.encode(json.loads(sys.argv[3]))
print(json.dumps({"tokens": tokens.tolist(), "offsets": offsets.tolist(), "len": len(table),
                  "vector": table.vectors_for(tokens[:1]).tolist(), "words": table.words_for(tokens)}))
"""


def test_load_in_a_fresh_process(w2v, tmp_path: Path) -> None:
    path, kv = w2v
    out = tmp_path / "out"
    table = Word2VecTable.open(path, out)
    child = subprocess.run([sys.executable, "-c", LOAD_IN_CHILD, str(index_folder(out, KIND)), str(path),
                            json.dumps(CAPTIONS)], capture_output=True, text=True, timeout=120, check=True)
    got = json.loads(child.stdout)
    tokens, offsets = Word2VecVocabulary(path).encode(CAPTIONS)
    assert got["tokens"] == tokens.tolist() and got["offsets"] == offsets.tolist() and got["len"] == len(kv)
    assert got["words"] == [kv.index_to_key[i] for i in tokens]
    np.testing.assert_array_equal(np.asarray(got["vector"], dtype=np.float32), kv.vectors[tokens[:1]])
    copy = pickle.loads(pickle.dumps(table))  # pickled as its location, as a Ray task receives it
    assert copy.folder == table.folder and copy.encode(CAPTIONS)[0].tolist() == tokens.tolist()


def test_load_needs_a_finished_index(w2v, tmp_path: Path) -> None:
    with pytest.raises(UserError, match="holds no finished word2vec index"):
        Word2VecTable.load(index_folder(tmp_path / "out", KIND), w2v[0])
    with pytest.raises(UserError, match="does not exist"):
        Word2VecTable.open(tmp_path / "missing.bin", tmp_path / "out")
