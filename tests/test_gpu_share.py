"""`--gpus N --gpu-share F`: N model actors, each reserving F of a GPU, so that several share one device
(the `--gpus 3` scaling row of bench_decode_limit on a one-GPU box).

No GPU here: the cluster *declares* one (Ray's `num_gpus`, what Ray schedules by) and the actors run
the benchmark stand-in, which never touches the device. What is tested is the scheduling: with whole
GPUs only one of three actors could be placed and the run would stall on the other two."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np

from howto_prep import shards
from howto_prep.features.standin import ENABLE_VARIABLE, STANDIN
from howto_prep.synthetic.mp4 import write_mp4

REPO = Path(__file__).resolve().parents[1]

# Starts a local Ray that declares one GPU, runs the CLI against it (--address), prints its exit code
# and stderr as JSON, and shuts the cluster down (its lifetime is this script's).
RUN_ON_ONE_DECLARED_GPU = textwrap.dedent("""
    import json, os, subprocess, sys
    import ray
    from howto_prep.cluster import init_ray
    init_ray(None, num_cpus=5, num_gpus=1)
    address = ray.get_runtime_context().gcs_address
    result = subprocess.run([sys.executable, "-m", "howto_prep.cli", *sys.argv[1:], "--address", address],
                            capture_output=True, text=True, timeout=240)
    ray.shutdown()
    print(json.dumps({"code": result.returncode, "stderr": result.stderr}))
""")


def run_on_one_declared_gpu(*args: str) -> tuple[int, str]:
    env = {**os.environ, ENABLE_VARIABLE: "1", "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0"}
    done = subprocess.run([sys.executable, "-c", RUN_ON_ONE_DECLARED_GPU, *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return result["code"], result["stderr"]


def test_three_actors_share_one_gpu(tmp_path: Path) -> None:
    videos = tmp_path / "videos"
    videos.mkdir()
    y, x = np.mgrid[0:90, 0:160]
    frames = [np.stack([(x + 3 * i) % 256, (y + i) % 256, np.full_like(x, 7 * i % 256)], -1).astype(np.uint8)
              for i in range(75)]
    for index in range(6):
        write_mp4(videos / f"video{index:02d}.mp4", frames, 30.0)
    (tmp_path / "caption.json").write_text("{}")
    common = ["extract", "--videos", str(videos), "--captions", str(tmp_path / "caption.json"),
              "--features", "resnet152,resnext101", "--weights-2d", STANDIN, "--weights-3d", STANDIN,
              "--actor-timeout", "30"]

    code, stderr = run_on_one_declared_gpu(*common, "--out", str(tmp_path / "whole"), "--gpus", "3")
    assert code == 2 and "Traceback" not in stderr, stderr[-2000:]
    assert "needs 3 GPU(s); the Ray cluster has 1; --gpu-share 0.33 puts 3 actors on one device" in stderr

    code, stderr = run_on_one_declared_gpu(*common, "--out", str(tmp_path / "shared"), "--gpus", "3",
                                           "--gpu-share", "0.33")
    assert code == 0, stderr[-3000:]
    assert "3 model actors, 0.33 GPU each" in stderr
    assert shards.finished_keys(tmp_path / "shared") == {f"video{index:02d}" for index in range(6)}
    assert not shards.read_failures(tmp_path / "shared")
