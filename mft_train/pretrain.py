"""`mft-train pretrain` handler: config + shards + run directory -> engine.train, with a summary line."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def run_pretrain(args: argparse.Namespace) -> int:
    """Validate everything cheap first (config, shards, run dir), then train; bad input -> UserError."""
    from mft_train.config import load_config
    from mft_train.data import WordTable, discover_shards

    config = load_config(args.config, args.overrides, args.model)
    shards = discover_shards(Path(args.shards))
    WordTable(shards.root)  # fail before the model is built if the vocabulary is missing

    from mft_train.distributed import init_distributed, shutdown_distributed
    from mft_train.engine import train

    dist_info = init_distributed(force_cpu=config["train"]["device"] == "cpu")
    try:
        result = train(config, Path(args.shards), Path(args.out), dist_info, resume=bool(args.resume))
    finally:
        shutdown_distributed()
    if dist_info.is_main:
        if result.losses:
            print(
                f"pretrain: steps {result.first_step}->{result.last_step}, loss {result.losses[0]:.4f} -> "
                f"{result.losses[-1]:.4f}, checkpoint {result.checkpoint}",
                file=sys.stderr,
            )
        else:
            print(f"pretrain: nothing to do, {args.out} already finished step {result.last_step}", file=sys.stderr)
    return 0

