"""Everything-at-Once model: paper shapes and size on the meta device, tiny-model behaviour on CPU."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from howto_prep.errors import UserError
from mft_train.losses.combinatorial import PAPER_PRETRAIN_WEIGHTS, combinatorial_loss
from mft_train.models import build_model
from mft_train.models.davenet import build_davenet, downsample_mask
from mft_train.models.layers import FusionBlock, masked_mean

TINY = {
    "name": "eao", "video_dim": 16, "text_dim": 300, "audio_mels": 40, "width": 32, "heads": 4,
    "mlp_ratio": 1.0, "embed_dim": 24, "davenet": "v2",
    "davenet_widths": [8, 8, 16, 16, 16, 32], "davenet_depths": [1, 1, 1, 1, 1, 1],
}
EMBEDDINGS = ("t", "v", "a", "tv", "ta", "va")


def make_batch(batch: int, video_dim: int, lengths: dict[str, list[int]], nv: int = 6, nt: int = 20,
               na: int = 256, seed: int = 0, device: str = "cpu") -> dict:
    """Random features with masks: lengths[modality][i] real tokens (frames for audio) in row i."""
    gen = torch.Generator().manual_seed(seed)
    sizes = {"video": nv, "text": nt, "audio": na}

    def mask(modality: str) -> torch.Tensor:
        return torch.arange(sizes[modality])[None, :] < torch.tensor(lengths[modality])[:, None]

    return {
        "video": torch.randn(batch, nv, video_dim, generator=gen), "video_mask": mask("video"),
        "text": torch.randn(batch, nt, 300, generator=gen), "text_mask": mask("text"),
        "audio": torch.rand(batch, 40, na, generator=gen) * -80.0, "audio_mask": mask("audio"),
        "video_id": [f"vid{i}" for i in range(batch)],
    }


def tiny_model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model(TINY)


# ---------------------------------------------------------------- paper preset, meta device


def linear(n_in: int, n_out: int, bias: bool = True) -> int:
    return n_in * n_out + (n_out if bias else 0)


def geu(n_in: int, n_out: int) -> int:
    return linear(n_in, n_out) + linear(n_out, n_out)


def davenet_v2_params() -> int:
    """Stem conv 40x1 + BN, then per block two k9 convs + two BNs, 1x1 conv + BN shortcut on stride 2."""
    widths, depths = [128, 256, 512, 1024, 2048, 4096], [2, 2, 1, 1, 1, 1]
    total = 40 * 128 + 2 * 128
    previous = 128
    for width, depth in zip(widths, depths):
        for index in range(depth):
            total += previous * width * 9 + width * width * 9 + 2 * 2 * width
            if index == 0:
                total += previous * width + 2 * width
            previous = width
    return total


def test_paper_preset_shapes_and_parameter_count_on_meta_device() -> None:
    with torch.device("meta"):
        model = build_model({"name": "eao"})
        batch = {
            "video": torch.empty(2, 12, 4096), "video_mask": torch.empty(2, 12, dtype=torch.bool),
            "text": torch.empty(2, 20, 300), "text_mask": torch.empty(2, 20, dtype=torch.bool),
            "audio": torch.empty(2, 40, 768), "audio_mask": torch.empty(2, 768, dtype=torch.bool),
        }
        out = model(batch)
    for key in EMBEDDINGS:
        assert out[key].shape == (2, 6144), key
    for key in ("t_empty", "v_empty", "a_empty"):
        assert out[key].shape == (2,) and out[key].dtype == torch.bool

    width, embed = 4096, 6144
    fusion = linear(width, 3 * width) + linear(width, width) + 2 * linear(width, width) + 2 * 2 * width
    projections = geu(300, width) + 2 * geu(4096, width) + 3 * 2 * width
    expected = davenet_v2_params() + projections + fusion + 3 * geu(width, embed) + width
    davenet = sum(p.numel() for p in model.davenet.parameters())
    total = sum(p.numel() for p in model.parameters())
    assert davenet == davenet_v2_params()
    assert total == expected
    assert abs(davenet - 315e6) / 315e6 < 0.005  # the paper: about 315 M
    assert abs(total - 689e6) / 689e6 < 0.005  # the paper: about 689 M


def test_davenet_lengths_strides_and_mask_downsampling() -> None:
    with torch.device("meta"):
        v1 = build_davenet("v1")
    assert (v1.total_stride, v1.out_dim) == (16, 1024)
    small = build_davenet("v2", [4, 4, 4, 4, 4, 8], [1, 1, 1, 1, 1, 1]).eval()
    for frames in (64, 100, 768, 769):
        assert small(torch.zeros(1, 40, frames)).shape == (1, 8, math.ceil(frames / 64))
    # stride 4 over 10 frames -> 3 tokens; frames 0-4 real: token 1 holds frame 4 (real), token 2 none.
    mask = torch.tensor([[1, 1, 1, 1, 1, 0, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0, 0, 0, 1, 0]], dtype=torch.bool)
    assert downsample_mask(mask, 4).tolist() == [[True, True, False], [False, False, True]]


# ---------------------------------------------------------------- tiny model on CPU


def test_tiny_forward_backward_with_masks() -> None:
    model = tiny_model()
    lengths = {"video": [6, 3, 1, 0], "text": [5, 0, 20, 2], "audio": [256, 100, 0, 30]}
    batch = make_batch(4, 16, lengths)
    out = model(batch)
    for key in EMBEDDINGS:
        assert out[key].shape == (4, 24)
        assert torch.allclose(out[key].norm(dim=-1), torch.ones(4), atol=1e-5)
    assert out["t_empty"].tolist() == [False, True, False, False]
    assert out["v_empty"].tolist() == [False, False, False, True]
    assert out["a_empty"].tolist() == [False, False, True, False]
    loss, parts = combinatorial_loss(out, PAPER_PRETRAIN_WEIGHTS)
    assert set(parts) == set(PAPER_PRETRAIN_WEIGHTS)
    loss.backward()
    missing = [name for name, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing
    # Every row that holds a masking token is dropped from each term involving that modality, so the
    # token is in the graph but receives exactly zero gradient (as in the paper's loss).
    assert torch.count_nonzero(model.masking_token.grad) == 0


def test_pair_embedding_is_normalised_mean_of_the_fused_single_embeddings() -> None:
    model = tiny_model().eval()
    batch = make_batch(2, 16, {"video": [6, 2], "text": [4, 7], "audio": [256, 64]})
    with torch.no_grad():
        out = model(batch)
        tokens = model.tokens(batch)
        pooled_t, pooled_v = model._fuse([tokens["text"][:2], tokens["video"][:2]])
        n_t = F.normalize(model.heads["text"](pooled_t), dim=-1)
        n_v = F.normalize(model.heads["video"](pooled_v), dim=-1)
    assert torch.allclose(out["tv"], F.normalize(n_t + n_v, dim=-1), atol=1e-6)
    assert not torch.allclose(out["tv"], out["t"], atol=1e-3)  # fusion with video changes the text side


def test_masking_token_replaces_an_empty_modality() -> None:
    model = tiny_model()
    lengths = {"video": [6, 4], "text": [0, 3], "audio": [200, 256]}
    first, second = make_batch(2, 16, lengths, seed=1), make_batch(2, 16, lengths, seed=1)
    second["text"][0] = torch.randn(20, 300) * 5  # different content behind an all-False mask
    with torch.no_grad():
        out_first, out_second = model(first), model(second)
        assert out_first["t_empty"].tolist() == [True, False]
        for key in EMBEDDINGS:
            assert torch.allclose(out_first[key], out_second[key], atol=1e-6), key
        model.masking_token.add_(1.0)
        moved = model(first)
    assert not torch.allclose(moved["t"][0], out_first["t"][0], atol=1e-4)  # row 0 is the masking token
    assert torch.allclose(moved["t"][1], out_first["t"][1], atol=1e-6)  # row 1 has real words


def test_padding_content_and_length_do_not_change_outputs() -> None:
    model = tiny_model()
    lengths = {"video": [2, 5, 6], "text": [3, 20, 1], "audio": [100, 256, 3]}
    base = make_batch(3, 16, lengths, seed=2)
    noisy = {key: value.clone() if torch.is_tensor(value) else value for key, value in base.items()}
    for modality in ("video", "text"):
        pad = ~noisy[f"{modality}_mask"]
        noisy[modality][pad] = torch.randn(int(pad.sum()), noisy[modality].shape[-1]) * 10
    audio_pad = ~noisy["audio_mask"][:, None, :].expand_as(noisy["audio"])
    noisy["audio"][audio_pad] = 123.0
    with torch.no_grad():
        expected, got = model(base), model(noisy)  # training mode: BatchNorm uses batch statistics
    for key in EMBEDDINGS:
        assert torch.allclose(expected[key], got[key], atol=1e-6), key
    # Longer padding of the token modalities (eval mode) changes nothing either.
    model.eval()
    longer = dict(base)
    for modality, dim in (("video", 16), ("text", 300)):
        longer[modality] = torch.cat([base[modality], torch.randn(3, 4, dim)], dim=1)
        longer[f"{modality}_mask"] = torch.cat([base[f"{modality}_mask"], torch.zeros(3, 4, dtype=torch.bool)], dim=1)
    with torch.no_grad():
        expected, got = model(base), model(longer)
    for key in EMBEDDINGS:
        assert torch.allclose(expected[key], got[key], atol=1e-5), key


class RecordCalls(TorchFunctionMode):
    """Records every torch function called while active (a real dispatch hook, nothing replaced)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        self.calls.append(func)
        return func(*args, **(kwargs or {}))


