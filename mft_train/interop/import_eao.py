"""`mft-train import-eao CHECKPOINT --out runs/NAME`: the authors' released EAO weights as one of our runs.

Why: the released checkpoints are the paper's trained model; with them `evaluate`, `finetune` and
`embed` run on the published weights instead of a model we pretrained ourselves. Their file is a
dict {arch, epoch, step, state_dict, optimizer, monitor_best, config} (their trainer's
`_save_checkpoint`; `state_dict` possibly prefixed `module.` by DataParallel), or a bare state_dict.
After multi-GPU training their trainer saved the wrapper's class name (arch "DataParallel"); the model
class is then read from their config's arch.type, or, when the config does not say, from the tensors.

Steps: read it without running code from it (mft_train.interop.safe_load), rename and reshape every
tensor (mft_train.interop.eao_layout), infer our model config from the shapes, check that our model
of that config accepts exactly these tensors, then write the run folder:
  config.yaml    our run config: the inferred model section + the other sections of --config
  best.pt        {"model", "config", "epoch", "step", "imported"}: what evaluate/finetune/embed read
  imported.json  where it came from: file, sha256, their arch (as saved) and model class (resolved),
                 epoch, step, monitor_best, their config
Their optimizer state is not kept (our fine-tuning starts its own optimiser).

CHECKPOINT may be an s3:// / gs:// URL (downloaded once into the cache, then read the same safe way),
and --out a URL: the run folder is written in a local work folder, then published by RunMirror
(best.pt, imported.json, config.yaml last), where `evaluate/embed/finetune --checkpoint URL` find it.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from howto_prep.cli_support import is_store_url
from howto_prep.errors import UserError
from howto_prep.files import atomic_write_json, atomic_write_text, file_sha256
from howto_prep.local_copies import local_file
from mft_train.config import RunConfig
from mft_train.interop.eao_layout import (check_their_keys, convert_state_dict, infer_model_config,
                                          strip_data_parallel, their_arch_type, their_heads)
from mft_train.interop.safe_load import load_weights_only
from mft_train.models import build_model
from mft_train.presets import dump_config, load_raw
from mft_train.training import checkpoints
from mft_train.training.run_folder import CONFIG_FILE
from mft_train.training.run_store import RunMirror, run_location

ARCHES = ("EverythingAtOnceModel", "EverythingAtOnceModel_TV_Only")  # the same parameters
WRAPPER_ARCHES = ("DataParallel", "DistributedDataParallel")  # type(self.model).__name__ of a wrapped model
WRAPPER_KEYS = ("arch", "epoch", "step", "monitor_best", "config")
IMPORT_FILE = "imported.json"
DEFAULT_PRESET = "eao_howto100m"  # data/loss/train sections: the paper's pretraining, as their config


@dataclass
class AuthorsCheckpoint:
    """Their state_dict (prefix stripped) and what their wrapper dict said about it."""

    state_dict: dict[str, torch.Tensor]
    meta: dict[str, Any]


def plain(value: Any) -> Any:
    """Numbers, strings and containers only (numpy scalars -> Python), so JSON and weights_only read it."""
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, torch.Tensor):
        return value.tolist() if value.numel() <= 64 else f"tensor{tuple(value.shape)}"
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, dict) and bool(obj) and all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                                       for k, v in obj.items())


def model_class(path: Path, arch: Any, their_config: Any) -> tuple[str | None, str]:
    """(their model class, where it was read) for the saved `arch`; None: only the tensors can tell.

    Why: their trainer saves `type(self.model).__name__`, which is "DataParallel" after multi-GPU
    training; the wrapped class is then only in their config's arch.type."""
    choices = " or ".join(ARCHES)
    if arch is None:
        return None, "tensors"
    if arch in WRAPPER_ARCHES:
        wrapped = their_arch_type(their_config)
        if wrapped is None:
            return None, "tensors"
        if wrapped not in ARCHES:
            raise UserError(f"{path} holds a {arch} of {wrapped}, not an Everything-at-Once model ({choices})")
        return wrapped, "their config"
    if arch not in ARCHES:
        raise UserError(f"{path} holds a {arch}, not an Everything-at-Once model ({choices})")
    return str(arch), "checkpoint arch"


