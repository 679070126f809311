"""mft-train import-eao: a checkpoint in the authors' layout -> our run folder -> identical embeddings.

The authors' checkpoint is built here by hand from the documented key list (mft_train/interop/
eao_layout.py, from reading github.com/ninatu/everything_at_once): their 188 keys for a depth-1 fusion
and a DAVEnet-v2 of stage depths [2, 2, 1, 1, 1, 1], their 4-D height-1 DAVEnet convolutions, the two
unused modules, DataParallel's `module.` prefix and their trainer's wrapper dict. The round trip
(our model -> their layout -> import -> our model) must give bit-identical embeddings.
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from mft_train.cli import main
from mft_train.interop.eao_layout import convert_state_dict, infer_model_config
from mft_train.interop.safe_load import load_weights_only
from mft_train.models.eao import EAOConfig, EverythingAtOnce
from mft_train.presets import load_raw
from mft_train.training.checkpoints import load_checkpoint
from mft_train.evaluation.evaluate import model_from_checkpoint

REPO = Path(__file__).resolve().parents[1]
TINY = {"width": 32, "heads": 4, "mlp_ratio": 1.0, "qkv_bias": True, "embed_dim": 24, "davenet": "v2",
        "davenet_widths": [8, 8, 16, 16, 32, 32], "davenet_depths": [2, 2, 1, 1, 1, 1]}
BN = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def authors_state_dict(model: EverythingAtOnce, depths: list[int]) -> dict[str, torch.Tensor]:
    """Our weights under the authors' names and shapes (written out independently of the importer)."""
    ours = model.state_dict()
    theirs: dict[str, torch.Tensor] = {"fusion.masking_token": ours["masking_token"]}
    for their_name, our_name in (("norm1", "norm_attn"), ("attn.qkv", "qkv"), ("attn.proj", "proj"),
                                 ("norm2", "norm_mlp"), ("mlp.fc1", "mlp.0"), ("mlp.fc2", "mlp.2")):
        for suffix in ("weight", "bias"):
            theirs[f"fusion.blocks.0.{their_name}.{suffix}"] = ours[f"fusion.{our_name}.{suffix}"]
    width = ours["masking_token"].shape[0]
    theirs["fusion.norm.weight"] = torch.rand(width)  # in their state_dict, unused by their forward
    theirs["fusion.norm.bias"] = torch.rand(width)
    for m in ("text", "video", "audio"):
        for suffix in ("weight", "bias"):
            theirs[f"{m}_norm_layer.{suffix}"] = ours[f"token_norm.{m}.{suffix}"]
            theirs[f"{m}_token_proj.fc.{suffix}"] = ours[f"token_proj.{m}.fc.{suffix}"]
            theirs[f"{m}_token_proj.cg.fc.{suffix}"] = ours[f"token_proj.{m}.gate.{suffix}"]
            theirs[f"{m}_proj.fc.{suffix}"] = ours[f"heads.{m}.fc.{suffix}"]
            theirs[f"{m}_proj.cg.fc.{suffix}"] = ours[f"heads.{m}.gate.{suffix}"]
    theirs["davenet.batchnorm1.weight"] = torch.rand(1)  # BatchNorm2d(1): unused by their forward
    theirs["davenet.batchnorm1.bias"] = torch.rand(1)
    theirs["davenet.batchnorm1.running_mean"] = torch.rand(1)
    theirs["davenet.batchnorm1.running_var"] = torch.rand(1)
    theirs["davenet.batchnorm1.num_batches_tracked"] = torch.tensor(5)
    theirs["davenet.conv1.weight"] = ours["davenet.stem.weight"]  # Conv2d (o, 1, 40, 1) in both
    for suffix in BN:
        theirs[f"davenet.bn1.{suffix}"] = ours[f"davenet.stem_bn.{suffix}"]
    block = 0
    for layer, depth in enumerate(depths, start=1):
        for j in range(depth):
            src, dst = f"davenet.blocks.{block}.", f"davenet.layer{layer}.{j}."
            theirs[dst + "conv1.weight"] = ours[src + "conv1.weight"].unsqueeze(2)  # (o, i, 9) -> (o, i, 1, 9)
            theirs[dst + "conv2.weight"] = ours[src + "conv2.weight"].unsqueeze(2)
            for suffix in BN:
                theirs[dst + f"bn1.{suffix}"] = ours[src + f"bn1.{suffix}"]
                theirs[dst + f"bn2.{suffix}"] = ours[src + f"bn2.{suffix}"]
            if j == 0:
                theirs[dst + "downsample.0.weight"] = ours[src + "shortcut.0.weight"].unsqueeze(2)  # (o, i, 1, 1)
                for suffix in BN:
                    theirs[dst + f"downsample.1.{suffix}"] = ours[src + f"shortcut.1.{suffix}"]
            block += 1
    return {key: value.clone() for key, value in theirs.items()}


