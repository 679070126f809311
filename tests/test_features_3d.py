"""3D ResNeXt-101: architecture size, Hara-layout checkpoint loading, clip preprocessing, features."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from howto_prep.errors import UserError
from howto_prep.features.resnext3d import ResNeXt101Features
from howto_prep.features.resnext3d_arch import ResNeXt3d
from howto_prep.features.weights import RandomWeightsWarning
from howto_prep.files import file_sha256

KINETICS_MEAN = np.array([110.6, 103.2, 96.3])  # the reference extractor's values, exactly


pytestmark = pytest.mark.usefixtures("two_torch_threads")


@pytest.fixture(scope="module")
def hara_checkpoint(tmp_path_factory) -> tuple[Path, dict]:
    """A random ResNeXt-101 saved as the HowTo100M extractor's resnext101.pth is laid out."""
    torch.manual_seed(99)
    model = ResNeXt3d()
    state = {f"module.{k}": v for k, v in model.state_dict().items()}
    assert state["module.fc.weight"].shape == (400, 2048)
    path = tmp_path_factory.mktemp("weights") / "resnext101.pth"
    torch.save({"arch": "resnext-101", "epoch": 200, "state_dict": state}, path)
    return path, state


def hara_parameter_count(layers=(3, 4, 23, 3), cardinality=32, classes=400) -> int:
    """Hand count: conv1 7x7x7, BN (weight + bias), bottlenecks of width cardinality * planes / 32,
    grouped 3x3x3, expansion 2, type-B projection shortcut on the first block of each stage, fc."""
    count = 3 * 64 * 7 ** 3 + 2 * 64
    in_channels = 64
    for planes, blocks in zip((128, 256, 512, 1024), layers):
        width = cardinality * (planes // 32)
        out = 2 * planes
        for block in range(blocks):
            count += in_channels * width + 2 * width
            count += width * (width // cardinality) * 27 + 2 * width
            count += width * out + 2 * out
            if block == 0:
                count += in_channels * out + 2 * out
            in_channels = out
    return count + in_channels * classes + classes


def test_parameter_count_matches_hara_resnext101():
    with torch.device("meta"):
        model = ResNeXt3d()
    total = sum(p.numel() for p in model.parameters())
    without_fc = total - sum(p.numel() for p in model.fc.parameters())
    assert total == hara_parameter_count() == 48_340_816
    assert without_fc == 47_521_216  # the "47.5 M" usually quoted for ResNeXt-101 is the trunk
    assert model.feature_dim == 2048


def numpy_clips(frames: np.ndarray) -> np.ndarray:
    """Frames already 112 px high: center-crop the width, pad with black, subtract the mean."""
    width = frames.shape[2]
    left = int((width - 112) / 2)  # the reference truncates (199 -> 43)
    crop = frames[:, :, left:left + 112].astype(np.float64)
    count = -(-len(frames) // 16)
    padded = np.zeros((count * 16, 112, 112, 3))
    padded[:len(frames)] = crop
    clips = (padded - KINETICS_MEAN).reshape(count, 16, 112, 112, 3)
    return clips.transpose(0, 4, 1, 2, 3)  # (B, 3, 16, 112, 112)


def test_hara_checkpoint_round_trip_and_features(hara_checkpoint):
    path, state = hara_checkpoint
    frames = np.random.default_rng(5).integers(0, 256, size=(20, 112, 150, 3), dtype=np.uint8)
    expected_clips = numpy_clips(frames)
    extractor = ResNeXt101Features(weights=str(path), batch_size=1)
    np.testing.assert_allclose(extractor.clips(frames).numpy(), expected_clips, atol=1e-4, rtol=0)
    # The zero padding happens before the mean subtraction: padded frames hold -mean.
    np.testing.assert_allclose(expected_clips[1, :, 15, 0, 0], -KINETICS_MEAN)

    with torch.device("meta"):  # every tensor comes from the checkpoint
        reference = ResNeXt3d()
    reference.load_state_dict({k.removeprefix("module."): v for k, v in state.items()}, assign=True)
    reference.eval()
    with torch.inference_mode():
        raw = reference(torch.from_numpy(expected_clips).float()).numpy().astype(np.float64)
    expected = raw / np.linalg.norm(raw, axis=1, keepdims=True)

    ours = extractor(frames)
    assert ours.dtype == np.float16 and ours.shape == (2, 2048)
    np.testing.assert_allclose(ours.astype(np.float64), expected, atol=2e-3)
    assert extractor.info == {"model": extractor.info["model"], "weights": str(path),
                              "weights_sha256": file_sha256(path), "rate": 1.5, "dim": 2048}
    assert "resnext101" in extractor.info["model"]


def test_resize_and_crop_of_a_wide_frame():
    with pytest.warns(RandomWeightsWarning, match="meaningless"):
        extractor = ResNeXt101Features(weights="random")
    assert extractor.info["weights_sha256"] is None
    frames = np.zeros((17, 240, 426, 3), dtype=np.uint8)
    frames[:, :, 200:226] = 255  # a white band in the middle survives the center crop
    frames[:, :, :60] = 128  # the left edge is cropped away (resized width 198, crop from 43)
    clips = extractor.clips(frames)
    assert tuple(clips.shape) == (2, 3, 16, 112, 112)
    centre = clips[0, :, 0, 56, 56].numpy() + KINETICS_MEAN
    np.testing.assert_allclose(centre, 255.0, atol=1)
    assert float(clips[0, 0, 0, 56, 0] + KINETICS_MEAN[0]) == 0.0
    assert float(clips[1, 0, 1, 56, 56] + KINETICS_MEAN[0]) == 0.0  # frame 17 is padding
    assert extractor(frames[:0]).shape == (0, 2048)
    with pytest.raises(UserError, match="uint8 RGB"):
        extractor(frames[0])


def test_random_weights_are_deterministic():
    with pytest.warns(RandomWeightsWarning):
        first = ResNeXt101Features(weights="random").model.state_dict()
    torch.manual_seed(12345)  # the caller's seed does not matter
    with pytest.warns(RandomWeightsWarning):
        second = ResNeXt101Features(weights="random").model.state_dict()
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)


@pytest.mark.parametrize("state, message", [
    ({"module.conv1.weight": torch.zeros(64, 3, 7, 7, 7), "module.layer1.0.conv9.weight": torch.zeros(1)},
     "unexpected key 'layer1.0.conv9.weight'"),
    ({"module.conv1.weight": torch.zeros(64, 3, 3, 7, 7)}, "key 'conv1.weight' has shape"),
    ({"module.conv1.weight": torch.zeros(64, 3, 7, 7, 7)}, "missing key 'bn1.weight'"),
])
def test_checkpoint_mismatch_names_the_first_bad_key(tmp_path, state, message):
    path = tmp_path / "wrong.pth"
    torch.save({"arch": "resnext-101", "state_dict": state}, path)
    with pytest.raises(UserError, match=message):
        ResNeXt101Features(weights=str(path))


def test_plain_state_dict_and_missing_file(tmp_path, hara_checkpoint):
    path, state = hara_checkpoint
    plain = tmp_path / "plain.pth"
    # Plain keys, no fc, and no BatchNorm counters (checkpoints older than PyTorch 0.4.1 lack them).
    torch.save({k.removeprefix("module."): v for k, v in state.items()
                if not k.startswith("module.fc") and not k.endswith("num_batches_tracked")}, plain)
    extractor = ResNeXt101Features(weights=str(plain))
    assert torch.equal(extractor.model.layer4[2].conv2.weight, state["module.layer4.2.conv2.weight"])
    assert not any(t.is_meta for t in extractor.model.state_dict().values())
    with pytest.raises(UserError, match="--weights-3d"):
        ResNeXt101Features(weights=str(tmp_path / "resnext101.pth"))
