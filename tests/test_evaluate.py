"""mft-train evaluate: clip-level loading, scoring against hand-computed ranks, the CLI end to end, bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from clip_shard_fixtures import pretrained_checkpoint, write_clip_set
from shard_fixtures import write_shard_set
from mft_train.cli import main
from mft_train.data.clips import ClipSpec
from mft_train.data.eval_sets import clip_batches, clip_windows, open_clip_set, whole_clip
from mft_train.data.shards import DecodedSample
from mft_train.evaluation.encode import average_windows
from mft_train.evaluation.evaluate import evaluate_model
from mft_train.evaluation.metrics import retrieval_metrics
from mft_train.evaluation.scoring import COMBINATIONS, score_embeddings
from mft_train.presets import load_config

REPO = Path(__file__).resolve().parents[1]
PRESENT, MISSING = 8, 2


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A tiny pretrained checkpoint and an MSR-VTT-style clip set: 8 clips present, 2 missing,
    clip 3 without audio, clip 5 without an in-vocabulary word, 3 sentences per clip."""
    root = tmp_path_factory.mktemp("evaluate")
    checkpoint = pretrained_checkpoint(root)
    info = write_clip_set(root / "val", clips_per_topic=1, topics=PRESENT, seed=2, benchmark="msrvtt",
                          length=(4.0, 9.0), sentences=3, missing=MISSING, no_audio=(3,), no_words=(5,))
    return {"root": root, "checkpoint": checkpoint, "val": root / "val", "info": info}


# ---- scoring, independent of any model ----------------------------------------------------------
def _hand_ranks(query: np.ndarray, target: np.ndarray, cosine: bool) -> list[float]:
    """Zero-based rank of the diagonal with ties averaged, by plain loops."""
    ranks = []
    for i in range(len(query)):
        scores = []
        for j in range(len(target)):
            dot = sum(float(a) * float(b) for a, b in zip(query[i], target[j]))
            if cosine:
                dot /= (np.sqrt(sum(float(a) ** 2 for a in query[i])) * np.sqrt(sum(float(b) ** 2 for b in target[j])))
            scores.append(round(dot, 9))
        higher = sum(1 for j, s in enumerate(scores) if s > scores[i])
        ties = sum(1 for j, s in enumerate(scores) if j != i and s == scores[i])
        ranks.append(higher + ties / 2)
    return ranks


