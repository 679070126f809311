"""mft-train import-eao on a checkpoint the authors' trainer wrote after multi-GPU training.

Their base trainer wraps the model in `nn.DataParallel` when it has several devices and saves
`arch = type(self.model).__name__`, i.e. "DataParallel", with `module.`-prefixed keys; the real class
is only in their config's `arch.type`. Here a real `torch.nn.DataParallel` wraps a module whose
parameter names are theirs (tests/test_import_eao.py's authors_state_dict), and the file is built the
way their `_save_checkpoint` builds it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from mft_train.cli import main
from mft_train.evaluation.evaluate import model_from_checkpoint
from mft_train.interop.safe_load import load_weights_only
from mft_train.models.eao import EAOConfig, EverythingAtOnce
from mft_train.training.checkpoints import load_checkpoint
from test_import_eao import TINY, authors_state_dict, batch, one_error_line, their_config, trained_like

OUTPUTS = ("t", "v", "a", "tv", "ta", "va", "t_empty", "v_empty", "a_empty")


class EverythingAtOnceModel(nn.Module):
    """Stand-in for their class: holds exactly their tensors under their names (no forward needed)."""

    def __init__(self, state_dict: dict[str, torch.Tensor]) -> None:
        super().__init__()
        for key, value in state_dict.items():
            *path, name = key.split(".")
            module: nn.Module = self
            for part in path:
                if not hasattr(module, part):
                    module.add_module(part, nn.Module())
                module = getattr(module, part)
            if value.is_floating_point() and not name.startswith("running_"):
                module.register_parameter(name, nn.Parameter(value.clone()))
            else:
                module.register_buffer(name, value.clone())


@pytest.fixture(scope="module")
def original() -> EverythingAtOnce:
    torch.manual_seed(0)
    return trained_like(EverythingAtOnce(EAOConfig.from_dict(TINY)))


def save_like_their_trainer(path: Path, model: nn.Module, config: dict) -> Path:
    """Their BaseTrainer: DataParallel around the model (several GPUs), then _save_checkpoint's dict."""
    wrapped = nn.DataParallel(model)
    state = {"arch": type(wrapped).__name__, "epoch": 14, "step": 9876, "state_dict": wrapped.state_dict(),
             "optimizer": {"state": {}, "param_groups": [{"lr": 5e-5, "params": [0, 1, 2]}]},
             "monitor_best": np.float64(0.25), "config": config}
    torch.save(state, path)
    return path


def their_model(original: EverythingAtOnce) -> EverythingAtOnceModel:
    model = EverythingAtOnceModel(authors_state_dict(original, TINY["davenet_depths"]))
    assert set(model.state_dict()) == set(authors_state_dict(original, TINY["davenet_depths"]))
    return model


def assert_same_embeddings(original: EverythingAtOnce, run: Path) -> dict:
    state = load_checkpoint(run)
    imported = model_from_checkpoint(state).eval()
    with torch.inference_mode():
        expected, got = original(batch()), imported(batch())
    for key in OUTPUTS:
        assert torch.equal(expected[key], got[key]), key
    return state


@pytest.mark.parametrize("saved_arch", ["DataParallel", "DistributedDataParallel"])
def test_a_data_parallel_checkpoint_is_imported_by_its_configs_class(original: EverythingAtOnce, tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture,
                                                                     saved_arch: str) -> None:
    source = save_like_their_trainer(tmp_path / "checkpoint-epoch14.pth", their_model(original), their_config(4))
    saved = load_weights_only(source)
    assert saved["arch"] == "DataParallel" and all(key.startswith("module.") for key in saved["state_dict"])
    if saved_arch != "DataParallel":  # DDP saves the same dict under its own class name (new file: `saved` is mmapped)
        source = tmp_path / "checkpoint-ddp.pth"
        torch.save({**saved, "arch": saved_arch}, source)
    run = tmp_path / "runs" / "released"
    assert main(["import-eao", str(source), "--out", str(run)]) == 0
    out = capsys.readouterr().out
    assert f"{saved_arch} of EverythingAtOnceModel" in out and "`module.` prefix stripped" in out
    state = assert_same_embeddings(original, run)
    assert state["epoch"] == 14 and state["step"] == 9876
    record = json.loads((run / "imported.json").read_text())
    assert record["arch"] == saved_arch and record["model_class"] == "EverythingAtOnceModel"
    assert record["model_class_from"] == "their config" and record["module_prefix"] is True
    assert state["imported"]["model_class"] == "EverythingAtOnceModel"


def test_without_a_class_in_the_config_the_tensors_decide(original: EverythingAtOnce, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture) -> None:
    source = save_like_their_trainer(tmp_path / "c.pth", their_model(original), {"name": "no arch section"})
    run = tmp_path / "run"
    assert main(["import-eao", str(source), "--out", str(run), "--heads", "4"]) == 0
    assert "DataParallel of EverythingAtOnceModel" in capsys.readouterr().out
    assert_same_embeddings(original, run)
    record = json.loads((run / "imported.json").read_text())
    assert record["arch"] == "DataParallel" and record["model_class"] == "EverythingAtOnceModel"
    assert record["model_class_from"] == "tensors"


def test_a_data_parallel_of_another_class_is_refused_in_one_line(original: EverythingAtOnce, tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture) -> None:
    config = their_config(4)
    config["arch"]["type"] = "TransformerPerModalityModel"
    source = save_like_their_trainer(tmp_path / "other.pth", their_model(original), config)
    assert main(["import-eao", str(source), "--out", str(tmp_path / "run")]) == 2
    err = one_error_line(capsys)
    assert "DataParallel of TransformerPerModalityModel, not an Everything-at-Once model" in err, err
    assert not (tmp_path / "run").exists()


def test_a_data_parallel_of_unknown_class_and_foreign_tensors_is_refused(tmp_path: Path,
                                                                         capsys: pytest.CaptureFixture) -> None:
    source = save_like_their_trainer(tmp_path / "mlp.pth", nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)),
                                     {"name": "no arch section"})
    assert main(["import-eao", str(source), "--out", str(tmp_path / "run"), "--heads", "4"]) == 2
    err = one_error_line(capsys)
    assert "DataParallel" in err and "not an Everything-at-Once model" in err, err
    assert not (tmp_path / "run" / "config.yaml").exists()
