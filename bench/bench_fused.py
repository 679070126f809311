"""The fused EAO training step against today's (six-pass reference forward, default Adam), same run, same weights.

    .venv/bin/python bench/bench_fused.py [--shards DIR] [--videos 4] [--steps 10] [--threads 2]  # CPU, reduced preset
    python bench/bench_fused.py --gpu [--gpu-clips 560] [--gpu-steps 6] [--compile]              # CUDA: paper preset, bf16

CPU (always): a reduced preset (width 1024, 16 heads, heads 1024 -> 1536, DAVEnet v2 at a quarter
of its widths, paper depths; the paper's clip sizes: 12 video tokens, 20 words, 768 log-mel frames,
10 clips per video) on batches from a real shard set (without --shards: the synthetic corpus run
through `howto-prep extract` with random weights, made in a temp folder), and the same batches with
all 20 word slots filled (no text padding to skip). "today" = forward_reference + torch's default
Adam; "fused" = the fused forward + fused Adam (what mft-train runs now). Both models start from the
same weights; their outputs on the first batch are compared before timing. Steps alternate (today,
fused, today, ...) after warm-up, and the table gives the median seconds per step.

GPU (--gpu): the paper preset (689 M parameters) in bf16 autocast, `--gpu-clips` clips per step
(560 = the paper's 2,240 clips over 4 GPUs) of random features whose text holds 1-20 words (uniform)
and all video/audio tokens real; today (cudnn.benchmark off, default Adam, reference forward) then
the fused step (cudnn.benchmark on, fused Adam) and optionally the fused step under torch.compile.
Model FLOPs per step are counted with torch.utils.flop_counter on the fused step (the work the model
needs); MFU = those FLOPs / step time / the GPU's dense bf16 peak (--peak-tflops, default 989 for
H100/H200 SXM). The all-gather volume of multi-GPU training is computed, not measured.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mft_train.data.clips import clip_spec  # noqa: E402
from mft_train.data.shards import discover_shards  # noqa: E402
from mft_train.data.stream import LoaderPlan, make_loader  # noqa: E402
from mft_train.losses.combinatorial import PAPER_PRETRAIN_WEIGHTS, combinatorial_loss  # noqa: E402
from mft_train.models import build_model  # noqa: E402
from mft_train.presets import load_config  # noqa: E402
from mft_train.training.device import autocast_context  # noqa: E402

REDUCED = {
    "name": "eao", "width": 1024, "heads": 16, "mlp_ratio": 1.0, "qkv_bias": True, "embed_dim": 1536,
    "davenet": "v2", "davenet_widths": [32, 64, 128, 256, 512, 1024], "davenet_depths": [2, 2, 1, 1, 1, 1],
}
EMBEDDINGS = ("t", "v", "a", "tv", "ta", "va")


def synthetic_shards(scratch: Path, videos: int) -> Path:
    """The synthetic corpus through `howto-prep extract` (random weights, CPU): a real shard set."""
    from howto_prep.cli import main as prep
    from howto_prep.synthetic.corpus import generate_corpus

    corpus = scratch / "corpus"
    generate_corpus(corpus, videos=videos, seed=0, heldout_videos=0, max_seconds=40)
    shards = scratch / "shards"
    code = prep(["extract", "--videos", str(corpus / "videos"), "--captions", str(corpus / "caption.json"),
                 "--word2vec", str(corpus / "word2vec.bin"), "--csv", str(corpus / "HowTo100M_v1.csv"),
                 "--out", str(shards), "--weights-2d", "random", "--weights-3d", "random", "--gpus", "0"])
    if code:
        raise SystemExit(f"howto-prep extract failed with exit code {code}")
    return shards


def shard_batches(shards: Path, videos: int, count: int) -> list[dict]:
    """`count` pretraining batches of `videos` videos x 10 clips (paper clip settings) from the shard stream."""
    data = load_config("eao_howto100m").data
    plan = LoaderPlan(videos_per_rank=videos, clips_per_video=data.clips_per_video, num_batches=count, seed=0,
                      epoch=0, first_step=0, shuffle_buffer=4 * videos, half_features=False, pin_memory=False)
    batches = [{k: v for k, v in b.items() if k != "video_id"}
               for b in make_loader(discover_shards(shards), clip_spec(data), plan, workers=0)]
    return batches


def full_text(batch: dict, seed: int = 0) -> dict:
    """The batch with every word slot real (random vectors in the padded ones)."""
    gen = torch.Generator().manual_seed(seed)
    filled = dict(batch)
    filled["text"] = torch.where(batch["text_mask"][..., None], batch["text"],
                                 0.1 * torch.randn(batch["text"].shape, generator=gen))
    filled["text_mask"] = torch.ones_like(batch["text_mask"])
    return filled


class Stepper:
    """One model + optimiser + forward choice; `step(batch)` runs forward, loss, backward, optimiser step."""

    def __init__(self, model: torch.nn.Module, fused: bool, device: torch.device, amp: bool, compile_model: bool = False) -> None:
        self.model, self.fused, self.device, self.amp = model, fused, device, amp
        params = list(model.parameters())
        self.optimizer = torch.optim.Adam(params, lr=5e-5, **({"fused": True} if fused else {}))
        self.forward = model if fused else model.forward_reference
        if compile_model:
            model.compile()
            self.forward = model

    def step(self, batch: dict) -> float:
        loss = self.forward_backward(batch)
        self.optimizer.step()
        return float(loss.detach())

    def forward_backward(self, batch: dict) -> torch.Tensor:
        self.model.zero_grad(set_to_none=True)
        with autocast_context(self.device, self.amp):
            out = self.forward(batch)
        loss, _ = combinatorial_loss({k: v.float() if v.is_floating_point() else v for k, v in out.items()},
                                     PAPER_PRETRAIN_WEIGHTS)
        loss.backward()
        return loss


def timed(fn, device: torch.device) -> float:
    return timed_both(fn, device)[0]


def timed_both(fn, device: torch.device) -> tuple[float, float]:
    """(wall seconds, this process's CPU seconds) of one call."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    start, cpu = time.perf_counter(), time.process_time()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start, time.process_time() - cpu


def alternate(contenders: dict[str, tuple[callable, list[dict]]], warmup: int, steps: int,
              device: torch.device) -> dict[str, tuple[float, float]]:
    """Median (wall, CPU) seconds per call of each contender (a function and its batches), interleaved
    round-robin after `warmup` rounds, so a busy machine slows every contender alike. With one thread
    the CPU seconds are the steadier measure on a shared machine (other processes cannot inflate them)."""
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in contenders}
    for round_index in range(warmup + steps):
        for name, (fn, batches) in contenders.items():
            batch = batches[round_index % len(batches)]
            seconds = timed_both(lambda: fn(batch), device)
            if round_index >= warmup:
                times[name].append(seconds)
    return {name: (statistics.median(w for w, _ in values), statistics.median(c for _, c in values))
            for name, values in times.items()}


