"""Model zoo of mft_train: `build_model(model_cfg)` turns the config's "model" section into a module."""

from __future__ import annotations

from torch import nn

from howto_prep.errors import UserError

MODEL_NAMES = ("eao", "mcn")


def build_model(model_cfg: dict) -> nn.Module:
    """Build the model named by model_cfg["name"] ("eao" or "mcn") with the remaining keys as sizes.

    Unknown names or settings raise UserError, so a typo in `--set model.x=...` fails loudly.
    """
    settings = dict(model_cfg)
    name = settings.pop("name", "eao")
    if name == "eao":
        from mft_train.models.eao import EAOConfig, EverythingAtOnce

        return EverythingAtOnce(EAOConfig.from_dict(settings))
    if name == "mcn":
        from mft_train.models.mcn import build_mcn

        return build_mcn(settings)
    raise UserError(f"unknown model name {name!r}; expected one of {', '.join(MODEL_NAMES)}")