def their_config(heads: int) -> dict:
    return {"name": "everything_at_once_tva", "n_gpu": 4,
            "arch": {"type": "EverythingAtOnceModel", "args": {"video_embed_dim": 4096, "text_embed_dim": 300,
                     "davenet_v2": True, "fusion_params": {"embed_dim": 32, "depth": 1, "num_heads": heads,
                                                           "mlp_ratio": 1}, "projection_dim": 24}},
            "optimizer": {"type": "Adam", "args": {"lr": 5e-05}}}


def trained_like(model: EverythingAtOnce, seed: int = 0) -> EverythingAtOnce:
    """Random non-default BatchNorm statistics and LayerNorm weights, so every tensor matters."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if tensor.is_floating_point() and ("running_var" in name or "norm" in name or "bn" in name):
                tensor.copy_(0.5 + torch.rand(tensor.shape, generator=generator))
    return model.eval()


def batch(seed: int = 1, size: int = 3) -> dict:
    g = torch.Generator().manual_seed(seed)
    text_mask = torch.ones(size, 5, dtype=torch.bool)
    text_mask[1, 2:] = False
    audio_mask = torch.ones(size, 256, dtype=torch.bool)
    audio_mask[2] = False  # one clip without audio: the masking token path
    return {"text": torch.randn(size, 5, 300, generator=g), "text_mask": text_mask,
            "video": torch.randn(size, 6, 4096, generator=g), "video_mask": torch.ones(size, 6, dtype=torch.bool),
            "audio": -80 * torch.rand(size, 40, 256, generator=g), "audio_mask": audio_mask}


@pytest.fixture(scope="module")
def original() -> EverythingAtOnce:
    torch.manual_seed(0)
    return trained_like(EverythingAtOnce(EAOConfig.from_dict(TINY)))


def write_authors_checkpoint(path: Path, model: EverythingAtOnce, prefix: str = "module.", wrapper: bool = True,
                             heads: int | None = 4, edit=None) -> Path:
    state_dict = authors_state_dict(model, TINY["davenet_depths"])
    if edit:
        edit(state_dict)
    state_dict = {prefix + key: value for key, value in state_dict.items()}
    if wrapper:
        config = their_config(heads) if heads else {"name": "no heads here"}
        obj = {"arch": "EverythingAtOnceModel", "epoch": 14, "step": 9876, "state_dict": state_dict,
               "optimizer": {"state": {}, "param_groups": [{"lr": 5e-5, "params": [0, 1, 2]}]},
               "monitor_best": np.float64(0.25), "config": config}
    else:
        obj = state_dict
    torch.save(obj, path)
    return path


def one_error_line(capsys: pytest.CaptureFixture) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    assert len(err.splitlines()) == 1, err
    return err


def test_their_layout_has_188_keys_and_the_paper_shapes_infer_the_paper_preset() -> None:
    """The paper-sized model (on the meta device: shapes only) in their layout: 188 keys, and the
    inferred model section is exactly the eao_howto100m preset's."""
    with torch.device("meta"):
        paper = EverythingAtOnce(EAOConfig())
    theirs = authors_state_dict(paper, [2, 2, 1, 1, 1, 1])
    assert len(theirs) == 188
    inferred = infer_model_config(theirs, None)
    assert inferred == load_raw("eao_howto100m")[0]["model"]
    converted, dropped = convert_state_dict(theirs, {k: v.shape for k, v in paper.state_dict().items()})
    assert set(converted) == set(paper.state_dict()) and len(dropped) == 7


def test_round_trip_gives_identical_embeddings(original: EverythingAtOnce, tmp_path: Path,
                                               capsys: pytest.CaptureFixture) -> None:
    source = write_authors_checkpoint(tmp_path / "checkpoint-epoch14.pth", original)
    assert len(load_weights_only(source)["state_dict"]) == 188
    run = tmp_path / "runs" / "released"
    assert main(["import-eao", str(source), "--out", str(run)]) == 0
    out = capsys.readouterr().out
    assert "188 keys, `module.` prefix stripped" in out and "181 tensors mapped, 7 unused" in out

    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["model"] == {"name": "eao", **{k: v for k, v in TINY.items()}, "audio_pad_value": 0.0}
    state = load_checkpoint(run)  # what evaluate / finetune / embed read
    assert state["epoch"] == 14 and state["step"] == 9876
    assert state["imported"]["config"]["arch"]["args"]["fusion_params"]["num_heads"] == 4
    assert state["imported"]["monitor_best"] == 0.25 and state["imported"]["heads_from"] == "their config"
    imported = model_from_checkpoint(state).eval()
    with torch.inference_mode():
        expected, got = original(batch()), imported(batch())
    for key in ("t", "v", "a", "tv", "ta", "va", "t_empty", "v_empty", "a_empty"):
        assert torch.equal(expected[key], got[key]), key
    assert got["a_empty"].tolist() == [False, False, True]