def compare_outputs(model: torch.nn.Module, batch: dict) -> tuple[float, float]:
    """Max |embedding difference| and |loss difference| of fused vs reference on the same weights (fp32)."""
    with torch.no_grad():
        fused, reference = model(batch), model.forward_reference(batch)
        loss_f, _ = combinatorial_loss(fused, PAPER_PRETRAIN_WEIGHTS)
        loss_r, _ = combinatorial_loss(reference, PAPER_PRETRAIN_WEIGHTS)
    worst = max(float((fused[k] - reference[k]).abs().max()) for k in EMBEDDINGS)
    return worst, abs(float(loss_f) - float(loss_r))


def cpu_bench(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as scratch:
        shards = args.shards
        if shards is None and args.fixture_shards:
            sys.path.insert(0, str(ROOT / "tests"))
            from shard_fixtures import write_shard_set

            shards = Path(scratch) / "fixture-shards"
            write_shard_set(shards, videos=16, shards=2, topics=4)
        shards = shards or synthetic_shards(Path(scratch), args.corpus_videos)
        batches = shard_batches(shards, args.videos, 2)
    clips = batches[0]["video"].shape[0]
    fill = float(torch.stack([b["text_mask"].float().mean() for b in batches]).mean())
    torch.manual_seed(0)
    base = build_model(REDUCED)
    params = sum(p.numel() for p in base.parameters())
    diff_emb, diff_loss = compare_outputs(base.train(), batches[0])
    today = Stepper(copy.deepcopy(base), fused=False, device=torch.device("cpu"), amp=False)
    fused = Stepper(copy.deepcopy(base), fused=True, device=torch.device("cpu"), amp=False)
    print(f"bench_fused (CPU): torch {torch.__version__}, {torch.get_num_threads()} threads; reduced preset "
          f"{params:,} parameters (width 1024, 16 heads, DAVEnet v2 widths 32..1024); shards {shards}")
    print(f"{clips} clips per step ({args.videos} videos x 10 clips), text slots filled {100 * fill:.0f}%; "
          f"fused vs reference on the same weights: max |d embedding| {diff_emb:.1e}, |d loss| {diff_loss:.1e}")
    filled = [full_text(b) for b in batches]
    contenders = {"today": (today.step, batches), "fused": (fused.step, batches),
                  "today full": (today.step, filled), "fused full": (fused.step, filled),
                  "today fb": (today.forward_backward, batches), "fused fb": (fused.forward_backward, batches),
                  "today adam": (lambda _: today.optimizer.step(), batches),
                  "fused adam": (lambda _: fused.optimizer.step(), batches)}
    if args.compile:
        compiled = Stepper(copy.deepcopy(base), fused=True, device=torch.device("cpu"), amp=False, compile_model=True)
        compile_s = timed(lambda: compiled.step(batches[0]), torch.device("cpu"))
        print(f"torch.compile: first compiled step {compile_s:.0f} s")
        contenders["compiled"] = (compiled.step, batches)
    medians = alternate(contenders, args.warmup, args.steps, torch.device("cpu"))
    rows = [(f"step: fwd + bwd + Adam, real shards (text {100 * fill:.0f}% filled)", medians["today"], medians["fused"]),
            ("step: fwd + bwd + Adam, same batches, all 20 words real", medians["today full"], medians["fused full"]),
            ("forward + backward only (real shards)", medians["today fb"], medians["fused fb"]),
            ("Adam step alone (default vs fused)", medians["today adam"], medians["fused adam"])]
    if args.compile:
        rows.append(("step, fused + torch.compile (real shards)", medians["today"], medians["compiled"]))
    print(f"\n{'what':<56} {'today s':>8} {'fused s':>8} {'today clips/s':>13} {'fused clips/s':>13} {'ratio':>6} "
          f"{'CPU-time ratio':>14}")
    for label, (old, old_cpu), (new, new_cpu) in rows:
        print(f"{label:<56} {old:>8.3f} {new:>8.3f} {clips / old:>13.1f} {clips / new:>13.1f} {old / new:>5.2f}x "
              f"{old_cpu / new_cpu:>13.2f}x")
    print("(medians over the timed rounds; ratio = today / fused wall time, CPU-time ratio = the same in this "
          "process's CPU seconds)")


# ---------------------------------------------------------------- GPU, paper preset


def gpu_batch(clips: int, device: torch.device, seed: int = 0, words: int | None = None) -> dict:
    """Random paper-sized features: 12 video tokens, 768 log-mel frames, 1-20 real words (uniform) or `words`."""
    gen = torch.Generator().manual_seed(seed)
    words = torch.randint(1, 21, (clips,), generator=gen) if words is None else torch.full((clips,), words)
    batch = {
        "video": torch.randn(clips, 12, 4096, generator=gen).half(), "video_mask": torch.ones(clips, 12, dtype=torch.bool),
        "text": torch.randn(clips, 20, 300, generator=gen), "text_mask": torch.arange(20)[None, :] < words[:, None],
        "audio": (torch.rand(clips, 40, 768, generator=gen) * -80).half(), "audio_mask": torch.ones(clips, 768, dtype=torch.bool),
    }
    return {k: v.to(device) for k, v in batch.items()}


def step_flops(stepper: Stepper, batch: dict) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        stepper.forward_backward(batch)
    return float(counter.get_total_flops())


def gpu_bench(args: argparse.Namespace) -> None:
    device = torch.device("cuda")
    name = torch.cuda.get_device_name()
    peak = args.peak_tflops or (989.0 if any(g in name for g in ("H100", "H200")) else 0.0)
    config = load_config("eao_howto100m")
    batch = gpu_batch(args.gpu_clips, device)
    fill = float(batch["text_mask"].float().mean())
    print(f"\nbench_fused (GPU {name}): paper preset, bf16 autocast, {args.gpu_clips} clips/step, "
          f"text {100 * fill:.0f}% filled, video and audio all real")
    flops = None
    variants = [("today: reference forward, default Adam", False, False, False),
                ("fused forward, fused Adam, cudnn.benchmark", True, True, False)]
    if args.compile:
        variants.append(("fused + torch.compile", True, True, True))
    base = None
    for label, fused, benchmark, compile_model in variants:
        torch.backends.cudnn.benchmark = benchmark
        torch.manual_seed(0)
        model = build_model(config.model).to(device)
        if flops is None:  # model FLOPs = the fused step's work, counted once (same weights either way)
            check = gpu_batch(8, device, seed=1)
            diff_emb, diff_loss = compare_outputs(model.train(), {k: v.float() if v.is_floating_point() else v
                                                                  for k, v in check.items()})
            print(f"fused vs reference on the GPU, fp32, 8 clips: max |d embedding| {diff_emb:.1e}, |d loss| {diff_loss:.1e}")
            flops = step_flops(Stepper(model, fused=True, device=device, amp=True), batch)
            model.zero_grad(set_to_none=True)
            print(f"model FLOPs per step (fused forward + backward, flop counter): {flops / 1e12:.1f} TFLOP "
                  f"({flops / args.gpu_clips / 1e9:.1f} GFLOP per clip); peak {peak:.0f} TFLOP/s")
            print(f"{'variant':<46} {'s/step':>8} {'clips/s':>9} {'MFU':>6} {'peak GiB':>9} {'vs today':>9}", flush=True)
        stepper = Stepper(model, fused=fused, device=device, amp=True, compile_model=compile_model)
        torch.cuda.reset_peak_memory_stats()
        for _ in range(args.gpu_warmup):
            stepper.step(batch)
        seconds = statistics.median(timed(lambda: stepper.step(batch), device) for _ in range(args.gpu_steps))
        peak_gib = torch.cuda.max_memory_allocated() / 2**30
        base = base or seconds
        mfu = f"{100 * flops / seconds / (peak * 1e12):.0f}%" if peak else "n/a"
        print(f"{label:<46} {seconds:>8.3f} {args.gpu_clips / seconds:>9.0f} {mfu:>6} {peak_gib:>9.1f} "
              f"{base / seconds:>8.2f}x", flush=True)
        del stepper, model
        torch.cuda.empty_cache()
    embed, per_step = config.model.get("embed_dim", 6144), config.train.batch * config.data.clips_per_video
    gathered = per_step * 6 * embed * 4
    with torch.device("meta"):
        params = sum(p.numel() for p in build_model(config.model).parameters())
    print(f"multi-GPU (computed): each step all-gathers 6 float32 embeddings x {embed} x {per_step:,} clips = "
          f"{gathered / 2**20:.0f} MiB per rank (and their gradients on the way back), and DDP "
          f"all-reduces {params * 4 / 2**30:.2f} GiB of float32 gradients")


def paper_flops(args: argparse.Namespace) -> None:
    """Model FLOPs per clip (forward + backward) of the paper preset, six-pass vs fused, counted on the CPU,
    and what they would mean for 15 epochs of HowTo100M at today's measured GPU rate (an estimate)."""
    config = load_config("eao_howto100m")
    torch.manual_seed(0)
    model = build_model(config.model)
    cpu = torch.device("cpu")
    today, fused = Stepper(model, fused=False, device=cpu, amp=False), Stepper(model, fused=True, device=cpu, amp=False)
    print(f"\npaper preset FLOPs per clip (forward + backward, torch.utils.flop_counter, {args.flop_clips} clips)")
    print(f"{'text':<22} {'today GFLOP':>12} {'fused GFLOP':>12} {'ratio':>7} {'15 epochs, 1 GPU today -> at the FLOP ratio':>46}")
    clips_total, today_rate = 1.75e8, 2664.0  # README: 15 epochs of HowTo100M; bf16 clips/s on one H200
    for label, words in (("1-20 words (uniform)", None), ("20 words (no padding)", 20)):
        batch = gpu_batch(args.flop_clips, cpu, words=words)
        old, new = step_flops(today, batch) / args.flop_clips, step_flops(fused, batch) / args.flop_clips
        hours = clips_total / today_rate / 3600
        print(f"{label:<22} {old / 1e9:>12.1f} {new / 1e9:>12.1f} {old / new:>6.2f}x "
              f"{hours:>26.1f} h -> {hours * new / old:.1f} h (8 GPUs: {hours / 8:.1f} -> {hours * new / old / 8:.1f} h)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shards", type=Path, default=None, help="a shard set (default: synthetic corpus + extract)")
    parser.add_argument("--corpus-videos", type=int, default=8)
    parser.add_argument("--fixture-shards", action="store_true", help="tests' fixture shards instead of an extract (quick)")
    parser.add_argument("--videos", type=int, default=4, help="videos per CPU step (x 10 clips)")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--gpu", action="store_true", help="run the paper-preset GPU comparison (needs CUDA)")
    parser.add_argument("--cpu", action=argparse.BooleanOptionalAction, default=True, help="run the CPU comparison")
    parser.add_argument("--gpu-clips", type=int, default=560)
    parser.add_argument("--gpu-steps", type=int, default=6)
    parser.add_argument("--gpu-warmup", type=int, default=3)
    parser.add_argument("--compile", action="store_true", help="also time the fused step under torch.compile")
    parser.add_argument("--peak-tflops", type=float, default=0.0)
    parser.add_argument("--paper-flops", action="store_true", help="count the paper preset's FLOPs per clip (CPU)")
    parser.add_argument("--flop-clips", type=int, default=4)
    args = parser.parse_args()
    if args.cpu:
        cpu_bench(args)
    if args.paper_flops:
        paper_flops(args)
    if args.gpu:
        if not torch.cuda.is_available():
            raise SystemExit("--gpu needs a CUDA GPU; the GPU rows stay 'not yet measured'")
        gpu_bench(args)


if __name__ == "__main__":
    main()