def test_fusion_uses_sdpa_with_a_key_padding_mask() -> None:
    model = tiny_model()
    batch = make_batch(2, 16, {"video": [6, 2], "text": [4, 0], "audio": [256, 64]})
    with RecordCalls() as recorder:
        model(batch)
    assert recorder.calls.count(F.scaled_dot_product_attention) == 6  # t, v, a, [t;v], [t;a], [v;a]

    torch.manual_seed(0)
    block = FusionBlock(width=8, heads=2, mlp_ratio=2.0)
    x = torch.randn(2, 5, 8)
    mask = torch.tensor([[True, True, True, False, False], [True, False, True, True, True]])
    got = block.attention(x, mask)
    # Explicit attention: per head softmax(q k^T / sqrt(d)) with padded keys at -inf.
    q, k, v = block.qkv(x).view(2, 5, 3, 2, 4).permute(2, 0, 3, 1, 4)
    scores = q @ k.transpose(-1, -2) / math.sqrt(4)
    scores = scores.masked_fill(~mask[:, None, None, :], float("-inf"))
    expected = block.proj((scores.softmax(-1) @ v).transpose(1, 2).reshape(2, 5, 8))
    assert torch.allclose(got, expected, atol=1e-6)


def test_masked_mean_ignores_padding() -> None:
    tokens = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]]])
    mask = torch.tensor([[True, True, False]])
    assert masked_mean(tokens, mask).tolist() == [[2.0, 3.0]]


