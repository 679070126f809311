"""`mft-train`: argparse subcommands only; each handler is imported when its command runs (fast --help)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Sequence

from howto_prep.cli_support import main_for


def add_command(sub: argparse._SubParsersAction, name: str, help_text: str, handler: str) -> argparse.ArgumentParser:
    """A subcommand with the shared `--set KEY=VALUE` overrides, run by `handler` ("module:function")."""
    parser = sub.add_parser(name, help=help_text)
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override a config entry, e.g. --set train.epochs=2 --set model.width=256",
    )
    parser.set_defaults(handler=handler)
    return parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mft-train", description="Multimodal fusion transformer training.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    pretrain = add_command(sub, "pretrain", "pretrain on HowTo100M-style shards", "mft_train.training.pretrain:run_pretrain")
    pretrain.add_argument("--shards", type=Path, required=True)
    pretrain.add_argument("--out", type=Path, required=True)
    pretrain.add_argument("--config", default=None, help="preset name (e.g. eao_small) or YAML path")
    pretrain.add_argument("--model", choices=["eao", "mcn"], default=None)
    pretrain.add_argument("--resume", action="store_true")

    finetune = add_command(sub, "finetune", "fine-tune a checkpoint on clip-level shards", "mft_train.training.finetune:run_finetune")
    for flag in ("--init", "--shards", "--eval-shards", "--out"):
        finetune.add_argument(flag, type=Path, required=True)
    finetune.add_argument("--config", default=None)

    evaluate = add_command(sub, "evaluate", "retrieval metrics of a checkpoint on clip-level shards",
                           "mft_train.evaluation.evaluate:run_evaluate")
    evaluate.add_argument("--checkpoint", type=Path, required=True)
    evaluate.add_argument("--shards", type=Path, required=True)
    evaluate.add_argument("--num-expected", type=int, default=None)
    evaluate.add_argument("--strategy", choices=["at_once", "clips"], default="at_once")
    evaluate.add_argument("--json", type=Path, default=None)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    return main_for("mft-train", build_parser, argv)


if __name__ == "__main__":
    raise SystemExit(main())
