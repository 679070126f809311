"""`mft-train`: argparse subcommands only; the work happens in mft_train.engine and friends."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Sequence

from howto_prep.cli_support import main_for


def add_overrides(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override a config entry, e.g. --set train.epochs=2 --set model.width=256",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mft-train", description="Multimodal fusion transformer training.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    pretrain = sub.add_parser("pretrain", help="pretrain on HowTo100M-style shards")
    pretrain.add_argument("--shards", type=Path, required=True)
    pretrain.add_argument("--out", type=Path, required=True)
    pretrain.add_argument("--config", default=None, help="preset name (e.g. eao_small) or YAML path")
    pretrain.add_argument("--model", choices=["eao", "mcn"], default=None)
    pretrain.add_argument("--resume", action="store_true")
    add_overrides(pretrain)
    pretrain.set_defaults(handler="mft_train.pretrain:run_pretrain")

    finetune = sub.add_parser("finetune", help="fine-tune a checkpoint on clip-level shards")
    finetune.add_argument("--init", type=Path, required=True)
    finetune.add_argument("--shards", type=Path, required=True)
    finetune.add_argument("--eval-shards", type=Path, required=True)
    finetune.add_argument("--out", type=Path, required=True)
    finetune.add_argument("--config", default=None)
    add_overrides(finetune)
    finetune.set_defaults(handler="mft_train.finetune:run_finetune")

    evaluate = sub.add_parser("evaluate", help="retrieval metrics of a checkpoint on clip-level shards")
    evaluate.add_argument("--checkpoint", type=Path, required=True)
    evaluate.add_argument("--shards", type=Path, required=True)
    evaluate.add_argument("--num-expected", type=int, default=None)
    evaluate.add_argument("--strategy", choices=["at_once", "clips"], default="at_once")
    evaluate.add_argument("--json", type=Path, default=None)
    add_overrides(evaluate)
    evaluate.set_defaults(handler="mft_train.evaluate:run_evaluate")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    return main_for("mft-train", build_parser, argv)


if __name__ == "__main__":
    raise SystemExit(main())
