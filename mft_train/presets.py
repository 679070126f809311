"""Where a run's configuration comes from: YAML presets, `--set key.sub=value` overrides, `--model`.

Presets live in mft_train/configs/*.yaml; `--config` takes a preset name or a path to a YAML file.
Overrides are applied to the raw mapping before it is checked (mft_train.config.RunConfig), so a
typo or a bad value in either place stops with the same one-line UserError.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from howto_prep.errors import UserError
from mft_train.config import SECTIONS, RunConfig

PRESET_DIR = Path(__file__).parent / "configs"
DEFAULT_PRESET = "eao_howto100m"
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


def apply_override(raw: dict, override: str) -> None:
    """Apply one `key.sub=value` to a raw config mapping (value parsed as YAML: numbers, booleans, lists, strings)."""
    key, sep, text = override.partition("=")
    if not sep or not key.strip():
        raise UserError(f"--set expects KEY=VALUE (e.g. train.epochs=2), got {override!r}")
    path = key.strip().split(".")
    if path[0] not in SECTIONS or len(path) < 2:
        raise UserError(f"--set key {key!r} must start with one of {', '.join(SECTIONS)} and name an entry, e.g. train.lr")
    try:
        value = yaml.safe_load(text) if text.strip() else ""
    except yaml.YAMLError as err:
        raise UserError(f"--set {key}: cannot parse value {text!r}") from err
    node = raw
    for part in path[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise UserError(f"--set key {key!r} goes through {part!r}, which is not a section")
    node[path[-1]] = value


def load_raw(name_or_path: str | None, overrides: list[str] | None = None,
             model_name: str | None = None) -> tuple[dict, str]:
    """Preset (or YAML path) + `--set` overrides (+ `--model`) -> (unchecked mapping, where it came from)."""
    if name_or_path is None and model_name is not None:
        name_or_path = MODEL_PRESETS.get(model_name)
    path = resolve_preset(name_or_path)
    raw = load_yaml(path)
    for override in overrides or []:
        apply_override(raw, override)
    if model_name is not None:
        raw.setdefault("model", {})["name"] = model_name
    return raw, str(path)


def load_config(name_or_path: str | None, overrides: list[str] | None = None, model_name: str | None = None) -> RunConfig:
    """Preset (or YAML path) + `--set` overrides (+ `--model`) -> checked RunConfig."""
    raw, where = load_raw(name_or_path, overrides, model_name)
    return RunConfig.from_dict(raw, where)


def dump_config(config: RunConfig) -> str:
    return yaml.safe_dump(config.to_dict(), sort_keys=False)
