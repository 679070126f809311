"""Training configuration: YAML presets, `--set key.sub=value` overrides, validation with UserError.

A config has four sections: "model" (passed as is to mft_train.models.build_model, which checks its
keys), "data", "loss" and "train" (checked here against DEFAULTS, so a typo fails loudly instead of
silently training something else). Presets live in mft_train/configs/*.yaml; `--config` takes a
preset name or a path to a YAML file.
"""

from __future__ import annotations

import contextlib
import copy
from pathlib import Path
from typing import Any

import yaml

from howto_prep.errors import UserError

PRESET_DIR = Path(__file__).parent / "configs"
DEFAULT_PRESET = "eao_howto100m"
SECTIONS = ("model", "data", "loss", "train")

# Keys (and default values) of the sections validated here. Values from a preset or --set must
# have the same type as the default (ints are accepted where floats are expected).
DEFAULTS: dict[str, dict[str, Any]] = {
    "data": {
        "clips_per_video": 10,
        "clip_seconds": 8.0,
        "video_tokens": 12,
        "audio_frames": 768,
        "audio_shift": True,  # the paper's +4 s audio shift (quirk), on in the paper preset
        "audio_shift_seconds": 4.0,
        "max_words": 20,
        "audio_pad_value": 0.0,  # the paper pads log-mel with 0 dB, i.e. "loudest" (quirk)
        "shuffle_buffer": 1000,
        "workers": 4,
        "order": "stream",  # "fixed": deterministic rank-split order (tests, debugging)
    },
    "loss": {
        "name": "combinatorial",
        "weights": {"t_v": 1.0, "t_a": 0.1, "v_a": 0.1, "t_va": 0.1, "v_ta": 0.1, "a_tv": 0.1},
        "temperature": 0.05,
    },
    "train": {
        "optimizer": "adam",
        "lr": 5e-5,
        "weight_decay": 0.0,
        "schedule": "exponential",  # exponential: lr * lr_gamma ** epoch (EAO); cosine: per step (MCN)
        "lr_gamma": 0.9,  # ExponentialLR, stepped once per epoch
        "warmup_steps": 0,  # cosine schedule only: linear warm-up steps
        "epochs": 15,
        "steps_per_epoch": 0,  # 0: one pass over the shard set's videos
        "batch": 224,  # videos per step over all ranks; clips per step = batch * data.clips_per_video
        "amp": True,  # bf16 autocast on GPU; CPU always trains in fp32
        "sync_batchnorm": False,  # BatchNorm statistics over the global batch instead of per rank
        "checkpoint_every": 1000,  # steps; a checkpoint is also written at the end
        "keep_checkpoints": 3,
        "log_every": 10,
        "seed": 0,
        "grad_clip": 0.0,  # 0: off (the paper does not clip)
        "device": "auto",  # auto | cpu | cuda
        "cpu_threads": 0,  # torch intra-op threads per process; 0 = torch's default
    },
}
OPTIMIZERS = ("adam",)
SCHEDULES = ("exponential", "cosine")
# Loss sections checked here; others ("mcn") are checked by their loss module when training starts.
CHECKED_LOSSES = ("combinatorial",)
DEVICES = ("auto", "cpu", "cuda")


# `--model NAME` without `--config` takes that model's paper preset.
MODEL_PRESETS = {"eao": "eao_howto100m", "mcn": "mcn_howto100m"}


def resolve_preset(name_or_path: str | None) -> Path:
    """A preset name (file in mft_train/configs) or a YAML path -> the file to load."""
    name = name_or_path or DEFAULT_PRESET
    candidate = Path(name)
    if candidate.suffix in (".yaml", ".yml"):
        if not candidate.is_file():
            raise UserError(f"config file {candidate} does not exist")
        return candidate
    preset = PRESET_DIR / f"{name}.yaml"
    if not preset.is_file():
        known = ", ".join(sorted(p.stem for p in PRESET_DIR.glob("*.yaml")))
        raise UserError(f"unknown preset {name!r}; known presets: {known} (or give a .yaml path)")
    return preset


def load_yaml(path: Path) -> dict:
    try:
        loaded = yaml.safe_load(Path(path).read_text())
    except yaml.YAMLError as err:
        raise UserError(f"{path} is not valid YAML ({str(err).splitlines()[0]})") from err
    if not isinstance(loaded, dict):
        raise UserError(f"{path} must hold a mapping with sections {', '.join(SECTIONS)}")
    return loaded


