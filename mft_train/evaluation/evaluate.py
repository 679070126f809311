"""`mft-train evaluate`: zero-shot / fine-tuned text-video-audio retrieval of a checkpoint on a clip-level set.

Protocol (docs/recipes.md section 7): every clip is encoded once at the benchmark's evaluation
lengths (mft_train.evaluation.encode); for each combination the (clips x clips) similarity matrix
goes to retrieval_metrics with `num_expected` as denominator, so clips missing from the shards
count as misses (mft_train.evaluation.scoring). Clips with an empty modality rank with whatever
their embedding earns (in practice misses), which matches a denominator counting every annotated clip.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import torch
from torch import nn

from howto_prep.cli_support import Location
from howto_prep.errors import UserError
from mft_train.config import RunConfig
from mft_train.data.clips import clip_spec
from mft_train.data.eval_sets import ClipSet, clip_batches, open_clip_set, sentence_batches
from mft_train.data.reader import SkipPolicy
from mft_train.data.store_set import is_store_url, url_name
from mft_train.evaluation.encode import encode_clips
from mft_train.evaluation.report import format_table, report_title, save_report
from mft_train.evaluation.stored_report import StoredReport
from mft_train.evaluation.scoring import COMBINATIONS, SentenceQueries, combo_name, score_embeddings, similarities_for
from mft_train.models import build_model
from mft_train.presets import apply_override
from mft_train.training.checkpoints import load_checkpoint
from mft_train.training.device import available_device, choose_device
from mft_train.training.run_store import local_checkpoint


def evaluate_model(model: nn.Module, loader: Iterable[dict], num_expected: int | None = None,
                   similarity: str = "cosine", device: torch.device | None = None,
                   amp: bool = False) -> dict[str, dict[str, float]]:
    """Encode every clip of `loader` once and return {combination: {R1, R5, R10, R50, MedR, MeanR}}."""
    embeddings, _ = encode_clips(model, loader, device, amp)
    return score_embeddings(embeddings, num_expected, similarity)[0]


def model_from_checkpoint(state: dict) -> nn.Module:
    """Build the checkpoint's model from its own config and load its weights (strict)."""
    model = build_model(state["config"]["model"])
    load_weights(model, state)
    return model


def load_weights(model: nn.Module, state: dict) -> None:
    """state["model"] into `model` (strict); a mismatch is a one-line UserError naming the checkpoint."""
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as err:
        raise UserError(f"{state.get('path', 'the checkpoint')} does not match its model config ({str(err).splitlines()[0]})") from None


def default_json_path(checkpoint: Path, shards: Location) -> Path:
    """`<checkpoint stem>-eval-<set name>.json` beside the checkpoint (a URL's last part names its set)."""
    name = url_name(shards) if is_store_url(shards) else Path(shards).resolve().name
    return Path(checkpoint).with_name(f"{Path(checkpoint).stem}-eval-{name}.json")


def report_base(checkpoint: Location, state: dict) -> Path:
    """The checkpoint the default report sits beside: the file read, or, for a URL (read from the
    cache), its name in the current folder."""
    path = Path(state["path"])
    return Path(path.name) if is_store_url(checkpoint) else path


def evaluate_checkpoint(state: dict, clip_set: ClipSet, strategy: str = "at_once", num_expected: int | None = None,
                        device: torch.device | None = None, batch_clips: int = 64,
                        model: nn.Module | None = None, skips: SkipPolicy | None = None) -> dict:
    """Full evaluation of a checkpoint (or of `model` built from it) on a ClipSet -> JSON-ready report.

    The report names the protocol (clips.json) and keeps, under "_queries", one record per query
    with the rank of its target in every combination (written as JSON lines beside the report).
    Unreadable clips are skipped by `skips` (counted; each is then a miss of the denominator).
    """
    skips = skips if skips is not None else SkipPolicy()
    config = RunConfig.from_dict(state["config"], where=str(state.get("path", "the checkpoint")))
    expected = clip_set.num_expected if num_expected is None else num_expected
    if expected <= 0:
        raise UserError(f"--num-expected must be positive, got {expected}")
    video_tokens, audio_frames = clip_set.eval_lengths()
    model = model if model is not None else model_from_checkpoint(state)
    device = device or torch.device("cpu")
    model.to(device)
    query_texts: list[str] = []
    batches = clip_batches(
        clip_set, batch_clips, video_tokens=video_tokens, audio_frames=audio_frames,
        max_words=config.data.max_words, strategy=strategy, window=clip_spec(config.data), skips=skips,
    )
    embeddings, clip_ids = encode_clips(model, keep_query_texts(batches, query_texts), device, amp=config.train.amp)
    if len(clip_ids) > expected:
        raise UserError(f"--num-expected {expected} is smaller than the {len(clip_ids)} clips in the shards")
    sentences, sentence_texts = None, []
    if clip_set.all_sentences:
        sentences, sentence_texts = encode_sentences(model, clip_set, clip_ids, config, device, batch_clips, skips)
    results, ranks = {}, {}
    for similarity in similarities_for(config.model):
        results[similarity], ranks[similarity] = score_embeddings(embeddings, expected, similarity, sentences)
    queries_expected = {combo_name(q, t): sentences.num_expected for q, t in COMBINATIONS if q == "t"} if sentences else {}
    if sentences is not None:
        query_texts = sentence_texts
    return {
        "checkpoint": state.get("path"), "shards": str(clip_set.root), "benchmark": clip_set.benchmark,
        "protocol": clip_set.protocol or None, "strategy": strategy,
        "lengths": {"video_tokens": video_tokens, "audio_frames": audio_frames},
        "num_clips": len(clip_ids), "num_expected": expected, "chance_R1": 100.0 / expected,
        "num_queries": len(sentences.owners) if sentences else len(clip_ids),
        "num_expected_queries": sentences.num_expected if sentences else expected,
        # listed clips without a sample, plus clips the shards hold that could not be read (skipped)
        "missing": (len(clip_set.missing_reasons()) + max(0, clip_set.num_clips - len(clip_ids))
                    if num_expected is None else expected - len(clip_ids)),
        "skipped": skips.summary() if skips.skipped else None,
        "empty": {m: int(embeddings[f"{m}_empty"].sum()) for m in "tva"},
        "headline": similarities_for(config.model)[0], "results": results,
        "_ranks": ranks, "_queries_expected": queries_expected,
        "_queries": query_records(clip_ids, query_texts, sentences, ranks, clip_set.missing_reasons()),
    }


