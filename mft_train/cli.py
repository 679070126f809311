"""`mft-train`: argparse subcommands only; each handler is imported when its command runs (fast --help)."""

from __future__ import annotations

import argparse
from typing import Sequence

from howto_prep.cli_support import local_path, location, main_for

SHARDS_HELP = "a shard-set folder, or an s3:// or gs:// URL (streamed; credentials the standard AWS/GCS way)"
OUT_HELP = ("the run folder, or an s3:// or gs:// URL (written through a local --work folder; each checkpoint "
            "is uploaded as soon as it is saved, latest.json last)")
WORK_HELP = "with a URL --out: the local work folder (default .howto-prep/work/SCHEME/BUCKET/PREFIX here)"
CHECKPOINT_HELP = "run folder or checkpoint file, or its s3:// / gs:// URL (downloaded once into the cache)"
INDEX_OUT_HELP = ("the index folder, or an s3:// or gs:// URL (built in a local --work folder, then uploaded with "
                  "index.json last); rerun the same command to resume")


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
    pretrain.add_argument("--shards", type=location, required=True, help=SHARDS_HELP)
    pretrain.add_argument("--out", type=location, required=True, help=OUT_HELP)
    pretrain.add_argument("--work", type=local_path, default=None, help=WORK_HELP)
    pretrain.add_argument("--config", default=None, help="preset name (e.g. eao_small) or YAML path")
    pretrain.add_argument("--model", choices=["eao", "mcn"], default=None)
    pretrain.add_argument("--resume", action="store_true")

    finetune = add_command(sub, "finetune", "fine-tune a checkpoint on clip-level shards", "mft_train.training.finetune:run_finetune")
    finetune.add_argument("--init", type=location, required=True, help=CHECKPOINT_HELP)
    finetune.add_argument("--out", type=location, required=True, help=OUT_HELP)
    finetune.add_argument("--work", type=local_path, default=None, help=WORK_HELP)
    for flag in ("--shards", "--eval-shards"):
        finetune.add_argument(flag, type=location, required=True, help=SHARDS_HELP)
    finetune.add_argument("--config", default=None)

    evaluate = add_command(sub, "evaluate", "retrieval metrics of a checkpoint on clip-level shards",
                           "mft_train.evaluation.evaluate:run_evaluate")
    evaluate.add_argument("--checkpoint", type=location, required=True, help=CHECKPOINT_HELP)
    evaluate.add_argument("--shards", type=location, required=True, help=SHARDS_HELP)
    evaluate.add_argument("--num-expected", type=int, default=None)
    evaluate.add_argument("--strategy", choices=["at_once", "clips"], default="at_once")
    evaluate.add_argument("--json", type=location, default=None,
                          help="the report (default beside the checkpoint); an s3:// / gs:// URL of a .json file "
                               "gets it, its .queries.jsonl and .png, each uploaded whole, the .json last")

    imported = add_command(sub, "import-eao", "turn a checkpoint of the authors' Everything-at-Once code into a run folder",
                           "mft_train.interop.import_eao:run_import_eao")
    imported.add_argument("checkpoint", type=location,
                          help="their .pth (a dict with state_dict) or a bare state_dict, or its s3:// / gs:// URL "
                               "(downloaded once into the cache; read with weights_only, never unpickled)")
    imported.add_argument("--out", type=location, required=True,
                          help="the new run folder, e.g. runs/eao-released, or an s3:// / gs:// URL (written in a "
                               "local --work folder, then uploaded: best.pt first, config.yaml last)")
    imported.add_argument("--work", type=local_path, default=None, help=WORK_HELP)
    imported.add_argument("--heads", type=int, default=None,
                          help="attention heads of the fusion block (default: their config's, else the paper's 64)")
    imported.add_argument("--config", default=None,
                          help="preset or YAML for the data/loss/train sections (default eao_howto100m)")

    embed = add_command(sub, "embed", "embed every video of a video-level shard set in windows, into a search index",
                        "mft_train.retrieval.embed:run_embed")
    embed.add_argument("--checkpoint", type=location, required=True, help=CHECKPOINT_HELP)
    embed.add_argument("--shards", type=location, required=True, help=f"a video-level shard set: {SHARDS_HELP}")
    embed.add_argument("--out", type=location, required=True, help=INDEX_OUT_HELP)
    embed.add_argument("--work", type=local_path, default=None, help=WORK_HELP)
    embed.add_argument("--window", type=float, default=None, help="window length in s (default: the pretraining clip)")
    embed.add_argument("--stride", type=float, default=None, help="s between window starts (default: half a window)")
    embed.add_argument("--batch", type=int, default=64, help="windows per forward pass")
    embed.add_argument("--index-type", choices=["auto", "flat", "ivf"], default="auto",
                       help="exact scan, inverted file, or by size (default)")
    embed.add_argument("--vocab", type=location, default=None,
                       help="shard set (folder or URL) whose vocab/ queries use (default: --shards; same word2vec)")

    search = add_command(sub, "search", "the windows of an embedded collection that best match a text query",
                         "mft_train.retrieval.search:run_search")
    search.add_argument("query", help="words, tokenised like the shards' captions")
    search.add_argument("--index", type=location, required=True,
                        help="the index folder, or its s3:// / gs:// URL (a complete index, copied once into the cache)")
    search.add_argument("--top", type=int, default=10)
    search.add_argument("--target", choices=["va", "v", "a"], default="va",
                        help="fused video+audio (default), video or audio embeddings")
    search.add_argument("--json", action="store_true", help="print the results as JSON instead of a table")
    search.add_argument("--html", type=local_path, default=None,
                        help="write a results page with keyframes (a local file: a page you open in a browser)")
    search.add_argument("--videos", type=local_path, default=None,
                        help="local video folder for the page's keyframes (decoded here; not a URL)")
    search.add_argument("--nprobe", type=int, default=None, help="IVF lists scanned per query (IVF indexes)")
    search.add_argument("--checkpoint", type=location, default=None,
                        help="the index's checkpoint, if it moved (a path, or an s3:// / gs:// URL)")
    search.add_argument("--vocab", type=location, default=None,
                        help="a shard set with the index's vocab/, if it moved (a folder or an s3:// / gs:// URL)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    return main_for("mft-train", build_parser, argv)


if __name__ == "__main__":
    raise SystemExit(main())
