"""Weights plumbing shared by the visual feature models.

A weights spec is "random", a file PATH, or a named pretrained set (e.g. "imagenet"). This module
turns a spec into a state dict, fingerprints the file (the sha256 goes into every shard's meta.json
so features made with different weights can never be mixed up silently), and shouts when the
weights are random, because such features are only good for testing the pipeline.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, NamedTuple

from howto_prep.errors import UserError

RANDOM = "random"
RANDOM_SEED = 0
_LOG = logging.getLogger(__name__)


class RandomWeightsWarning(UserWarning):
    """Features computed with random weights are meaningless for retrieval."""


def is_random(spec: str) -> bool:
    return str(spec).strip().lower() == RANDOM


def warn_random_weights(model_name: str) -> None:
    """Loud warning (warnings + logging): random weights are fine for tests, useless for training."""
    message = (f"{model_name}: using RANDOM weights; the features are meaningless for retrieval "
               "(use them only to test the pipeline)")
    warnings.warn(message, RandomWeightsWarning, stacklevel=3)
    _LOG.warning(message)


@contextlib.contextmanager
def seeded_init(seed: int = RANDOM_SEED) -> Iterator[None]:
    """Build a model under a fixed seed without disturbing the caller's global RNG state."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def existing_weights_file(spec: str, option: str) -> Path:
    """The file a PATH spec names, or a UserError that says which option to fix."""
    path = Path(spec).expanduser()
    if not path.is_file():
        raise UserError(f"{option}: weights file {path} does not exist (pass a PATH to a .pth file or 'random')")
    return path


def load_state_dict_file(path: Path, option: str) -> dict[str, Any]:
    """Read a .pth checkpoint: a plain state dict or {"state_dict": ...}; "module." prefixes stripped."""
    import torch

    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many unrelated types for a bad file
        raise UserError(f"{option}: cannot read weights file {path} ({type(err).__name__}: "
                        f"{str(err).splitlines()[0] if str(err) else 'unreadable'})") from err
    return strip_module_prefix(unwrap_state_dict(checkpoint, path, option))


def unwrap_state_dict(checkpoint: Any, path: Path, option: str) -> Mapping[str, Any]:
    """{"state_dict": {...}, "epoch": ..., ...} (a training checkpoint) -> the state dict itself."""
    if isinstance(checkpoint, Mapping) and isinstance(checkpoint.get("state_dict"), Mapping):
        checkpoint = checkpoint["state_dict"]
    if not isinstance(checkpoint, Mapping) or not checkpoint:
        raise UserError(f"{option}: {path} holds no state dict")
    return checkpoint


def strip_module_prefix(state: Mapping[str, Any]) -> dict[str, Any]:
    """DataParallel saves keys as "module.conv1.weight"; the bare model wants "conv1.weight"."""
    return {key[len("module."):] if key.startswith("module.") else key: value for key, value in state.items()}


def load_strict(model: Any, state: Mapping[str, Any], path: Path, option: str,
                ignore_prefixes: tuple[str, ...] = ()) -> None:
    """Load `state` into `model` with every key and shape matching, except `ignore_prefixes`.

    A mismatch is a UserError that names the first bad key, so a wrong checkpoint is obvious. The
    model may live on the meta device (built without the costly random init): the loaded tensors
    are then assigned in place, cast to the model's dtypes.
    """
    import torch

    state = {k: v for k, v in state.items() if not k.startswith(ignore_prefixes)}
    expected = model.state_dict()
    for key in expected:  # checkpoints saved before PyTorch 0.4.1 lack these BatchNorm counters
        if key.endswith(".num_batches_tracked") and key not in state:
            state[key] = torch.zeros((), dtype=torch.long)
    for key, value in state.items():
        if key not in expected:
            raise UserError(f"{option}: {path} does not fit the model: unexpected key {key!r}")
        if not isinstance(value, torch.Tensor) or tuple(value.shape) != tuple(expected[key].shape):
            raise UserError(f"{option}: {path} does not fit the model: key {key!r} has shape "
                            f"{tuple(getattr(value, 'shape', ()))}, expected {tuple(expected[key].shape)}")
    for key in expected:
        if key not in state and not key.startswith(ignore_prefixes):
            raise UserError(f"{option}: {path} does not fit the model: missing key {key!r}")
    state = {k: v.to(expected[k].dtype) for k, v in state.items()}
    model.load_state_dict(state, strict=False, assign=True)


class NamedState(NamedTuple):
    """A state dict and where it came from (for error messages)."""

    source: str
    state: Mapping[str, Any]


def build_with_weights(build: Callable[[], Any], named_state: NamedState | None, option: str,
                       ignore_prefixes: tuple[str, ...] = ()) -> Any:
    """Random init under a fixed seed, or a model built on the meta device (skipping the init that
    the checkpoint overwrites anyway) and filled strictly from the state dict."""
    import torch

    if named_state is None:
        with seeded_init():
            return build()
    with torch.device("meta"):
        model = build()
    load_strict(model, named_state.state, Path(named_state.source), option, ignore_prefixes)
    return model

