"""The loss section of a config -> the objective a training step calls.

An objective maps the (gathered) model output to (total loss, {term: detached value}) and carries
whatever state the loss keeps between steps (MCN's queue and centroids), which goes into checkpoints
so a resumed run computes the same losses.
"""

from __future__ import annotations

from typing import Protocol

import torch
from torch import nn

from mft_train.losses.combinatorial import combinatorial_loss
from mft_train.losses.mcn import ClusterState, mcn_loss
from mft_train.losses.settings import LOSS_CONFIGS, CombinatorialLossConfig, LossConfig, MCNLossConfig  # noqa: F401


class Objective(Protocol):
    def __call__(self, out: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]: ...

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


class CombinatorialObjective:
    """Everything-at-Once's six-term loss; stateless."""

    def __init__(self, config: CombinatorialLossConfig) -> None:
        self.config = config

    def __call__(self, out: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return combinatorial_loss(out, self.config.weights, self.config.temperature)

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class MCNObjective:
    """MCN's MMS + clustering + reconstruction loss; its queue and centroids go into checkpoints."""

    def __init__(self, config: MCNLossConfig, embed_dim: int, device: torch.device) -> None:
        self.config, self.device = config, device
        self.state = ClusterState(embed_dim, config)

    def __call__(self, out: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return mcn_loss(out, self.state, self.config)

    def state_dict(self) -> dict:
        return self.state.state_dict()

    def load_state_dict(self, state: dict) -> None:
        if state:
            self.state.load_state_dict(state, self.device)


def make_objective(config: LossConfig, model: nn.Module, device: torch.device) -> Objective:
    if isinstance(config, MCNLossConfig):
        return MCNObjective(config, model.config.embed_dim, device)
    return CombinatorialObjective(config)
