"""Text features: captions -> word2vec row ids (plus offsets), and the shard set's small vocab/.

Recipe (docs/recipes.md section 4): tokenise with `[\\w']+`, case kept, no stop-word removal, keep only
words in the word2vec vocabulary. Storing row ids of the word2vec file (not vectors) makes tokens
stable across workers and reruns and costs ~11 GB instead of ~1.6 TB for all of HowTo100M.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from howto_prep import schema
from howto_prep.errors import UserError
from howto_prep.files import atomic_path, atomic_write_text

WORD_PATTERN = re.compile(r"[\w']+")


def tokenize(text: str) -> list[str]:
    """Words as the reference code splits them: apostrophes stay inside words, case is kept."""
    return WORD_PATTERN.findall(text)


class Word2VecVocabulary:
    """A word2vec binary file (GoogleNews format) loaded with gensim; ids are its row indices."""

    def __init__(self, path: Path, limit: int | None = None) -> None:
        from gensim.models import KeyedVectors

        self.path = Path(path)
        if not self.path.is_file():
            raise UserError(f"--word2vec: file {self.path} does not exist")
        try:
            self.vectors: Any = KeyedVectors.load_word2vec_format(str(self.path), binary=True, limit=limit)
        except Exception as err:  # gensim raises ValueError, UnicodeDecodeError, EOFError... for a bad file
            raise UserError(f"--word2vec: {self.path} is not a readable binary word2vec file "
                            f"({type(err).__name__})") from err
        self.key_to_index: dict[str, int] = self.vectors.key_to_index

    def __len__(self) -> int:
        return len(self.vectors.index_to_key)

    @property
    def dim(self) -> int:
        return int(self.vectors.vector_size)

    def encode(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Captions -> (int32 token ids of in-vocabulary words, concatenated; int32 offsets (len+1,))."""
        tokens: list[int] = []
        offsets = [0]
        for text in texts:
            tokens.extend(self.key_to_index[w] for w in tokenize(text) if w in self.key_to_index)
            offsets.append(len(tokens))
        return np.asarray(tokens, dtype=np.int32), np.asarray(offsets, dtype=np.int32)

    def vectors_for(self, ids: np.ndarray) -> np.ndarray:
        """(n, 300) float32 word vectors of row ids."""
        return np.asarray(self.vectors.vectors[np.asarray(ids, dtype=np.int64)], dtype=np.float32)

    def words_for(self, ids: Iterable[int]) -> list[str]:
        return [self.vectors.index_to_key[int(i)] for i in ids]


def write_vocab(vocab: Word2VecVocabulary, ids: Iterable[int], out_dir: Path) -> Path:
    """Write out_dir/vocab/{w2v_ids.npy, words.txt, vectors.npy} for the ids that occur.

    Each file is written to a temporary name and renamed; w2v_ids.npy goes last, so a reader that
    finds it finds the two files it indexes. Returns the vocab directory.
    """
    vocab_dir = Path(out_dir) / schema.VOCAB_DIR
    vocab_dir.mkdir(parents=True, exist_ok=True)
    unique_ids = np.unique(np.fromiter((int(i) for i in ids), dtype=np.int64))
    if unique_ids.size and (unique_ids[0] < 0 or unique_ids[-1] >= len(vocab)):
        raise UserError(f"token ids out of range for {vocab.path} ({len(vocab)} words)")
    words = vocab.words_for(unique_ids)
    vectors = vocab.vectors_for(unique_ids).reshape(len(unique_ids), vocab.dim)
    _atomic_save(vocab_dir / schema.VOCAB_VECTORS, vectors)
    atomic_write_text(vocab_dir / schema.VOCAB_WORDS, "".join(f"{word}\n" for word in words))
    _atomic_save(vocab_dir / schema.VOCAB_W2V_IDS, unique_ids)
    return vocab_dir


def _atomic_save(path: Path, array: np.ndarray) -> None:
    """np.save through a temporary file (given a handle: np.save would add .npy to a temporary name)."""
    with atomic_path(path) as temp, open(temp, "wb") as handle:
        np.save(handle, array)


class VocabularyParts:
    """vocab/parts/: for each shard, the word vectors of the ids it is the first to use, written
    before that shard's JSON. So every finished shard's tokens can be looked up at any moment,
    even while extraction is still running or after it was killed; the merged vocab/ written at
    the end holds the same rows in one table. Each part costs ~1.2 KB per new word."""

    def __init__(self, vocab: Word2VecVocabulary, out_dir: Path) -> None:
        self.vocab = vocab
        self.folder = Path(out_dir) / schema.VOCAB_DIR / schema.VOCAB_PARTS_DIR
        self.known: set[int] = set()
        if self.folder.is_dir():
            for ids_file in self.folder.glob(f"*.{schema.VOCAB_W2V_IDS}"):
                self.known.update(int(i) for i in np.load(ids_file))

    def add(self, shard_name: str, ids: Iterable[int]) -> None:
        """Write the part of `shard_name` (vectors first, ids last: a reader that sees the ids file
        finds its vectors) with the ids not in an earlier part."""
        new = np.array(sorted(set(int(i) for i in ids) - self.known), dtype=np.int64)
        if new.size == 0:
            return
        if new[0] < 0 or new[-1] >= len(self.vocab):
            raise UserError(f"token ids out of range for {self.vocab.path} ({len(self.vocab)} words)")
        self.folder.mkdir(parents=True, exist_ok=True)
        _atomic_save(self.folder / f"{shard_name}.{schema.VOCAB_VECTORS}", self.vocab.vectors_for(new))
        _atomic_save(self.folder / f"{shard_name}.{schema.VOCAB_W2V_IDS}", new)
        self.known.update(int(i) for i in new)
