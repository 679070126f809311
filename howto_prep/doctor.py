"""`howto-prep doctor`: is this environment able to run the toolkit? One named sentence if not.

A wheel whose native library does not match its neighbours (a torchaudio built for another torch, a
decord without its FFmpeg, a Ray whose raylet cannot start) otherwise shows up much later as dozens
of confusing failures, or worse as every video recorded as bad. Each check below exercises one
native extension we load, once, on real data, and names the package when it fails. The test suite
runs these checks before anything else (tests/conftest.py).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Callable


@dataclass(frozen=True)
class Check:
    """One native piece of the stack, the distribution that ships it, and how to exercise it."""

    package: str
    what: str
    run: Callable[[Path], None]


def check_dependency_metadata(_: Path) -> None:
    """`pip check`: every installed distribution's requirements are met at the installed versions."""
    result = subprocess.run([sys.executable, "-m", "pip", "check"], capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError((result.stdout or result.stderr).strip().splitlines()[0])


def check_torch(_: Path) -> None:
    import torch

    signal = torch.sin(torch.arange(1600, dtype=torch.float64))
    spectrum = torch.stft(signal, 400, hop_length=160, window=torch.hamming_window(400, dtype=torch.float64),
                          return_complex=True)
    if spectrum.shape != (201, 11) or not torch.isfinite(spectrum.abs()).all():
        raise RuntimeError(f"torch.stft gave shape {tuple(spectrum.shape)}")
    product = torch.ones(64, 64) @ torch.ones(64, 64)
    if float(product[0, 0]) != 64.0:
        raise RuntimeError("a float32 matrix product gave a wrong result")


def check_torchvision(_: Path) -> None:
    import torch
    import torchvision
    from torchvision.transforms.v2 import functional as F

    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [1.0, 1.0, 10.0, 10.0], [20.0, 20.0, 30.0, 30.0]])
    kept = torchvision.ops.nms(boxes, torch.tensor([0.9, 0.8, 0.7]), 0.5)
    if kept.tolist() != [0, 2]:
        raise RuntimeError(f"torchvision.ops.nms kept {kept.tolist()}")
    resized = F.resize(torch.zeros(3, 36, 64, dtype=torch.uint8), [18], antialias=True)
    if tuple(resized.shape) != (3, 18, 32):
        raise RuntimeError(f"resize gave shape {tuple(resized.shape)}")


def write_probe_video(path: Path) -> None:
    """One second of 64x48 H.264 video with an AAC soundtrack, written with PyAV."""
    import av
    import numpy as np

    with av.open(str(path), "w") as container:
        video = container.add_stream("libx264", rate=25)
        video.width, video.height, video.pix_fmt = 64, 48, "yuv420p"
        audio = container.add_stream("aac", rate=16000)
        audio.layout = "mono"
        for index in range(25):
            frame = av.VideoFrame.from_ndarray(np.full((48, 64, 3), index * 10, np.uint8), format="rgb24")
            container.mux(video.encode(frame))
        container.mux(video.encode())
        tone = (0.3 * np.sin(np.arange(16000) * 2 * np.pi * 440 / 16000)).astype(np.float32)
        for start in range(0, 16000, 1024):
            chunk = av.AudioFrame.from_ndarray(tone[None, start:start + 1024], format="fltp", layout="mono")
            chunk.sample_rate = 16000
            chunk.pts = start
            container.mux(audio.encode(chunk))
        container.mux(audio.encode())


def check_av(workdir: Path) -> None:
    write_probe_video(workdir / "probe.mp4")
    import av

    with av.open(str(workdir / "probe.mp4")) as container:
        frames = sum(1 for _ in container.decode(video=0))
    if frames != 25:
        raise RuntimeError(f"PyAV decoded {frames} of 25 frames")


