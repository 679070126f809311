"""Tokens: regex tokenisation, word2vec row ids from a real gensim binary file, vocab/ round trip."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from howto_prep import schema
from howto_prep.errors import UserError
from howto_prep.features.tokens import Word2VecVocabulary, tokenize, write_vocab

SENTENCES = [
    "Cut the onions and don't cry".split(),
    "Add the Onions to the pan then stir".split(),
    "stir the sauce and add salt".split(),
    "I don't like salt".split(),
]


@pytest.fixture(scope="module")
def w2v_path(tmp_path_factory) -> Path:
    from gensim.models import Word2Vec

    model = Word2Vec(SENTENCES, vector_size=300, min_count=1, window=2, seed=3, workers=1, epochs=2)
    path = tmp_path_factory.mktemp("w2v") / "vectors.bin"
    model.wv.save_word2vec_format(str(path), binary=True)
    return path


def test_tokenize_keeps_case_apostrophes_and_stop_words():
    assert tokenize("Don't stir, the ONIONS... yet!") == ["Don't", "stir", "the", "ONIONS", "yet"]
    assert tokenize("  ,;  ") == []
    assert tokenize("rock'n'roll 2x_fast") == ["rock'n'roll", "2x_fast"]


def test_encode_gives_word2vec_row_ids_and_offsets(w2v_path):
    from gensim.models import KeyedVectors

    kv = KeyedVectors.load_word2vec_format(str(w2v_path), binary=True)
    vocab = Word2VecVocabulary(w2v_path)
    texts = ["Cut the onions, don't cry!", "zebra quux", "", "Add SALT and salt"]
    tokens, offsets = vocab.encode(texts)
    assert tokens.dtype == np.int32 and offsets.dtype == np.int32
    assert offsets.tolist() == [0, 5, 5, 5, 8]
    expected_words = ["Cut", "the", "onions", "don't", "cry", "Add", "and", "salt"]  # SALT and zebra are OOV
    assert vocab.words_for(tokens) == expected_words
    assert tokens.tolist() == [kv.key_to_index[w] for w in expected_words]
    np.testing.assert_array_equal(vocab.vectors_for(tokens[:2]), kv.vectors[[kv.key_to_index["Cut"],
                                                                              kv.key_to_index["the"]]])
    assert vocab.vectors_for(tokens).dtype == np.float32


def test_encode_of_no_captions(w2v_path):
    tokens, offsets = Word2VecVocabulary(w2v_path).encode([])
    assert tokens.shape == (0,) and offsets.tolist() == [0]


def test_limit_keeps_only_the_first_rows(w2v_path):
    vocab = Word2VecVocabulary(w2v_path, limit=3)
    assert len(vocab) == 3
    tokens, _ = vocab.encode([" ".join(w for s in SENTENCES for w in s)])
    assert set(tokens.tolist()) <= {0, 1, 2} and len(tokens) > 0


def test_write_vocab_round_trip(w2v_path, tmp_path):
    vocab = Word2VecVocabulary(w2v_path)
    tokens, _ = vocab.encode(["stir the sauce", "the onions don't"])
    vocab_dir = write_vocab(vocab, list(tokens) + [int(tokens[0])], tmp_path)
    assert vocab_dir == tmp_path / schema.VOCAB_DIR
    ids = np.load(vocab_dir / schema.VOCAB_W2V_IDS)
    words = (vocab_dir / schema.VOCAB_WORDS).read_text(encoding="utf-8").splitlines()
    vectors = np.load(vocab_dir / schema.VOCAB_VECTORS)
    assert ids.dtype == np.int64 and ids.tolist() == sorted(set(tokens.tolist()))
    assert vectors.dtype == np.float32 and vectors.shape == (len(ids), schema.WORD_DIM)
    rows = np.searchsorted(ids, tokens)  # how a reader maps token ids to vocab rows
    assert [words[r] for r in rows] == ["stir", "the", "sauce", "the", "onions", "don't"]
    np.testing.assert_array_equal(vectors[rows], vocab.vectors_for(tokens))
    assert sorted(p.name for p in vocab_dir.iterdir()) == sorted(
        [schema.VOCAB_W2V_IDS, schema.VOCAB_WORDS, schema.VOCAB_VECTORS])  # no temp files left


def test_write_vocab_rejects_foreign_ids(w2v_path, tmp_path):
    vocab = Word2VecVocabulary(w2v_path)
    with pytest.raises(UserError):
        write_vocab(vocab, [len(vocab) + 5], tmp_path)


def test_missing_and_corrupt_files_are_user_errors(tmp_path, w2v_path):
    with pytest.raises(UserError, match="does not exist"):
        Word2VecVocabulary(tmp_path / "nope.bin")
    corrupt = tmp_path / "corrupt.bin"
    corrupt.write_bytes(b"not a word2vec header\n\x00\x01")
    with pytest.raises(UserError, match="not a readable"):
        Word2VecVocabulary(corrupt)
    truncated = tmp_path / "truncated.bin"
    truncated.write_bytes(w2v_path.read_bytes()[:200])
    with pytest.raises(UserError, match="not a readable"):
        Word2VecVocabulary(truncated)
