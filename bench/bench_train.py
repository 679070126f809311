"""Pretraining throughput: model clips/s vs data-loader clips/s per worker (small preset, CPU); the loader
at the paper preset's data settings on HowTo100M-length videos (clips/s and CPU seconds per clip per
worker, memory over an epoch, the workers a GPU needs); on a GPU the paper preset's clips/s and peak
memory in bf16 against fp32 in the same run.

    .venv/bin/python bench/bench_train.py [--shards DIR] [--steps 10] [--batches 20] [--gpu-clips 560]
    .venv/bin/python bench/bench_train.py --paper-loader-only --workers 1 2     # only the paper-settings loader

Without --shards a small structured shard set is written to a temp folder (tests/shard_fixtures.py).
The loader must outrun the model by a wide margin: the last column is loader / model. The paper
section writes `--long-videos` fixture videos of 200-600 s (HowTo100M averages about 6.5 minutes, so
each sample holds about 7 MB of features, like a real shard's) and reads them with the paper preset's
data settings (10 clips per video, 8 s clips, float16 features as on a GPU machine). `--gpu-rate` is
the clips/s one GPU consumes (default: 2 x 2,664, twice the README's bf16 rate before the fused
forward); the table says how many workers keep the loader at twice that.
"""

from __future__ import annotations

import argparse
import math
import os
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


