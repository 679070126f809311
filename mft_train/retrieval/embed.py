"""`mft-train embed --checkpoint RUN --shards SHARDS --out INDEX`: every video of a video-level shard
set cut into windows, each embedded by the model, stored as float16 and indexed for search.

Why per shard: a shard is the unit the extraction wrote atomically, so it is the unit of progress
here too. A shard's windows are written as one part (mft_train.retrieval.index_store) once the whole
shard is embedded; a rerun after any interruption skips the parts whose shard is unchanged and
embeds the rest. The vector-search indexes (mft_train.retrieval.vectors) are rebuilt from all parts
at the end, which takes a small fraction of the embedding time.

Per window the model sees the window's video tokens and log-mel frames and no text (one masked word
slot); the fused embedding `va` (the paper's pair embedding from the joint video+audio pass) is the
default search target, `v` and `a` (each modality alone) are stored beside it. All are L2-normalised
(EAO's already are; MCN's are normalised here), so search scores are cosine similarities.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from howto_prep import schema
from howto_prep.cli_support import Location
from howto_prep.errors import UserError
from mft_train.config import RunConfig
from mft_train.data.reader import SkipPolicy, read_records
from mft_train.data.shards import DecodedSample, ShardSet, WordTable, discover_shards, vocab_root
from mft_train.data.store_set import is_store_url, open_store, shard_record
from mft_train.evaluation.evaluate import model_from_checkpoint
from mft_train.interop.safe_load import load_weights_only
from mft_train.presets import apply_override
from mft_train.retrieval import index_store, vectors
from mft_train.retrieval.fingerprint import fingerprint
from mft_train.retrieval.stored_index import IndexPublisher, checkpoint_url, index_location, report_published
from mft_train.retrieval.windows import WindowSpec, window_bounds, window_inputs, window_spec
from mft_train.training.checkpoints import load_checkpoint
from mft_train.training.device import autocast_context, available_device, choose_device, move_batch
from mft_train.training.run_store import local_checkpoint


def checkpoint_state(path: Location, overrides: list[str]) -> dict:
    """The checkpoint dict with its config checked (and --set applied, e.g. train.device=cpu); a URL's
    checkpoint is downloaded once into the cache (its fingerprint is the file's, as for a local one)."""
    state = load_checkpoint(local_checkpoint(path))
    raw = dict(state["config"])
    for override in overrides:
        apply_override(raw, override)
    state["config"] = RunConfig.from_dict(raw, where=state["path"]).to_dict()
    return state


def pretraining_clip(state: dict, config: RunConfig) -> tuple[float, int, int]:
    """(seconds, video tokens, log-mel frames) of the clips the model was pretrained on.

    A pretraining (or imported) checkpoint's own data section says it. A fine-tuned best.pt holds
    the fine-tuning clip there (48 s for YouCook2), so its "init" checkpoint is read instead (memory-
    mapped: its config only); when that file is gone, the model's paper preset says it.
    """
    data = config.data
    init = state.get("init")
    if init:
        try:
            init_state = load_weights_only(Path(init))  # memory-mapped: only its config is read
            data = RunConfig.from_dict(init_state["config"], where=str(init)).data
        except Exception:  # moved or unreadable: fall back to the paper's pretraining preset
            from mft_train.presets import MODEL_PRESETS, load_config

            data = load_config(MODEL_PRESETS.get(config.model.get("name", "eao"), "eao_howto100m")).data
    return data.clip_seconds, data.video_tokens, data.audio_frames


def shard_identity(url: str) -> str:
    """What a shard is: its per-shard JSON's sha256, else the tar's size and modification time."""
    if is_store_url(url):
        digest = (shard_record(url) or {}).get("sha256")
        if digest:
            return f"sha256:{digest}"
        root, _, name = url.rpartition("/")
        store = open_store(root)
        return f"bytes:{store.size(name)}:modified:{store.modified(name)}"
    tar = Path(url)
    try:
        digest = json.loads(tar.with_suffix(".json").read_text()).get("sha256")
    except (OSError, ValueError, AttributeError):
        digest = None
    stat = tar.stat()
    return f"sha256:{digest}" if digest else f"bytes:{stat.st_size}:mtime_ns:{stat.st_mtime_ns}"


def vocab_identity(root: Location, given: bool) -> dict:
    """Fingerprints of the vocabulary files queries will be tokenised with (checked at search time).
    A set on a store is fingerprinted through its local copy (the same bytes) and recorded by URL."""
    try:
        folder = vocab_root(root)  # for a URL, the local copy (downloaded once)
        vocab, words = folder / schema.VOCAB_DIR, WordTable(folder)
    except UserError as err:
        vocab, words, problem = Path(str(root)) / schema.VOCAB_DIR, None, str(err)
    if words is not None and len(words.w2v_ids) == 0:
        problem = f"{vocab} holds no word (its videos had no captions)"
    missing = [name for name in (schema.VOCAB_WORDS, schema.VOCAB_VECTORS) if not (vocab / name).is_file()]
    if words is not None and missing:
        words, problem = None, f"{vocab} lacks {' and '.join(missing)} (an unfinished extraction: rerun it to finish)"
    if words is None or len(words.w2v_ids) == 0:
        hint = "" if given else ("; pass --vocab with a shard set tokenised with the same word2vec file "
                                 "(e.g. the pretraining shards)")
        raise UserError(f"queries need a vocabulary: {problem}{hint}")
    return {"root": location_name(root), "words": fingerprint(vocab / schema.VOCAB_WORDS),
            "vectors": fingerprint(vocab / schema.VOCAB_VECTORS)}


def location_name(root: Location) -> str:
    """How an index records a set: its URL, or its folder's absolute path."""
    return str(root) if is_store_url(root) else str(Path(root).resolve())


def shard_samples(url: str, root: Location, skips: SkipPolicy | None = None) -> Iterator[tuple[DecodedSample, dict]]:
    """(decoded sample, its captions) of one shard in order; what cannot be read is skipped by `skips`
    (a warning, counted: the command says how many at its end)."""
    for key, meta, record in read_records([url], skips if skips is not None else SkipPolicy()):
        if meta.get("kind") == "clip":
            raise UserError(f"{root} is a clip-level set (sample {key} is a clip); give its video-level set, "
                            f"e.g. {root}/video-level")
        captions = {"start": record.caption_starts.tolist(), "end": record.caption_ends.tolist(),
                    "text": list(record.caption_texts)}
        yield record, captions


def window_batch(windows: list[dict], text_dim: int) -> dict:
    """The model's batch (mft_train.data.batch layout) of text-less windows (padded audio stays zeros:
    the model overwrites it with its own model.audio_pad_value)."""
    audio = np.stack([w["audio"] for w in windows])
    audio_mask = np.stack([w["audio_mask"] for w in windows])
    count = len(windows)
    return {
        "video": torch.from_numpy(np.stack([w["video"] for w in windows])),
        "video_mask": torch.from_numpy(np.stack([w["video_mask"] for w in windows])),
        "text": torch.zeros(count, 1, text_dim),
        "text_mask": torch.zeros(count, 1, dtype=torch.bool),
        "audio": torch.from_numpy(np.ascontiguousarray(audio, dtype=np.float32)),
        "audio_mask": torch.from_numpy(audio_mask),
    }


class WindowEmbedder:
    """The model in eval mode on its device; `embed(windows)` -> unit float32 va, v, a and empty flags."""

    def __init__(self, state: dict, device: torch.device) -> None:
        self.config = RunConfig.from_dict(state["config"], where=state["path"])
        self.model = model_from_checkpoint(state).to(device).eval()
        self.device = device
        self.text_dim = int(self.config.model.get("text_dim", schema.WORD_DIM))

    @torch.inference_mode()
    def embed(self, windows: list[dict]) -> dict[str, np.ndarray]:
        batch = move_batch(window_batch(windows, self.text_dim), self.device)
        with autocast_context(self.device, self.config.train.amp):
            out = self.model(batch)
        result = {key: F.normalize(out[key].float(), dim=-1).cpu().numpy() for key in index_store.KEYS}
        for modality in ("v", "a"):
            result[f"{modality}_empty"] = out[f"{modality}_empty"].bool().cpu().numpy()
        return result


def embed_shard(embedder: WindowEmbedder, url: str, root: Location, spec: WindowSpec, batch_size: int,
                bar: tqdm, skips: SkipPolicy | None = None) -> tuple[dict, dict]:
    """Every window of every video of one shard -> (part arrays, stats)."""
    ids: list[str] = []
    starts: list[float] = []
    ends: list[float] = []
    outputs: dict[str, list[np.ndarray]] = {}
    captions: dict[str, dict] = {}
    pending: list[dict] = []
    seconds = 0.0
    videos = 0

    def flush() -> None:
        for key, value in embedder.embed(pending).items():
            outputs.setdefault(key, []).append(value)
        pending.clear()

    for record, caption in shard_samples(url, root, skips):
        captions[record.video_id] = {name: caption.get(name, []) for name in ("start", "end", "text")}
        for start, end in window_bounds(record.duration, spec):
            pending.append(window_inputs(record, start, end, spec))
            ids.append(record.video_id)
            starts.append(start)
            ends.append(end)
            if len(pending) == batch_size:
                flush()
        seconds += record.duration
        videos += 1
        bar.update(1)
    if pending:
        flush()
    dim = embedder.config.model.get("embed_dim", 0)
    arrays = {key: np.concatenate(outputs[key]) if outputs else np.zeros((0, dim), np.float32) for key in index_store.KEYS}
    empty = {m: np.concatenate(outputs[f"{m}_empty"]) if outputs else np.zeros(0, bool) for m in ("v", "a")}
    part = {"video_ids": ids, "starts": starts, "ends": ends, "embeddings": arrays, "empty": empty, "captions": captions}
    return part, {"windows": len(ids), "videos": videos, "video_seconds": seconds}


def identity_of(state: dict, shards: ShardSet, vocab: dict, spec: WindowSpec, source: str | None = None) -> dict:
    """What the index is built from; `source`, the checkpoint's URL when it came from a store, lets a
    search on another machine fetch it (the fingerprint's path is this machine's cached copy)."""
    config = state["config"]
    model = {"checkpoint": fingerprint(Path(state["path"])), "step": state.get("step"), "config": config}
    if source:
        model["source"] = source
    return {
        "model": model,
        "shards": {"root": location_name(shards.root)},
        "vocab": vocab,
        "windows": spec.to_dict(),
    }


def check_same_index(existing: dict, identity: dict, out: Location) -> None:
    """Refuse to mix embeddings of another checkpoint, shard set or window setting into one index."""
    if existing["model"]["checkpoint"]["sha256"] != identity["model"]["checkpoint"]["sha256"]:
        raise UserError(f"{out} holds embeddings of another checkpoint ({existing['model']['checkpoint']['path']}); "
                        "choose another --out")
    for section, what in (("shards", "shard set"), ("windows", "--window/--stride setting")):
        if existing[section] != identity[section]:
            raise UserError(f"{out} was built from another {what} ({existing[section]}); choose another --out")


def run_embed(args: argparse.Namespace) -> int:
    """Check the inputs, then embed the shards not yet embedded, then build the vector indexes."""
    if args.batch <= 0:
        raise UserError(f"--batch must be positive, got {args.batch}")
    state = checkpoint_state(args.checkpoint, list(args.overrides or []))
    config = RunConfig.from_dict(state["config"], where=state["path"])
    shards = discover_shards(args.shards)  # a folder, or an s3:// / gs:// URL
    vocab = vocab_identity(args.vocab if args.vocab else args.shards, args.vocab is not None)
    spec = window_spec(*pretraining_clip(state, config), args.window, args.stride)
    vectors.choose_type(args.index_type, 0)  # a bad --index-type fails before any work
    out, publisher = index_location(args.out, getattr(args, "work", None))  # a URL: its local work folder
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; give a folder for the index")
    identity = identity_of(state, shards, vocab, spec, checkpoint_url(args.checkpoint, state["path"]))
    if (out / index_store.MANIFEST).exists():
        check_same_index(index_store.read_manifest(out, complete=False), identity, out)
    plan = [(url, count, shard_identity(url), index_store.part_file(out, url)) for url, count in zip(shards.urls, shards.counts)]
    if publisher is not None and finished_on_store(publisher, identity, plan, args.index_type):
        return 0
    out.mkdir(parents=True, exist_ok=True)
    manifest = {"format": index_store.FORMAT, "version": index_store.VERSION, "complete": False, **identity}
    index_store.write_manifest(out, manifest)

    device = choose_device(config.train.device, available_device())
    embedder = WindowEmbedder(state, device)
    done = [index_store.part_identity(path) == ident for _, _, ident, path in plan]
    print(f"embed: {shards.num_videos} videos in {len(plan)} shards of {shards.root} ({sum(done)} shards already "
          f"embedded); windows of {spec.seconds:g} s every {spec.stride:g} s ({spec.video_tokens} video tokens, "
          f"{spec.audio_frames} log-mel frames); {device}", file=sys.stderr)
    new = {"windows": 0, "videos": 0, "video_seconds": 0.0, "seconds": 0.0}
    skips = SkipPolicy()
    bar = tqdm(total=shards.num_videos, initial=sum(c for (_, c, _, _), d in zip(plan, done) if d),
               desc="embed", unit="video", dynamic_ncols=True)
    for (url, _, ident, path), finished in zip(plan, done):
        if finished:
            continue
        started = time.perf_counter()
        part, stats = embed_shard(embedder, url, shards.root, spec, args.batch, bar, skips)
        index_store.write_part(path, identity=ident, **part)
        new["seconds"] += time.perf_counter() - started
        for key in ("windows", "videos", "video_seconds"):
            new[key] += stats[key]
        bar.set_postfix(windows_s=f"{new['windows'] / max(new['seconds'], 1e-9):.1f}")
    bar.close()
    finish_index(out, manifest, plan, args.index_type, new)
    if publisher is not None:
        report_published(publisher, publisher.publish())  # index.json last: the commit on the store
    skips.report("embed")
    return 0


def finished_on_store(publisher: IndexPublisher, identity: dict, plan: list, index_type: str) -> bool:
    """Look at the --out URL before any work: True when it already holds this very index, complete;
    otherwise its parts of unchanged shards are copied into the work folder (not embedded again)."""
    stored = publisher.stored_manifest()
    if stored is None:
        return False
    check_same_index(stored, identity, publisher.url)
    if publisher.up_to_date(stored, identity, plan, index_type):
        stats = stored.get("stats", {})
        print(f"embed: {publisher.url} already holds this index, complete ({stats.get('windows')} windows of "
              f"{stats.get('videos')} videos); nothing to do", file=sys.stderr)
        return True
    pulled = publisher.pull_parts(stored, plan)
    if pulled:
        print(f"embed: copied {pulled} shards' parts from {publisher.url} into {publisher.work}", file=sys.stderr)
    return False


def finish_index(out: Path, manifest: dict, plan: list, index_type: str, new: dict) -> None:
    """Vector indexes over all parts (in shard order), then the complete manifest and a summary."""
    parts, totals = [], {"windows": 0, "videos": 0}
    arrays: dict[str, list[np.ndarray]] = {key: [] for key in index_store.KEYS}
    for url, _, ident, path in plan:
        loaded = index_store.read_part(path, ("video_id", "start", "end") + index_store.KEYS)
        windows, videos = len(loaded["video_id"]), len(set(loaded["video_id"].tolist()))
        seconds = float(sum(_durations(loaded).values()))
        parts.append({"shard": Path(url).name, "identity": ident, "file": str(path.relative_to(out)),
                      "windows": windows, "videos": videos, "video_seconds": round(seconds, 3)})
        for key in index_store.KEYS:
            arrays[key].append(loaded[key])
        totals["windows"] += windows
        totals["videos"] += videos
    if totals["windows"] == 0:
        raise UserError(f"no window was embedded: the shards of {manifest['shards']['root']} hold no readable video")
    dim = arrays["va"][0].shape[1]
    built = {}
    for key in index_store.KEYS:
        index = vectors.build_index(arrays[key], dim, index_type, totals["windows"])
        vectors.save_index(index, index_store.vector_file(out, key))
        built = vectors.describe(index)
    part_bytes = sum((out / part["file"]).stat().st_size for part in parts)
    index_bytes = sum(index_store.vector_file(out, key).stat().st_size for key in index_store.KEYS)
    hours = sum(part["video_seconds"] for part in parts) / 3600
    manifest.update({
        "complete": True, "parts": parts, "embedding": {"dim": int(dim), "keys": list(index_store.KEYS), "dtype": "float16"},
        "index": built,
        "stats": {"windows": totals["windows"], "videos": totals["videos"], "video_hours": round(hours, 4),
                  "bytes_parts": part_bytes, "bytes_index": index_bytes,
                  "last_run": {**new, "windows_per_s": round(new["windows"] / new["seconds"], 2) if new["seconds"] else None}},
    })
    index_store.write_manifest(out, manifest)
    rate = f", {new['windows'] / new['seconds']:.1f} windows/s" if new["seconds"] else ""
    per_hour = f" ({(part_bytes + index_bytes) / 1e6 / hours:.1f} MB per hour of video)" if hours else ""
    print(f"embed: {totals['windows']} windows of {totals['videos']} videos ({hours * 60:.1f} min of video); "
          f"this run embedded {new['windows']} windows in {new['seconds']:.1f} s{rate}")
    print(f"embed: wrote {out}: parts {part_bytes / 1e6:.2f} MB + {built['type']} indexes {index_bytes / 1e6:.2f} MB"
          f"{per_hour}; dim {dim}, float16")


def _durations(loaded: dict) -> dict[str, float]:
    """Per video, the end of its last window (= its duration, windows reach the end)."""
    durations: dict[str, float] = {}
    for video_id, end in zip(loaded["video_id"].tolist(), loaded["end"].tolist()):
        durations[video_id] = max(durations.get(video_id, 0.0), float(end))
    return durations