def _hand_metrics(ranks: list[float], total: int) -> dict[str, float]:
    padded = sorted(ranks + [float(total)] * (total - len(ranks)))
    middle = (padded[(total - 1) // 2] + padded[total // 2]) / 2
    out = {f"R{k}": 100.0 * sum(1 for r in ranks if r < k) / total for k in (1, 5, 10, 50)}
    out["MedR"] = middle + 1
    out["MeanR"] = sum(padded) / total + 1
    return out


def _unit(rows: np.ndarray) -> np.ndarray:
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


@pytest.mark.parametrize("similarity,with_pairs", [("cosine", True), ("dot", False)])
def test_every_combination_matches_hand_computed_ranks(similarity: str, with_pairs: bool) -> None:
    rng = np.random.default_rng(5)
    clips, dim, total = 6, 4, 9
    raw = {key: np.round(2 * rng.standard_normal((clips, dim))) / 2 + 0.25 for key in ("t", "v", "a", "va")}  # exact in binary
    raw["v"][2] = raw["v"][3]  # two identical gallery items: a tie
    raw["t"][4] = 0.5 * raw["v"][4]
    embeddings = {k: torch.tensor(v) for k, v in raw.items() if with_pairs or k != "va"}
    metrics, ranks = score_embeddings(embeddings, num_expected=total, similarity=similarity)
    cosine = similarity == "cosine"
    if cosine:
        late = _unit(_unit(raw["v"]) + _unit(raw["a"]))
    else:
        late = raw["v"] + raw["a"]  # MCN's paper: t scored against v + a
    sides = {"t": raw["t"], "v": raw["v"], "a": raw["a"], "v+a": late, "va": raw["va"] if with_pairs else late}
    assert list(metrics) == [f"{q}->{t}" for q, t in COMBINATIONS]
    for query, target in COMBINATIONS:
        expected_ranks = _hand_ranks(sides[query], sides[target], cosine)
        name = f"{query}->{target}"
        np.testing.assert_allclose(ranks[name], expected_ranks)
        for key, value in _hand_metrics(expected_ranks, total).items():
            assert metrics[name][key] == pytest.approx(value), (name, key)


def test_windows_of_a_clip_are_averaged_without_their_empty_windows() -> None:
    # rows: clip 0 has windows 0, 1, 2 (window 2 has no audio); clip 1 has window 3 (no text at all)
    emb = {k: torch.arange(8, dtype=torch.float32).reshape(4, 2) + offset
           for offset, k in enumerate(("t", "v", "a", "tv", "ta", "va"))}
    out = {**emb, "t_empty": torch.tensor([False, False, False, True]), "v_empty": torch.zeros(4, dtype=torch.bool),
           "a_empty": torch.tensor([False, False, True, False])}
    averaged = average_windows(out, torch.tensor([0, 0, 0, 1]), 2)
    rows = {k: emb[k].numpy() for k in emb}
    np.testing.assert_allclose(averaged["v"][0], rows["v"][:3].mean(0))
    np.testing.assert_allclose(averaged["a"][0], rows["a"][:2].mean(0))  # window 2 has no audio
    np.testing.assert_allclose(averaged["va"][0], rows["va"][:2].mean(0))
    np.testing.assert_allclose(averaged["t"][1], rows["t"][3])  # all windows empty: keep the masking embedding
    assert averaged["t_empty"].tolist() == [False, True]
    assert averaged["a_empty"].tolist() == [False, False]


def _record() -> DecodedSample:
    rng = np.random.default_rng(0)
    return DecodedSample(
        video_id="clipA_0000", duration=10.0,
        resnet152=rng.standard_normal((10, 2048)).astype(np.float16),
        resnext101=rng.standard_normal((15, 2048)).astype(np.float16),
        logmel=rng.uniform(-80, 0, (40, 1000)).astype(np.float16),
        caption_starts=np.zeros(2), caption_ends=np.full(2, 10.0),
        tokens=np.array([11, 12, 13, 14, 15, 21, 22], np.int32), token_offsets=np.array([0, 5, 7], np.int32),
    )


def test_whole_clip_is_truncated_or_padded_with_masks_and_uses_the_first_sentence() -> None:
    record = _record()
    example = whole_clip(record, video_tokens=20, audio_frames=1536, max_words=4)
    assert example["video_mask"].tolist() == [True] * 15 + [False] * 5
    assert example["audio_mask"].sum() == 1000 and not example["audio"][:, 1000:].any()
    np.testing.assert_array_equal(example["audio"][:, :1000], record.logmel.astype(np.float32))
    assert example["token_ids"].tolist() == [11, 12, 13, 14]
    row3d = record.resnext101[7].astype(np.float32)
    np.testing.assert_allclose(example["video"][7, 2048:], row3d / np.linalg.norm(row3d), rtol=1e-5)
    row2d = record.resnet152[5].astype(np.float32)  # 3D row 7 covers [4.67, 5.33) s: its centre is in 2D row 5
    np.testing.assert_allclose(example["video"][7, :2048], row2d / np.linalg.norm(row2d), rtol=1e-5)
    short = whole_clip(record, video_tokens=6, audio_frames=300, max_words=20)
    assert short["video_mask"].all() and short["audio_mask"].all() and len(short["token_ids"]) == 5


def test_clip_windows_cover_the_clip_in_training_lengths() -> None:
    record = _record()
    windows = clip_windows(record, ClipSpec(8.0, 12, 768, 0.0, 20), max_windows=6, caption_index=1)
    assert len(windows) == 2  # 10 s -> [0, 8) and [8, 16)
    assert windows[0]["video_mask"].all() and windows[1]["video_mask"].sum() == 3  # 3D rows 12..14
    assert windows[1]["audio_mask"].sum() == 200  # frames 800..999
    np.testing.assert_array_equal(windows[1]["audio"][:, :200], record.logmel[:, 800:].astype(np.float32))
    assert [w["token_ids"].tolist() for w in windows] == [[21, 22], [21, 22]]
    assert len(clip_windows(record, ClipSpec(8.0, 12, 768, 0.0, 20), max_windows=1)) == 1


# ---- the command end to end -------------------------------------------------------------------------
def test_cli_evaluate_prints_every_combination_and_writes_json_and_png(setup: dict) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "mft_train.cli", "evaluate", "--checkpoint", str(setup["checkpoint"]),
         "--shards", str(setup["val"]), "--set", "train.device=cpu"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    total = PRESENT + MISSING
    lines = result.stdout.splitlines()
    for query, target in COMBINATIONS:
        assert any(line.split()[:1] == [f"{query}->{target}"] and len(line.split()) == 7 for line in lines), (query, target)
    assert f"chance R@1 = {100 / total:.2f} (N = {total})" in result.stdout
    json_path = Path(setup["checkpoint"]).with_name(f"{Path(setup['checkpoint']).stem}-eval-val.json")
    report = json.loads(json_path.read_text())
    assert (report["num_clips"], report["num_expected"], report["benchmark"]) == (PRESENT, total, "msrvtt")
    assert report["lengths"] == {"video_tokens": 48, "audio_frames": 3072}
    assert report["empty"] == {"t": 1, "v": 0, "a": 1}
    for name, row in report["results"]["cosine"].items():
        # every present clip ranks within 50 of 8; the 2 missing ones are misses ranked N
        assert row["R50"] == pytest.approx(100.0 * PRESENT / total), name
        assert row["R1"] <= row["R5"] <= row["R10"] <= row["R50"]
        assert row["MeanR"] > (total * MISSING + 1) / total  # the missing clips pull the mean up
    assert json_path.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_strategy_clips_and_explicit_json_path(setup: dict, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "report.json"
    run_dir = Path(setup["checkpoint"]).parent.parent  # a run folder: its newest checkpoint is used
    code = main(["evaluate", "--checkpoint", str(run_dir), "--shards", str(setup["val"]),
                 "--strategy", "clips", "--num-expected", "40", "--json", str(out), "--set", "train.device=cpu"])
    assert code == 0, capsys.readouterr().err
    report = json.loads(out.read_text())
    assert report["strategy"] == "clips" and report["num_expected"] == 40
    assert report["checkpoint"] == str(setup["checkpoint"])
    assert report["results"]["cosine"]["t->va"]["R50"] == pytest.approx(100.0 * PRESENT / 40)
    assert out.with_suffix(".png").is_file()


def test_mcn_is_scored_with_dot_products_against_v_plus_a(setup: dict) -> None:
    """The evaluator only needs t, v, a: MCN (raw, unnormalised embeddings) is scored like its paper."""
    from mft_train.models.mcn import build_mcn

    model_cfg = dict(load_config("mcn_small").model)
    model_cfg.pop("name")
    torch.manual_seed(0)
    model = build_mcn(model_cfg)
    batches = list(clip_batches(open_clip_set(setup["val"]), 3, video_tokens=24, audio_frames=1000, max_words=20))
    results = evaluate_model(model, batches, num_expected=PRESENT + MISSING, similarity="dot")
    model.eval()
    with torch.no_grad():
        outs = [model({k: v for k, v in b.items() if k not in ("clip_id", "clip_index")}) for b in batches]
    t, v, a = (torch.cat([o[key] for o in outs]).double().numpy() for key in ("t", "v", "a"))
    assert not np.allclose(np.linalg.norm(v, axis=1), 1.0)  # raw embeddings: dot differs from cosine
    for name in ("t->va", "t->v+a"):
        assert results[name] == pytest.approx(retrieval_metrics(t @ (v + a).T, PRESENT + MISSING)), name
    assert results["t->v"] == pytest.approx(retrieval_metrics(t @ v.T, PRESENT + MISSING))


def _one_error_line(capsys: pytest.CaptureFixture) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("mft-train: error: "), err
    return err[0]


def test_bad_inputs_exit_2_with_one_line(setup: dict, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    checkpoint, val = str(setup["checkpoint"]), str(setup["val"])
    assert main(["evaluate", "--checkpoint", str(tmp_path / "nope.pt"), "--shards", val]) == 2
    assert "does not exist" in _one_error_line(capsys)
    not_a_checkpoint = tmp_path / "notes.pt"
    not_a_checkpoint.write_text("hello")
    assert main(["evaluate", "--checkpoint", str(not_a_checkpoint), "--shards", val]) == 2
    assert "cannot read checkpoint" in _one_error_line(capsys)
    write_shard_set(tmp_path / "videos", videos=2, shards=1)  # video-level: no clips.json
    assert main(["evaluate", "--checkpoint", checkpoint, "--shards", str(tmp_path / "videos")]) == 2
    assert "not a clip-level shard set" in _one_error_line(capsys)
    assert main(["evaluate", "--checkpoint", checkpoint, "--shards", str(tmp_path / "empty")]) == 2
    assert "does not exist" in _one_error_line(capsys)
    for bad in ("0", "-3", str(PRESENT - 1)):
        assert main(["evaluate", "--checkpoint", checkpoint, "--shards", val, "--num-expected", bad]) == 2
        assert "--num-expected" in _one_error_line(capsys)


def test_clip_set_counts_and_lengths_follow_clips_json(setup: dict) -> None:
    clip_set = open_clip_set(setup["val"])
    assert (clip_set.num_clips, clip_set.num_expected) == (PRESENT, PRESENT + MISSING)
    assert clip_set.eval_lengths() == (48, 3072)
