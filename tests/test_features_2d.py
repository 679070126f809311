"""2D ResNet-152 features against an independent torchvision computation on a real mp4."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from howto_prep.errors import UserError
from howto_prep.features.resnet2d import ResNet152Features
from howto_prep.features.weights import RandomWeightsWarning
from howto_prep.files import file_sha256
from howto_prep.synthetic.mp4 import write_mp4

FPS = 8
TIMESTAMPS = (0.5, 1.5, 2.5)
IMAGENET_FILE = "resnet152-394f9c45.pth"  # torchvision's cache name for IMAGENET1K_V1


pytestmark = pytest.mark.usefixtures("two_torch_threads")


def moving_shapes(width: int, height: int, seconds: float, fps: int) -> list[np.ndarray]:
    """A coloured square crossing a gradient; a disc that changes colour: every second looks different."""
    yy, xx = np.mgrid[0:height, 0:width]
    frames = []
    for i in range(int(seconds * fps)):
        frame = np.zeros((height, width, 3), dtype=np.uint8)
        frame[..., 0] = (xx * 255 // width).astype(np.uint8)
        frame[..., 2] = (yy * 255 // height).astype(np.uint8)
        x0 = 10 + i * (width - 80) // int(seconds * fps)
        frame[60:130, x0:x0 + 70] = (255, 255, 0)
        disc = (xx - width * 3 // 4) ** 2 + (yy - height // 3) ** 2 < 30 ** 2
        frame[disc] = (0, (40 * i) % 256, 255 - (40 * i) % 256)
        frames.append(frame)
    return frames


@pytest.fixture(scope="module")
def video(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("video") / "shapes.mp4"
    audio = 0.1 * np.sin(2 * np.pi * 440 * np.arange(3 * 16000) / 16000)
    return write_mp4(path, moving_shapes(426, 240, 3.0, FPS), FPS, audio=audio, sample_rate=16000, crf=18)


@pytest.fixture(scope="module")
def random_resnet_file(tmp_path_factory) -> Path:
    """Random torchvision weights saved as a DataParallel training checkpoint would be."""
    import torchvision

    torch.manual_seed(1234)
    model = torchvision.models.resnet152()
    path = tmp_path_factory.mktemp("weights") / "resnet152_random.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}, "epoch": 3}, path)
    return path


def pyav_frames(path: Path, timestamps: tuple[float, ...]) -> np.ndarray:
    import av

    wanted = {round(t * FPS): t for t in timestamps}
    found = {}
    with av.open(str(path)) as container:
        for index, frame in enumerate(container.decode(video=0)):
            if index in wanted:
                assert abs(frame.time - index / FPS) < 1e-6
                found[index] = frame.to_ndarray(format="rgb24")
    return np.stack([found[i] for i in sorted(wanted)])


def decord_frames(path: Path, timestamps: tuple[float, ...]) -> np.ndarray:
    import decord

    reader = decord.VideoReader(str(path))
    return reader.get_batch([round(t * FPS) for t in timestamps]).asnumpy()


def torchvision_reference(weights_file: Path, frames: np.ndarray) -> np.ndarray:
    """The recipe written with the classic transforms: ToTensor, Resize(224), Normalize, fc = Identity."""
    import torchvision
    from torchvision import transforms

    with torch.device("meta"):  # skip the random init: every tensor comes from the file
        model = torchvision.models.resnet152()
    state = torch.load(weights_file, weights_only=True)["state_dict"]
    model.load_state_dict({k.removeprefix("module."): v for k, v in state.items()}, assign=True)
    model.fc = torch.nn.Identity()
    model.eval()
    transform = transforms.Compose([
        transforms.ToTensor(),
        transforms.Resize(224, antialias=True),
        transforms.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    ])
    batch = torch.stack([transform(frame) for frame in frames])
    assert batch.shape == (len(frames), 3, 224, 397)  # 426x240: short side 224, no crop
    with torch.inference_mode():
        return model(batch).numpy()


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a.astype(np.float64)
    b = b.astype(np.float64)
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def test_matches_independent_torchvision_pipeline(video, random_resnet_file):
    reference = torchvision_reference(random_resnet_file, pyav_frames(video, TIMESTAMPS))
    extractor = ResNet152Features(weights=str(random_resnet_file), batch_size=2)
    ours = extractor(decord_frames(video, TIMESTAMPS))
    assert ours.dtype == np.float16 and ours.shape == (3, 2048)
    np.testing.assert_allclose(np.linalg.norm(ours.astype(np.float32), axis=1), 1.0, atol=2e-3)
    assert cosine_rows(ours, reference).min() >= 0.999
    # Random-weight features share a large common component, so whole-vector cosines between
    # different seconds are also close to 1. The differences between seconds must agree as well,
    # and must not agree when the seconds are mismatched: this is what makes the check able to fail.
    unit_reference = reference / np.linalg.norm(reference, axis=1, keepdims=True)
    ours_moves = np.diff(ours.astype(np.float64), axis=0)
    reference_moves = np.diff(unit_reference, axis=0)
    assert cosine_rows(ours_moves, reference_moves).min() >= 0.99
    assert cosine_rows(ours_moves, reference_moves[::-1]).max() < 0.9
    assert extractor.info == {"model": "torchvision.resnet152 trunk+avgpool", "weights": str(random_resnet_file),
                              "weights_sha256": file_sha256(random_resnet_file), "rate": 1.0, "dim": 2048}


def test_random_weights_are_loud_deterministic_and_shaped():
    with pytest.warns(RandomWeightsWarning, match="meaningless"):
        first = ResNet152Features(weights="random")
    with pytest.warns(RandomWeightsWarning):
        second = ResNet152Features(weights="random", channels_last=False)
    assert first.info["weights_sha256"] is None
    for (name, a), b in zip(first.model.state_dict().items(), second.model.state_dict().values()):
        assert torch.equal(a, b), name
    frames = np.stack(moving_shapes(640, 360, 0.25, FPS))  # 2 frames, 16:9
    assert tuple(first.prepare(frames).shape) == (2, 3, 224, 398)
    features = first(frames[:1])
    assert features.shape == (1, 2048) and features.dtype == np.float16 and np.isfinite(features).all()
    assert first(frames[:0]).shape == (0, 2048)
    with pytest.raises(UserError, match="uint8 RGB"):
        first(frames.astype(np.float32))


def test_imagenet_reads_torchvision_cache(tmp_path, monkeypatch, random_resnet_file):
    checkpoints = tmp_path / "torch_home" / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    cached = checkpoints / IMAGENET_FILE
    os.link(random_resnet_file, cached)  # stands in for the downloaded file; no network needed
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    extractor = ResNet152Features(weights="imagenet")
    assert extractor.info["weights"] == "imagenet"
    assert extractor.info["weights_sha256"] == file_sha256(cached)
    state = torch.load(random_resnet_file, weights_only=True)["state_dict"]
    assert torch.equal(extractor.model.layer4[2].conv3.weight, state["module.layer4.2.conv3.weight"])


def test_imagenet_download_failure_is_a_user_error(tmp_path, monkeypatch):
    blocked = tmp_path / "not_a_directory"
    blocked.write_text("torch cannot create its cache under a file")
    monkeypatch.setenv("TORCH_HOME", str(blocked))
    with pytest.raises(UserError, match="--weights-2d PATH"):
        ResNet152Features(weights="imagenet")


def test_bad_weights_files_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        ResNet152Features(weights=str(tmp_path / "missing.pth"))
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"this is not a checkpoint")
    with pytest.raises(UserError, match="cannot read"):
        ResNet152Features(weights=str(garbage))
    foreign = tmp_path / "foreign.pth"
    torch.save({"state_dict": {"module.conv1.weight": torch.zeros(64, 3, 7, 7),
                               "module.head.weight": torch.zeros(2)}}, foreign)
    with pytest.raises(UserError, match="'head.weight'"):
        ResNet152Features(weights=str(foreign))