def keep_query_texts(batches: Iterable[dict], texts: list[str]) -> Iterator[dict]:
    """Pass the batches on, collecting each clip's query sentence into `texts` on the way."""
    for batch in batches:
        texts.extend(batch.get("query_text", []))
        yield batch


def encode_sentences(model: nn.Module, clip_set: ClipSet, clip_ids: list[str], config: RunConfig,
                     device: torch.device, batch_size: int,
                     skips: SkipPolicy | None = None) -> tuple[SentenceQueries, list[str]]:
    """Text embeddings of every sentence of every present clip (a protocol whose queries are all sentences)."""
    texts: list[str] = []
    batches = sentence_batches(clip_set, batch_size, config.data.max_words, skips)
    out, owners = encode_clips(model, keep_query_texts(batches, texts), device, amp=config.train.amp)
    row_of = {clip_id: row for row, clip_id in enumerate(clip_ids)}
    queries = SentenceQueries(out["t"], np.array([row_of[owner] for owner in owners]), clip_set.num_expected_queries)
    return queries, texts


def query_records(clip_ids: list[str], texts: list[str], sentences: SentenceQueries | None,
                  ranks: dict[str, dict[str, np.ndarray]], missing: dict[str, str]) -> list[dict]:
    """One record per query: its clip, its sentence and its target's zero-based rank per similarity and combination.

    Queries by sentence come first (one per clip, or one per sentence under MSR-VTT full); with
    several sentences per clip, the clip-side queries (v->t, v->a, ...) follow as their own records;
    listed clips without a sample close the list as {"clip_id", "missing": reason}.
    """
    def pick(index: int, text_side: bool) -> dict[str, dict[str, float]]:
        return {similarity: {name: float(values[index]) for name, values in by_combo.items()
                             if (name.startswith("t->") == text_side) or sentences is None}
                for similarity, by_combo in ranks.items()}

    records: list[dict] = []
    owners = sentences.owners if sentences is not None else np.arange(len(clip_ids))
    for index, owner in enumerate(owners):
        records.append({"clip_id": clip_ids[owner], "query": texts[index] if index < len(texts) else None,
                        "ranks": pick(index, True)})
    if sentences is not None:
        records += [{"clip_id": clip_id, "query": None, "ranks": pick(index, False)} for index, clip_id in enumerate(clip_ids)]
    records += [{"clip_id": clip_id, "missing": reason} for clip_id, reason in missing.items()]
    return records


def run_evaluate(args: argparse.Namespace) -> int:
    """Check the inputs cheaply (checkpoint, clip set, --num-expected), then encode, score, print, save."""
    if args.num_expected is not None and args.num_expected <= 0:
        raise UserError(f"--num-expected must be a positive number of clips, got {args.num_expected}")
    stored = StoredReport(str(args.json)) if is_store_url(args.json) else None  # the store checked before any work
    state = load_checkpoint(local_checkpoint(args.checkpoint))  # a URL: downloaded once into the cache
    raw = dict(state["config"])
    for override in getattr(args, "overrides", None) or []:
        apply_override(raw, override)
    config = RunConfig.from_dict(raw, where=state["path"])
    state["config"] = config.to_dict()
    clip_set = open_clip_set(args.shards)  # a folder, or an s3:// / gs:// URL
    if args.num_expected is not None and args.num_expected < clip_set.num_clips:
        raise UserError(f"--num-expected {args.num_expected} is smaller than the {clip_set.num_clips} clips in {args.shards}")
    device = choose_device(config.train.device, available_device())
    skips = SkipPolicy()
    report = evaluate_checkpoint(state, clip_set, args.strategy, args.num_expected, device, skips=skips)
    for similarity, results in report["results"].items():
        print(format_table(results, report["num_expected"], report_title(report, similarity)))
        print()
    if stored is None:
        target = args.json or default_json_path(report_base(args.checkpoint, state), args.shards)
        json_path, png, queries = save_report(report, target)
    else:
        with tempfile.TemporaryDirectory(prefix="mft-train-report-") as folder:
            json_path, png, queries = save_report(report, Path(folder) / stored.name)
            stored.publish(json_path, png, queries)
        json_path, png, queries = (stored.url_of(path) for path in (json_path, png, queries))
    print(f"evaluate: wrote {json_path}, {queries} (one line per query) and {png}", file=sys.stderr)
    skips.report("evaluate")
    return 0
