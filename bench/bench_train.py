"""Pretraining throughput: model clips/s vs data-loader clips/s per worker (small preset, CPU), and
on a GPU the paper preset's clips/s and peak memory in bf16 against fp32 in the same run.

    .venv/bin/python bench/bench_train.py [--shards DIR] [--steps 10] [--batches 20] [--gpu-clips 560]

Without --shards a small structured shard set is written to a temp folder (tests/shard_fixtures.py).
The loader must outrun the model by a wide margin: the last column is loader / model.
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

from mft_train.config import RunConfig  # noqa: E402
from mft_train.data.clips import clip_spec  # noqa: E402
from mft_train.data.shards import discover_shards  # noqa: E402
from mft_train.data.stream import LoaderPlan, make_loader  # noqa: E402
from mft_train.losses.combinatorial import combinatorial_loss  # noqa: E402
from mft_train.models import build_model  # noqa: E402
from mft_train.presets import load_config  # noqa: E402
from mft_train.training.device import autocast_context  # noqa: E402
from mft_train.training.distributed import DistInfo  # noqa: E402
from mft_train.training.pretrain import ShardStream  # noqa: E402
from mft_train.training.trainer import Trainer  # noqa: E402


def loader_clips_per_s(shards: Path, config: RunConfig, workers: int, batches: int) -> float:
    """Clips/s of the stream pipeline alone (decode, sample, collate), after the first batch."""
    data = config.data
    plan = LoaderPlan(videos_per_rank=config.train.batch, clips_per_video=data.clips_per_video,
                      num_batches=batches + 1, seed=0, epoch=0, first_step=0, shuffle_buffer=data.shuffle_buffer)
    iterator = iter(make_loader(discover_shards(shards), clip_spec(data), plan, workers))
    first = next(iterator)
    start, clips = time.perf_counter(), 0
    for batch in iterator:
        clips += len(batch["video_id"])
    return clips / (time.perf_counter() - start) if clips else float(len(first["video_id"]))


def model_clips_per_s(shards: Path, config: RunConfig, steps: int, run_dir: Path) -> float:
    """Clips/s of forward + loss + backward + Adam on pre-loaded batches (the loader excluded)."""
    single = DistInfo(0, 1, 0, torch.device("cpu"))
    source = ShardStream(shards, config, single)
    trainer = Trainer(config, source, run_dir, single)
    batches = list(source.batches(0, min(steps, 4)))
    trainer.train_step(batches[0])  # warm-up
    start = time.perf_counter()
    for i in range(steps):
        trainer.train_step(batches[i % len(batches)])
    clips = steps * len(batches[0]["video_id"])
    return clips / (time.perf_counter() - start)


def random_batch(clips: int, config: RunConfig, device: torch.device) -> dict:
    data = config.data
    return {
        "video": torch.randn(clips, data.video_tokens, 4096, device=device),
        "video_mask": torch.ones(clips, data.video_tokens, dtype=torch.bool, device=device),
        "text": torch.randn(clips, data.max_words, 300, device=device),
        "text_mask": torch.ones(clips, data.max_words, dtype=torch.bool, device=device),
        "audio": torch.rand(clips, 40, data.audio_frames, device=device) * -80,
        "audio_mask": torch.ones(clips, data.audio_frames, dtype=torch.bool, device=device),
    }


def paper_gpu(clips: int, steps: int, amp: bool) -> tuple[float, float]:
    """Paper preset on one GPU: clips/s and peak GiB for `clips` clips per step (random features)."""
    config = load_config("eao_howto100m")
    device = torch.device("cuda")
    model = build_model(config.model).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=5e-5)
    batch = random_batch(clips, config, device)
    torch.cuda.reset_peak_memory_stats()

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with autocast_context(device, amp):
            out = model(batch)
        loss, _ = combinatorial_loss({k: v.float() if v.is_floating_point() else v for k, v in out.items()},
                                     config.loss.weights, config.loss.temperature)
        loss.backward()
        optimizer.step()

    step()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    torch.cuda.synchronize()
    rate = clips * steps / (time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated() / 2**30
    del model, optimizer, batch
    torch.cuda.empty_cache()
    return rate, peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shards", type=Path, default=None)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--threads", type=int, default=0, help="torch threads for the model (0: default)")
    parser.add_argument("--gpu-clips", type=int, default=560, help="clips per GPU step (paper: 2,240 / 4 GPUs)")
    parser.add_argument("--gpu-steps", type=int, default=5)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as scratch:
        shards = args.shards
        if shards is None:
            from shard_fixtures import write_shard_set

            shards = Path(scratch) / "shards"
            write_shard_set(shards, videos=48, shards=4, topics=8)
        config = load_config("eao_small", ["train.device=cpu", f"train.cpu_threads={args.threads}"])
        clips_per_step = config.train.batch * config.data.clips_per_video
        model_rate = model_clips_per_s(shards, config, args.steps, Path(scratch) / "run")
        rows = [("model step (eao_small, CPU fp32)", f"{clips_per_step} clips/step", model_rate, 1.0)]
        for workers in args.workers:
            rate = loader_clips_per_s(shards, config, workers, args.batches)
            per_worker = rate / max(workers, 1)
            label = "loader, in-process" if workers == 0 else f"loader, {workers} worker(s), per worker"
            rows.append((label, f"{clips_per_step} clips/batch", per_worker, per_worker / model_rate))
        print(f"\nbench_train: torch {torch.__version__}, {torch.get_num_threads()} threads, shards {shards}")
        print(f"{'what':<40} {'unit':>16} {'clips/s':>10} {'vs model':>9}")
        for label, unit, rate, ratio in rows:
            print(f"{label:<40} {unit:>16} {rate:>10.1f} {ratio:>8.1f}x")

    if torch.cuda.is_available():
        print(f"\nGPU {torch.cuda.get_device_name()}: paper preset (689 M parameters), {args.gpu_clips} clips/step")
        print(f"{'precision':<12} {'clips/s':>10} {'peak GiB':>9} {'vs fp32':>8}")
        fp32 = paper_gpu(args.gpu_clips, args.gpu_steps, amp=False)
        bf16 = paper_gpu(args.gpu_clips, args.gpu_steps, amp=True)
        for name, (rate, peak) in (("fp32", fp32), ("bf16 AMP", bf16)):
            print(f"{name:<12} {rate:>10.1f} {peak:>9.1f} {rate / fp32[0]:>7.2f}x")
    else:
        print("\nno GPU visible: the paper-preset bf16 row needs one")


if __name__ == "__main__":
    main()
