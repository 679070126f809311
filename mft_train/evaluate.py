"""`mft-train evaluate`: zero-shot / fine-tuned text-video-audio retrieval on a clip-level shard set.

Protocol (docs/recipes.md section 7): every clip is encoded once; for each combination the (clips x
clips) similarity matrix goes to mft_train.metrics.retrieval_metrics (ranks with ties averaged,
`num_expected` as denominator so clips missing from the shards count as misses).

Combinations: t->v, v->t, t->a, a->t, v->a, a->v, t->va, va->t (the model's fused pair embedding),
and the late fusion t->v+a (mean of the L2-normalised v and a embeddings). The evaluator is
model-agnostic: it needs the forward's "t", "v", "a" and uses "va" when the model has it; without
it (or for t->v+a) the fused target is built from v and a.

Similarity: "cosine" (the EAO protocol) or "dot" (MCN's paper: raw dot products, with t scored
against v + a). For MCN both are reported; EAO's embeddings are unit vectors so the two agree.

Clips with an empty modality (no in-vocabulary word, no audio track) keep their place: the model
still embeds them (EAO: its learned masking token; MCN: a zero input), so they are queries and
gallery items like any other clip. Their ranks are whatever that embedding earns (in practice
misses), which matches a benchmark whose denominator counts every annotated clip.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Iterable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from howto_prep.errors import UserError
from mft_train.metrics import RECALL_AT, query_ranks, retrieval_metrics

COMBINATIONS: tuple[tuple[str, str], ...] = (
    ("t", "v"), ("v", "t"), ("t", "a"), ("a", "t"), ("v", "a"), ("a", "v"),
    ("t", "va"), ("va", "t"), ("t", "v+a"),
)
SIMILARITIES = ("cosine", "dot")
METRIC_COLUMNS = tuple(f"R{k}" for k in RECALL_AT) + ("MedR", "MeanR")
# Which modalities an embedding depends on (a window counts for it only when none of them is empty).
INVOLVED = {"t": "t", "v": "v", "a": "a", "tv": "tv", "ta": "ta", "va": "va"}


def combo_name(query: str, target: str) -> str:
    return f"{query}->{target}"


# ---- encoding ---------------------------------------------------------------------------------
def _average_windows(out: dict[str, torch.Tensor], clip_index: torch.Tensor, clips: int) -> dict[str, torch.Tensor]:
    """Per clip, the mean of its windows' embeddings, counting only windows whose modalities are not empty.

    With one row per clip (strategy at_once) this returns the embeddings unchanged. A clip whose
    windows are all empty in a modality keeps the mean over all its windows (the masking embedding).
    """
    empty = {m: out[f"{m}_empty"].bool() for m in "tva"}
    result: dict[str, torch.Tensor] = {}
    for key, modalities in INVOLVED.items():
        if key not in out:
            continue
        usable = torch.ones_like(empty["t"])
        for modality in modalities:
            usable = usable & ~empty[modality]
        weights = usable.float()
        per_clip = torch.zeros(clips).index_add_(0, clip_index, weights)
        weights = torch.where(per_clip[clip_index] > 0, weights, torch.ones_like(weights))
        total = torch.zeros(clips, out[key].shape[1]).index_add_(0, clip_index, out[key].float() * weights[:, None])
        count = torch.zeros(clips).index_add_(0, clip_index, weights)
        result[key] = total / count[:, None]
    for modality in "tva":
        rows_empty = torch.zeros(clips).index_add_(0, clip_index, (~empty[modality]).float())
        result[f"{modality}_empty"] = rows_empty == 0
    return result


@torch.inference_mode()
def encode_clips(model: nn.Module, batches: Iterable[dict], device: torch.device | None = None,
                 amp: bool = False) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Embeddings of every clip (float32, CPU) and the clip ids, in loader order; the model is put in eval mode."""
    from mft_train.engine import autocast_context, move_batch

    device = device or next(model.parameters()).device
    was_training = model.training
    model.eval()
    parts: dict[str, list[torch.Tensor]] = {}
    clip_ids: list[str] = []
    try:
        for batch in batches:
            clip_index = batch["clip_index"].long().cpu() if "clip_index" in batch else torch.arange(batch["video"].shape[0])
            clips = int(clip_index.max()) + 1
            inputs = move_batch({k: v for k, v in batch.items() if k not in ("clip_index", "clip_id")}, device)
            with autocast_context(device, amp):
                out = model(inputs)
            out = {k: v.detach().float().cpu() if v.is_floating_point() else v.detach().cpu() for k, v in out.items()}
            for key, value in _average_windows(out, clip_index, clips).items():
                parts.setdefault(key, []).append(value)
            clip_ids.extend(batch.get("clip_id") or batch.get("video_id") or [str(len(clip_ids) + i) for i in range(clips)])
    finally:
        model.train(was_training)
    if not parts:
        raise UserError("the shard set yielded no readable clip to evaluate")
    return {key: torch.cat(values) for key, values in parts.items()}, clip_ids


