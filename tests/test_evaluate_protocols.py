"""Evaluation under a named protocol: the protocol line, every sentence as a query, per-query JSON lines."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from clip_shard_fixtures import pretrained_checkpoint, write_clip_set
from mft_train.cli import main
from mft_train.data.batch import model_inputs
from mft_train.data.eval_sets import clip_batches, open_clip_set, sentence_batches
from mft_train.evaluation.evaluate import model_from_checkpoint
from mft_train.evaluation.metrics import retrieval_metrics
from mft_train.training.checkpoints import load_checkpoint

PRESENT, MISSING, SENTENCES = 6, 2, 3
FULL = {"name": "msrvtt-full", "benchmark": "msrvtt", "num_expected": PRESENT + MISSING,
        "num_queries": (PRESENT + MISSING) * SENTENCES, "published_n": 2990, "standard": False,
        "query": "every one of the video's 20 sentences", "all_sentences": True, "list": "test",
        "missing": "clips whose video is absent count as misses"}


@pytest.fixture(scope="module")
def sets(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("protocols")
    common = dict(clips_per_topic=1, topics=PRESENT, seed=3, benchmark="msrvtt", length=(4.0, 9.0),
                  sentences=SENTENCES, missing=MISSING)
    write_clip_set(root / "full", protocol=FULL, **common)
    write_clip_set(root / "plain", **common)
    return {"root": root, "checkpoint": pretrained_checkpoint(root), "full": root / "full", "plain": root / "plain"}


def embed_t(model: torch.nn.Module, batches) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return torch.cat([model(model_inputs(batch))["t"] for batch in batches]).double()


def test_text_only_rows_embed_a_sentence_exactly_as_the_whole_clip_does(sets: dict) -> None:
    """The sentence queries ride with a masked one-token video and audio: t must not change."""
    model = model_from_checkpoint(load_checkpoint(sets["checkpoint"]))
    clip_set = open_clip_set(sets["full"])
    alone = embed_t(model, sentence_batches(clip_set, 4, max_words=20))
    assert alone.shape[0] == PRESENT * SENTENCES
    # Row SENTENCES * i + k of `alone` is sentence k of clip i; clip_batches encodes each clip with sentence 0.
    whole = embed_t(model, clip_batches(clip_set, 4, video_tokens=48, audio_frames=3072, max_words=20))
    torch.testing.assert_close(alone[::SENTENCES], whole, rtol=0, atol=1e-6)
    assert not torch.allclose(alone[1::SENTENCES], whole)  # the other sentences are other queries


def read_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_all_sentences_protocol_scores_every_sentence_and_writes_per_query_lines(
        sets: dict, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "full.json"
    code = main(["evaluate", "--checkpoint", str(sets["checkpoint"]), "--shards", str(sets["full"]),
                 "--json", str(out), "--set", "train.device=cpu"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "protocol msrvtt-full (test): N = 8" in captured.out
    assert f"{MISSING} missing clip(s) count as misses" in captured.out
    report = json.loads(out.read_text())
    assert report["protocol"]["name"] == "msrvtt-full"
    assert (report["num_queries"], report["num_expected_queries"]) == (PRESENT * SENTENCES, FULL["num_queries"])
    lines = read_lines(out.with_suffix(".queries.jsonl"))
    sentence_lines = [line for line in lines if line.get("query")]
    clip_lines = [line for line in lines if "ranks" in line and not line.get("query")]
    missing_lines = [line for line in lines if "missing" in line]
    assert len(sentence_lines) == PRESENT * SENTENCES and len(clip_lines) == PRESENT and len(missing_lines) == MISSING
    assert sorted({line["query"] for line in sentence_lines}) == [f"sentence {i}" for i in range(SENTENCES)]
    assert set(sentence_lines[0]["ranks"]["cosine"]) == {"t->v", "t->a", "t->va", "t->v+a"}
    assert set(clip_lines[0]["ranks"]["cosine"]) == {"v->t", "a->t", "v->a", "a->v", "va->t"}
    # t->v recomputed by hand from the sentence embeddings: each sentence's target is its own clip,
    # and the denominator is every listed sentence (missing clips' sentences are misses).
    model = model_from_checkpoint(load_checkpoint(sets["checkpoint"]))
    clip_set = open_clip_set(sets["full"])
    t = torch.nn.functional.normalize(embed_t(model, sentence_batches(clip_set, 5, max_words=20)), dim=-1)
    model.eval()
    with torch.no_grad():
        v = torch.cat([model(model_inputs(b))["v"] for b in clip_batches(clip_set, 4, video_tokens=48,
                                                                          audio_frames=3072, max_words=20)]).double()
    sim = (t @ torch.nn.functional.normalize(v, dim=-1).T).numpy()
    owners = np.repeat(np.arange(PRESENT), SENTENCES)
    positives = np.zeros_like(sim, bool)
    positives[np.arange(len(owners)), owners] = True
    assert report["results"]["cosine"]["t->v"] == pytest.approx(retrieval_metrics(sim, FULL["num_queries"], positives))
    ranks = [line["ranks"]["cosine"]["t->v"] for line in sentence_lines]
    best = np.where(positives, sim, -np.inf).max(1, keepdims=True)
    np.testing.assert_allclose(ranks, (sim > best).sum(1) + ((sim == best).sum(1) - 1) / 2)


def test_plain_set_writes_one_line_per_clip_with_its_first_sentence(sets: dict, tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "plain.json"
    assert main(["evaluate", "--checkpoint", str(sets["checkpoint"]), "--shards", str(sets["plain"]),
                 "--json", str(out), "--set", "train.device=cpu"]) == 0
    assert "protocol: not recorded" in capsys.readouterr().out
    lines = read_lines(out.with_suffix(".queries.jsonl"))
    present = [line for line in lines if "ranks" in line]
    assert len(present) == PRESENT and all(line["query"] == "sentence 0" for line in present)
    assert len(present[0]["ranks"]["cosine"]) == 9
    assert [line["missing"] for line in lines if "missing" in line] == ["missing"] * MISSING