def apply_override(config: dict, override: str) -> None:
    """Apply one `key.sub=value` (value parsed as YAML: numbers, booleans, lists, strings)."""
    key, sep, raw = override.partition("=")
    if not sep or not key.strip():
        raise UserError(f"--set expects KEY=VALUE (e.g. train.epochs=2), got {override!r}")
    path = key.strip().split(".")
    if path[0] not in SECTIONS or len(path) < 2:
        raise UserError(f"--set key {key!r} must start with one of {', '.join(SECTIONS)} and name an entry, e.g. train.lr")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as err:
        raise UserError(f"--set {key}: cannot parse value {raw!r}") from err
    node = config
    for part in path[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise UserError(f"--set key {key!r} goes through {part!r}, which is not a section")
    node[path[-1]] = value


def _check_section(section: str, values: dict, defaults: dict, where: str) -> dict:
    unknown = sorted(set(values) - set(defaults))
    if unknown:
        raise UserError(f"unknown {section} setting(s) {', '.join(unknown)} in {where}; known: {', '.join(sorted(defaults))}")
    merged = copy.deepcopy(defaults)
    for key, value in values.items():
        default = defaults[key]
        if isinstance(default, dict):
            if not isinstance(value, dict):
                raise UserError(f"{section}.{key} must be a mapping, got {value!r}")
            unknown_keys = sorted(set(value) - set(default))
            if unknown_keys:
                raise UserError(f"unknown {section}.{key} entr(ies) {', '.join(unknown_keys)}; known: {', '.join(default)}")
            merged[key] = dict(value)  # entries left out count as 0, not as their default
            continue
        if isinstance(default, bool):
            ok = isinstance(value, bool)
        elif isinstance(default, float):
            if isinstance(value, str):  # YAML 1.1 reads "1e-4" (no dot) as a string
                with contextlib.suppress(ValueError):
                    value = float(value)
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
            value = float(value) if ok else value
        elif isinstance(default, int):
            ok = isinstance(value, int) and not isinstance(value, bool)
        else:
            ok = isinstance(value, type(default))
        if not ok:
            raise UserError(f"{section}.{key} must be a {type(default).__name__}, got {value!r}")
        merged[key] = value
    return merged


def validate(config: dict, where: str = "the config") -> dict:
    """Fill defaults, check types and ranges; returns a new, complete config."""
    unknown = sorted(set(config) - set(SECTIONS))
    if unknown:
        raise UserError(f"unknown config section(s) {', '.join(unknown)} in {where}; known: {', '.join(SECTIONS)}")
    model = config.get("model") or {}
    if not isinstance(model, dict):
        raise UserError(f"the model section of {where} must be a mapping")
    out = {"model": dict(model)}
    for section in ("data", "loss", "train"):
        values = config.get(section) or {}
        if not isinstance(values, dict):
            raise UserError(f"the {section} section of {where} must be a mapping")
        if section == "loss" and values.get("name", "combinatorial") not in CHECKED_LOSSES:
            out[section] = dict(values)
            continue
        out[section] = _check_section(section, values, DEFAULTS[section], where)
    _check_ranges(out)
    return out


def _check_ranges(config: dict) -> None:
    data, loss, train = config["data"], config["loss"], config["train"]
    positive = {
        "data.clips_per_video": data["clips_per_video"], "data.clip_seconds": data["clip_seconds"],
        "data.video_tokens": data["video_tokens"], "data.audio_frames": data["audio_frames"],
        "data.max_words": data["max_words"], "data.shuffle_buffer": data["shuffle_buffer"],
        "train.lr": train["lr"], "train.epochs": train["epochs"],
        "train.batch": train["batch"], "train.checkpoint_every": train["checkpoint_every"],
        "train.log_every": train["log_every"], "train.keep_checkpoints": train["keep_checkpoints"],
    }
    for key, value in positive.items():
        if value <= 0:
            raise UserError(f"{key} must be positive, got {value}")
    for key in ("data.workers", "train.cpu_threads", "train.steps_per_epoch", "train.weight_decay", "train.grad_clip", "data.audio_shift_seconds"):
        section, name = key.split(".")
        if config[section][name] < 0:
            raise UserError(f"{key} must not be negative, got {config[section][name]}")
    if not 0 < train["lr_gamma"] <= 1:
        raise UserError(f"train.lr_gamma must lie in (0, 1], got {train['lr_gamma']}")
    if train["optimizer"] not in OPTIMIZERS:
        raise UserError(f"train.optimizer must be one of {', '.join(OPTIMIZERS)}, not {train['optimizer']!r}")
    if train["device"] not in DEVICES:
        raise UserError(f"train.device must be one of {', '.join(DEVICES)}, not {train['device']!r}")
    if data["order"] not in ("stream", "fixed"):
        raise UserError(f"data.order must be stream or fixed, not {data['order']!r}")
    if train["schedule"] not in SCHEDULES:
        raise UserError(f"train.schedule must be one of {', '.join(SCHEDULES)}, not {train['schedule']!r}")
    if train["warmup_steps"] < 0:
        raise UserError(f"train.warmup_steps must not be negative, got {train['warmup_steps']}")
    if loss.get("name", "combinatorial") not in CHECKED_LOSSES:
        return
    if loss["temperature"] <= 0:
        raise UserError(f"loss.temperature must be positive, got {loss['temperature']}")
    weights = loss["weights"]
    for term, weight in weights.items():
        if not isinstance(weight, (int, float)) or isinstance(weight, bool) or weight < 0:
            raise UserError(f"loss.weights.{term} must be a non-negative number, got {weight!r}")
    if not any(float(w) > 0 for w in weights.values()):
        raise UserError("loss.weights needs at least one positive weight")


def load_config(name_or_path: str | None, overrides: list[str] | None = None, model_name: str | None = None) -> dict:
    """Preset (or YAML path) + `--set` overrides (+ `--model`) -> validated config."""
    if name_or_path is None and model_name is not None:
        name_or_path = MODEL_PRESETS.get(model_name)
    path = resolve_preset(name_or_path)
    config = load_yaml(path)
    for override in overrides or []:
        apply_override(config, override)
    if model_name is not None:
        config.setdefault("model", {})["name"] = model_name
    return validate(config, where=str(path))


def dump_config(config: dict) -> str:
    return yaml.safe_dump(config, sort_keys=False)