# ---- scoring ----------------------------------------------------------------------------------
def _side(embeddings: dict[str, torch.Tensor], name: str, similarity: str) -> torch.Tensor:
    """The embedding matrix of one side of a combination ("v+a": late fusion of v and a)."""
    if name == "v+a" or (name == "va" and "va" not in embeddings):
        video, audio = embeddings["v"].double(), embeddings["a"].double()
        if similarity == "cosine":
            return F.normalize(F.normalize(video, dim=-1) + F.normalize(audio, dim=-1), dim=-1)
        return video + audio  # MCN's paper: t against v + a
    return embeddings[name].double()


def similarity_matrix(queries: torch.Tensor, targets: torch.Tensor, similarity: str = "cosine") -> np.ndarray:
    """(Q, D) x (Q, D) -> (Q, Q) float64 cosine or dot-product similarities."""
    if similarity not in SIMILARITIES:
        raise UserError(f"similarity must be one of {', '.join(SIMILARITIES)}, not {similarity!r}")
    queries, targets = queries.double(), targets.double()
    if similarity == "cosine":
        queries, targets = F.normalize(queries, dim=-1), F.normalize(targets, dim=-1)
    return (queries @ targets.t()).numpy()


def score_embeddings(embeddings: dict[str, torch.Tensor], num_expected: int | None = None,
                     similarity: str = "cosine") -> tuple[dict[str, dict[str, float]], dict[str, np.ndarray]]:
    """Metrics and zero-based ranks of every combination from per-clip embeddings (row i = clip i)."""
    metrics: dict[str, dict[str, float]] = {}
    ranks: dict[str, np.ndarray] = {}
    for query, target in COMBINATIONS:
        sim = similarity_matrix(_side(embeddings, query, similarity), _side(embeddings, target, similarity), similarity)
        name = combo_name(query, target)
        metrics[name] = retrieval_metrics(sim, num_expected)
        ranks[name] = query_ranks(sim)
    return metrics, ranks


def evaluate_model(model: nn.Module, loader: Iterable[dict], num_expected: int | None = None,
                   similarity: str = "cosine", device: torch.device | None = None,
                   amp: bool = False) -> dict[str, dict[str, float]]:
    """Encode every clip of `loader` once and return {combination: {R1, R5, R10, R50, MedR, MeanR}}."""
    embeddings, _ = encode_clips(model, loader, device, amp)
    return score_embeddings(embeddings, num_expected, similarity)[0]


# ---- reporting --------------------------------------------------------------------------------
def format_table(results: dict[str, dict[str, float]], num_expected: int, title: str = "") -> str:
    """Rows = combinations, columns R@1 R@5 R@10 R@50 MedR MeanR, with chance R@1 = 100 / N beside."""
    chance = 100.0 / num_expected
    header = f"{'combination':<12}" + "".join(f"{c.replace('R', 'R@') if c[1:].isdigit() else c:>8}" for c in METRIC_COLUMNS)
    lines = [title] if title else []
    lines.append(f"{header}   chance R@1 = {chance:.2f} (N = {num_expected})")
    for name, row in results.items():
        lines.append(f"{name:<12}" + "".join(f"{row[c]:8.1f}" for c in METRIC_COLUMNS))
    return "\n".join(lines)


def write_json_atomic(path: Path, value: dict) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    temp.write_text(json.dumps(value, indent=2, sort_keys=False) + "\n")
    os.replace(temp, path)


# ---- checkpoints --------------------------------------------------------------------------------
def resolve_checkpoint(path: Path) -> Path:
    """A checkpoint file, or a run folder (its best.pt, else its newest checkpoint)."""
    from mft_train import checkpoints

    path = Path(path)
    if path.is_dir():
        best = path / "best.pt"
        found = best if best.is_file() else checkpoints.latest_checkpoint(path)
        if found is None:
            raise UserError(f"{path} holds no checkpoint (no best.pt, no checkpoints/step-*.pt)")
        return found
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist")
    return path