def process_cpu_seconds(pid: int) -> float:
    """utime + stime of a live process, from /proc (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def process_pss_mib(pid: int) -> float:
    """Proportional set size (shared pages split between their users), else RSS, in MiB; 0 once it exited."""
    for name, key in (("smaps_rollup", "Pss:"), ("status", "VmRSS:")):
        try:
            for line in Path(f"/proc/{pid}/{name}").read_text().splitlines():
                if line.startswith(key):
                    return int(line.split()[1]) / 1024
        except OSError:
            continue
    return 0.0


def paper_loader(shards: Path, workers: int, batches: int, videos: int, shuffle_buffer: int) -> dict:
    """The stream at the paper preset's data settings: clips/s, CPU s per clip, memory (PSS) at every batch.

    The rate counts from the first batch to the last (start-up excluded). CPU per clip: in-process
    (workers=0), the main process's CPU time over the same window; with workers, their whole CPU time
    (start-up and the videos left in their shuffle buffers at the end included, so an upper bound)
    over all clips, plus the main process's share (receiving batches) over the window.
    """
    data = load_config("eao_howto100m").data
    plan = LoaderPlan(videos_per_rank=videos, clips_per_video=data.clips_per_video, num_batches=batches + 1, seed=0,
                      epoch=0, first_step=0, shuffle_buffer=shuffle_buffer, half_features=True, pin_memory=False)
    launched = time.perf_counter()
    iterator = iter(make_loader(discover_shards(shards), clip_spec(data), plan, workers))
    pids = [worker.pid for worker in getattr(iterator, "_workers", [])]
    first = next(iterator)
    total_clips = len(first["video_id"])
    del first
    start, main_start, clips, worker_cpu, memory = time.perf_counter(), time.process_time(), 0, 0.0, []
    for batch in iterator:
        clips += len(batch["video_id"])
        memory.append(sum(process_pss_mib(pid) for pid in [os.getpid(), *pids]))
        del batch
        if len(memory) == batches and pids:  # the last batch: the workers are still alive
            worker_cpu = sum(process_cpu_seconds(pid) for pid in pids) / (total_clips + clips)
    elapsed, main = time.perf_counter() - start, (time.process_time() - main_start) / max(clips, 1)
    if not pids:
        worker_cpu, main = main, 0.0
    return {"rate": clips / elapsed, "worker_cpu": worker_cpu, "main_cpu": main, "startup": start - launched,
            "memory": memory}


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


def paper_loader_section(args: argparse.Namespace, scratch: Path) -> None:
    from shard_fixtures import write_shard_set

    long_shards = args.long_shards
    if long_shards is None:
        long_shards = scratch / "long-shards"
        write_shard_set(long_shards, videos=args.long_videos, shards=max(2, args.long_videos // 8), topics=8,
                        duration=(200.0, 600.0))
    shards = discover_shards(long_shards)
    size = sum(Path(url).stat().st_size for url in shards.urls) / shards.num_videos / 2**20
    clips_per_batch = args.paper_videos * 10
    print(f"\nloader at the paper preset's data settings: {shards.num_videos} videos of 200-600 s "
          f"({size:.1f} MiB of features each), {args.paper_videos} videos x 10 clips = {clips_per_batch} clips per "
          f"batch, float16 features, shuffle buffer {args.shuffle_buffer} videos, {args.paper_batches} batches")
    print(f"{'workers':>7} {'clips/s':>9} {'per worker':>11} {'worker CPU ms/clip':>19} {'main CPU ms/clip':>17} "
          f"{'start-up s':>11} {'memory MiB first->max->last':>28}")
    per_worker = {}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in a DataLoader worker, also for the in-process row
    for workers in args.paper_workers:
        result = paper_loader(long_shards, workers, args.paper_batches, args.paper_videos, args.shuffle_buffer)
        rate_each = result["rate"] / max(workers, 1)
        per_worker[workers] = rate_each
        memory = result["memory"]
        print(f"{workers:>7} {result['rate']:>9.0f} {rate_each:>11.0f} {1e3 * result['worker_cpu']:>19.2f} "
              f"{1e3 * result['main_cpu']:>17.2f} {result['startup']:>11.1f} "
              f"{memory[0]:>9.0f} -> {max(memory):.0f} -> {memory[-1]:.0f}")
    torch.set_num_threads(threads)
    one = per_worker.get(1, min(per_worker.values()))
    needed = math.ceil(2 * args.gpu_rate / one)
    block = (12 * 4096 + 40 * 768) * 2 * 10 / 2**20
    print(f"to feed {args.gpu_rate:.0f} clips/s at 2x margin: {2 * args.gpu_rate:.0f} clips/s = {needed} workers at "
          f"{one:.0f} clips/s each (one worker's rate on this machine's cores, {os.cpu_count()} here); "
          f"each buffered video holds {block:.2f} MiB of clips, so the paper's buffer of 1,000 videos settles at "
          f"about {1000 * block / 1024:.1f} GiB per worker")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shards", type=Path, default=None)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--threads", type=int, default=0, help="torch threads for the model (0: default)")
    parser.add_argument("--gpu-clips", type=int, default=560, help="clips per GPU step (paper: 2,240 / 4 GPUs)")
    parser.add_argument("--gpu-steps", type=int, default=5)
    parser.add_argument("--long-shards", type=Path, default=None, help="HowTo100M-length shard set (default: written)")
    parser.add_argument("--long-videos", type=int, default=64)
    parser.add_argument("--paper-workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--paper-batches", type=int, default=12)
    parser.add_argument("--paper-videos", type=int, default=56, help="videos per batch (560 clips: one of 4 GPUs)")
    parser.add_argument("--shuffle-buffer", type=int, default=100)
    parser.add_argument("--gpu-rate", type=float, default=2 * 2664.0, help="clips/s one GPU consumes")
    parser.add_argument("--paper-loader-only", action="store_true")
    parser.add_argument("--skip-paper-loader", action="store_true")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as scratch:
        if not args.paper_loader_only:
            small_section(args, Path(scratch))
        if not args.skip_paper_loader:
            paper_loader_section(args, Path(scratch))

    if args.paper_loader_only:
        return
    if torch.cuda.is_available():
        print(f"\nGPU {torch.cuda.get_device_name()}: paper preset (689 M parameters), {args.gpu_clips} clips/step, "
              "fused forward")
        print(f"{'precision':<12} {'clips/s':>10} {'peak GiB':>9} {'vs fp32':>8}")
        fp32 = paper_gpu(args.gpu_clips, args.gpu_steps, amp=False)
        bf16 = paper_gpu(args.gpu_clips, args.gpu_steps, amp=True)
        for name, (rate, peak) in (("fp32", fp32), ("bf16 AMP", bf16)):
            print(f"{name:<12} {rate:>10.1f} {peak:>9.1f} {rate / fp32[0]:>7.2f}x")
    else:
        print("\nno GPU visible: the paper-preset bf16 row needs one")


def small_section(args: argparse.Namespace, scratch: Path) -> None:
    shards = args.shards
    if shards is None:
        from shard_fixtures import write_shard_set

        shards = scratch / "shards"
        write_shard_set(shards, videos=48, shards=4, topics=8)
    config = load_config("eao_small", ["train.device=cpu", f"train.cpu_threads={args.threads}"])
    clips_per_step = config.train.batch * config.data.clips_per_video
    model_rate = model_clips_per_s(shards, config, args.steps, scratch / "run")
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


if __name__ == "__main__":
    main()
