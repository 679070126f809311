"""The zero-cost model stand-in of the benchmarks (howto_prep.features.standin): correctly shaped rows,
and two keys (the `bench-zero` weights value AND HOWTO_PREP_BENCH_ONLY=1) so a real run never uses it."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from howto_prep import schema
from howto_prep.cli import build_parser
from howto_prep.decode import FrameChunk
from howto_prep.errors import UserError
from howto_prep.extract.plan import plan_from_args
from howto_prep.extract.ray_tasks import FeatureModels
from howto_prep.features.standin import ENABLE_VARIABLE, STANDIN, ZeroFeatures


def extract_args(tmp_path, *extra: str):
    (tmp_path / "videos").mkdir(exist_ok=True)
    (tmp_path / "caption.json").write_text("{}")
    return build_parser().parse_args(["extract", "--videos", str(tmp_path / "videos"), "--captions",
                                      str(tmp_path / "caption.json"), "--out", str(tmp_path / "out"),
                                      "--features", "resnet152,resnext101,logmel", *extra])


def test_standin_needs_both_keys(tmp_path, monkeypatch):
    monkeypatch.delenv(ENABLE_VARIABLE, raising=False)
    for option in ("--weights-2d", "--weights-3d"):
        with pytest.raises(UserError, match=ENABLE_VARIABLE):
            plan_from_args(extract_args(tmp_path, option, STANDIN))
    with pytest.raises(UserError, match=ENABLE_VARIABLE):  # the actor checks again (another process, another env)
        FeatureModels([schema.RESNET152.name], STANDIN, "random")
    monkeypatch.setenv(ENABLE_VARIABLE, "yes")  # only exactly "1" counts
    with pytest.raises(UserError, match=ENABLE_VARIABLE):
        plan_from_args(extract_args(tmp_path, "--weights-2d", STANDIN))
    monkeypatch.setenv(ENABLE_VARIABLE, "1")
    plan = plan_from_args(extract_args(tmp_path, "--weights-2d", STANDIN, "--weights-3d", STANDIN))
    assert (plan.weights_2d, plan.weights_3d) == (STANDIN, STANDIN)
    # the environment key alone changes nothing: real weights stay real
    assert plan_from_args(extract_args(tmp_path, "--weights-2d", "random")).weights_2d == "random"


def test_cli_refuses_the_standin_without_its_environment_key(tmp_path):
    args = ["extract", "--videos", str(tmp_path), "--captions", str(tmp_path / "c.json"), "--out",
            str(tmp_path / "out"), "--features", "resnet152", "--weights-2d", STANDIN]
    (tmp_path / "c.json").write_text("{}")
    env = {key: value for key, value in __import__("os").environ.items() if key != ENABLE_VARIABLE}
    result = subprocess.run([sys.executable, "-m", "howto_prep.cli", *args], capture_output=True, text=True,
                            timeout=120, env=env)
    assert result.returncode == 2, result.stderr[-500:]
    assert ENABLE_VARIABLE in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()


def test_standin_rows_have_the_models_shapes_and_cost_nothing(monkeypatch):
    monkeypatch.setenv(ENABLE_VARIABLE, "1")
    models = FeatureModels([schema.RESNET152.name, schema.RESNEXT101.name], STANDIN, STANDIN)
    info = models.info()
    assert all(entry["weights"] == STANDIN and "bench only" in entry["model"] for entry in info.values())
    chunk = FrameChunk(index=3, frames_1fps=np.full((10, 224, 398, 3), 7, np.uint8),
                       frames_24fps=np.full((241, 112, 112, 3), 7, np.uint8))
    index, rows = models.embed(chunk)
    assert index == 3
    assert rows[schema.RESNET152.name].shape == (10, 2048) and rows[schema.RESNET152.name].dtype == np.float16
    assert rows[schema.RESNEXT101.name].shape == (16, 2048)  # ceil(241 / 16): the last clip padded
    assert not rows[schema.RESNET152.name].any() and not rows[schema.RESNEXT101.name].any()
    with pytest.raises(UserError, match="uint8"):
        ZeroFeatures(schema.RESNET152, "--weights-2d")(np.zeros((2, 4, 4, 3), np.float32))