def load_checkpoint(path: Path) -> dict:
    """The checkpoint dict (needs "model" weights and the "config" they were trained with)."""
    path = resolve_checkpoint(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # torch raises many types for a damaged or foreign file
        raise UserError(f"cannot read checkpoint {path} ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})") from None
    if not isinstance(state, dict) or "model" not in state or "config" not in state:
        raise UserError(f"{path} is not an mft-train checkpoint (it lacks model weights or config)")
    state["path"] = str(path)
    return state


def model_from_checkpoint(state: dict) -> nn.Module:
    """Build the checkpoint's model from its own config and load its weights (strict)."""
    from mft_train.models import build_model

    model = build_model(state["config"]["model"])
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as err:
        raise UserError(f"{state.get('path', 'the checkpoint')} does not match its model config ({str(err).splitlines()[0]})") from None
    return model


def similarities_for(model_cfg: dict) -> tuple[str, ...]:
    """Headline similarity first: MCN is scored with dot products (its paper) and with cosine."""
    return ("dot", "cosine") if model_cfg.get("name") == "mcn" else ("cosine",)


def default_json_path(checkpoint: Path, shards: Path) -> Path:
    return Path(checkpoint).with_name(f"{Path(checkpoint).stem}-eval-{Path(shards).resolve().name}.json")


# ---- the command ----------------------------------------------------------------------------------
def evaluate_checkpoint(state: dict, clip_set, strategy: str = "at_once", num_expected: int | None = None,
                        device: torch.device | None = None, batch_clips: int = 64,
                        model: nn.Module | None = None) -> dict:
    """Full evaluation of a checkpoint (or of `model` built from it) on a ClipSet -> JSON-ready report."""
    from mft_train.engine import clip_spec
    from mft_train.eval_data import clip_batches

    config = state["config"]
    expected = clip_set.num_expected if num_expected is None else num_expected
    if expected <= 0:
        raise UserError(f"--num-expected must be positive, got {expected}")
    video_tokens, audio_frames = clip_set.eval_lengths()
    model = model if model is not None else model_from_checkpoint(state)
    device = device or torch.device("cpu")
    model.to(device)
    batches = clip_batches(
        clip_set, batch_clips, video_tokens=video_tokens, audio_frames=audio_frames,
        max_words=config["data"]["max_words"], audio_pad_value=config["data"]["audio_pad_value"],
        strategy=strategy, window=clip_spec(config["data"]),
    )
    embeddings, clip_ids = encode_clips(model, batches, device, amp=config["train"]["amp"])
    if len(clip_ids) > expected:
        raise UserError(f"--num-expected {expected} is smaller than the {len(clip_ids)} clips in the shards")
    results, ranks = {}, {}
    for similarity in similarities_for(config["model"]):
        results[similarity], ranks[similarity] = score_embeddings(embeddings, expected, similarity)
    return {
        "checkpoint": state.get("path"), "shards": str(clip_set.root), "benchmark": clip_set.benchmark,
        "strategy": strategy, "lengths": {"video_tokens": video_tokens, "audio_frames": audio_frames},
        "num_clips": len(clip_ids), "num_expected": expected, "chance_R1": 100.0 / expected,
        "empty": {m: int(embeddings[f"{m}_empty"].sum()) for m in "tva"},
        "headline": similarities_for(config["model"])[0], "results": results,
        "_ranks": ranks,
    }


def save_report(report: dict, json_path: Path) -> tuple[Path, Path]:
    """Write the JSON (without ranks) and the recall-at-K PNG of the headline similarity beside it."""
    from mft_train.plots import plot_recall_at_k

    json_path = Path(json_path)
    write_json_atomic(json_path, {k: v for k, v in report.items() if not k.startswith("_")})
    headline = report["headline"]
    png = json_path.with_suffix(".png")
    title = f"{report['benchmark']} ({report['strategy']}, {headline}), N = {report['num_expected']}"
    plot_recall_at_k(report["_ranks"][headline], report["num_expected"], png, title)
    return json_path, png


def run_evaluate(args: argparse.Namespace) -> int:
    """Check the inputs cheaply (checkpoint, clip set, --num-expected), then encode, score, print, save."""
    from mft_train.config import apply_override, validate
    from mft_train.eval_data import open_clip_set

    if args.num_expected is not None and args.num_expected <= 0:
        raise UserError(f"--num-expected must be a positive number of clips, got {args.num_expected}")
    state = load_checkpoint(Path(args.checkpoint))
    config = dict(state["config"])
    for override in getattr(args, "overrides", None) or []:
        apply_override(config, override)
    state["config"] = validate(config, where=state["path"])
    clip_set = open_clip_set(Path(args.shards))
    if args.num_expected is not None and args.num_expected < clip_set.num_clips:
        raise UserError(f"--num-expected {args.num_expected} is smaller than the {clip_set.num_clips} clips in {args.shards}")
    device = _device(state["config"]["train"]["device"])
    report = evaluate_checkpoint(state, clip_set, args.strategy, args.num_expected, device)
    for similarity, results in report["results"].items():
        title = (f"{report['benchmark']}: {report['num_clips']} clips of {report['num_expected']} expected, "
                 f"strategy {report['strategy']}, {similarity} similarity")
        print(format_table(results, report["num_expected"], title))
        print()
    json_path, png = save_report(report, args.json or default_json_path(Path(state["path"]), Path(args.shards)))
    print(f"evaluate: wrote {json_path} and {png}", file=sys.stderr)
    return 0


def _device(wanted: str) -> torch.device:
    if wanted == "cuda" and not torch.cuda.is_available():
        raise UserError("train.device=cuda but no GPU is visible")
    if wanted == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda")