def check_decord(workdir: Path) -> None:
    from howto_prep.decode import import_decord

    decord = import_decord()
    video = decord.VideoReader(str(workdir / "probe.mp4"), num_threads=1)
    if len(video) != 25 or video.get_batch([0, 24]).asnumpy().shape != (2, 48, 64, 3):
        raise RuntimeError(f"decord read {len(video)} frames of the 25-frame probe video")
    audio = decord.AudioReader(str(workdir / "probe.mp4"), sample_rate=16000, mono=True)
    samples = audio[:].asnumpy()
    if samples.shape[0] != 1 or not 15000 <= samples.shape[1] <= 17100:
        raise RuntimeError(f"decord read audio of shape {samples.shape} from 1 s of 16 kHz mono")


def check_ray(_: Path) -> None:
    import ray

    started_here = not ray.is_initialized()
    if started_here:
        ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        answer = ray.get(ray.remote(lambda: 6 * 7).remote(), timeout=120)
    finally:
        if started_here:
            ray.shutdown()
    if answer != 42:
        raise RuntimeError(f"a Ray task returned {answer!r}")


def check_pure_python_stack(_: Path) -> None:
    """webdataset, gensim and yt-dlp import (their native parts are numpy/scipy, exercised by gensim)."""
    import io

    import numpy as np
    import webdataset
    import yt_dlp  # noqa: F401
    from gensim.models import KeyedVectors

    vectors = KeyedVectors(vector_size=4)
    vectors.add_vectors(["dough", "fold"], np.eye(2, 4, dtype=np.float32))
    if vectors.most_similar("dough", topn=1)[0][0] != "fold":
        raise RuntimeError("gensim KeyedVectors gave a wrong neighbour")
    buffer = io.BytesIO()
    with webdataset.TarWriter(buffer) as writer:
        writer.write({"__key__": "probe", "txt": "ok"})
    if len(buffer.getvalue()) < 1024:
        raise RuntimeError("webdataset.TarWriter wrote no tar")


def check_faiss(_: Path) -> None:
    import faiss
    import numpy as np

    index = faiss.IndexFlatIP(4)
    index.add(np.eye(4, dtype=np.float32))
    _, found = index.search(np.array([[0.0, 1.0, 0.0, 0.0]], dtype=np.float32), 1)
    if int(found[0, 0]) != 1:
        raise RuntimeError(f"an exact inner-product search returned row {int(found[0, 0])}")


CHECKS: tuple[Check, ...] = (
    Check("pip", "the installed packages' requirements (pip check)", check_dependency_metadata),
    Check("torch", "an STFT and a matrix product", check_torch),
    Check("torchvision", "its compiled operators (nms) and resize", check_torchvision),
    Check("av", "encoding and decoding an H.264 + AAC mp4", check_av),
    Check("decord2", "decoding video frames and 16 kHz mono audio", check_decord),
    Check("ray", "starting a local cluster and running a task", check_ray),
    Check("gensim", "word vectors, with webdataset and yt-dlp imported", check_pure_python_stack),
    Check("faiss-cpu", "an exact inner-product search", check_faiss),
)


def installed_version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def first_problem(skip_ray: bool = False) -> str | None:
    """None when every check passes, else one sentence naming the first broken package."""
    with tempfile.TemporaryDirectory(prefix="howto-doctor-") as tmp:
        for check in CHECKS:
            if skip_ray and check.package == "ray":
                continue
            try:
                check.run(Path(tmp))
            except BaseException as error:  # an ImportError, an OSError from a .so, a crash report...
                if isinstance(error, KeyboardInterrupt):
                    raise
                detail = (str(error).strip().splitlines() or [type(error).__name__])[0]
                return (f"the environment is broken: {check.package} {installed_version(check.package)} failed "
                        f"{check.what} ({type(error).__name__}: {detail}); reinstall from the lock with "
                        f"`make install` (README, Installing)")
    return None


def run_doctor(args: argparse.Namespace) -> int:
    """Exit 0 when the environment works, 3 with one sentence naming the broken package otherwise."""
    problem = first_problem(skip_ray=getattr(args, "skip_ray", False))
    if problem:
        print(f"howto-prep doctor: {problem}", file=sys.stderr)
        return 3
    names = ", ".join(dict.fromkeys(check.package for check in CHECKS))
    print(f"howto-prep doctor: all checks passed ({names})")
    return 0