def test_bf16_autocast_forward_on_cpu() -> None:
    model = tiny_model()
    batch = make_batch(2, 16, {"video": [6, 1], "text": [0, 5], "audio": [256, 70]})
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(batch)
    assert all(torch.isfinite(out[key].float()).all() for key in EMBEDDINGS)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"widht": 8}, "unknown EAO model setting"),
        ({"heads": 5}, "divisible"),
        ({"davenet": "v3"}, "model.davenet"),
        ({"davenet_depths": [1, 1]}, "stages"),
        ({"name": "clip"}, "unknown model name"),
    ],
)
def test_bad_model_config_is_a_user_error(override: dict, message: str) -> None:
    with pytest.raises(UserError, match=message):
        build_model({**TINY, **override})


def test_malformed_batch_is_a_user_error() -> None:
    model = tiny_model()
    batch = make_batch(2, 16, {"video": [6, 1], "text": [3, 5], "audio": [256, 70]})
    with pytest.raises(UserError, match="audio_mask has shape"):
        model({**batch, "audio_mask": batch["audio_mask"][:, :100]})
    with pytest.raises(UserError, match="video features have size 8 but the model expects 16"):
        model({**batch, "video": batch["video"][..., :8]})
    with pytest.raises(UserError, match="lacks 'text'"):
        model({key: value for key, value in batch.items() if key != "text"})


def test_float16_features_are_accepted() -> None:
    model = tiny_model().eval()
    batch = make_batch(2, 16, {"video": [6, 1], "text": [3, 5], "audio": [256, 70]})
    half = {key: value.half() if torch.is_tensor(value) and value.is_floating_point() else value
            for key, value in batch.items()}
    with torch.no_grad():
        expected = model({key: value.float() if torch.is_tensor(value) and value.is_floating_point() else value
                          for key, value in half.items()})
        got = model(half)
    assert all(torch.equal(expected[key], got[key]) for key in EMBEDDINGS)