def read_authors_checkpoint(path: Path) -> AuthorsCheckpoint:
    """Their checkpoint dict or a bare state_dict -> AuthorsCheckpoint; anything else is a UserError."""
    loaded = load_weights_only(path)
    if _is_state_dict(loaded):
        state_dict, meta = loaded, {"format": "state_dict"}
    elif isinstance(loaded, dict) and _is_state_dict(loaded.get("state_dict")):
        state_dict = loaded["state_dict"]
        meta = {"format": "checkpoint", **{key: plain(loaded.get(key)) for key in WRAPPER_KEYS}}
    else:
        raise UserError(f"{path} is neither an Everything-at-Once checkpoint (a dict with state_dict) nor a bare state_dict")
    arch = meta.get("arch")
    resolved, meta["model_class_from"] = model_class(path, arch, meta.get("config"))
    state_dict, prefixed = strip_data_parallel(state_dict)
    if resolved is None and arch in WRAPPER_ARCHES:
        try:  # nothing names the wrapped class: its tensors must be an EAO model's
            check_their_keys(state_dict)
        except UserError as err:
            raise UserError(f"{path} holds a {arch} whose config names no model class, and its tensors are "
                            f"not an Everything-at-Once model's: {err}") from None
    meta["model_class"] = resolved or ARCHES[0]  # from the tensors: both ARCHES have the same ones
    meta["module_prefix"] = prefixed
    meta["num_keys"] = len(state_dict)
    return AuthorsCheckpoint(state_dict, meta)


def run_config_for(model: dict, preset: str | None, overrides: list[str]) -> RunConfig:
    """The inferred model section with the data/loss/train sections of `preset` (+ --set for those)."""
    bad = [item for item in overrides if item.strip().startswith("model.")]
    if bad:
        raise UserError(f"--set {bad[0]}: the model section comes from the checkpoint's tensors and cannot be overridden")
    raw, where = load_raw(preset or DEFAULT_PRESET, overrides)
    raw["model"] = model
    return RunConfig.from_dict(raw, where)


def convert(checkpoint: AuthorsCheckpoint, config: RunConfig) -> tuple[dict[str, torch.Tensor], list[str], int]:
    """Our state_dict for `config.model`, verified by a strict load into that model (built on the meta
    device: no memory for the weights). Returns (state_dict, dropped keys, parameter count)."""
    with torch.device("meta"):
        model = build_model(config.model)
    expected = {key: value.shape for key, value in model.state_dict().items()}
    converted, dropped = convert_state_dict(checkpoint.state_dict, expected)
    model.load_state_dict(converted, strict=True, assign=True)
    return converted, dropped, sum(p.numel() for p in model.parameters())


