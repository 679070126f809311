"""Tiny shard sets in the agreed format (shards/README.md), written with webdataset.TarWriter.

Each video belongs to one of a few topics; its 2D/3D rows, log-mel pattern and caption words all
derive from that topic plus noise, so the modalities correlate and a model can learn to match them.
Reusable by any test: `write_shard_set(tmp_path / "shards", videos=12)`.
"""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path
from typing import Callable

import numpy as np
import webdataset as wds

from howto_prep import schema
from howto_prep.shards import npy_bytes

WORDS_PER_TOPIC = 6


def unit_rows(rows: np.ndarray) -> np.ndarray:
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def caption_timeline(rng: np.random.Generator, duration: float) -> tuple[list[float], list[float]]:
    """Sorted captions of 1-5 s with gaps of 0-3 s, like ASR captions with silences."""
    starts, ends, time = [], [], float(rng.uniform(0, 2))
    while time < duration - 1:
        length = float(rng.uniform(1, 5))
        starts.append(round(time, 2))
        ends.append(round(min(time + length, duration), 2))
        time = ends[-1] + float(rng.choice([0.0, rng.uniform(0, 3)]))
    return starts, ends


def make_video(rng: np.random.Generator, video_id: str, topic: int, prototypes: dict, w2v_ids: np.ndarray,
               duration: float, with_audio: bool) -> dict[str, bytes]:
    """One WebDataset sample (field -> bytes) of a video about `topic`."""
    t2, t3, frames = int(np.ceil(duration)), int(np.ceil(duration * 1.5)), int(duration * 100)
    resnet, resnext = topic_rows(rng, prototypes, topic, t2, t3)
    starts, ends = caption_timeline(rng, duration)
    topic_words = w2v_ids[topic * WORDS_PER_TOPIC : (topic + 1) * WORDS_PER_TOPIC]
    per_caption = [rng.choice(topic_words, size=int(rng.integers(0, 5))) for _ in starts]
    meta = {
        "video_id": video_id, "duration": duration, "fps": 24.0, "width": 64, "height": 48,
        "audio_sample_rate": schema.AUDIO_SAMPLE_RATE if with_audio else None, "source": "fixture",
        "category_1": "Food", "category_2": "Cooking", "rank": 1, "task_id": topic,
        "schema_version": schema.SCHEMA_VERSION, "extractor_version": schema.EXTRACTOR_VERSION,
        "features": {spec.name: {"rate": spec.rate, "dim": spec.dim, "model": "fixture", "weights": "random",
                                 "weights_sha256": None} for spec in schema.FEATURES.values()},
        "missing": {} if with_audio else {"logmel": "no_audio"},
    }
    captions = {"start": starts, "end": ends, "text": [f"caption {i}" for i in range(len(starts))]}
    return sample_fields(rng, video_id, meta, prototypes["audio"][topic] if with_audio else None, frames,
                         resnet, resnext, captions, per_caption)


def topic_rows(rng: np.random.Generator, prototypes: dict, topic: int, t2: int, t3: int,
               noise: float = 0.6) -> tuple[np.ndarray, np.ndarray]:
    """Unit 2D and 3D rows scattered around the topic's prototypes (2D drawn first, then 3D)."""
    resnet = unit_rows(prototypes["2d"][topic] + noise * rng.standard_normal((t2, 2048)))
    resnext = unit_rows(prototypes["3d"][topic] + noise * rng.standard_normal((t3, 2048)))
    return resnet, resnext


def sample_fields(rng: np.random.Generator, key: str, meta: dict, audio_prototype: np.ndarray | None, frames: int,
                  resnet: np.ndarray, resnext: np.ndarray, captions: dict, per_caption: list[np.ndarray]
                  ) -> dict[str, bytes]:
    """The sample's fields as bytes; the log-mel (absent when `audio_prototype` is None) is drawn last."""
    tokens = np.concatenate(per_caption).astype(np.int32) if per_caption else np.zeros(0, np.int32)
    offsets = np.concatenate([[0], np.cumsum([len(words) for words in per_caption])]).astype(np.int32)
    sample = {
        "__key__": key,
        schema.META_FIELD: json.dumps(meta).encode(),
        schema.RESNET152.field: npy_bytes(resnet.astype(np.float16)),
        schema.RESNEXT101.field: npy_bytes(resnext.astype(np.float16)),
        schema.CAPTIONS_FIELD: json.dumps(captions).encode(),
        schema.TOKENS_FIELD: npy_bytes(tokens),
        schema.TOKEN_OFFSETS_FIELD: npy_bytes(offsets),
    }
    if audio_prototype is not None:
        pattern = audio_prototype[:, None] + 8 * rng.standard_normal((schema.LOGMEL.dim, frames))
        sample[schema.LOGMEL.field] = npy_bytes(np.clip(pattern, -80, 0).astype(np.float16))
    return sample


