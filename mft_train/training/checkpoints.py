"""Checkpoint files: atomic writes, newest-first discovery, pruning, reading, and the RNG states they carry.

A run folder holds checkpoints/step-NNNNNNNNN.pt (the full training state) and, after fine-tuning,
best.pt (weights + config + metrics of the best epoch). Writes go through howto_prep.files, so a
killed save leaves no file with a final name; temp names never match the checkpoint pattern.
"""

from __future__ import annotations

import pickle
import random
import re
from pathlib import Path

import numpy as np
import torch

from howto_prep.errors import UserError
from howto_prep.files import atomic_path

CHECKPOINT_DIR = "checkpoints"
BEST_FILE = "best.pt"
_NAME = re.compile(r"^step-(\d{9})\.pt$")


def checkpoint_path(run_dir: Path, step: int) -> Path:
    return Path(run_dir) / CHECKPOINT_DIR / f"step-{step:09d}.pt"


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first (temp files never match the name pattern)."""
    folder = Path(run_dir) / CHECKPOINT_DIR
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if _NAME.match(p.name))


def latest_checkpoint(run_dir: Path) -> Path | None:
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def save_checkpoint(state: dict, path: Path) -> None:
    """torch.save to a synced temp file beside `path`, then rename: no partial file has the final name."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as temp:
        torch.save(state, temp)


def prune(run_dir: Path, keep: int) -> None:
    """Delete all but the newest `keep` checkpoints."""
    for old in list_checkpoints(run_dir)[:-keep]:
        old.unlink(missing_ok=True)


def resolve_checkpoint(path: Path) -> Path:
    """A checkpoint file, or a run folder (its best.pt, else its newest checkpoint)."""
    path = Path(path)
    if path.is_dir():
        best = path / BEST_FILE
        found = best if best.is_file() else latest_checkpoint(path)
        if found is None:
            raise UserError(f"{path} holds no checkpoint (no {BEST_FILE}, no {CHECKPOINT_DIR}/step-*.pt)")
        return found
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist")
    return path


def read_checkpoint_file(path: Path, map_location: str | torch.device = "cpu") -> dict:
    """torch.load with `weights_only=True`: tensors and plain containers only, so a checkpoint shared
    by someone else can never run code here. Anything else is refused with one line."""
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        detail = " ".join(str(err).split())[:200]
        raise UserError(f"refusing checkpoint {path}: it holds more than tensors and plain values, and loading "
                        f"it would run code from the file ({detail})") from None
    except Exception as err:  # torch raises many types for a damaged or foreign file
        raise UserError(f"cannot read checkpoint {path} ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})") from None


def load_checkpoint(path: Path) -> dict:
    """The checkpoint dict of a file or run folder (needs "model" weights and the "config" they were trained with)."""
    path = resolve_checkpoint(path)
    state = read_checkpoint_file(path)
    if not isinstance(state, dict) or "model" not in state or "config" not in state:
        raise UserError(f"{path} is not an mft-train checkpoint (it lacks model weights or config)")
    state["path"] = str(path)
    return state


def rng_state() -> dict:
    """Every generator's state as tensors and plain values (what `weights_only=True` reads back)."""
    version, internal, gauss = random.getstate()
    kind, keys, position, has_gauss, cached = np.random.get_state()
    state = {"python": {"version": version, "state": torch.tensor(internal, dtype=torch.int64), "gauss": gauss},
             "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(position),
                       "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict) -> None:
    python, numpy_state = state["python"], state["numpy"]
    if isinstance(python, dict):
        random.setstate((python["version"], tuple(int(v) for v in python["state"].tolist()), python["gauss"]))
        np.random.set_state((numpy_state["kind"], numpy_state["keys"].numpy().astype(np.uint32), numpy_state["pos"],
                             numpy_state["has_gauss"], numpy_state["cached_gaussian"]))
    else:  # checkpoints written before the states were stored as tensors
        random.setstate(python)
        np.random.set_state(numpy_state)
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
