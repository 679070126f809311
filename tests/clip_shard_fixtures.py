"""Tiny clip-level shard sets (shards/README.md, "Clip-level shard sets") written with webdataset.TarWriter.

A "world" (seeded by `world_seed`) fixes the vocabulary and, per topic, a 2D and a 3D prototype
row, a log-mel spectral shape and six topic words; every clip is about one topic, so its video
rows, audio and sentence all derive from that topic plus noise. Sets written with the same world
share vocabulary and prototypes: a training set and a held-out set of the same world let a
fine-tuned model generalise, a set of another world does not.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from howto_prep import schema
from shard_fixtures import sample_fields, topic_rows, write_shards

WORDS_PER_TOPIC = 6


def make_world(topics: int, world_seed: int) -> dict:
    rng = np.random.default_rng([world_seed, 99])
    vocab_size = topics * WORDS_PER_TOPIC
    return {
        "w2v_ids": np.sort(rng.choice(3_000_000, size=vocab_size, replace=False)).astype(np.int64),
        "vectors": rng.standard_normal((vocab_size, schema.WORD_DIM)).astype(np.float32),
        "2d": rng.standard_normal((topics, 2048)),
        "3d": rng.standard_normal((topics, 2048)),
        "audio": rng.uniform(-70, -10, size=(topics, schema.LOGMEL.dim)),
    }


def make_clip(rng: np.random.Generator, world: dict, clip_id: str, topic: int, length: float, sentences: int,
              with_audio: bool, with_words: bool) -> dict[str, bytes]:
    """One clip sample (field -> bytes) about `topic`, `length` seconds long."""
    t2, t3, frames = int(np.ceil(length)), int(np.ceil(length * 1.5)), int(round(length * 100))
    resnet, resnext = topic_rows(rng, world, topic, t2, t3)
    topic_words = world["w2v_ids"][topic * WORDS_PER_TOPIC : (topic + 1) * WORDS_PER_TOPIC]
    per_sentence = [rng.choice(topic_words, size=int(rng.integers(3, 8))) if with_words else np.zeros(0, np.int64)
                    for _ in range(sentences)]
    meta = {
        "video_id": clip_id.rsplit("_", 1)[0], "duration": length, "fps": 24.0, "width": 64, "height": 48,
        "audio_sample_rate": schema.AUDIO_SAMPLE_RATE if with_audio else None, "source": "fixture",
        "schema_version": schema.SCHEMA_VERSION, "extractor_version": schema.EXTRACTOR_VERSION,
        "features": {}, "missing": {} if with_audio else {"logmel": "no_audio"},
        "kind": "clip", "clip_id": clip_id, "clip_start": 0.0, "clip_end": length, "split": "validation",
    }
    captions = {"start": [0.0] * sentences, "end": [length] * sentences,
                "text": [f"sentence {i}" for i in range(sentences)]}
    return sample_fields(rng, clip_id, meta, world["audio"][topic] if with_audio else None, frames,
                         resnet, resnext, captions, per_sentence)


def write_clip_set(root: Path, clips_per_topic: int = 1, topics: int = 12, world_seed: int = 0, seed: int = 1,
                   benchmark: str = "youcook2", length: tuple[float, float] = (5.0, 14.0), sentences: int = 1,
                   shards: int = 2, missing: int = 0, no_audio: tuple[int, ...] = (), no_words: tuple[int, ...] = (),
                   manifest: bool = True, protocol: dict | None = None) -> dict:
    """Write topics * clips_per_topic clips over `shards` shards, vocab/, index.json and clips.json.

    `missing` extra clip ids are listed in clips.json but have no sample (they count as misses);
    clips whose index is in `no_audio` / `no_words` have no log-mel / no in-vocabulary word.
    Returns {"ids", "topics", "num_expected"}.
    """
    root = Path(root)
    world = make_world(topics, world_seed)
    rng = np.random.default_rng([world_seed, seed])
    count = topics * clips_per_topic
    ids = [f"clip{seed:02d}v{i:03d}_{i % 7:04d}" for i in range(count)]
    clip_topics = [i % topics for i in range(count)]
    vocab = root / schema.VOCAB_DIR
    vocab.mkdir(parents=True, exist_ok=True)
    np.save(vocab / schema.VOCAB_W2V_IDS, world["w2v_ids"])
    np.save(vocab / schema.VOCAB_VECTORS, world["vectors"])
    (vocab / schema.VOCAB_WORDS).write_text("".join(f"word{i}\n" for i in world["w2v_ids"]))
    write_shards(root, ids, shards, lambda i: make_clip(rng, world, ids[i], clip_topics[i],
                                                        float(rng.uniform(*length)), sentences,
                                                        with_audio=i not in no_audio, with_words=i not in no_words))
    all_ids = ids + [f"absent{i:03d}_0000" for i in range(missing)]
    if manifest:
        (root / "clips.json").write_text(json.dumps({
            "benchmark": benchmark, "split": "validation", "clip_ids": all_ids,
            "num_expected": len(all_ids), "missing": all_ids[count:],
            **({"protocol": protocol} if protocol else {})}))
    return {"ids": ids, "topics": clip_topics, "num_expected": len(all_ids)}


# A model small enough for tests on 2 busy cores; same architecture as eao_small, narrower.
TINY_MODEL = ["model.width=32", "model.heads=2", "model.embed_dim=32", "model.davenet_widths=[8, 8, 8, 8, 8, 8]"]


_PRETRAINED: dict[int, Path] = {}


def pretrained_checkpoint(root: Path, seed: int = 0) -> Path:
    """A tiny EAO pretrained for two steps by the real trainer on a video-level fixture of another world.

    Made once per test session and seed (under the first caller's temporary folder); treat it as read-only.
    """
    if seed in _PRETRAINED and _PRETRAINED[seed].is_file():
        return _PRETRAINED[seed]
    from shard_fixtures import write_shard_set

    from mft_train.presets import load_config
    from mft_train.training.distributed import init_distributed
    from mft_train.training.pretrain import train

    root = Path(root)
    write_shard_set(root / "pretrain-shards", videos=4, shards=1, seed=seed)
    config = load_config("eao_small", TINY_MODEL + [
        "train.steps_per_epoch=2", "train.epochs=1", "train.batch=2", "train.device=cpu", "train.seed=0",
        "data.workers=0", "data.order=fixed", "data.clips_per_video=2"])
    result = train(config, root / "pretrain-shards", root / "pretrain-run", init_distributed(force_cpu=True))
    _PRETRAINED[seed] = Path(result.checkpoint)
    return _PRETRAINED[seed]