def write_shard_set(root: Path, videos: int = 12, shards: int = 2, topics: int = 4, seed: int = 0,
                    duration: tuple[float, float] = (14.0, 26.0), audio_every: int = 5) -> dict:
    """Write `videos` videos over `shards` shards plus vocab/, per-shard JSONs and index.json.

    Every `audio_every`-th video has no audio (no logmel.npy). Returns {"ids", "topics", "w2v_ids"}.
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    vocab_size = topics * WORDS_PER_TOPIC
    w2v_ids = np.sort(rng.choice(3_000_000, size=vocab_size, replace=False)).astype(np.int64)
    prototypes = {
        "2d": rng.standard_normal((topics, 2048)),
        "3d": rng.standard_normal((topics, 2048)),
        "audio": rng.uniform(-70, -10, size=(topics, schema.LOGMEL.dim)),
    }
    (root / schema.VOCAB_DIR).mkdir(parents=True, exist_ok=True)
    np.save(root / schema.VOCAB_DIR / schema.VOCAB_W2V_IDS, w2v_ids)
    np.save(root / schema.VOCAB_DIR / schema.VOCAB_VECTORS, rng.standard_normal((vocab_size, schema.WORD_DIM)).astype(np.float32))
    (root / schema.VOCAB_DIR / schema.VOCAB_WORDS).write_text("".join(f"word{i}\n" for i in w2v_ids))
    ids = [f"vid{i:04d}xx" for i in range(videos)]
    video_topics = [i % topics for i in range(videos)]
    write_shards(root, ids, shards, lambda i: make_video(rng, ids[i], video_topics[i], prototypes, w2v_ids,
                                                         float(rng.uniform(*duration)),
                                                         with_audio=(i % audio_every) != audio_every - 1))
    return {"ids": ids, "topics": video_topics, "w2v_ids": w2v_ids}


def write_shards(root: Path, ids: list[str], shards: int, sample_for: Callable[[int], dict[str, bytes]]) -> None:
    """Samples 0..len(ids)-1 (made in order by `sample_for`) over `shards` tars, each with its
    per-shard JSON, plus the wids index.json."""
    listing = []
    for shard in range(shards):
        members = [i for i in range(len(ids)) if i * shards // len(ids) == shard]
        name = schema.SHARD_NAME.format(prefix=schema.DEFAULT_PREFIX, index=shard)
        with wds.TarWriter(str(root / name)) as sink:
            for i in members:
                sink.write(sample_for(i))
        record = {"url": name, "keys": [ids[i] for i in members], "count": len(members),
                  "bytes": (root / name).stat().st_size, "sha256": None}
        (root / schema.SHARD_JSON.format(prefix=schema.DEFAULT_PREFIX, index=shard)).write_text(json.dumps(record))
        listing.append({"url": name, "nsamples": len(members)})
    (root / schema.INDEX_FILE).write_text(json.dumps({"wids_version": 1, "shardlist": listing}))


def add_corrupt_shard(root: Path, index: int, count: int = 3) -> Path:
    """A shard whose tar is garbage but whose JSON and index entry claim samples (disk damage)."""
    root = Path(root)
    name = schema.SHARD_NAME.format(prefix=schema.DEFAULT_PREFIX, index=index)
    (root / name).write_bytes(b"this is not a tar file" * 100)
    (root / schema.SHARD_JSON.format(prefix=schema.DEFAULT_PREFIX, index=index)).write_text(
        json.dumps({"url": name, "keys": [], "count": count}))
    index_path = root / schema.INDEX_FILE
    listing = json.loads(index_path.read_text())
    listing["shardlist"].append({"url": name, "nsamples": count})
    index_path.write_text(json.dumps(listing))
    return root / name


def rewrite_member(tar: Path, name: str, data: bytes) -> None:
    """The tar again, member for member, with `name`'s bytes replaced: a valid tar, one bad member."""
    with tarfile.open(tar) as archive:
        members = [(member, archive.extractfile(member).read()) for member in archive]
    assert name in [member.name for member, _ in members]
    with tarfile.open(tar, "w") as archive:
        for member, payload in members:
            if member.name == name:
                payload, member.size = data, len(data)
            archive.addfile(member, io.BytesIO(payload))