def test_bare_state_dict_without_prefix_and_heads_from_the_option(original: EverythingAtOnce, tmp_path: Path) -> None:
    source = write_authors_checkpoint(tmp_path / "bare.pth", original, prefix="", wrapper=False)
    assert main(["import-eao", str(source), "--out", str(tmp_path / "run"), "--heads", "4"]) == 0
    state = load_checkpoint(tmp_path / "run")
    assert state["imported"]["format"] == "state_dict" and state["imported"]["heads_from"] == "--heads"
    with torch.inference_mode():
        assert torch.equal(model_from_checkpoint(state).eval()(batch())["va"], original(batch())["va"])


def test_imported_run_is_evaluated_by_mft_train_evaluate(original: EverythingAtOnce, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture) -> None:
    from clip_shard_fixtures import write_clip_set

    run = tmp_path / "run"
    main(["import-eao", str(write_authors_checkpoint(tmp_path / "c.pth", original)), "--out", str(run)])
    write_clip_set(tmp_path / "val", clips_per_topic=1, topics=4, seed=2, benchmark="msrvtt", length=(4.0, 9.0))
    capsys.readouterr()
    assert main(["evaluate", "--checkpoint", str(run), "--shards", str(tmp_path / "val"), "--set", "train.device=cpu"]) == 0
    assert "t->va" in capsys.readouterr().out


def _missing(sd: dict) -> None:
    del sd["davenet.layer3.0.bn2.running_var"]


def _mis_shaped(sd: dict) -> None:
    sd["text_proj.cg.fc.weight"] = torch.zeros(24, 23)


def _deeper(sd: dict) -> None:
    sd["fusion.blocks.1.norm1.weight"] = torch.ones(32)


def _positional(sd: dict) -> None:
    sd["video_pos_embed"] = torch.zeros(1, 12, 32)


@pytest.mark.parametrize(("edit", "expected"), [
    (_missing, "lacks davenet.layer3.0.bn2.running_var"),
    (_mis_shaped, "text_proj.cg.fc.weight has shape (24, 23) but our heads.text.gate.weight needs (24, 24)"),
    (_deeper, "more than one block (fusion.blocks.1.norm1.weight)"),
    (_positional, "unknown key video_pos_embed"),
])
def test_bad_checkpoints_are_one_line_naming_the_key(original: EverythingAtOnce, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture, edit, expected: str) -> None:
    source = write_authors_checkpoint(tmp_path / "bad.pth", original, edit=edit)
    assert main(["import-eao", str(source), "--out", str(tmp_path / "run")]) == 2
    assert expected in one_error_line(capsys)
    assert not (tmp_path / "run" / "config.yaml").exists()


def test_heads_that_no_config_gives_and_existing_runs_are_refused(original: EverythingAtOnce, tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture) -> None:
    source = write_authors_checkpoint(tmp_path / "c.pth", original, heads=None)
    assert main(["import-eao", str(source), "--out", str(tmp_path / "run")]) == 2
    assert "not divisible by 64 attention heads; pass --heads" in one_error_line(capsys)
    assert main(["import-eao", str(source), "--out", str(tmp_path / "run"), "--heads", "8"]) == 0
    capsys.readouterr()
    assert main(["import-eao", str(source), "--out", str(tmp_path / "run"), "--heads", "8"]) == 2
    assert "already holds a run" in one_error_line(capsys)
    other = {**load_weights_only(source), "arch": "TransformerPerModalityModel"}
    torch.save(other, tmp_path / "other.pth")
    assert main(["import-eao", str(tmp_path / "other.pth"), "--out", str(tmp_path / "run2")]) == 2
    assert "holds a TransformerPerModalityModel" in one_error_line(capsys)


class Payload:
    """Unpickling this calls open(marker, "w"): a file whose loading would run code."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("container", ["torch", "raw pickle"])
def test_a_pickle_payload_is_refused_and_never_runs(original: EverythingAtOnce, tmp_path: Path, container: str) -> None:
    marker = tmp_path / "payload-ran"
    state_dict = {f"module.{k}": v for k, v in authors_state_dict(original, TINY["davenet_depths"]).items()}
    payload = {"arch": "EverythingAtOnceModel", "epoch": 1, "state_dict": state_dict, "config": Payload(marker)}
    source = tmp_path / "evil.pth"
    if container == "torch":
        torch.save(payload, source)
    else:
        source.write_bytes(pickle.dumps(payload))
    result = subprocess.run([sys.executable, "-m", "mft_train.cli", "import-eao", str(source), "--out", str(tmp_path / "run")],
                            capture_output=True, text=True, cwd=REPO, timeout=300)
    assert result.returncode == 2, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "refusing" in result.stderr, result.stderr
    assert not marker.exists() and not (tmp_path / "run").exists()
    # the payload is live: an unsafe load (the one the importer never does) would run it
    if container == "raw pickle":
        pickle.loads(source.read_bytes())
        assert marker.exists()
        os.remove(marker)