def import_checkpoint(source: Path, out: Path, heads: int | None = None, preset: str | None = None,
                      overrides: list[str] | None = None, source_name: str | None = None) -> dict:
    """Write the run folder `out` from the authors' checkpoint `source`; returns the import record
    (`source_name`: what to record as the source instead of the file's path, e.g. the URL it came from)."""
    source, out = Path(source), Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; give a new folder for the run")
    # config.yaml is written last, so a best.pt without it is a killed import's and is replaced
    if (out / CONFIG_FILE).exists() or checkpoints.latest_checkpoint(out):
        raise UserError(f"{out} already holds a run; choose another --out")
    checkpoint = read_authors_checkpoint(source)
    model_cfg = infer_model_config(checkpoint.state_dict, checkpoint.meta.get("config"), heads)
    config = run_config_for(model_cfg, preset, list(overrides or []))
    state_dict, dropped, parameters = convert(checkpoint, config)
    record = {**checkpoint.meta, "source": source_name or str(source.resolve()), "source_sha256": file_sha256(source),
              "dropped_keys": dropped, "mapped_keys": len(state_dict), "parameters": parameters,
              "heads_from": "--heads" if heads else ("their config" if their_heads(checkpoint.meta.get("config")) else "paper default")}
    epoch = record.get("epoch")
    step = record.get("step")
    state = {"model": state_dict, "config": config.to_dict(), "imported": record,
             "epoch": int(epoch) if isinstance(epoch, (int, float)) else 0,
             "step": int(step) if isinstance(step, (int, float)) else 0}
    out.mkdir(parents=True, exist_ok=True)
    checkpoints.save_checkpoint(state, out / checkpoints.BEST_FILE)
    atomic_write_json(out / IMPORT_FILE, record)
    atomic_write_text(out / CONFIG_FILE, dump_config(config))  # last: a folder with config.yaml is complete
    return record


def check_store_free(mirror: RunMirror) -> None:
    """Refuse an --out URL that holds a run (config.yaml, a pointer or step checkpoints); a best.pt
    alone is a killed import's upload, replaced as a best.pt without config.yaml is on disk."""
    store = mirror.store
    if store.exists(CONFIG_FILE) or mirror.pointer() is not None or store.list(f"{checkpoints.CHECKPOINT_DIR}/*.pt"):
        raise UserError(f"{mirror.url} already holds a run; choose another --out")


def restage(work: Path) -> None:
    """A work folder holding an earlier import for this URL (its upload stopped: the store has no run)
    is redone: its config.yaml, the folder's "complete" mark, goes first, so the import writes anew."""
    if (work / IMPORT_FILE).is_file() and (work / CONFIG_FILE).is_file() and not checkpoints.latest_checkpoint(work):
        (work / CONFIG_FILE).unlink()


def run_import_eao(args: argparse.Namespace) -> int:
    if args.heads is not None and args.heads <= 0:
        raise UserError(f"--heads must be positive, got {args.heads}")
    out, mirror = run_location(args.out, getattr(args, "work", None))  # a URL: its local work folder
    if mirror is not None:
        check_store_free(mirror)
        restage(out)
    source = local_file(args.checkpoint, "checkpoint")  # a URL: downloaded once, read by the same safe loader
    name = str(args.checkpoint) if is_store_url(args.checkpoint) else None
    record = import_checkpoint(source, out, args.heads, args.config, args.overrides, source_name=name)
    if mirror is not None:
        mirror.publish_finished_run((IMPORT_FILE,))
    arch = record.get("arch")
    if arch and arch != record["model_class"]:
        arch = f"{arch} of {record['model_class']}"
    where = f"their {record['format']}" + (f" ({arch}, epoch {record['epoch']})" if arch else "")
    prefix = ", `module.` prefix stripped" if record["module_prefix"] else ""
    dropped = record["dropped_keys"]
    unused = f", {len(dropped)} unused ones dropped (fusion.norm, davenet.batchnorm1)" if dropped else ""
    print(f"import-eao: {args.checkpoint}: {where}, {record['num_keys']} keys{prefix}; "
          f"{record['mapped_keys']} tensors mapped{unused}")
    print(f"import-eao: wrote {out}/{CONFIG_FILE}, {out}/{checkpoints.BEST_FILE} ({record['parameters']:,} parameters, "
          f"heads from {record['heads_from']}) and {out}/{IMPORT_FILE}")
    if mirror is not None:
        print(f"import-eao: published {mirror.url} ({checkpoints.BEST_FILE} first, {CONFIG_FILE} last)")
    print(f"next: mft-train evaluate --checkpoint {args.out} --shards CLIP_SET | "
          f"mft-train embed --checkpoint {args.out} --shards SHARDS --out INDEX")
    return 0
