"""The fused Everything-at-Once forward against its oracle, the six-pass reference forward, on the same weights.

Tolerances (fp32): embeddings and loss within 1e-5, gradients within 1e-4 relative (per parameter,
in norm); measured: embeddings and loss equal to the last bit at this width, gradients within 1e-6
(bench/bench_fused.py at width 1024: embeddings within 4e-8). Batches hold padded tokens, empty modalities (the masking
token) and a row with every modality empty, in train and eval mode. Also: the host synchronisations
of a forward and of the loss are counted, the optimiser is the fused Adam and survives a resume.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch.overrides import TorchFunctionMode

from mft_train.config import TrainSettings
from mft_train.losses.combinatorial import PAPER_PRETRAIN_WEIGHTS, combinatorial_loss
from mft_train.models import build_model
from mft_train.models.fused import true_positions
from mft_train.training.optim import adam_implementation, make_optimizer, use_adam_implementation

SMALL = {
    "name": "eao", "video_dim": 24, "text_dim": 300, "audio_mels": 40, "width": 48, "heads": 6,
    "mlp_ratio": 1.0, "embed_dim": 20, "davenet": "v2",
    "davenet_widths": [8, 8, 16, 16, 16, 32], "davenet_depths": [1, 1, 1, 1, 1, 1],
}
EMBEDDINGS = ("t", "v", "a", "tv", "ta", "va")
FLAGS = ("t_empty", "v_empty", "a_empty")
# Real tokens (frames for audio) per row: padding everywhere, each modality empty somewhere,
# row 3 empty in every modality, row 5 with no padding at all.
LENGTHS = {
    "video": [6, 3, 1, 0, 6, 8, 2, 5],
    "text": [5, 0, 20, 0, 2, 20, 1, 9],
    "audio": [256, 100, 0, 0, 30, 256, 64, 65],
}


def make_batch(lengths: dict[str, list[int]], video_dim: int = 24, nv: int = 8, nt: int = 20, na: int = 256,
               seed: int = 0) -> dict:
    gen = torch.Generator().manual_seed(seed)
    rows = len(lengths["video"])
    sizes = {"video": nv, "text": nt, "audio": na}

    def mask(modality: str) -> torch.Tensor:
        return torch.arange(sizes[modality])[None, :] < torch.tensor(lengths[modality])[:, None]

    return {
        "video": torch.randn(rows, nv, video_dim, generator=gen), "video_mask": mask("video"),
        "text": torch.randn(rows, nt, 300, generator=gen), "text_mask": mask("text"),
        "audio": torch.rand(rows, 40, na, generator=gen) * -80.0, "audio_mask": mask("audio"),
    }


def small_model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = build_model(SMALL)
    with torch.no_grad():  # the masking token and biases away from their inits, so errors cannot hide
        for param in model.parameters():
            param.add_(0.02 * torch.randn_like(param))
    return model


def run(model: torch.nn.Module, batch: dict, reference: bool) -> tuple[dict, torch.Tensor, dict[str, torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    out = model.forward_reference(batch) if reference else model(batch)
    loss, _ = combinatorial_loss(out, PAPER_PRETRAIN_WEIGHTS)
    loss.backward()
    grads = {name: p.grad.detach().clone() for name, p in model.named_parameters() if p.grad is not None}
    return out, loss.detach(), grads


@pytest.mark.parametrize("train_mode", [True, False])
@pytest.mark.parametrize("seed", [0, 1])
def test_fused_forward_equals_the_six_pass_reference(train_mode: bool, seed: int) -> None:
    model = small_model(seed).train(train_mode)
    batch = make_batch(LENGTHS, seed=seed)
    fused_model, reference_model = copy.deepcopy(model), copy.deepcopy(model)
    out, loss, grads = run(fused_model, batch, reference=False)
    expected, expected_loss, expected_grads = run(reference_model, batch, reference=True)

    assert list(out) == list(expected)  # same keys, same order
    for key in EMBEDDINGS:
        assert out[key].shape == expected[key].shape
        assert (out[key] - expected[key]).abs().max() < 1e-5, key
    for key in FLAGS:
        assert torch.equal(out[key], expected[key]), key
    assert out["t_empty"].tolist() == [False, True, False, True, False, False, False, False]
    assert abs(loss - expected_loss) < 1e-5
    assert set(grads) == set(expected_grads)
    for name, grad in expected_grads.items():
        scale = grad.norm()
        if scale == 0:  # the masking token: every row holding it is dropped from the loss
            assert torch.count_nonzero(grads[name]) == 0, name
        else:
            assert (grads[name] - grad).norm() / scale < 1e-4, name
    if train_mode:  # BatchNorm saw the same batch statistics
        for (name, buffer), (_, expected_buffer) in zip(fused_model.named_buffers(), reference_model.named_buffers()):
            assert torch.allclose(buffer.float(), expected_buffer.float(), atol=1e-6), name


def test_fused_forward_on_edge_batches() -> None:
    model = small_model().eval()
    cases = [
        {"video": [3], "text": [4], "audio": [70]},  # one row
        {"video": [8, 8], "text": [20, 20], "audio": [256, 256]},  # no padding at all
        {"video": [0, 0, 0], "text": [0, 0, 0], "audio": [0, 0, 0]},  # nothing but masking tokens
        {"video": [2, 5, 1], "text": [0, 0, 0], "audio": [12, 200, 256]},  # text empty in every row
    ]
    with torch.no_grad():
        for lengths in cases:
            batch = make_batch(lengths, seed=3)
            out, expected = model(batch), model.forward_reference(batch)
            for key in EMBEDDINGS:
                assert (out[key] - expected[key]).abs().max() < 1e-5, (lengths, key)


def test_reference_forward_by_config_and_float16_inputs() -> None:
    torch.manual_seed(0)
    reference_only = build_model({**SMALL, "fused_forward": False}).eval()
    fused = build_model(SMALL).eval()
    fused.load_state_dict(reference_only.state_dict())  # same parameter names either way
    batch = make_batch(LENGTHS)
    half = {key: value.half() if value.is_floating_point() else value for key, value in batch.items()}
    with torch.no_grad():
        expected = reference_only(half)
        got = fused(half)
    for key in EMBEDDINGS:
        assert (got[key] - expected[key]).abs().max() < 1e-5, key


def test_true_positions_matches_nonzero() -> None:
    gen = torch.Generator().manual_seed(0)
    for size in (1, 7, 100):
        flat = torch.rand(size, generator=gen) < 0.4
        expected = torch.nonzero(flat).flatten()
        assert torch.equal(true_positions(flat, int(flat.sum())), expected)


class CountHostReads(TorchFunctionMode):
    """Counts calls that copy a value from the device to the host (each a synchronisation on a GPU)."""

    READS = (torch.Tensor.__bool__, torch.Tensor.tolist, torch.Tensor.item, torch.Tensor.__int__,
             torch.Tensor.__float__, torch.Tensor.nonzero, torch.nonzero)

    def __init__(self) -> None:
        super().__init__()
        self.reads: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in self.READS:
            self.reads.append(getattr(func, "__name__", str(func)))
        if func is torch.Tensor.__getitem__ and any(
            torch.is_tensor(index) and index.dtype == torch.bool
            for index in (args[1] if isinstance(args[1], tuple) else (args[1],))
        ):
            self.reads.append("boolean indexing")
        return func(*args, **kwargs)


def test_one_host_synchronisation_per_forward_and_per_loss() -> None:
    model = small_model()
    batch = make_batch(LENGTHS)
    with CountHostReads() as counter:
        out = model(batch)
    assert counter.reads == ["tolist"]  # the three token counts, read together
    with CountHostReads() as counter:
        combinatorial_loss(out, PAPER_PRETRAIN_WEIGHTS)
    assert counter.reads == ["tolist"]  # which terms were computed, read together
    with CountHostReads() as counter:  # the counter sees what the loss did before: a test per term, then indexing
        valid = ~out["t_empty"] & ~out["v_empty"]
        if valid.any():
            out["t"][valid]
    assert counter.reads == ["__bool__", "boolean indexing"]


def test_fused_adam_and_its_restoration_after_a_resume() -> None:
    model = small_model()
    optimizer = make_optimizer(model, TrainSettings(lr=1e-3))
    assert optimizer.param_groups[0]["fused"] is True
    # A checkpoint written by the default implementation loads, and the fused kernel is put back.
    plain = torch.optim.Adam(model.parameters(), lr=1e-3)
    run(model, make_batch(LENGTHS), reference=False)
    plain.step()
    optimizer.load_state_dict(plain.state_dict())
    assert not optimizer.param_groups[0]["fused"]
    use_adam_implementation(optimizer, adam_implementation(list(model.parameters())))
    assert optimizer.param_groups[0]["fused"] is True
    before = [p.detach().clone() for p in model.parameters()]
    optimizer.step()
    assert any(not torch.equal(a, p) for a, p in zip(before, model.parameters()))
