"""MCN: losses against hand-computed values, the online clustering state, the model on a tiny config."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import yaml

from howto_prep.errors import UserError
from mft_train.data.clips import ClipSpec
from mft_train.data.shards import discover_shards
from mft_train.data.stream import LoaderPlan, make_loader
from mft_train.evaluation.metrics import retrieval_metrics
from mft_train.losses.kmeans import assign_cosine
from mft_train.losses.mcn import (
    ClusterState,
    MCNLossConfig,
    cluster_loss,
    fused_embedding,
    mcn_loss,
    mms_loss,
    reconstruction_loss,
)
from mft_train.models.mcn import MCN, MCNConfig, build_mcn
from shard_fixtures import write_shard_set

CONFIG_DIR = Path(__file__).resolve().parents[1] / "mft_train" / "configs"
TINY = {
    "video_dim": 4096, "text_dim": 300, "audio_mels": 40, "embed_dim": 24, "audio_hidden": 16,
    "recon_hidden": 12, "davenet": "v1", "davenet_widths": [8, 8, 16, 16], "davenet_depths": [1, 1, 1, 1],
}


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread: on a shared 2-core box two spinning OpenMP threads ran DAVEnet 10x slower."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


# ---------------------------------------------------------------- hand-computed losses


def softmax_ce(logits: list[float], label: int) -> float:
    return -logits[label] + math.log(sum(math.exp(v) for v in logits))


def hand_mms(sim: list[list[float]], margin: float) -> float:
    n = len(sim)
    rows = cols = 0.0
    for i in range(n):
        row = [sim[i][j] - (margin if i == j else 0.0) for j in range(n)]
        col = [sim[j][i] - (margin if i == j else 0.0) for j in range(n)]
        rows += softmax_ce(row, i)
        cols += softmax_ce(col, i)
    return rows / n + cols / n


def test_mms_loss_equals_hand_computed_value() -> None:
    sim = [[0.9, 0.2, -0.4], [0.1, 0.5, 0.3], [-0.2, 0.8, 0.7]]
    got = mms_loss(torch.tensor(sim), margin=0.001)
    assert got.item() == pytest.approx(hand_mms(sim, 0.001), rel=1e-6)
    # The margin matters: a large one raises the loss by exactly what the hand formula says.
    got_big = mms_loss(torch.tensor(sim), margin=0.5)
    assert got_big.item() == pytest.approx(hand_mms(sim, 0.5), rel=1e-6)
    assert got_big.item() > got.item()
    # A worked 2x2 case: sim = [[1, 0], [0, 1]], margin 0 -> 2 * log(1 + e^-1).
    assert mms_loss(torch.eye(2), margin=0.0).item() == pytest.approx(2 * math.log(1 + math.exp(-1)), rel=1e-6)


def test_mms_loss_rejects_non_square() -> None:
    with pytest.raises(ValueError, match="square"):
        mms_loss(torch.zeros(2, 3))


def test_cluster_loss_equals_hand_computed_value() -> None:
    emb = [[1.0, 2.0], [-0.5, 0.3], [0.2, -1.0]]
    centroids = [[0.6, 0.8], [1.0, 0.0], [0.0, -1.0]]
    labels = [0, 1, 2]
    margin = 0.001
    expected = 0.0
    for row, label in zip(emb, labels):
        logits = [sum(a * b for a, b in zip(row, c)) - (margin if k == label else 0.0) for k, c in enumerate(centroids)]
        expected += softmax_ce(logits, label)
    expected /= len(emb)
    got = cluster_loss(torch.tensor(emb), torch.tensor(centroids), torch.tensor(labels), margin)
    assert got.item() == pytest.approx(expected, rel=1e-6)


def test_reconstruction_loss_is_the_mean_squared_error() -> None:
    prediction, target = [[1.0, 2.0], [0.0, -1.0]], [[0.5, 2.0], [1.0, 1.0]]
    expected = sum((p - t) ** 2 for pr, tr in zip(prediction, target) for p, t in zip(pr, tr)) / 4
    assert reconstruction_loss(torch.tensor(prediction), torch.tensor(target)).item() == pytest.approx(expected)


# ---------------------------------------------------------------- mcn_loss and the clustering state


def fake_output(n: int, dim: int, seed: int, empty: dict[str, list[int]] | None = None) -> dict[str, torch.Tensor]:
    """Model-shaped output with leaf tensors (so gradients can be checked) and chosen empty rows."""
    gen = torch.Generator().manual_seed(seed)
    out: dict[str, torch.Tensor] = {}
    for key, target_dim in (("t", 5), ("v", 7), ("a", 6)):
        out[key] = torch.randn(n, dim, generator=gen).requires_grad_()
        flags = torch.zeros(n, dtype=torch.bool)
        flags[(empty or {}).get(key, [])] = True
        out[f"{key}_empty"] = flags
        out[f"recon_{key}"] = torch.randn(n, target_dim, generator=gen).requires_grad_()
        out[f"target_{key}"] = torch.randn(n, target_dim, generator=gen)
    return out


def loss_config(**changes) -> MCNLossConfig:
    base = {"clusters": 3, "queue_size": 12, "refit_every": 2, "kmeans_iters": 20}
    return MCNLossConfig.from_dict({**base, **changes})


def test_mcn_loss_combines_the_terms_and_drops_empty_rows() -> None:
    out = fake_output(4, 8, seed=0, empty={"t": [1], "a": [3]})
    config = loss_config(recon_weight=50.0)
    state = ClusterState(8, config)
    total, terms = mcn_loss(out, state, config)
    keep_tv, keep_at, keep_av = [0, 2, 3], [0, 2], [0, 1, 2]
    expected = {
        "mms_t_v": hand_mms((out["t"][keep_tv] @ out["v"][keep_tv].t()).tolist(), 0.001),
        "mms_a_t": hand_mms((out["a"][keep_at] @ out["t"][keep_at].t()).tolist(), 0.001),
        "mms_a_v": hand_mms((out["a"][keep_av] @ out["v"][keep_av].t()).tolist(), 0.001),
    }
    rows = {"t": [0, 2, 3], "v": [0, 1, 2, 3], "a": [0, 1, 2]}
    for key, keep in rows.items():
        diff = (out[f"recon_{key}"][keep] - out[f"target_{key}"][keep]).detach()
        expected[f"recon_{key}"] = float((diff**2).mean())
    assert set(terms) == set(expected)  # no centroids yet: no clustering terms
    for name, value in expected.items():
        assert terms[name].item() == pytest.approx(value, rel=1e-5), name
    hand_total = sum(v for k, v in expected.items() if k.startswith("mms")) + 50.0 * sum(
        v for k, v in expected.items() if k.startswith("recon")
    )
    assert total.item() == pytest.approx(hand_total, rel=1e-5)
    total.backward()
    assert out["t"].grad is not None and bool(out["t"].grad[1].eq(0).all())  # empty text row: no gradient
    assert bool(out["t"].grad[0].ne(0).any())
    assert state.step == 1 and len(state.queue) == 4


def test_fused_embedding_is_the_mean_of_present_modalities() -> None:
    out = fake_output(3, 4, seed=1, empty={"t": [1], "a": [1, 2], "v": [2]})
    out["t_empty"][2] = True  # row 2: nothing present
    fused, present = fused_embedding(out)
    assert torch.allclose(fused[0], (out["t"][0] + out["v"][0] + out["a"][0]) / 3)
    assert torch.allclose(fused[1], out["v"][1])
    assert present.tolist() == [True, True, False]


def test_cluster_state_refits_every_n_steps_warm_started_and_clustering_terms_follow() -> None:
    config = loss_config()
    state = ClusterState(8, config)
    batches = [fake_output(4, 8, seed=s) for s in range(5)]
    # Step 1: queue 4 >= K=3 but not a refit step. Step 2: refit (first fit: k-means++).
    mcn_loss(batches[0], state, config)
    assert state.centroids is None
    mcn_loss(batches[1], state, config)
    assert state.fits == 1 and state.centroids is not None
    first = state.centroids.clone()
    queue_before = state.queue.values().clone()
    # Step 3 uses the centroids of step 2: clustering terms equal the hand formula with those labels.
    out = batches[2]
    total, terms = mcn_loss(out, state, config)
    fused = (out["t"] + out["v"] + out["a"]).detach() / 3
    labels = assign_cosine(fused, first)
    for name, emb in (("t", out["t"]), ("v", out["v"]), ("a", out["a"]), ("fused", fused)):
        expected = 0.0
        for row, label in zip(emb.detach().tolist(), labels.tolist()):
            logits = [sum(x * c for x, c in zip(row, cent)) - (0.001 if k == label else 0.0) for k, cent in enumerate(first.tolist())]
            expected += softmax_ce(logits, label)
        assert terms[f"cluster_{name}"].item() == pytest.approx(expected / 4, rel=1e-5), name
    assert state.fits == 1 and torch.equal(state.centroids, first)
    # Step 4 refits on the queue, warm-started from `first`: same result as a KMeans started there.
    mcn_loss(batches[3], state, config)
    assert state.fits == 2
    from mft_train.losses.kmeans import KMeans

    queue = torch.cat([queue_before, fused, ((batches[3]["t"] + batches[3]["v"] + batches[3]["a"]) / 3).detach()])[-12:]
    assert torch.allclose(state.queue.values(), queue)
    reference = KMeans(3, iters=20).fit(queue, init=first)
    assert torch.allclose(state.centroids, reference)
    # The state survives a checkpoint round trip.
    copy = ClusterState(8, config)
    copy.load_state_dict(state.state_dict())
    assert torch.equal(copy.centroids, state.centroids) and copy.step == 4
    assert torch.equal(copy.queue.values(), state.queue.values())


def test_loss_config_rejects_bad_values() -> None:
    with pytest.raises(UserError, match="unknown MCN loss"):
        MCNLossConfig.from_dict({"clusterz": 3})
    with pytest.raises(UserError, match="queue_size"):
        MCNLossConfig.from_dict({"clusters": 10, "queue_size": 5})
    with pytest.raises(UserError, match="kmeans_init"):
        MCNLossConfig.from_dict({"kmeans_init": "best"})


# ---------------------------------------------------------------- the model


def make_batch(lengths: dict[str, list[int]], nv: int = 5, nt: int = 20, na: int = 96, seed: int = 0) -> dict:
    gen = torch.Generator().manual_seed(seed)
    sizes = {"video": nv, "text": nt, "audio": na}
    batch = len(lengths["video"])

    def mask(modality: str) -> torch.Tensor:
        return torch.arange(sizes[modality])[None, :] < torch.tensor(lengths[modality])[:, None]

    return {
        "video": torch.randn(batch, nv, 4096, generator=gen), "video_mask": mask("video"),
        "text": torch.randn(batch, nt, 300, generator=gen), "text_mask": mask("text"),
        "audio": torch.rand(batch, 40, na, generator=gen) * -80.0, "audio_mask": mask("audio"),
    }


def tiny_model(seed: int = 0) -> MCN:
    torch.manual_seed(seed)
    return build_mcn(TINY)


def test_forward_backward_with_masks_and_empty_modalities() -> None:
    lengths = {"video": [5, 2, 0, 3], "text": [4, 0, 7, 20], "audio": [96, 40, 10, 0]}
    batch = make_batch(lengths)
    model = tiny_model()
    out = model(batch)
    for key in ("t", "v", "a", "tv", "ta", "va"):
        assert out[key].shape == (4, 24)
    assert out["v_empty"].tolist() == [False, False, True, False]
    assert out["t_empty"].tolist() == [False, True, False, False]
    assert out["a_empty"].tolist() == [False, False, False, True]
    assert out["recon_v"].shape == (4, 4096) and out["target_v"].shape == (4, 4096)
    assert out["recon_a"].shape == (4, 16) and out["recon_t"].shape == (4, 300)
    # The video input is the max over real tokens with each 2D / 3D half L2-normalised again (released
    # MCN loader), and zeros for an empty clip.
    def renormalised(pooled: torch.Tensor) -> torch.Tensor:
        return torch.cat((pooled[:2048] / pooled[:2048].norm(), pooled[2048:] / pooled[2048:].norm()))

    expected_v = torch.stack([renormalised(batch["video"][0].max(0).values),
                              renormalised(batch["video"][1, :2].max(0).values), torch.zeros(4096),
                              renormalised(batch["video"][3, :3].max(0).values)])
    assert torch.allclose(out["target_v"], expected_v, atol=1e-6)
    assert torch.allclose(out["target_t"][2], batch["text"][2, :7].mean(0))
    config = loss_config(clusters=2, queue_size=8)
    total, terms = mcn_loss(out, ClusterState(24, config), config)
    assert torch.isfinite(total)
    total.backward()
    for name, param in model.named_parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all(), name
    assert any(bool(p.grad.ne(0).any()) for p in model.davenet.parameters())


def test_padding_content_never_changes_the_embeddings() -> None:
    lengths = {"video": [3, 5], "text": [2, 6], "audio": [50, 96]}
    batch = make_batch(lengths, seed=1)
    noisy = {k: v.clone() for k, v in batch.items()}
    for modality in ("video", "text"):
        noisy[modality][~batch[f"{modality}_mask"]] = 1e3
    noisy["audio"][0, :, 50:] = 123.0
    model = tiny_model().eval()
    with torch.no_grad():
        clean_out, noisy_out = model(batch), model(noisy)
    for key in ("t", "v", "a"):
        assert torch.allclose(clean_out[key], noisy_out[key], atol=1e-5), key


def test_text_branch_is_a_masked_max_after_linear_relu() -> None:
    model = tiny_model().eval()
    words = torch.randn(1, 20, 300)
    mask = torch.zeros(1, 20, dtype=torch.bool)
    mask[0, :3] = True
    with torch.no_grad():
        emb, _ = model.encode_text(words, mask)
        per_word = [torch.relu(model.word_proj(words[0, i])) for i in range(3)]
        pooled = torch.stack(per_word).max(0).values
        assert torch.allclose(emb[0], model.text_head(pooled), atol=1e-6)


def test_float16_features_are_accepted() -> None:
    batch = make_batch({"video": [2], "text": [3], "audio": [96]})
    half = {k: (v.half() if v.is_floating_point() else v) for k, v in batch.items()}
    out = tiny_model().eval()(half)
    assert out["t"].dtype == torch.float32


def test_bad_settings_and_batches_raise_user_errors() -> None:
    with pytest.raises(UserError, match="unknown MCN model setting"):
        build_mcn({"width": 3})
    with pytest.raises(UserError, match="davenet"):
        build_mcn({"davenet": "v9"})
    batch = make_batch({"video": [2], "text": [3], "audio": [96]})
    del batch["audio_mask"]
    with pytest.raises(UserError, match="audio_mask"):
        tiny_model()(batch)


# ---------------------------------------------------------------- paper size, presets


def linear(n_in: int, n_out: int) -> int:
    return n_in * n_out + n_out


def geu(n_in: int, n_out: int) -> int:
    return linear(n_in, n_out) + linear(n_out, n_out)


def davenet_v1_params() -> int:
    """Stem 40x1 conv + BN; blocks of two k9 convs + two BNs; a 1x1 conv + BN shortcut where stride 2."""
    widths, depths = (128, 256, 512, 1024), (2, 2, 2, 2)
    total = 40 * 128 + 2 * 128
    c_in = 128
    for width, depth in zip(widths, depths):
        for index in range(depth):
            total += 9 * c_in * width + 2 * width + 9 * width * width + 2 * width
            if index == 0:
                total += c_in * width + 2 * width
            c_in = width
    return total


def test_paper_preset_parameter_count_on_meta_device() -> None:
    with torch.device("meta"):
        model = MCN(MCNConfig())
    expected = (
        geu(4096, 6144)  # video
        + davenet_v1_params() + geu(1024, 1024) + linear(1024, 6144)  # audio
        + linear(300, 6144) + geu(6144, 6144)  # text
        + sum(linear(6144, 1024) + linear(1024, d) for d in (4096, 1024, 300))  # reconstruction
    )
    assert sum(p.numel() for p in model.parameters()) == expected == 217_786_668


@pytest.mark.parametrize("preset", ["mcn_howto100m", "mcn_small"])
def test_presets_hold_valid_mcn_sections(preset: str) -> None:
    config = yaml.safe_load((CONFIG_DIR / f"{preset}.yaml").read_text())
    model_cfg = dict(config["model"])
    assert model_cfg.pop("name") == "mcn"
    model_config = MCNConfig.from_dict(model_cfg)
    loss = MCNLossConfig.from_dict(config["loss"])
    assert config["data"]["clip_seconds"] >= 10.0 and config["data"]["audio_frames"] == 1000
    if preset == "mcn_howto100m":
        assert model_config == MCNConfig()  # the preset spells out the paper defaults
        assert loss == MCNLossConfig()
        assert (config["train"]["lr"], config["train"]["warmup_steps"], config["train"]["epochs"]) == (1e-4, 5000, 30)
        assert (config["train"]["batch"], config["data"]["clips_per_video"]) == (128, 32)


# ---------------------------------------------------------------- a short run on real shards


def test_short_run_on_fixture_shards_lowers_the_loss_and_improves_retrieval(tmp_path) -> None:
    """Tiny MCN + the real shard stream (paper clip recipe: >= 10 s clips, 1,000 mel frames) + Adam."""
    write_shard_set(tmp_path / "shards", videos=8, shards=2, topics=2)
    shards = discover_shards(tmp_path / "shards")
    spec = ClipSpec(clip_seconds=10.0, video_tokens=24, audio_frames=1000, audio_shift_seconds=0.0, max_words=20)
    train_plan = LoaderPlan(videos_per_rank=4, clips_per_video=2, num_batches=24, seed=0, epoch=0, first_step=0, shuffle_buffer=8)
    eval_plan = LoaderPlan(videos_per_rank=8, clips_per_video=2, num_batches=1, seed=1, epoch=0, first_step=0, order="fixed")
    (eval_batch,) = list(make_loader(shards, spec, eval_plan, 0))
    model = tiny_model()

    def mean_rank_t_to_va() -> float:
        model.eval()
        with torch.no_grad():
            out = model(eval_batch)
        model.train()
        sim = torch.nn.functional.normalize(out["t"], dim=1) @ torch.nn.functional.normalize(out["va"], dim=1).t()
        return retrieval_metrics(sim)["MeanR"]

    before = mean_rank_t_to_va()
    config = loss_config(clusters=2, queue_size=32, refit_every=5)
    state = ClusterState(24, config)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses, term_names = [], set()
    for batch in make_loader(shards, spec, train_plan, 0):
        total, terms = mcn_loss(model(batch), state, config)
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
        losses.append(total.item())
        term_names |= set(terms)
    assert len(losses) == 24 and all(math.isfinite(v) for v in losses)
    first, last = sum(losses[:4]) / 4, sum(losses[-4:]) / 4
    assert last < 0.9 * first, f"loss did not fall: {first:.3f} -> {last:.3f}"
    assert {"cluster_t", "cluster_v", "cluster_a", "cluster_fused"} <= term_names  # clustering switched on
    assert state.fits == 4  # steps 5, 10, 15, 20
    assert mean_rank_t_to_va() < before
