"""A small word2vec model in GoogleNews' binary format, so the real loading path is exercised.

Trained with gensim on generated narration (each step's words together) plus generic filler text;
`OOV_WORDS` are left out on purpose. Deterministic for a seed: one worker, a fixed seed and a
stable string hash (Python's `hash` changes between processes).
"""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np

from howto_prep.files import atomic_path
from howto_prep.synthetic.content import FILLERS, OOV_WORDS, OUTRO_WORDS, STEPS, TASKS

VECTOR_SIZE = 300
GENERIC_WORDS = (
    "the", "in", "on", "with", "for", "is", "it", "this", "that", "you", "we", "i", "then", "now",
    "time", "people", "first", "last", "new", "old", "day", "year", "house", "work", "hand", "table",
    "kitchen", "minute", "hour", "light", "small", "big", "long", "easy", "hard", "start", "finish",
    "done", "ready", "put", "take", "hold", "turn", "move", "look", "show", "today", "tutorial",
    "person", "someone", "man", "woman", "how", "about", "into", "out", "off", "until", "they",
    "will", "who", "explains", "shows", "working", "using", "cover", "drop", "let", "lights",
    "remove", "add", "from", "back", "again", "clean", "tool", "step", "piece",
)
SENTENCES_PER_STEP = 60
FILLER_SENTENCES = 400


def stable_hash(text: str) -> int:
    """Process-independent replacement for `hash` in gensim's per-word seeding."""
    return zlib.crc32(text.encode("utf-8"))


def training_sentences(rng: np.random.Generator) -> list[list[str]]:
    """Step-word sentences (the signal), clean sentences, and generic filler text (the vocabulary)."""
    banned = set(OOV_WORDS)
    sentences: list[list[str]] = []
    for step in STEPS:
        task = TASKS[step.task]
        for _ in range(SENTENCES_PER_STEP):
            words = list(step.words) + [str(w) for w in rng.choice(step.words, 2)]
            if rng.random() < 0.3:
                words.append(str(rng.choice(task.words)))
            words += [str(w) for w in rng.choice(FILLERS, int(rng.integers(0, 2)))]
            rng.shuffle(words)
            sentences.append(words)
        sentences.append(step.sentence.split())
    for task in TASKS:
        sentences.append(task.name.lower().split() + list(task.words))
    generic = GENERIC_WORDS + FILLERS + OUTRO_WORDS
    for _ in range(FILLER_SENTENCES):
        sentences.append([str(w) for w in rng.choice(generic, int(rng.integers(4, 10)))])
    return [[word for word in sentence if word not in banned] for sentence in sentences]


def write_word2vec(path: Path, seed: int) -> Path:
    """Train and save with `save_word2vec_format(binary=True)`, temp file then rename."""
    from gensim.models import Word2Vec

    rng = np.random.default_rng([seed, 2])
    model = Word2Vec(
        sentences=training_sentences(rng), vector_size=VECTOR_SIZE, window=5, min_count=1, sg=1,
        negative=5, epochs=15, workers=1, seed=seed, hashfxn=stable_hash,
    )
    with atomic_path(path) as temp:
        model.wv.save_word2vec_format(str(temp), binary=True)
    return path
