"""Presets, `--set` overrides and the typed sections of a run config (mft_train.presets, mft_train.config)."""

from __future__ import annotations

import pytest

from howto_prep.errors import UserError
from mft_train.config import RunConfig
from mft_train.presets import load_config


def test_paper_preset_matches_reference_sections_5_and_6():
    config = load_config("eao_howto100m")
    train, data, loss, model = config.train, config.data, config.loss, config.model
    assert (train.optimizer, train.lr, train.weight_decay) == ("adam", 5e-5, 0.0)
    assert (train.lr_gamma, train.epochs, train.batch, train.amp) == (0.9, 15, 224, True)
    assert data.clips_per_video * train.batch == 2240
    assert (data.clip_seconds, data.video_tokens, data.audio_frames, data.max_words) == (8.0, 12, 768, 20)
    assert data.audio_shift is True and data.audio_shift_seconds == 4.0
    assert model["audio_pad_value"] == 0.0  # the one place: the models overwrite padded frames with it
    assert loss.weights == {"t_v": 1.0, "t_a": 0.1, "v_a": 0.1, "t_va": 0.1, "v_ta": 0.1, "a_tv": 0.1}
    assert loss.temperature == 0.05
    assert (model["name"], model["width"], model["heads"], model["embed_dim"], model["davenet"]) == ("eao", 4096, 64, 6144, "v2")


def test_an_old_config_with_the_retired_data_audio_pad_value_still_loads():
    """data.audio_pad_value reached no model (they pad with model.audio_pad_value): old config.yaml files
    that hold it load, without it; any other unknown key still stops."""
    config = RunConfig.from_dict({"data": {"audio_pad_value": -80.0, "max_words": 16}})
    assert config.data.max_words == 16 and "audio_pad_value" not in config.to_dict()["data"]
    with pytest.raises(UserError, match="unknown data setting"):
        RunConfig.from_dict({"data": {"audio_pad_valu": 0.0}})


def test_importing_the_config_imports_neither_torch_nor_webdataset():
    """Commands check their config before the heavy imports (mft_train.config imports them lazily)."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", "import mft_train.config, sys; "
                          "print('torch' in sys.modules, 'webdataset' in sys.modules)"],
                         capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_small_preset_builds_a_small_model():
    from mft_train.models import build_model

    config = load_config("eao_small")
    model = build_model(config.model)
    assert sum(p.numel() for p in model.parameters()) < 5_000_000


def test_overrides_parse_yaml_values_and_nested_keys():
    config = load_config("eao_small", ["train.epochs=2", "train.lr=1e-3", "model.width=64",
                                       "loss.weights.t_a=0.5", "data.audio_shift=false",
                                       "model.davenet_widths=[8, 8, 8, 8, 8, 8]"], model_name="eao")
    assert config.train.epochs == 2 and config.train.lr == pytest.approx(1e-3)
    assert config.model["width"] == 64 and config.model["davenet_widths"] == [8] * 6
    assert config.loss.weights["t_a"] == 0.5 and config.loss.weights["t_v"] == 1.0
    assert config.data.audio_shift is False


def test_ints_are_accepted_for_floats_and_sections_are_typed():
    config = load_config("eao_small", ["train.lr=1", "data.clip_seconds=10", "loss.weights.t_a=1"])
    assert config.train.lr == 1.0 and isinstance(config.train.lr, float)
    assert config.data.clip_seconds == 10.0 and isinstance(config.data.clip_seconds, float)
    assert config.loss.weights["t_a"] == 1.0
    assert RunConfig.from_dict(config.to_dict()) == config  # what config.yaml and checkpoints hold reads back


def test_yaml_path_preset(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("model: {name: eao, width: 32, heads: 2}\ntrain: {epochs: 3}\n")
    config = load_config(str(path))
    assert config.train.epochs == 3 and config.train.lr == 5e-5  # defaults fill the rest
    assert config.model == {"name": "eao", "width": 32, "heads": 2}


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["train.epochs"], "KEY=VALUE"),
        (["epochs=3"], "must start with one of"),
        (["optim.lr=3"], "must start with one of"),
        (["train.epoch=3"], "unknown train setting"),
        (["train.epochs=three"], "train.epochs must be a int"),
        (["train.lr=-1"], "train.lr must be positive"),
        (["train.lr_gamma=1.5"], "lr_gamma"),
        (["data.order=random"], "data.order"),
        (["loss.weights.x_y=1"], "unknown loss.weights"),
        (["loss.weights={t_v: 0}"], "at least one positive weight"),
        (["train.amp=3"], "train.amp must be a bool"),
        (["data.clips_per_video=2.5"], "data.clips_per_video must be a int"),
        (["loss.temperature=warm"], "loss.temperature must be a float"),
        (["loss.name=triplet"], "unknown loss.name 'triplet'"),
        (["loss.clusters=4"], "unknown loss setting.*clusters"),
    ],
)
def test_bad_overrides_raise_one_sentence(overrides, message):
    with pytest.raises(UserError, match=message) as info:
        load_config("eao_small", overrides)
    assert "\n" not in str(info.value)


def test_unknown_preset_and_bad_files(tmp_path):
    with pytest.raises(UserError, match="unknown preset 'nope'.*eao_howto100m"):
        load_config("nope")
    with pytest.raises(UserError, match="does not exist"):
        load_config(str(tmp_path / "missing.yaml"))
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [1, 2\n")
    with pytest.raises(UserError, match="not valid YAML"):
        load_config(str(bad))
    with pytest.raises(UserError, match="unknown config section"):
        RunConfig.from_dict({"trian": {}})


def test_paper_preset_builds_the_689m_parameter_model_on_the_meta_device():
    import torch

    from mft_train.models import build_model

    from mft_train.models.eao import EAOConfig, EverythingAtOnce

    with torch.device("meta"):
        preset = build_model(load_config("eao_howto100m").model)
        paper_defaults = EverythingAtOnce(EAOConfig())
    count = sum(p.numel() for p in preset.parameters())
    assert preset.config == paper_defaults.config  # the preset spells out the paper's sizes
    assert count == sum(p.numel() for p in paper_defaults.parameters())
    assert abs(count - 689e6) / 689e6 < 0.005  # the paper: "about 689 M"


def test_model_flag_without_config_takes_that_models_paper_preset():
    mcn = load_config(None, model_name="mcn")
    assert mcn.model["name"] == "mcn" and mcn.loss.name != "combinatorial"
    assert load_config(None, model_name="eao").loss.name == "combinatorial"
    # An explicit preset wins over the model's default preset.
    assert load_config("mcn_small", model_name="mcn").model["name"] == "mcn"
