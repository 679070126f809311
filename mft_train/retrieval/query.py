"""A text query -> words -> word2vec vectors -> the model's text embedding.

Why the shards' own rule and vocabulary: the model learned its text branch on the shards' tokens,
i.e. `[\\w']+` with case kept (howto_prep.features.tokens.tokenize) looked up in the word2vec rows the
shard set's vocab/ holds. A query word outside that vocabulary has no vector the model knows: it is
reported and left out, exactly as extraction leaves out-of-vocabulary caption words out.
The checkpoint and vocabulary are the ones the index records; either can be given elsewhere (moved
files), and must then be the same bytes (mft_train.retrieval.fingerprint).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from howto_prep import schema
from howto_prep.cli_support import Location, is_store_url, location
from howto_prep.errors import UserError
from howto_prep.features.tokens import tokenize
from mft_train.config import RunConfig
from mft_train.data.shards import WordTable
from mft_train.data.shards import vocab_root as local_vocab  # (QueryEncoder has a parameter named vocab_root)
from mft_train.evaluation.evaluate import model_from_checkpoint
from mft_train.retrieval.embed import checkpoint_state
from mft_train.retrieval.fingerprint import same_file
from mft_train.training.device import autocast_context, available_device, choose_device, move_batch
from mft_train.training.run_store import local_checkpoint

EMPTY_AUDIO_FRAMES = 64  # one DAVEnet token's worth of (masked) frames for a text-only batch


@dataclass
class QueryWords:
    """A query split by the shards' rule: the words used (first max_words in-vocabulary ones), the rest."""

    text: str
    used: list[str] = field(default_factory=list)
    rows: list[int] = field(default_factory=list)
    out_of_vocabulary: list[str] = field(default_factory=list)
    truncated: list[str] = field(default_factory=list)


class Vocabulary:
    """words.txt + vectors.npy of a shard set (the row of a word in words.txt is its vector's row)."""

    def __init__(self, root: Location) -> None:
        self.table = WordTable(root)  # checks the ids and vectors and their shapes
        path = local_vocab(root) / schema.VOCAB_DIR / schema.VOCAB_WORDS
        if not path.is_file():
            raise UserError(f"{path} is missing (an unfinished extraction?); queries need the words of the vocabulary")
        words = path.read_text().splitlines()
        if len(words) != len(self.table.w2v_ids):
            raise UserError(f"{path.parent} has {len(words)} words but {len(self.table.w2v_ids)} vectors")
        self.row = {word: i for i, word in enumerate(words)}

    def split(self, text: str, max_words: int) -> QueryWords:
        result = QueryWords(text)
        for word in tokenize(text):
            if word not in self.row:
                result.out_of_vocabulary.append(word)
            elif len(result.used) < max_words:
                result.used.append(word)
                result.rows.append(self.row[word])
            else:
                result.truncated.append(word)
        return result

    def vectors(self, rows: list[int]) -> np.ndarray:
        return np.asarray(self.table.vectors[np.asarray(rows, dtype=np.int64)], dtype=np.float32)


def index_checkpoint(manifest: dict, given: Location | None) -> Path:
    """The checkpoint file queries go through: --checkpoint (a path, or a URL fetched once into the
    cache), else the path the index recorded, else, when that is not on this machine, the checkpoint
    URL the index recorded (an index embedded from a store's checkpoint). Its bytes are checked after."""
    if given:
        path = local_checkpoint(given)
    else:
        path = Path(manifest["model"]["checkpoint"]["path"])
        source = manifest["model"].get("source")
        if not path.exists() and is_store_url(source):
            path = local_checkpoint(source)
    if not path.exists():
        raise UserError(f"the index's checkpoint {path} is gone; pass --checkpoint with the same file")
    return path


class QueryEncoder:
    """The index's checkpoint (text branch) and vocabulary; `encode(text)` -> (QueryWords, unit embedding)."""

    def __init__(self, manifest: dict, checkpoint: Location | None = None, vocab_root: Location | None = None,
                 overrides: list[str] | None = None) -> None:
        recorded = manifest["model"]["checkpoint"]
        state = checkpoint_state(index_checkpoint(manifest, checkpoint), list(overrides or []))
        if not same_file(recorded, Path(state["path"])):
            raise UserError(f"{state['path']} is not the checkpoint the index was embedded with "
                            f"({recorded['path']}, sha256 {recorded['sha256'][:12]}); rebuild the index or pass that file")
        vocab = manifest["vocab"]
        root = vocab_root if vocab_root else location(vocab["root"])  # a set on a store: its URL
        folder = local_vocab(root)  # for a URL, the local copy of the store's vocab/ (downloaded once)
        files = folder / schema.VOCAB_DIR
        if not (same_file(vocab["words"], files / schema.VOCAB_WORDS) and same_file(vocab["vectors"], files / schema.VOCAB_VECTORS)):
            raise UserError(f"{files} is not the vocabulary the index was built with ({vocab['root']}/{schema.VOCAB_DIR}); "
                            "pass --vocab with a shard set holding the same vocab/")
        self.vocab = Vocabulary(folder)
        self.config = RunConfig.from_dict(state["config"], where=state["path"])
        self.device = choose_device(self.config.train.device, available_device())
        self.model = model_from_checkpoint(state).to(self.device).eval()
        model_cfg = self.config.model
        self.dims = {"text": int(model_cfg.get("text_dim", schema.WORD_DIM)),
                     "video": int(model_cfg.get("video_dim", schema.RESNET152.dim + schema.RESNEXT101.dim)),
                     "mels": int(model_cfg.get("audio_mels", schema.LOGMEL.dim))}

    def words(self, text: str) -> QueryWords:
        """The query's words; UserError when it is empty or has no word in the vocabulary."""
        if not text or not text.strip():
            raise UserError("the query is empty; give some words, e.g. \"crack the eggs\"")
        words = self.vocab.split(text, self.config.data.max_words)
        if not words.used:
            shown = ", ".join(words.out_of_vocabulary[:8]) or text.strip()
            raise UserError(f"no word of the query is in the vocabulary the shards were tokenised with "
                            f"(out of vocabulary: {shown})")
        return words

    @torch.inference_mode()
    def embed(self, words: QueryWords) -> np.ndarray:
        """(dim,) float32 unit text embedding (video and audio inputs empty and masked)."""
        count = len(words.rows)
        batch = {
            "text": torch.from_numpy(self.vocab.vectors(words.rows))[None],
            "text_mask": torch.ones(1, count, dtype=torch.bool),
            "video": torch.zeros(1, 1, self.dims["video"]),
            "video_mask": torch.zeros(1, 1, dtype=torch.bool),
            "audio": torch.zeros(1, self.dims["mels"], EMPTY_AUDIO_FRAMES),  # masked: the model overwrites it
            "audio_mask": torch.zeros(1, EMPTY_AUDIO_FRAMES, dtype=torch.bool),
        }
        with autocast_context(self.device, self.config.train.amp):
            out = self.model(move_batch(batch, self.device))
        return F.normalize(out["t"].float(), dim=-1)[0].cpu().numpy()

    def encode(self, text: str) -> tuple[QueryWords, np.ndarray]:
        words = self.words(text)
        return words, self.embed(words)
