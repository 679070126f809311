"""Everything-at-Once vs MCN on the same synthetic shards and the same budget (steps, batch, lr, seed).

    .venv/bin/python bench/bench_mcn_vs_eao.py [--steps 60] [--lr 1e-3] [--videos 16] [--topics 4]

Both small presets (eao_small, mcn_small) train on one thread from the same structured shard set
(tests/shard_fixtures.py: modalities share a topic), then every clip of a fixed-order pass is scored
by mft_train.evaluation (EAO with cosine; MCN with raw dot products, its paper's protocol, and cosine).
Each model is scored before training too (these synthetic features correlate even through random
weights). The pool is small and topic-level (clips of one topic look alike), so read the numbers as
"both models learn", not as a benchmark. The last column is s/step relative to EAO.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from mft_train.config import DataSettings  # noqa: E402
from mft_train.data.clips import clip_spec  # noqa: E402
from mft_train.data.shards import discover_shards  # noqa: E402
from mft_train.data.stream import LoaderPlan, make_loader  # noqa: E402
from mft_train.evaluation.evaluate import evaluate_model  # noqa: E402
from mft_train.losses.combinatorial import combinatorial_loss  # noqa: E402
from mft_train.losses.mcn import ClusterState, mcn_loss  # noqa: E402
from mft_train.models import build_model  # noqa: E402
from mft_train.presets import load_config  # noqa: E402
from shard_fixtures import write_shard_set  # noqa: E402


def eao_setup() -> tuple[torch.nn.Module, DataSettings, callable]:
    config = load_config("eao_small", ["data.workers=0"])
    model = build_model(config.model)
    loss = config.loss
    return model, config.data, lambda out: combinatorial_loss(out, loss.weights, loss.temperature)[0]


def mcn_setup() -> tuple[torch.nn.Module, DataSettings, callable]:
    config = load_config("mcn_small", ["data.workers=0"])
    model = build_model(config.model)
    state = ClusterState(config.model["embed_dim"], config.loss)
    return model, config.data, lambda out: mcn_loss(out, state, config.loss)[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--videos", type=int, default=16)
    parser.add_argument("--topics", type=int, default=4)
    parser.add_argument("--batch", type=int, default=8, help="videos per step")
    parser.add_argument("--clips", type=int, default=4, help="clips per video")
    args = parser.parse_args()
    torch.set_num_threads(1)
    root = Path(tempfile.mkdtemp(prefix="bench-mcn-eao-"))
    write_shard_set(root, videos=args.videos, shards=2, topics=args.topics)
    shards = discover_shards(root)
    rows = []
    for name, setup in (("eao", eao_setup), ("mcn", mcn_setup)):
        torch.manual_seed(0)
        model, data, loss_fn = setup()
        spec = clip_spec(data)
        eval_plan = LoaderPlan(videos_per_rank=args.videos, clips_per_video=2, num_batches=1, seed=7, epoch=0,
                               first_step=0, order="fixed")
        similarities = ("cosine",) if name == "eao" else ("dot", "cosine")

        def score() -> dict[str, dict]:
            return {sim: evaluate_model(model, make_loader(shards, spec, eval_plan, 0), similarity=sim) for sim in similarities}

        untrained = score()  # the baseline: random features of these synthetic clips already correlate
        optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
        plan = LoaderPlan(videos_per_rank=args.batch, clips_per_video=args.clips, num_batches=args.steps,
                          seed=0, epoch=0, first_step=0, shuffle_buffer=2 * args.batch)
        losses, start = [], time.perf_counter()
        for batch in make_loader(shards, spec, plan, 0):
            loss = loss_fn(model(batch))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        seconds = (time.perf_counter() - start) / args.steps
        trained = score()
        params = sum(p.numel() for p in model.parameters())
        head = min(5, len(losses))
        for similarity in similarities:
            rows.append((name, similarity, params, seconds, sum(losses[:head]) / head, sum(losses[-head:]) / head,
                         untrained[similarity], trained[similarity]))
    base = rows[0][3]
    print(f"{args.steps} steps x {args.batch} videos x {args.clips} clips, lr {args.lr}, {args.videos} videos / "
          f"{args.topics} topics, retrieval over {2 * args.videos} clips (chance MeanR {(2 * args.videos + 1) / 2:.1f})")
    print("| model | similarity | params | s/step | loss first 5 -> last 5 | t->v MeanR before -> after | "
          "t->va MeanR before -> after | t->va R1 after | s/step vs EAO |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, similarity, params, seconds, first, last, before, after in rows:
        print(f"| {name} | {similarity} | {params:,} | {seconds:.2f} | {first:.3f} -> {last:.3f} | "
              f"{before['t->v']['MeanR']:.2f} -> {after['t->v']['MeanR']:.2f} | "
              f"{before['t->va']['MeanR']:.2f} -> {after['t->va']['MeanR']:.2f} | {after['t->va']['R1']:.1f} | "
              f"{seconds / base:.2f}x |")

if __name__ == "__main__":
    main()
